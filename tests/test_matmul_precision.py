"""FLAME, the albedo, the shape render and the similarity alignment compute in float32 on GPUs and
TPUs too: their products ask for HIGHEST precision, where JAX's default rounds float32 operands
to bfloat16 (TPU) or TF32 (GPU). The CPU computes every product exactly, so the accelerators'
rounding is emulated (`reduced_precision`); before, FLAME's vertices came out up to 0.56 mm off
and a contour landmark up to 9 mm (its table row flipped) under bfloat16."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeca.evaluation.geometry import similarity_transform
from jaxdeca.flame import texture
from jaxdeca.flame.lbs import rodrigues
from jaxdeca.flame.model import load_arrays, load_model
from jaxdeca.render import shading
from reduced_precision import BFLOAT16_BITS, TF32_BITS, default_precision_products, emulate, round_to_bits

BITS = [pytest.param(BFLOAT16_BITS, id="bfloat16"), pytest.param(TF32_BITS, id="tf32")]


def test_the_emulation_rounds_default_products_as_bfloat16_and_leaves_highest_ones():
    """The emulator itself: its rounding is numpy's bfloat16 cast (an independent reference),
    a default-precision product gets the rounded operands, inside cond, checkpoint and scan too,
    and a HIGHEST one the exact ones."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 100, (64, 32)).astype(np.float32)
    y = rng.normal(0, 1, (32, 16)).astype(np.float32)
    as_bf16 = np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_array_equal(np.asarray(round_to_bits(jnp.asarray(x), BFLOAT16_BITS)), as_bf16)
    rounded = emulate(lambda a, b: a @ b, BFLOAT16_BITS)(jnp.asarray(x), jnp.asarray(y))
    want = as_bf16.astype(np.float64) @ np.asarray(round_to_bits(jnp.asarray(y), BFLOAT16_BITS), np.float64)
    np.testing.assert_allclose(np.asarray(rounded), want, rtol=1e-5, atol=1e-4)
    assert np.abs(np.asarray(rounded) - x.astype(np.float64) @ y).max() > 0.1
    exact = emulate(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST), BFLOAT16_BITS)(x, y)
    np.testing.assert_array_equal(np.asarray(exact), np.asarray(jnp.matmul(x, y, precision="highest")))
    for nest in (lambda f: lambda a, b: jax.lax.cond(True, f, lambda a, b: a[:, :16], a, b),  # nested programs
                 lambda f: jax.checkpoint(f),
                 lambda f: lambda a, b: jax.lax.scan(lambda c, _: (f(a, b), None), a[:, :16], None, length=1)[0]):
        np.testing.assert_array_equal(np.asarray(emulate(nest(jnp.matmul), BFLOAT16_BITS)(x, y)), np.asarray(rounded))


def _codes(B=16, seed=0):
    rng = np.random.default_rng(seed)
    pose = np.concatenate([rng.normal(0, 0.3, (B, 3)), np.abs(rng.normal(0, 0.15, (B, 3)))], 1)
    return (jnp.asarray(rng.normal(0, 1, (B, 100)), jnp.float32), jnp.asarray(rng.normal(0, 1, (B, 50)), jnp.float32),
            jnp.asarray(pose, jnp.float32))


@pytest.mark.parametrize("bits", BITS)
def test_flame_vertices_and_landmarks_are_float32_at_the_accelerators_default_precision(bits):
    model = load_model()
    fn = lambda s, e, p: model(s, e, p)  # noqa: E731
    codes = _codes()
    exact = jax.jit(fn)(*codes)
    reduced = emulate(fn, bits)(*codes)
    for key in ("vertices", "landmarks2d", "landmarks3d"):
        np.testing.assert_allclose(np.asarray(reduced[key]), np.asarray(exact[key]), rtol=0, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("bits", BITS)
def test_albedo_and_shape_shading_are_float32_at_the_accelerators_default_precision(bits):
    arrays = load_arrays()
    rng = np.random.default_rng(1)
    tex = jnp.asarray(rng.normal(0, 1, (4, 50)), jnp.float32)
    albedo = lambda t: texture.albedo_from_arrays(arrays, t)  # noqa: E731
    np.testing.assert_array_equal(np.asarray(emulate(albedo, bits)(tex)), np.asarray(albedo(tex)))
    n = rng.normal(0, 1, (2, 32, 32, 3))
    n = jnp.asarray(n / np.linalg.norm(n, axis=-1, keepdims=True), jnp.float32)
    np.testing.assert_array_equal(np.asarray(emulate(shading.directional_shading, bits)(n)),
                                  np.asarray(shading.directional_shading(n)))


@pytest.mark.parametrize("bits", BITS)
def test_similarity_transform_of_jax_arrays_is_float32_at_the_accelerators_default_precision(bits):
    """Seven landmarks about 1 m from the origin (mm units): bfloat16 operands moved the aligned
    points by up to 4.7 mm."""
    rng = np.random.default_rng(1)
    src = (rng.normal(0, 50, (7, 3)) + [10, 20, 1000]).astype(np.float32)
    R = np.asarray(rodrigues(np.array([0.3, -0.2, 0.1], np.float32)))
    dst = (1.3 * src @ R.T + [5, -3, 40]).astype(np.float32)
    exact = similarity_transform(jnp.asarray(src), jnp.asarray(dst))
    reduced = emulate(similarity_transform, bits)(jnp.asarray(src), jnp.asarray(dst))
    for a, b in zip(reduced, exact):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _outside_networks(lines):
    return sorted({line for line in lines if not line.startswith("models/")})


def test_decode_has_no_default_precision_product_outside_the_networks():
    """The reconstruct pipeline's decode (FLAME, albedo, renders, UV maps, detail normals): every
    float32 product but the networks' asks for HIGHEST, so code added later keeps to it."""
    from jaxdeca.apps.pipeline import load_pipeline
    p = load_pipeline(random_seed=0)
    codes = jax.tree.map(lambda x: x[:1], p.encode(np.zeros((1, 224, 224, 3), np.float32)))
    lines = default_precision_products(lambda c: p._decode_impl(c, p.variables.get("D_detail")), codes)
    assert any(line.startswith("models/") for line in lines)  # the walk sees the networks' products
    assert _outside_networks(lines) == []


@pytest.mark.parametrize("stage", ["coarse", "detail"])
def test_training_gradients_have_no_default_precision_product_outside_the_networks(stage):
    from test_train_stage_wiring import _batch_spec, loss_task
    task, args = loss_task(stage)
    grad = jax.grad(lambda params, *rest: task.loss_fn(params, *rest)[0])  # the forward and its transposes
    lines = default_precision_products(grad, *args, _batch_spec(4), jax.random.key(0))
    assert any(line.startswith("models/") for line in lines)
    assert _outside_networks(lines) == []
