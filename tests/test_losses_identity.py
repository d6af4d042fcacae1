"""Identity loss and torch-exact bilinear resize, against torch references."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
import torch
import torch.nn.functional as F

from jaxdeca.losses import identity, image


@pytest.mark.parametrize("src,dst", [((204, 204), (224, 224)), ((156, 156), (256, 256)),
                                     ((7, 5), (3, 11)), ((16, 16), (5, 5)), ((9, 4), (9, 4))])
def test_resize_matches_torch_interpolate(src, dst):
    x = np.random.default_rng(0).random((2, *src, 3)).astype(np.float32)
    ours = np.asarray(image.resize_bilinear(jnp.asarray(x), dst))
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), list(dst), mode="bilinear",
                        align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_resize_gradient_matches_torch():
    x = np.random.default_rng(1).random((1, 6, 5, 2)).astype(np.float32)
    cot = np.random.default_rng(2).random((1, 9, 4, 2)).astype(np.float32)
    g = jax.grad(lambda a: jnp.sum(image.resize_bilinear(a, (9, 4)) * cot))(jnp.asarray(x))
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
    y = F.interpolate(xt, [9, 4], mode="bilinear", align_corners=False)
    (y * torch.from_numpy(cot).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_allclose(np.asarray(g), xt.grad.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def _linear_features(seed=0, dim=16):
    """A small random feature function: 8x8 average pool, flatten, random projection."""
    w = np.random.default_rng(seed).standard_normal((28 * 28 * 3, dim)).astype(np.float32) / 50

    def jax_fn(x):
        b = x.shape[0]
        p = x.reshape(b, 28, 8, 28, 8, 3).mean(axis=(2, 4))
        return p.reshape(b, -1) @ jnp.asarray(w)

    def torch_fn(x_nchw):
        p = F.avg_pool2d(x_nchw, 8).permute(0, 2, 3, 1)
        return p.reshape(x_nchw.shape[0], -1) @ torch.from_numpy(w).double()

    return jax_fn, torch_fn


def torch_vggface2_loss(gen, tar, reg_model):
    """DECA's VGGFace2Loss.forward (transform, reg_features, cosine), NCHW torch tensors."""
    mean_bgr = torch.tensor([91.4953, 103.8827, 131.0912]).double()

    def transform(img):
        img = img[:, [2, 1, 0], :, :].permute(0, 2, 3, 1) * 255 - mean_bgr
        return img.permute(0, 3, 1, 2)

    def reg_features(x):
        margin = 10
        x = x[:, :, margin:224 - margin, margin:224 - margin]
        x = F.interpolate(x * 2. - 1., [224, 224], mode='bilinear')
        return reg_model(x).view(x.size(0), -1)

    g, t = reg_features(transform(gen)), reg_features(transform(tar))
    return (1.0 - F.cosine_similarity(g, t, dim=1)).mean()


def test_identity_loss_matches_deca_torch():
    jfn, tfn = _linear_features()
    rng = np.random.default_rng(3)
    gen = rng.random((2, 224, 224, 3)).astype(np.float32)
    tar = rng.random((2, 224, 224, 3)).astype(np.float32)
    ours = float(identity.identity_loss(jnp.asarray(gen), jnp.asarray(tar), jfn))
    to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).double()
    ref = float(torch_vggface2_loss(to_t(gen), to_t(tar), tfn))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("size", [64, 224, 256])
def test_reg_input_crops_the_same_share_of_every_side_at_any_size(size):
    """DECA's crop is [10:214] of its 224 images; written so, it cut an off-centre window out of
    another training size (10:64 of 64 px, 10:214 of 256). A margin of round(10 * S / 224) on
    every side: a mirrored image gives the mirrored input, and 224 keeps DECA's pixels."""
    rng = np.random.default_rng(size)
    x = jnp.asarray(rng.random((1, size, size, 3)).astype(np.float32))
    out = identity.reg_input(x)
    np.testing.assert_allclose(identity.reg_input(x[:, :, ::-1]), out[:, :, ::-1], atol=1e-4)  # resize rounding
    np.testing.assert_allclose(identity.reg_input(x[:, ::-1]), out[:, ::-1], atol=1e-4)
    m = round(10 * size / 224)
    np.testing.assert_allclose(out, image.resize_bilinear(x[:, m:size - m, m:size - m] * 2 - 1, (224, 224)),
                               atol=1e-6)


