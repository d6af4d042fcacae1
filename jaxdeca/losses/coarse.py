"""Coarse-stage losses of DECA (``decalib/trainer.py`` + ``decalib/utils/lossfunc.py``).

All functions are pure over arrays and pass jit / vmap / grad. Landmarks are in DECA's [-1, 1]
image coordinates (y down); images are NHWC floats in [0, 1].

``coarse_losses`` assembles one training step's coarse terms from rendered arrays (so it does
not depend on the renderer's internals) and returns ``(total, {term: weighted value})`` with
DECA's term names. Terms whose weight is 0 are skipped at trace time and are ABSENT from the
dict.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import numpy as np
import jax
import jax.numpy as jnp

from jaxdeca.losses.defaults import as_weights
from jaxdeca.losses.identity import id_overlay, identity_loss

EYE_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))   # upper / lower eyelid points
LIP_PAIRS = ((61, 67), (62, 66), (63, 65))             # upper / lower inner lip


def landmark_weights() -> np.ndarray:
    """DECA's ``weighted_landmark_loss`` weights: [68] float32."""
    w = np.ones((68,), np.float32)
    w[5:7] = 2
    w[10:12] = 2
    w[27:36] = 1.5      # nose
    w[30] = 3
    w[31] = 3
    w[35] = 3
    w[60:68] = 1.5      # inner mouth
    w[48:60] = 1.5      # outer mouth
    w[48] = 3
    w[54] = 3
    return w


def _gt_with_vis(gt):
    """gt: [B, K, 2] (all visible) or [B, K, 3] (x, y, confidence) -> ([B, K, 2], [B, K])."""
    if gt.shape[-1] == 2:
        return gt, jnp.ones(gt.shape[:-1], gt.dtype)
    if gt.shape[-1] == 3:
        return gt[..., :2], gt[..., 2]
    raise ValueError(f"landmarks: expected [B, K, 2] or [B, K, 3], got shape {gt.shape}")


def batch_kp_2d_l1_loss(gt, pred, weights=None):
    """DECA's ``batch_kp_2d_l1_loss``: visibility-weighted L1 normalised by 2 * sum(vis).

    gt: [B, K, 3] (x, y, visibility) or [B, K, 2]; pred: [B, K, 2]; weights: [K] or None.
    loss = sum_k vis_k * (|dx_k| + |dy_k|) / (2 * sum_k vis_k + 1e-8), vis = weights * gt[..., 2].
    """
    gt_xy, vis = _gt_with_vis(gt)
    if pred.ndim != 3 or pred.shape[-1] < 2 or pred.shape[:2] != gt_xy.shape[:2]:
        # a gt of batch 1 broadcast against the predictions, its visibility summed once: the loss B times too large
        raise ValueError(f"landmarks: pred must be [B, K, 2] for gt's B and K {tuple(gt_xy.shape[:2])}, "
                         f"got shape {tuple(pred.shape)}")
    if weights is not None:
        vis = vis * jnp.asarray(weights, vis.dtype)
    k = jnp.sum(vis) * 2.0 + 1e-8
    dif = jnp.abs(gt_xy - pred[..., :2]).sum(-1)
    return jnp.sum(dif * vis) / k


def weighted_landmark_loss(pred, gt):
    """pred: [B, 68, 2], gt: [B, 68, 3|2] -> scalar; ``batch_kp_2d_l1_loss`` with DECA's weights."""
    return batch_kp_2d_l1_loss(gt, pred, landmark_weights())


def landmark_loss(pred, gt):
    """Unweighted variant (DECA with ``useWlmk=False``). pred: [B, K, 2], gt: [B, K, 3|2].

    DECA's ``lossfunc.landmark_loss`` appends a column of ones to the ground truth, written for
    [B, K, 2]; with its datasets' [B, K, 3] it fails in ``batch_kp_2d_l1_loss``. Here the third
    column is the visibility, as in the weighted loss.
    """
    return batch_kp_2d_l1_loss(gt, pred)


