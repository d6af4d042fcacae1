"""Detail losses: DECA torch ports, scipy erosion, the face box, hand cases, gradients."""

import numpy as np
import jax
import jax.numpy as jnp
import scipy.ndimage
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from jaxdeca.losses import detail, image


def test_face_box_is_decas():
    assert detail.face_attr_box(256) == (50, 206, 50, 206)
    assert detail.face_attr_box(2048) == (400, 1648, 400, 1648)
    assert detail.face_attr_box(512) == (100, 412, 100, 412)


def test_binary_erosion_matches_scipy():
    rng = np.random.default_rng(0)
    m = (rng.random((2, 20, 17)) > 0.15).astype(np.float32) * rng.random((2, 20, 17))
    m[:, 4:15, 3:14] = 0.7        # a solid block that survives erosion in its interior
    ours = np.asarray(image.binary_erosion(jnp.asarray(m)[..., None], 5))[..., 0]
    for i in range(2):
        ref = scipy.ndimage.binary_erosion(m[i], np.ones((5, 5))).astype(np.float32)
        np.testing.assert_array_equal(ours[i], ref)
    assert ours.sum() > 0


def test_shading_smooth_matches_deca_torch():
    s = np.random.default_rng(1).random((2, 7, 9, 3)).astype(np.float32)
    t = torch.from_numpy(s).permute(0, 3, 1, 2)
    dx = t[:, :, 1:-1, 1:] - t[:, :, 1:-1, :-1]
    dy = t[:, :, 1:, 1:-1] - t[:, :, :-1, 1:-1]
    ref = (dx ** 2).mean() + (dy ** 2).mean()
    np.testing.assert_allclose(float(detail.shading_smooth_loss(jnp.asarray(s))), float(ref),
                               rtol=1e-5)