def test_identity_zero_for_identical_and_grows_with_difference():
    jfn, _ = _linear_features(seed=4)
    rng = np.random.default_rng(5)
    tar = jnp.asarray(rng.random((1, 224, 224, 3)).astype(np.float32))
    noise = jnp.asarray(rng.standard_normal((1, 224, 224, 3)).astype(np.float32))
    assert abs(float(identity.identity_loss(tar, tar, jfn))) < 1e-5
    vals = [float(identity.identity_loss(jnp.clip(tar + s * noise, 0, 1), tar, jfn))
            for s in (0.05, 0.3, 1.0)]
    assert 0 < vals[0] < vals[1] < vals[2]


def test_cosine_is_safe_at_zero():
    z = jnp.zeros((2, 4))
    loss, g = jax.value_and_grad(lambda a: identity.identity_loss_from_features(a, z))(z)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(float(loss), 1.0)


def test_overlay_pastes_render_and_detaches_mask():
    alb = jnp.full((1, 2, 2, 3), 0.5)
    sh = jnp.full((1, 2, 2, 3), 2.0)
    img = jnp.full((1, 2, 2, 3), 0.1)
    m = jnp.asarray([[[1.0, 0.0], [0.0, 1.0]]])
    out = np.asarray(identity.id_overlay(alb, sh, m, img))
    np.testing.assert_allclose(out[0, :, :, 0], [[1.0, 0.1], [0.1, 1.0]])
    gm, gs = jax.grad(lambda mm, s: jnp.sum(identity.id_overlay(alb, s, mm, img)), (0, 1))(m, sh)
    assert float(jnp.abs(gm).sum()) == 0.0 and float(jnp.abs(gs).sum()) > 0


def test_overlay_gradient_reaches_the_grid_through_the_albedo_like_deca():
    """DECA: albedo_images = grid_sample(albedo.detach(), grid) with a LIVE grid, so the identity
    term moves the geometry through where the (frozen) albedo is sampled."""
    from jaxdeca.render import grid_sample
    rng = np.random.default_rng(7)
    albedo = rng.random((1, 8, 8, 3)).astype(np.float32)
    grid = rng.uniform(-0.9, 0.9, (1, 4, 4, 2)).astype(np.float32)
    sh = rng.random((1, 4, 4, 3)).astype(np.float32) + 0.5
    img = rng.random((1, 4, 4, 3)).astype(np.float32)
    m = (rng.random((1, 4, 4)) > 0.3).astype(np.float32)
    cot = rng.standard_normal((1, 4, 4, 3)).astype(np.float32)

    def ours(g):
        alb = grid_sample(jax.lax.stop_gradient(jnp.asarray(albedo)), g)
        return jnp.sum(identity.id_overlay(alb, sh, m, img) * cot)

    g_ours = np.asarray(jax.grad(ours)(jnp.asarray(grid)))
    nchw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).double()
    gt = torch.from_numpy(grid).double().requires_grad_(True)
    alb_t = F.grid_sample(nchw(albedo).detach(), gt, align_corners=False)
    m_t = torch.from_numpy(m).double()[:, None]
    overlay = alb_t * nchw(sh) * m_t + nchw(img) * (1 - m_t)
    (overlay * nchw(cot)).sum().backward()
    assert np.abs(gt.grad.numpy()).sum() > 0
    np.testing.assert_allclose(g_ours, gt.grad.numpy(), rtol=1e-4, atol=1e-5)


def test_transform_is_bgr_minus_mean():
    x = jnp.asarray([[[[1.0, 0.5, 0.0]]]])
    np.testing.assert_allclose(np.asarray(identity.vggface2_transform(x))[0, 0, 0],
                               [0 - 91.4953, 127.5 - 103.8827, 255 - 131.0912], rtol=1e-6)
