"""DECA's identity loss (``lossfunc.VGGFace2Loss``) over any face-feature function.

Pipeline per image, exactly as the original:
1. ``vggface2_transform``: RGB [0, 1] -> BGR * 255 - mean_bgr (91.4953, 103.8827, 131.0912).
2. ``reg_input``: crop a 10-pixel margin of the 224 image (204 x 204; the same share of
   another size), then
   ``F.interpolate(x * 2 - 1, [224, 224], mode='bilinear')`` (align_corners=False). The
   ``* 2 - 1`` after mean subtraction is a quirk of the original (it was written for [0, 1]
   input); it is kept because the released VGGFace2 weights were used with it in DECA.
3. features_fn -> [B, F]; loss = mean_b(1 - cos(f_gen, f_tar)).

The feature network is an argument (``features_fn(x_nhwc) -> [B, F]``), e.g. a closure over
``jaxdeca.models.face_id.vggface2_resnet50().apply``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxdeca.losses.image import resize_bilinear

VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)
ID_MARGIN = 10
ID_SIZE = 224


def vggface2_transform(images):
    """images: [B, H, W, 3] RGB in [0, 1] -> [B, H, W, 3] BGR * 255 minus the VGGFace2 mean."""
    return images[..., ::-1] * 255.0 - jnp.asarray(VGGFACE2_MEAN_BGR, images.dtype)


def reg_input(x, margin: int = ID_MARGIN, size: int = ID_SIZE):
    """DECA's ``reg_features`` input: crop ``margin`` (of the 224 frame), *2-1, bilinear to size.

    x: [B, H, W, 3] (transformed) -> [B, size, size, 3]. The margin is ``margin`` pixels of a
    224 frame, round(margin * H / 224) of an H-pixel one (W likewise), on every side. DECA trains
    at 224, where this is its ``[10:214, 10:214]``; its slice, written for 224, cut an off-centre
    window out of any other size (10:64 of 64 pixels, 10:214 of 256).
    """
    h, w = x.shape[1], x.shape[2]
    mh, mw = round(margin * h / ID_SIZE), round(margin * w / ID_SIZE)
    x = x[:, mh:h - mh, mw:w - mw, :]
    return resize_bilinear(x * 2.0 - 1.0, (size, size))


def cosine_similarity(a, b, eps: float = 1e-8):
    """torch ``F.cosine_similarity(a, b, dim=-1, eps)``: a.b / (max(|a|, eps) * max(|b|, eps)).

    a, b: [B, F] -> [B]. Gradient-safe at zero vectors.
    """
    def norm(x):
        return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1), eps * eps))
    return jnp.sum(a * b, axis=-1) / (norm(a) * norm(b))


def identity_loss_from_features(f_gen, f_tar):
    """mean(1 - cos(f_gen, f_tar)). f_gen, f_tar: [B, F] -> scalar."""
    return jnp.mean(1.0 - cosine_similarity(f_gen, f_tar))


def identity_loss(gen, tar, features_fn: Callable):
    """DECA's VGGFace2Loss. gen, tar: [B, 224, 224, 3] RGB in [0, 1] -> scalar (unweighted).

    features_fn: [B, 224, 224, 3] preprocessed BGR -> [B, F]. Both images go through it in one
    call (batch 2B) so the network runs once.
    """
    b = gen.shape[0]
    x = reg_input(vggface2_transform(jnp.concatenate([gen, tar], axis=0)))
    f = features_fn(x)
    f = f.reshape(f.shape[0], -1)
    return identity_loss_from_features(f[:b], f[b:])


def id_overlay(albedo_images, shading_images, face_eye_mask, images):
    """DECA's identity-loss input: the shaded render pasted into the photo.

    albedo_images, shading_images, images: [B, H, W, 3]; face_eye_mask: [B, H, W(, 1)].
    overlay = albedo_images * shading * stop_gradient(m) + images * (1 - stop_gradient(m)).
    As in DECA, albedo_images must be the DETACHED UV albedo sampled at the pixels with the live
    grid (``grid_sample(stop_gradient(albedo), grid)``: the gradient reaches the geometry through
    where the albedo is sampled, not the albedo), and shading must use stop_gradient(light)
    (the gradient reaches shape through the normals).
    """
    m = face_eye_mask[..., None] if face_eye_mask.ndim == 3 else face_eye_mask
    m = jax.lax.stop_gradient(m)   # DECA samples the mask with grid.detach()
    return albedo_images * shading_images * m + images * (1.0 - m)
