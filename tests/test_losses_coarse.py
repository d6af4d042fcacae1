"""Coarse losses: hand-computed cases, DECA torch ports, zero-weight skipping, gradients."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
import torch
from hypothesis import given, settings, strategies as st

from jaxdeca.losses import coarse, default_loss_config
from jaxdeca.losses.identity import id_overlay, identity_loss


def deca_landmark_weights():
    """DECA lossfunc.weighted_landmark_loss's table, written out as DECA builds it."""
    w = torch.ones(68)
    w[5:7] = 2
    w[10:12] = 2
    w[27:36] = 1.5  # nose
    w[30] = 3
    w[31] = 3
    w[35] = 3
    w[60:68] = 1.5  # inner mouth
    w[48:60] = 1.5
    w[48] = 3
    w[54] = 3
    return w


def test_landmark_weights_table():
    np.testing.assert_array_equal(coarse.landmark_weights(), deca_landmark_weights().numpy())


def test_weighted_landmark_hand_computed():
    gt = np.zeros((1, 68, 3), np.float32)
    gt[..., 2] = 1.0
    pred = np.zeros((1, 68, 2), np.float32)
    pred[0, 30] = [0.1, -0.2]          # weight 3: |.| sum 0.3
    pred[0, 0] = [0.4, 0.0]            # weight 1: 0.4
    gt[0, 1, 2] = 0.0                   # invisible: its error does not count
    pred[0, 1] = [5.0, 5.0]
    w = coarse.landmark_weights()
    k = (w.sum() - w[1]) * 2.0
    expect = (3 * 0.3 + 1 * 0.4) / k
    np.testing.assert_allclose(float(coarse.weighted_landmark_loss(pred, gt)), expect, rtol=1e-5)


def test_landmark_matches_deca_torch():
    rng = np.random.default_rng(0)
    gt = rng.uniform(-1, 1, (3, 68, 3)).astype(np.float32)
    gt[..., 2] = rng.random((3, 68)) > 0.2
    pred = rng.uniform(-1, 1, (3, 68, 2)).astype(np.float32)
    # DECA: weights multiply the visibility column in place, then batch_kp_2d_l1_loss
    real = torch.from_numpy(gt.copy())
    real[:, :, 2] = deca_landmark_weights()[None, :] * real[:, :, 2]
    kp_gt, kp_pred = real.view(-1, 3), torch.from_numpy(pred).view(-1, 2)
    vis = kp_gt[:, 2]
    ref = torch.matmul(torch.abs(kp_gt[:, :2] - kp_pred).sum(1), vis) / (vis.sum() * 2 + 1e-8)
    np.testing.assert_allclose(float(coarse.weighted_landmark_loss(pred, gt)), float(ref), rtol=1e-5)


def test_eye_and_lip_distances_hand_computed():
    gt = np.zeros((1, 68, 3), np.float32)
    pred = np.zeros((1, 68, 2), np.float32)
    gt[0, 37, 1], gt[0, 41, 1] = -0.1, 0.1     # one open eyelid pair, distance 0.2
    pred[0, 62, 1] = 0.3                        # one open lip pair (62, 66), distance 0.3
    np.testing.assert_allclose(float(coarse.eyed_loss(pred, gt)), 0.2 / 4, rtol=1e-6)
    np.testing.assert_allclose(float(coarse.lipd_loss(pred, gt)), 0.3 / 3, rtol=1e-6)


def test_eye_and_lip_distances_match_deca_torch():
    """DECA lossfunc.eyed_loss / lipd_loss (eye_dis: [37, 38, 43, 44] against [41, 40, 47, 46];
    lip_dis: [61, 62, 63] against [67, 66, 65]) on landmarks that all differ."""
    rng = np.random.default_rng(5)
    gt = rng.uniform(-1, 1, (3, 68, 3)).astype(np.float32)
    pred = rng.uniform(-1, 1, (3, 68, 2)).astype(np.float32)

    def dis(lm, up, down):
        return torch.sqrt(((lm[:, up, :] - lm[:, down, :]) ** 2).sum(2))

    tp, tg = torch.from_numpy(pred), torch.from_numpy(gt)[:, :, :2]
    for fn, up, down in ((coarse.eyed_loss, [37, 38, 43, 44], [41, 40, 47, 46]),
                         (coarse.lipd_loss, [61, 62, 63], [67, 66, 65])):
        ref = (dis(tp, up, down) - dis(tg, up, down)).abs().mean()
        np.testing.assert_allclose(float(fn(pred, gt)), float(ref), rtol=1e-5, err_msg=fn.__name__)