def test_face_patch_matches_torch_crop_and_interpolate():
    x = np.random.default_rng(2).random((1, 256, 256, 3)).astype(np.float32)
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    ref = F.interpolate(t[:, :, 50:206, 50:206], [256, 256], mode="bilinear")
    np.testing.assert_allclose(np.asarray(detail.face_patch(jnp.asarray(x))),
                               ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_z_sym_hand_computed():
    z = np.zeros((1, 8, 8, 1), np.float32)
    z[0, 0, 0, 0] = 1.0                       # mirror of (0, 7) which is 0
    vis = np.zeros((1, 8, 8, 1), np.float32)  # nothing visible: every pixel counts
    # |z - flip(z)| is 1 at (0, 0) and at (0, 7)
    np.testing.assert_allclose(float(detail.z_sym_loss(jnp.asarray(z), jnp.asarray(vis))), 2.0)
    vis[:] = 1.0                               # all visible: erosion keeps the interior only
    assert float(detail.z_sym_loss(jnp.asarray(z), jnp.asarray(vis))) == 2.0   # corners are border
    g = jax.grad(lambda a: detail.z_sym_loss(a, jnp.asarray(vis)))(jnp.asarray(z))
    assert float(g[0, 0, 0, 0]) == 1.0 and float(g[0, 0, 7, 0]) == -1.0  # flip is detached


def test_z_sym_matches_decas_numpy_form_on_a_face_mask():
    """DECA's trainer: sum((1 - binary_erosion(vis, 5 x 5)) |z - flip_w(z)|), with scipy's erosion,
    on a face-shaped mask (an ellipse with two eye holes) that erosion by 3 x 3 and by 5 x 5 tell
    apart (a 3 x 3 erosion passed the cases above)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    vis = (((yy - 20) / 16.0) ** 2 + ((xx - 19.5) / 12.0) ** 2 < 1).astype(np.float32)
    vis[14:18, 11:16] = vis[14:18, 24:29] = 0.0
    z = (rng.normal(size=(1, 40, 40, 1)) * 0.01).astype(np.float32)
    non = 1.0 - scipy.ndimage.binary_erosion(vis, np.ones((5, 5))).astype(np.float32)
    want = float((non[None, ..., None] * np.abs(z - z[:, :, ::-1])).sum())
    got = float(detail.z_sym_loss(jnp.asarray(z), jnp.asarray(vis)[None, ..., None]))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    three = 1.0 - scipy.ndimage.binary_erosion(vis, np.ones((3, 3))).astype(np.float32)
    assert abs(float((three[None, ..., None] * np.abs(z - z[:, :, ::-1])).sum()) - want) > 0.01 * want


def test_uv_visibility_mask():
    gt = jnp.ones((1, 2, 2, 1))
    nz = jnp.asarray([[[[-0.1], [0.0]], [[-0.06], [-0.04]]]])
    fem = jnp.asarray([[1.0, 1.0], [0.0, 1.0]])
    out = np.asarray(detail.uv_visibility_mask(gt, nz, fem))[0, ..., 0]
    np.testing.assert_array_equal(out, [[1, 0], [0, 0]])
    # DECA's threshold, -0.05, on either side of it where the face-eye mask is 1 (the -0.06 texel
    # above has mask 0, so a threshold of -0.08 passed)
    nz = jnp.asarray([[[[-0.051], [-0.049]], [[-0.06], [-0.079]]]])
    out = np.asarray(detail.uv_visibility_mask(gt, nz, jnp.ones((2, 2))))[0, ..., 0]
    np.testing.assert_array_equal(out, [[1, 0], [1, 1]])


def _vgg(x):
    k = jnp.asarray(np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32))
    y = jax.nn.relu(x @ k)
    y3 = y.reshape(y.shape[0], 16, 16, 16, 16, 8).mean(axis=(2, 4))      # 256 -> 16
    return {"relu3_2": y3, "relu4_2": y3[:, ::2, ::2]}


def _arrays(seed=4, b=2, s=256):
    rng = np.random.default_rng(seed)
    f = lambda *sh: jnp.asarray(rng.random(sh).astype(np.float32))
    return dict(uv_texture=f(b, s, s, 3), uv_texture_gt=f(b, s, s, 3),
                uv_vis_mask=(f(b, s, s, 1) > 0.2).astype(jnp.float32),
                uv_z=(f(b, s, s, 1) - 0.5) * 0.02, uv_shading=f(b, s, s, 3))


def test_detail_losses_terms_values_and_grads():
    a = _arrays()
    total, terms = jax.jit(lambda a: detail.detail_losses(vgg_features_fn=_vgg, **a))(a)
    assert set(terms) == {"photo_detail", "photo_detail_mrf", "z_reg", "z_diff", "z_sym"}
    np.testing.assert_allclose(float(terms["z_reg"]), float(jnp.mean(jnp.abs(a["uv_z"]))) * 0.005,
                               rtol=1e-5)
    tp, gp, mp = (detail.face_patch(a[k]) for k in ("uv_texture", "uv_texture_gt", "uv_vis_mask"))
    np.testing.assert_allclose(float(terms["photo_detail"]),
                               float(jnp.mean(jnp.abs(tp * mp - gp * mp))) * 2.0, rtol=1e-5)
    # DECA's weights, as literals: photo_D 2, mrf 0.05 (times photo_D), reg_z, reg_diff, reg_sym 0.005
    from jaxdeca.losses.idmrf import idmrf_loss
    np.testing.assert_allclose(float(terms["photo_detail_mrf"]),
                               float(idmrf_loss(tp * mp, gp * mp, _vgg)) * 2.0 * 0.05, rtol=1e-5)
    np.testing.assert_allclose(float(terms["z_diff"]), float(detail.shading_smooth_loss(a["uv_shading"])) * 0.005,
                               rtol=1e-5)
    np.testing.assert_allclose(float(terms["z_sym"]), float(detail.z_sym_loss(a["uv_z"], a["uv_vis_mask"])) * 0.005,
                               rtol=1e-5)
    np.testing.assert_allclose(float(total), float(sum(terms.values())), rtol=1e-6)
    g = jax.grad(lambda t, z, s: detail.detail_losses(
        vgg_features_fn=_vgg, **{**a, "uv_texture": t, "uv_z": z, "uv_shading": s})[0],
        (0, 1, 2))(a["uv_texture"], a["uv_z"], a["uv_shading"])
    for x in g:
        assert np.all(np.isfinite(np.asarray(x))) and float(jnp.abs(x).sum()) > 0


def test_detail_zero_weights_skip_terms():
    a = _arrays(b=1)
    _, terms = detail.detail_losses(weights=dict(mrf=0.0, reg_sym=0.0), **a)   # no VGG needed
    assert set(terms) == {"photo_detail", "z_reg", "z_diff"}


@settings(max_examples=10, deadline=None)
@given(value=st.sampled_from([0.0, 1.0]), mask=st.sampled_from([0.0, 1.0]),
       zscale=st.sampled_from([0.0, 1.0, 1e3]))
def test_detail_finite_on_degenerate_inputs(value, mask, zscale):
    a = _arrays(b=1)
    a["uv_texture_gt"] = jnp.full_like(a["uv_texture_gt"], value)
    a["uv_vis_mask"] = jnp.full_like(a["uv_vis_mask"], mask)
    a["uv_z"] = a["uv_z"] * zscale

    def f(t, z):
        return detail.detail_losses(vgg_features_fn=_vgg, **{**a, "uv_texture": t * value,
                                                              "uv_z": z})[0]

    val, g = jax.value_and_grad(f, (0, 1))(a["uv_texture"], a["uv_z"])
    assert np.isfinite(float(val))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g)


def test_binary_erosion_and_the_symmetry_loss_run_with_x64_on():
    """Under jax_enable_x64 the erosion's init value 1.0 became float64 against a float32
    operand: reduce_window refused it, and z_sym_loss and detail_losses with it."""
    m = np.zeros((1, 8, 8, 1), np.float32)
    m[0, 1:7, 1:7] = 1
    with jax.enable_x64(True):
        for dtype in (jnp.float32, jnp.float64):
            out = image.binary_erosion(jnp.asarray(m, dtype), 3)
            assert out.dtype == dtype
            np.testing.assert_array_equal(np.asarray(out)[0, 2:6, 2:6, 0], 1.0)
            assert float(np.asarray(out).sum()) == 16.0
        z = jnp.asarray(np.random.default_rng(0).normal(size=(1, 8, 8, 1)))
        assert np.isfinite(float(detail.z_sym_loss(z, jnp.asarray(m))))