def _safe_norm(x, axis=-1):
    """Euclidean norm whose gradient is 0 (not NaN) at the origin."""
    sq = jnp.sum(x * x, axis=axis)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, jnp.sqrt(safe), 0.0)


def pair_distances(landmarks, pairs):
    """landmarks: [B, 68, >=2] (the 68-point layout `pairs` index), pairs: ((i, j), ...) ->
    [B, len(pairs)] Euclidean xy distances."""
    if landmarks.ndim != 3 or landmarks.shape[1] != 68 or landmarks.shape[2] < 2:
        raise ValueError(f"eye / lip distances: landmarks must be [B, 68, 2 or 3] (the 68-point layout their "
                         f"pairs index), got shape {tuple(landmarks.shape)}")
    a = landmarks[:, [p[0] for p in pairs], :2]
    b = landmarks[:, [p[1] for p in pairs], :2]
    return _safe_norm(a - b)


def eyed_loss(pred, gt):
    """Eye closure: mean |d_pred - d_gt| over the 4 eyelid pairs. pred: [B, 68, 2], gt: [B, 68, >=2].

    The gradient at coincident eyelid points is 0 (DECA's torch sqrt would give NaN there).
    """
    return jnp.mean(jnp.abs(pair_distances(pred, EYE_PAIRS) - pair_distances(gt, EYE_PAIRS)))


def lipd_loss(pred, gt):
    """Lip closure: mean |d_pred - d_gt| over the 3 inner-lip pairs. pred: [B, 68, 2], gt: [B, 68, >=2]."""
    return jnp.mean(jnp.abs(pair_distances(pred, LIP_PAIRS) - pair_distances(gt, LIP_PAIRS)))


def _as_nhw1(mask):
    """[B, H, W] or [B, H, W, 1] -> [B, H, W, 1]."""
    return mask[..., None] if mask.ndim == 3 else mask


def photometric_loss(pred_images, images, mask):
    """DECA's ``(masks * (pred - images).abs()).mean()`` (unweighted).

    pred_images, images: [B, H, W, 3]; mask: [B, H, W] or [B, H, W, 1]. The mean runs over all
    B*H*W*3 elements (masked-out pixels count in the denominator, as in DECA).
    """
    return jnp.mean(_as_nhw1(mask) * jnp.abs(pred_images - images))


def coarse_photo_mask(skin_mask, face_eye_mask, alpha_images, use_seg=True):
    """The photometric mask of DECA's coarse stage. All [B, H, W] or [B, H, W, 1] -> [B, H, W, 1].

    use_seg=True (DECA's default ``useSeg``): the skin segmentation alone. The prediction is
    already ``rendered * face_eye_mask * alpha``, so pixels outside the face-eye region compare a
    constant 0 against the image and only shift the loss by a constant; in effect the loss lives
    on skin ∩ face-eye. use_seg=False: ``face_eye_mask * alpha`` (no segmentation).
    Either mask is a constant of the loss, as in DECA (whose alpha is detached): a soft alpha
    lends its silhouette gradient to the prediction only. Through the mask it would get
    d/d alpha = face_eye_mask * |pred - image| >= 0, a push to cover less of the face.
    """
    if use_seg:
        return jax.lax.stop_gradient(_as_nhw1(skin_mask))
    return jax.lax.stop_gradient(_as_nhw1(face_eye_mask) * _as_nhw1(alpha_images))


def code_reg(code):
    """DECA's shape/exp/tex regulariser: sum(code^2) / 2 summed over the batch. code: [B, N]."""
    return jnp.sum(code ** 2) / 2.0


def light_reg(light):
    """Light towards white: mean((mean_c(light) - light)^2). light: [B, 9, 3]."""
    return jnp.mean((jnp.mean(light, axis=2, keepdims=True) - light) ** 2)


def _need(name, value, term):
    if value is None:
        raise ValueError(f"coarse_losses: '{name}' is required when the '{term}' weight is > 0")
    return value


