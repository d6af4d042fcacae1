"""Behaviour of the Flax networks: shapes, code split, names, transforms, precision, BN updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeca.models import (Generator, ResnetEncoder, VGG19Features, coarse_encoder,
                            deca_layer_names, decompose_code, detail_decoder, detail_latent, jit_init,
                            vggface2_preprocess)
from jaxdeca.models.resnet import max_pool_3x3_s2

KEY = jax.random.PRNGKey(0)


def test_decompose_code_order_and_light_layout():
    code = jnp.arange(2 * 236, dtype=jnp.float32).reshape(2, 236)
    p = decompose_code(code)
    assert {k: v.shape for k, v in p.items()} == {
        "shape": (2, 100), "tex": (2, 50), "exp": (2, 50), "pose": (2, 6), "cam": (2, 3),
        "light": (2, 9, 3)}
    assert p["tex"][0, 0] == 100 and p["exp"][0, 0] == 150 and p["pose"][0, 0] == 200
    assert p["cam"][1, 0] == 236 + 206
    np.testing.assert_array_equal(p["light"][0, 1], [212, 213, 214])  # row-major (9, 3)
    with pytest.raises(ValueError, match="expected last dim 236"):
        decompose_code(jnp.zeros((1, 235)))


def test_detail_latent_is_jaw_exp_detail():
    pose = jnp.arange(6.0)[None]
    z = detail_latent(pose, jnp.full((1, 50), 7.0), jnp.full((1, 128), 9.0))
    assert z.shape == (1, 181)
    np.testing.assert_array_equal(z[0, :3], [3, 4, 5])
    assert float(z[0, 3]) == 7 and float(z[0, 53]) == 9


def test_deca_vgg_layer_naming():
    idx = {name: i for i, name, _ in deca_layer_names()}
    # DECA's relu3_2 / relu4_2 are the ReLUs right after the first conv of blocks 3 / 4.
    assert idx["relu3_2"] == 11 and idx["conv3_1"] == 10
    assert idx["relu4_2"] == 20 and idx["conv4_1"] == 19
    assert idx["pool_5"] == 36
    with pytest.raises(ValueError, match="unknown layers"):
        VGG19Features(layers=("relu3_1x",)).init(KEY, jnp.zeros((1, 32, 32, 3)))


def test_vgg_runs_only_as_deep_as_needed():
    v = VGG19Features(layers=("relu3_2",)).init(KEY, jnp.zeros((1, 32, 32, 3)))
    assert sorted(v["params"]) == ["features_0", "features_10", "features_2", "features_5",
                                   "features_7"]


def test_ceil_mode_max_pool_shapes():
    x = jnp.zeros((1, 112, 112, 1))
    assert max_pool_3x3_s2(x, ceil_mode=False).shape == (1, 56, 56, 1)
    assert max_pool_3x3_s2(x, ceil_mode=True).shape == (1, 56, 56, 1)  # torch: ceil(109/2)+1
    assert max_pool_3x3_s2(jnp.zeros((1, 33, 33, 1)), ceil_mode=True).shape == (1, 16, 16, 1)
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)  # ceil: 2x2 output, last window padded
    np.testing.assert_array_equal(max_pool_3x3_s2(x, True)[0, :, :, 0], [[10, 11], [14, 15]])


def test_vggface2_preprocess_hand_computed():
    x = jnp.array([[[[1.0, 0.5, 0.0]]]])  # RGB
    np.testing.assert_allclose(vggface2_preprocess(x)[0, 0, 0],
                               [0 - 91.4953, 127.5 - 103.8827, 255 - 131.0912], rtol=1e-6)


@pytest.fixture(scope="module")
def decoder():
    model = Generator()
    return model, model.init(KEY, jnp.zeros((1, 181)))


def test_decoder_jit_vmap_and_range(decoder):
    model, v = decoder
    z = jax.random.normal(KEY, (3, 181))
    out = jax.jit(model.apply)(v, z)
    assert out.shape == (3, 256, 256, 1) and out.dtype == jnp.float32
    assert float(jnp.abs(out).max()) <= 0.01
    per = jax.vmap(lambda zi: model.apply(v, zi[None])[0])(z)
    np.testing.assert_allclose(per, out, rtol=1e-5, atol=1e-8)


def test_decoder_grad_matches_finite_differences(decoder):
    model, v = decoder
    z = jax.random.normal(KEY, (1, 181))
    d = jax.random.normal(jax.random.PRNGKey(1), (1, 181))
    # a random linear read-out: sum(out^2) changes too little along d against its float32 rounding
    # (its central difference moved by 5% between eps 1e-2 and 1e-3)
    w = jax.random.normal(jax.random.PRNGKey(2), (1, 256, 256, 1))
    f = lambda t: jnp.sum(model.apply(v, z + t * d) * w) * 1e2  # noqa: E731
    analytic = jax.grad(f)(0.0)
    eps = 1e-3
    numeric = (f(eps) - f(-eps)) / (2 * eps)
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2)


def test_encoder_grad_wrt_image_and_params_finite():
    model = ResnetEncoder(8)
    x = jax.random.uniform(KEY, (2, 32, 32, 3))
    v = jax.jit(model.init)(KEY, x)
    loss = lambda p, im: jnp.sum(model.apply({**v, "params": p}, im) ** 2)  # noqa: E731
    g_par, g_img = jax.jit(jax.grad(loss, argnums=(0, 1)))(v["params"], x)
    assert g_img.shape == x.shape and bool(jnp.all(jnp.isfinite(g_img)))
    assert all(bool(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(g_par))


def test_bf16_compute_keeps_float32_params_and_tracks_f32():
    model32, model16 = detail_decoder(), detail_decoder(dtype=jnp.bfloat16)
    z = jax.random.normal(KEY, (2, 181))
    v = model32.init(KEY, z)
    shapes16 = jax.eval_shape(model16.init, KEY, z)
    assert {l.dtype for l in jax.tree.leaves(shapes16)} == {jnp.dtype(jnp.float32)}
    a, b = jax.jit(model32.apply)(v, z), jax.jit(model16.apply)(v, z)
    assert b.dtype == jnp.float32
    assert float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(a).max())
    enc = coarse_encoder(dtype=jnp.bfloat16)
    x = jnp.zeros((1, 32, 32, 3))
    ve = jax.eval_shape(enc.init, KEY, x)
    assert {l.dtype for l in jax.tree.leaves(ve)} == {jnp.dtype(jnp.float32)}
    assert jax.eval_shape(enc.apply, ve, x).dtype == jnp.float32


def test_train_mode_updates_batch_stats_with_momentum_0_9(decoder):
    model, v = decoder
    z = jax.random.normal(KEY, (4, 181))
    _, new = jax.jit(lambda v, z: model.apply(v, z, train=True, mutable=["batch_stats"]))(v, z)
    # conv_blocks_0 sees l1's output viewed as [B, 128, 8, 8] (CHW); its running mean moves 10%
    # of the way (from 0) to the batch mean per channel.
    h = z @ v["params"]["l1_0"]["kernel"] + v["params"]["l1_0"]["bias"]
    np.testing.assert_allclose(new["batch_stats"]["conv_blocks_0"]["mean"],
                               0.1 * h.reshape(4, 128, 64).mean(axis=(0, 2)), rtol=1e-4, atol=1e-6)


def test_jit_init_equals_eager_init(decoder):
    """`jit_init` is `module.init` compiled as one program: same tree, bitwise-equal values
    (the decoder fixture's eager init: dense, convolutions, batch norm)."""
    net, eager = decoder
    jitted = jit_init(net, KEY, jnp.zeros((1, 181)))
    assert set(jitted) == {"params", "batch_stats"}
    assert jax.tree.structure(eager) == jax.tree.structure(jitted)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_jit_init_under_a_transformation_is_traced_into_it(decoder):
    """Under jax.eval_shape or a caller's jit, `jit_init` traces `module.init` into the caller's
    program (on CPU its nested jit with compiler options was a ValueError): eval_shape gives
    the init's shapes and dtypes, compiling nothing, and a caller's jit its values."""
    from compile_count import compiles
    net, eager = decoder
    with compiles() as n:
        shapes = jax.eval_shape(lambda k: jit_init(net, k, jnp.zeros((1, 181))), KEY)
    assert len(n) == 0
    assert jax.tree.structure(shapes) == jax.tree.structure(eager)
    assert [(s.shape, s.dtype) for s in jax.tree.leaves(shapes)] == [(e.shape, e.dtype) for e in jax.tree.leaves(eager)]
    inside = jax.jit(lambda k: jit_init(net, k, jnp.zeros((1, 181))))(KEY)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(inside)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("uv_size", [48, 0, -32])
def test_detail_decoder_refuses_bad_uv_size(uv_size):
    # 0 and negative multiples of 32 used to pass the check and fail later inside init
    # (ZeroDivisionError, or a reshape TypeError about (1, 128, -1, -1)).
    with pytest.raises(ValueError, match=f"uv_size must be a positive multiple of 32, got {uv_size}"):
        detail_decoder(uv_size=uv_size)