def test_photometric_hand_computed():
    pred = np.zeros((1, 2, 2, 3), np.float32)
    img = np.full((1, 2, 2, 3), 0.5, np.float32)
    mask = np.array([[[1.0, 0.0], [0.0, 0.0]]], np.float32)
    # one pixel of 4 counts: 3 channels * 0.5 / 12 elements
    np.testing.assert_allclose(float(coarse.photometric_loss(pred, img, mask)), 1.5 / 12)


@pytest.mark.parametrize("use_seg", [True, False])
def test_photometric_mask_is_a_constant(use_seg):
    # DECA detaches alpha, so its photometric mask (skin, or face_eye_mask * alpha) has no
    # gradient; the soft alpha's gradient reaches the loss through the prediction only. With
    # the prediction held fixed, the loss has no gradient w.r.t. alpha.
    rng = np.random.default_rng(1)
    pred, img, skin, fem = (jnp.asarray(rng.random((1, 4, 4, c)), jnp.float32) for c in (3, 3, 1, 1))
    alpha = jnp.asarray(rng.random((1, 4, 4, 1)), jnp.float32)

    def loss(alpha):
        return coarse.photometric_loss(pred, img, coarse.coarse_photo_mask(skin, fem, alpha, use_seg))

    assert float(loss(alpha)) > 0
    assert np.abs(np.asarray(jax.grad(loss)(alpha))).max() == 0.0


@pytest.mark.parametrize("use_seg", [True, False])
def test_photometric_term_hand_computed_and_constant_in_the_face_eye_mask(use_seg):
    """Render 1, image 0, alpha 1, face-eye mask 0.5 everywhere, skin 1: the prediction is
    render * face_eye_mask * alpha = 0.5; with DECA's useSeg the mask is the skin alone (0.5 x
    weight 2 = 1.0), without it face_eye_mask * alpha (0.5 x 0.5 x 2 = 0.5). DECA samples the
    face-eye mask with a detached grid: the term has no gradient through it (the trainer samples
    it with the live grid)."""
    ones = jnp.ones((1, 4, 4, 3))

    def term(fem):
        _, terms = coarse.coarse_losses(landmarks_pred=jnp.zeros((1, 68, 2)), landmarks_gt=jnp.zeros((1, 68, 3)),
                                        codes={}, weights=dict(lmk=0.0, eyed=0.0, lipd=0.0, id=0.0, use_seg=use_seg,
                                                               reg_shape=0.0, reg_exp=0.0, reg_tex=0.0, reg_light=0.0),
                                        images=0.0 * ones, rendered_images=ones, alpha_images=jnp.ones((1, 4, 4)),
                                        face_eye_mask=fem, skin_mask=jnp.ones((1, 4, 4)))
        return terms["photometric_texture"]

    fem = jnp.full((1, 4, 4), 0.5)
    np.testing.assert_allclose(float(term(fem)), 1.0 if use_seg else 0.5, rtol=1e-6)
    assert np.abs(np.asarray(jax.grad(term)(fem))).max() == 0.0


def test_regularisers_hand_computed():
    code = np.array([[1.0, 2.0], [3.0, 0.0]], np.float32)
    np.testing.assert_allclose(float(coarse.code_reg(code)), (1 + 4 + 9) / 2)
    light = np.zeros((1, 9, 3), np.float32)
    light[0, 0] = [3.0, 0.0, 0.0]      # channel mean 1 -> squared deviations 4, 1, 1
    np.testing.assert_allclose(float(coarse.light_reg(light)), 6.0 / 27)


def _inputs(seed=0, b=2, size=224):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.random(s).astype(np.float32))
    gt = np.concatenate([rng.uniform(-1, 1, (b, 68, 2)), np.ones((b, 68, 1))], -1)
    return dict(landmarks_gt=jnp.asarray(gt, jnp.float32), images=f(b, size, size, 3),
                alpha_images=f(b, size, size, 1), face_eye_mask=f(b, size, size),
                skin_mask=f(b, size, size), albedo_images=f(b, size, size, 3))


def _features(x):
    b = x.shape[0]
    return x.reshape(b, 28, 8, 28, 8, 3).mean(axis=(2, 4)).reshape(b, -1)


