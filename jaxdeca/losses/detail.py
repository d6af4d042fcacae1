"""Detail-stage losses of DECA (``decalib/trainer.py``, detail branch of ``training_step``).

Inputs are UV-space arrays the renderer produces (NHWC, uv_size x uv_size, DECA: 256):
  uv_texture     [B, S, S, 3]  stop_gradient(albedo) * SH shading of the detail normals
  uv_texture_gt  [B, S, S, 3]  the photo sampled into UV at the projected vertices
  uv_vis_mask    [B, S, S, 1]  ``uv_visibility_mask(...)``: skin mask in UV * self-occlusion
                               * UV face-eye mask
  uv_z           [B, S, S, 1]  displacement map from the detail decoder
  uv_shading     [B, S, S, 3]  SH shading of the detail normals (light detached)
The UV photometric and ID-MRF terms compare a central crop (DECA's ``load_local_mask`` 'face'
box: [400, 1648] of 2048, i.e. rows/cols 50:206 at 256) resized to 256 with torch's bilinear
rule. ``detail_losses`` returns ``(total, {term: weighted value})`` with DECA's names;
zero-weight terms are skipped at trace time and absent from the dict.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import jax
import jax.numpy as jnp

from jaxdeca.losses.defaults import as_weights
from jaxdeca.losses.idmrf import idmrf_loss
from jaxdeca.losses.image import binary_erosion, resize_bilinear

FACE_BOX_2048 = (400, 1648, 400, 1648)   # (left, right, top, bottom) in a 2048 UV map
PATCH_SIZE = 256
OCCLUSION_THRESHOLD = -0.05


def face_attr_box(uv_size: int = 256):
    """DECA's ``load_local_mask(uv_size, 'bbx')[0]``: (left, right, top, bottom) ints.

    Truncation as numpy's astype(int): 256 -> (50, 206, 50, 206).
    """
    ratio = uv_size / 2048.0
    return tuple(int(v) for v in (np.array(FACE_BOX_2048) * ratio).astype(np.int64))


def face_patch(x, new_size: int = PATCH_SIZE):
    """Crop DECA's face box of a UV map and resize to new_size (torch bilinear, no antialias).

    x: [B, S, S, C] -> [B, new_size, new_size, C].
    """
    l, r, t, b = face_attr_box(x.shape[1])
    return resize_bilinear(x[:, t:b, l:r, :], (new_size, new_size))


def uv_visibility_mask(uv_mask_gt, uv_normal_z, uv_face_eye_mask,
                       threshold: float = OCCLUSION_THRESHOLD):
    """DECA's ``uv_vis_mask = uv_mask_gt * (uv_pnorm_z < -0.05) * uv_face_eye_mask``.

    uv_mask_gt: [B, S, S, 1] skin mask sampled into UV; uv_normal_z: [B, S, S, 1] z of the
    vertex normals of DECA's image-space vertices (y and z negated after the orthographic
    camera, so camera-facing surface has z < 0; a caller whose normals point +z towards the
    camera passes -z); uv_face_eye_mask: [S, S], [S, S, 1] or [B, S, S, 1]. Returns [B, S, S, 1],
    detached.
    """
    m = uv_face_eye_mask
    if m.ndim == 2:
        m = m[..., None]
    vis = uv_mask_gt * (uv_normal_z < threshold).astype(uv_mask_gt.dtype) * m
    return jax.lax.stop_gradient(vis)


def shading_smooth_loss(shading):
    """DECA's ``shading_smooth_loss`` on NHWC. shading: [B, H, W, C] -> scalar.

    dx = s[:, 1:-1, 1:] - s[:, 1:-1, :-1]; dy = s[:, 1:, 1:-1] - s[:, :-1, 1:-1];
    mean(dx^2) + mean(dy^2).
    """
    dx = shading[:, 1:-1, 1:, :] - shading[:, 1:-1, :-1, :]
    dy = shading[:, 1:, 1:-1, :] - shading[:, :-1, 1:-1, :]
    return jnp.mean(dx ** 2) + jnp.mean(dy ** 2)


def z_reg_loss(uv_z):
    """mean(|uv_z|). uv_z: [B, S, S, 1] -> scalar."""
    return jnp.mean(jnp.abs(uv_z))


def z_sym_loss(uv_z, uv_vis_mask):
    """Soft symmetry outside the visible region: sum(nonvis * |z - stop_grad(flip_w(z))|).

    nonvis = 1 - binary_erosion(uv_vis_mask, 5x5). uv_z, uv_vis_mask: [B, S, S, 1] -> scalar
    (a SUM over the batch and pixels, as in DECA).
    """
    nonvis = 1.0 - binary_erosion(uv_vis_mask, 5)
    flipped = jax.lax.stop_gradient(uv_z[:, :, ::-1, :])
    return jnp.sum(nonvis * jnp.abs(uv_z - flipped))


def photo_detail_loss(tex_patch, gt_patch, mask_patch):
    """mean(|tex * m - gt * m|) over [B, 256, 256, 3] patches (mask [B, 256, 256, 1])."""
    return jnp.mean(jnp.abs(tex_patch * mask_patch - gt_patch * mask_patch))


def detail_losses(*, uv_texture, uv_texture_gt, uv_vis_mask, uv_z, uv_shading, weights=None,
                  vgg_features_fn: Optional[Callable] = None, mrf_chunk: Optional[int] = None):
    """All detail-stage terms of DECA, weighted. Arrays as in the module docstring.

    vgg_features_fn: [B, 256, 256, 3] RGB in [0, 1] -> {'relu3_2': ..., 'relu4_2': ...} (DECA
    names, NHWC), required when photo_D * mrf > 0. uv_texture_gt and uv_vis_mask are detached
    here (DECA detaches them). Returns (total, {'photo_detail', 'photo_detail_mrf', 'z_reg',
    'z_diff', 'z_sym'}), zero-weight terms absent.
    """
    w = as_weights(weights)
    gt = jax.lax.stop_gradient(uv_texture_gt)
    vis = jax.lax.stop_gradient(uv_vis_mask if uv_vis_mask.ndim == 4 else uv_vis_mask[..., None])
    losses = {}
    if w["photo_D"] > 0:
        tex_p, gt_p, mask_p = face_patch(uv_texture), face_patch(gt), face_patch(vis)
        losses["photo_detail"] = photo_detail_loss(tex_p, gt_p, mask_p) * w["photo_D"]
        if w["mrf"] > 0:
            if vgg_features_fn is None:
                raise ValueError("detail_losses: 'vgg_features_fn' is required when mrf > 0")
            losses["photo_detail_mrf"] = idmrf_loss(tex_p * mask_p, gt_p * mask_p, vgg_features_fn,
                                                    chunk=mrf_chunk) * w["photo_D"] * w["mrf"]
    if w["reg_z"] > 0:
        losses["z_reg"] = z_reg_loss(uv_z) * w["reg_z"]
    if w["reg_diff"] > 0:
        losses["z_diff"] = shading_smooth_loss(uv_shading) * w["reg_diff"]
    if w["reg_sym"] > 0:
        losses["z_sym"] = z_sym_loss(uv_z, vis) * w["reg_sym"]
    total = sum(losses.values()) if losses else jnp.zeros((), jnp.float32)
    return total, losses
