"""Image helpers the losses need, with PyTorch's exact semantics.

``resize_bilinear`` is ``torch.nn.functional.interpolate(x, size, mode='bilinear',
align_corners=False)`` (no antialias), written as two small interpolation matrices so it is exact,
differentiable and fast (two matmuls). ``jax.image.resize`` is not used on purpose: for
downsampling it antialiases by default, and DECA's losses (identity crop 204 -> 224, UV face
crop 156 -> 256) are defined by torch's plain half-pixel bilinear rule.

``binary_erosion`` is ``scipy.ndimage.binary_erosion`` with a square structuring element and the
default ``border_value=0``, as DECA's ``util.binary_erosion`` applies it (any non-zero input
counts as True).
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float32 matrix of torch's align_corners=False linear weights.

    Source coordinate of output i is (i + 0.5) * in/out - 0.5, clamped below at 0 (torch's rule);
    the upper neighbour index is clamped to in_size - 1.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"bilinear_matrix: sizes must be positive, got {in_size} -> {out_size}")
    # float32 arithmetic, as torch computes the source coordinate for float32 tensors
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    src = scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5)
    src = np.maximum(src, f32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (src - i0.astype(f32)).astype(np.float64)
    w0 = 1.0 - w1
    m = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), w0)
    np.add.at(m, (rows, i1), w1)
    return m.astype(np.float32)


def resize_bilinear(x, size):
    """torch ``F.interpolate(mode='bilinear', align_corners=False)`` on NHWC arrays.

    x: [B, H, W, C]; size: (out_h, out_w) -> [B, out_h, out_w, C] in x's dtype (the matmuls at
    HIGHEST precision in x's dtype, so TF32 on GPUs does not change a float32 result).
    """
    if x.ndim != 4:
        raise ValueError(f"resize_bilinear: expected [B, H, W, C], got shape {x.shape}")
    out_h, out_w = int(size[0]), int(size[1])
    _, h, w, _ = x.shape
    if (h, w) == (out_h, out_w):
        return x
    my = jnp.asarray(bilinear_matrix(h, out_h), x.dtype)
    mx = jnp.asarray(bilinear_matrix(w, out_w), x.dtype)
    hi = jax.lax.Precision.HIGHEST
    y = jnp.einsum("oh,bhwc->bowc", my, x, precision=hi)
    return jnp.einsum("pw,bowc->bopc", mx, y, precision=hi)


def binary_erosion(mask, size: int = 5):
    """scipy ``binary_erosion(mask != 0, ones((size, size)))`` per image, border value 0.

    mask: [B, H, W] or [B, H, W, 1] (any values; non-zero = True) -> same shape and dtype, 0/1.
    Not differentiable by nature: the output is wrapped in stop_gradient.
    """
    squeeze = mask.ndim == 4
    m = mask[..., 0] if squeeze else mask
    if m.ndim != 3:
        raise ValueError(f"binary_erosion: expected [B, H, W] or [B, H, W, 1], got {mask.shape}")
    r = size // 2
    b = (m != 0).astype(jnp.float32)
    # scipy's border value is 0: zero-pad, then a VALID min-pool.
    padded = jnp.pad(b, ((0, 0), (r, size - 1 - r), (r, size - 1 - r)))
    one = jnp.ones((), padded.dtype)  # a Python 1.0 is float64 under jax_enable_x64: reduce_window refuses it
    out = jax.lax.reduce_window(padded, one, jax.lax.min, (1, size, size), (1, 1, 1), "VALID")
    out = jax.lax.stop_gradient(out.astype(mask.dtype))
    return out[..., None] if squeeze else out