def _pipeline(params, seed=1):
    """Tiny differentiable stand-in: codes -> landmarks / render / shading via random maps."""
    rng = np.random.default_rng(seed)
    m = {k: jnp.asarray(rng.standard_normal(s).astype(np.float32) * 0.05) for k, s in
         dict(shape=(10, 136), exp=(5, 136), pose=(6, 136), cam=(3, 136),
              tex=(4, 3), light=(27, 3), shade=(10, 3)).items()}
    lm = (params["shape"] @ m["shape"] + params["exp"] @ m["exp"] + params["pose"] @ m["pose"]
          + params["cam"] @ m["cam"]).reshape(-1, 68, 2)
    b = lm.shape[0]
    colour = jax.nn.sigmoid(params["tex"] @ m["tex"] + params["light"].reshape(b, -1) @ m["light"])
    shade = 1.0 + jnp.tanh(params["shape"] @ m["shade"])
    rendered = jnp.broadcast_to((colour * shade)[:, None, None, :], (b, 224, 224, 3))
    shading = jnp.broadcast_to(shade[:, None, None, :], (b, 224, 224, 3))
    codes = {"shape": params["shape"], "exp": params["exp"], "tex": params["tex"],
             "light": params["light"]}
    return lm, rendered, shading, codes


def _params(seed=2, b=2):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32))
    return dict(shape=f(b, 10), exp=f(b, 5), pose=f(b, 6), cam=f(b, 3), tex=f(b, 4),
                light=f(b, 9, 3))


def _total(params, inp, weights=None):
    lm, rendered, shading, codes = _pipeline(params)
    return coarse.coarse_losses(landmarks_pred=lm, codes=codes, rendered_images=rendered,
                                shading_images=shading, id_features_fn=_features,
                                weights=weights, **inp)


def test_coarse_losses_terms_and_gradients_per_code_group():
    inp, params = _inputs(), _params()
    total, terms = jax.jit(_total)(params, inp)
    assert set(terms) == {"landmark", "eye_distance", "lip_distance", "photometric_texture",
                          "identity", "shape_reg", "expression_reg", "tex_reg", "light_reg"}
    np.testing.assert_allclose(float(total), float(sum(terms.values())), rtol=1e-6)
    # each term is its unweighted loss times DECA's weight, written here as literals
    lm, rendered, shading, codes = _pipeline(params)
    gt = inp["landmarks_gt"]
    fem, alpha = inp["face_eye_mask"][..., None], inp["alpha_images"]
    mask = inp["skin_mask"][..., None]  # DECA's useSeg: the skin segmentation alone
    overlay = id_overlay(inp["albedo_images"], shading, inp["face_eye_mask"], inp["images"])
    expect = {"landmark": coarse.weighted_landmark_loss(lm, gt) * 1.0, "eye_distance": coarse.eyed_loss(lm, gt) * 1.0,
              "lip_distance": coarse.lipd_loss(lm, gt) * 0.5,
              "photometric_texture": coarse.photometric_loss(rendered * fem * alpha, inp["images"], mask) * 2.0,
              "identity": identity_loss(overlay, inp["images"], _features) * 0.2,
              "shape_reg": coarse.code_reg(codes["shape"]) * 1e-4, "expression_reg": coarse.code_reg(codes["exp"]) * 1e-4,
              "tex_reg": coarse.code_reg(codes["tex"]) * 1e-4, "light_reg": coarse.light_reg(codes["light"]) * 1.0}
    for name, want in expect.items():
        np.testing.assert_allclose(float(terms[name]), float(want), rtol=1e-5, err_msg=name)
    grads = jax.grad(lambda p: _total(p, inp)[0])(params)
    for name, g in grads.items():
        assert np.all(np.isfinite(np.asarray(g))), name
        assert float(jnp.abs(g).sum()) > 0, name


def test_zero_weights_skip_terms():
    cfg = default_loss_config()
    cfg.photo = 0.0
    cfg.id = 0.0
    cfg.eyed = 0.0
    inp = _inputs()
    for k in ("images", "alpha_images", "face_eye_mask", "skin_mask", "albedo_images"):
        inp[k] = None          # not needed when photo and id are off
    lm, _, _, codes = _pipeline(_params())
    _, terms = coarse.coarse_losses(landmarks_pred=lm, codes=codes, weights=cfg,
                                    landmarks_gt=inp["landmarks_gt"])
    assert set(terms) == {"landmark", "lip_distance", "shape_reg", "expression_reg", "tex_reg",
                          "light_reg"}
    # landmark-only pretraining: no light needed either
    _, terms = coarse.coarse_losses(landmarks_pred=lm, codes={}, landmarks_gt=inp["landmarks_gt"],
                                    weights=dict(photo=0.0, id=0.0, reg_shape=0.0, reg_exp=0.0,
                                                 reg_tex=0.0, reg_light=0.0))
    assert set(terms) == {"landmark", "eye_distance", "lip_distance"}