def coarse_losses(*, landmarks_pred, landmarks_gt, codes: Mapping[str, jnp.ndarray],
                  weights=None, images=None, rendered_images=None, alpha_images=None,
                  face_eye_mask=None, skin_mask=None, albedo_images=None, shading_images=None,
                  id_features_fn: Optional[Callable] = None):
    """All coarse-stage terms of DECA's ``training_step``, weighted.

    landmarks_pred: [B, 68, 2] projected FLAME landmarks; landmarks_gt: [B, 68, 3] (x, y, conf).
    codes: {'shape': [B, 100], 'exp': [B, 50], 'tex': [B, 50], 'light': [B, 9, 3], ...}.
    weights: ConfigDict / dict (missing keys take ``default_loss_config()``'s values).
    Photometric (weight ``photo``) needs images [B, H, W, 3], rendered_images [B, H, W, 3]
    (SH-shaded albedo render), alpha_images and face_eye_mask ([B, H, W(, 1)], the UV face-eye
    mask sampled to image space), and skin_mask when ``use_seg``. The prediction is
    ``rendered * face_eye_mask * alpha`` as in DECA. Deliberately SH-shaded, as in the paper:
    the released ``decalib/deca.py`` decode renders without the light (its call with
    ``codedict['light']`` is commented out), so DECA's released coarse training compares the
    unshaded albedo and its light learns from ``light_reg`` alone.
    Identity (weight ``id``) needs images, face_eye_mask, albedo_images, shading_images and
    ``id_features_fn``: [B, 224, 224, 3] preprocessed BGR -> [B, F] (see identity.py). As DECA
    does, sample albedo_images from the detached UV albedo with the live grid
    (``grid_sample(stop_gradient(albedo), grid)``) and shade with ``stop_gradient(light)``.
    Returns (total scalar, {term name: weighted scalar}); zero-weight terms are absent.
    """
    w = as_weights(weights)
    losses = {}
    if w["lmk"] > 0:
        fn = weighted_landmark_loss if w["use_wlmk"] else landmark_loss
        losses["landmark"] = fn(landmarks_pred, landmarks_gt) * w["lmk"]
    if w["eyed"] > 0:
        losses["eye_distance"] = eyed_loss(landmarks_pred, landmarks_gt) * w["eyed"]
    if w["lipd"] > 0:
        losses["lip_distance"] = lipd_loss(landmarks_pred, landmarks_gt) * w["lipd"]
    if w["photo"] > 0:
        images_ = _need("images", images, "photo")
        fem = jax.lax.stop_gradient(_as_nhw1(_need("face_eye_mask", face_eye_mask, "photo")))
        alpha = _as_nhw1(_need("alpha_images", alpha_images, "photo"))
        pred = _need("rendered_images", rendered_images, "photo") * fem * alpha
        skin = _need("skin_mask", skin_mask, "photo") if w["use_seg"] else None
        mask = coarse_photo_mask(skin, fem, alpha, w["use_seg"])
        losses["photometric_texture"] = photometric_loss(pred, images_, mask) * w["photo"]
    if w["id"] > 0:
        fn = _need("id_features_fn", id_features_fn, "id")
        images_ = _need("images", images, "id")
        overlay = id_overlay(_need("albedo_images", albedo_images, "id"),
                             _need("shading_images", shading_images, "id"),
                             _need("face_eye_mask", face_eye_mask, "id"), images_)
        losses["identity"] = identity_loss(overlay, images_, fn) * w["id"]
    for key, code_name, term in (("reg_shape", "shape", "shape_reg"),
                                 ("reg_exp", "exp", "expression_reg"),
                                 ("reg_tex", "tex", "tex_reg")):
        if w[key] > 0:
            if code_name not in codes:
                raise ValueError(f"coarse_losses: codes['{code_name}'] is required when "
                                 f"'{key}' > 0; got keys {sorted(codes)}")
            losses[term] = code_reg(codes[code_name]) * w[key]
    if w["reg_light"] > 0:
        if "light" not in codes:
            raise ValueError(f"coarse_losses: codes['light'] is required when 'reg_light' > 0; "
                             f"got keys {sorted(codes)}")
        losses["light_reg"] = light_reg(codes["light"]) * w["reg_light"]
    total = sum(losses.values()) if losses else jnp.zeros((), jnp.float32)
    return total, losses
