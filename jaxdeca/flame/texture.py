"""FLAME albedo: a linear texture model in UV space, exactly as DECA's FLAMETex applies it."""
from __future__ import annotations

import jax.numpy as jnp


def albedo(mean, basis, texcode, size: int = 256):
    """mean + basis . texcode, nearest-resized to `size`, channels reversed (DECA's FLAMETex).

    mean: [R, R, 3]; basis: [R, R, 3, K]; texcode: [B, n_tex] with n_tex <= K.
    Returns [B, size, size, 3]. DECA resizes with torch's default F.interpolate mode
    ('nearest': source index floor(dst * R / size)) and reverses the channels [2, 1, 0], which
    turns the official files' BGR order into RGB.
    """
    n = texcode.shape[-1]
    tex = mean[None] + jnp.einsum("hwck,bk->bhwc", basis[..., :n], texcode)
    R = mean.shape[0]
    idx = jnp.floor(jnp.arange(size) * (R / size)).astype(jnp.int32)
    tex = tex[:, idx][:, :, idx]
    return tex[..., ::-1]


def albedo_from_arrays(arrays: dict, texcode, size: int = 256):
    """`albedo` with the mean/basis of a FLAME npz dict; a flat grey albedo (0.5) when the
    model has no albedo basis. texcode: [B, n_tex] -> [B, size, size, 3]."""
    if "albedo_mean" not in arrays:
        return jnp.full((texcode.shape[0], size, size, 3), 0.5, jnp.float32)
    return albedo(jnp.asarray(arrays["albedo_mean"]), jnp.asarray(arrays["albedo_basis"]), texcode, size)