def test_missing_inputs_and_unknown_weights_raise():
    lm, _, _, codes = _pipeline(_params())
    gt = _inputs()["landmarks_gt"]
    with pytest.raises(ValueError, match="rendered_images|images"):
        coarse.coarse_losses(landmarks_pred=lm, landmarks_gt=gt, codes=codes)
    with pytest.raises(ValueError, match=r"unknown keys \['lmkk'\]; known: .* \(a new term's weight is declared in "
                       r"default_loss_config, jaxdeca/losses/defaults.py\)$"):
        coarse.coarse_losses(landmarks_pred=lm, landmarks_gt=gt, codes=codes, weights={"lmkk": 1})


def test_use_seg_false_uses_face_eye_alpha():
    inp, params = _inputs(), _params()
    lm, rendered, shading, codes = _pipeline(params)
    _, t = coarse.coarse_losses(landmarks_pred=lm, codes=codes, rendered_images=rendered,
                                weights=dict(use_seg=False, id=0.0), **inp)
    fem, alpha = inp["face_eye_mask"][..., None], inp["alpha_images"]
    pred = rendered * fem * alpha
    expect = jnp.mean(fem * alpha * jnp.abs(pred - inp["images"])) * 2.0
    np.testing.assert_allclose(float(t["photometric_texture"]), float(expect), rtol=1e-5)


def test_vmap_over_landmark_loss():
    rng = np.random.default_rng(3)
    gt = jnp.asarray(np.concatenate([rng.random((4, 1, 68, 2)), np.ones((4, 1, 68, 1))], -1),
                     jnp.float32)
    pred = jnp.asarray(rng.random((4, 1, 68, 2)), jnp.float32)
    per = jax.vmap(coarse.weighted_landmark_loss)(pred, gt)
    for i in range(4):
        np.testing.assert_allclose(float(per[i]), float(coarse.weighted_landmark_loss(pred[i], gt[i])),
                                   rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(scale=st.sampled_from([0.0, 1e-3, 1.0, 1e3]), image_value=st.sampled_from([0.0, 1.0]),
       mask_value=st.sampled_from([0.0, 1.0]), coincide=st.booleans())
def test_finite_on_degenerate_inputs(scale, image_value, mask_value, coincide):
    b, size = 1, 224
    params = jax.tree_util.tree_map(lambda x: x * scale, _params(b=b))
    inp = _inputs(b=b)
    inp["images"] = jnp.full((b, size, size, 3), image_value)
    inp["skin_mask"] = jnp.full((b, size, size), mask_value)
    inp["face_eye_mask"] = jnp.full((b, size, size), mask_value)
    if coincide:
        inp["landmarks_gt"] = jnp.zeros((b, 68, 3)).at[..., 2].set(mask_value)
    zero_lm = coincide

    def f(p):
        lm, rendered, shading, codes = _pipeline(p)
        if zero_lm:
            lm = lm * 0.0
        return coarse.coarse_losses(landmarks_pred=lm, codes=codes, rendered_images=rendered,
                                    shading_images=shading * image_value,
                                    id_features_fn=_features, **inp)[0]

    val, grads = jax.value_and_grad(f)(params)
    assert np.isfinite(float(val))
    for g in jax.tree_util.tree_leaves(grads):
        assert np.all(np.isfinite(np.asarray(g)))


def test_landmarks_of_another_shape_are_refused():
    """A ground truth of batch 1 broadcast against B predictions summed its visibility once, so the
    landmark loss came out B times too large; 51 landmarks read other points as the eyelids and
    lips. Both are a ValueError now."""
    pred, gt = jnp.zeros((4, 68, 2)), jnp.ones((4, 68, 3))
    for fn in (coarse.weighted_landmark_loss, coarse.landmark_loss):
        with pytest.raises(ValueError, match=r"landmarks: pred must be \[B, K, 2\] for gt's B and K \(1, 68\), "
                                             r"got shape \(4, 68, 2\)"):
            fn(pred, gt[:1])
        with pytest.raises(ValueError, match=r"pred must be \[B, K, 2\] .*got shape \(4, 51, 2\)"):
            fn(pred[:, :51], gt)
    # any K the prediction matches: (|0 - 1| + |0 - 1|) / 2 per point (before, gt[:1] gave 4.0)
    assert float(coarse.landmark_loss(jnp.zeros((4, 51, 2)), gt[:, :51])) == pytest.approx(1.0)
    for fn in (coarse.eyed_loss, coarse.lipd_loss):
        with pytest.raises(ValueError, match=r"landmarks must be \[B, 68, 2 or 3\] .*got shape \(4, 51, 2\)"):
            fn(pred[:, :51], gt[:, :51])
