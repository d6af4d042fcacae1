"""Bilinear texture sampling identical to torch grid_sample(bilinear, zeros, align_corners=False).

One image at a time: the image, padded by one zero texel, is a table of (H + 2) (W + 2) rows of C
channels, and each of the four taps of a sample is one row gather from it. The gradient is
written out (custom VJP): four row scatter-adds for the image, and for the grid the weights'
derivatives times the taps, gathered again rather than kept from the forward pass. A batch's
forward pass is vmapped and its backward pass runs one image after another on CPU
(`jaxdeca.render.batching.images_custom_vjp`). On XLA:CPU (benchmarks/texture.py's 224^2 samples
of a 256^2 texture, interleaved medians) forward+backward for the image and the grid took 19 ms
at batch 8 and 95 ms at batch 32 where vmapping the backward pass and keeping the taps took 47
and 176 ms. At batch 4, autodiff of the same gathers took 29 ms against 11 for this VJP, and
autodiff of indexing [H, W, C] by (row, column) 41. Against torch's grid_sample (2 cores, two
runs): 14-15 ms against 9.5 at batch 8, 78-81 against 45-47 at batch 32, so torch's CPU kernel
is about 1.6x faster here (figures quoted before, 17-18 and 65-78 ms for torch, had a copy of
the texture and grid inside torch's timed call).
"""
import jax.numpy as jnp

from jaxdeca.render.batching import images_custom_vjp
from jaxdeca.render.interpolate import fold_last


def _setup(grid, H, W):
    """grid: [..., 2] -> fractional offsets fx, fy, in-range mask ok and top-left table row [...]."""
    x = ((grid[..., 0] + 1.0) * W - 1.0) / 2.0
    y = ((grid[..., 1] + 1.0) * H - 1.0) / 2.0
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    # with the padding, taps (y0 + dy, x0 + dx) read zeros outside the image when -1 <= x0 <= W - 1
    # and -1 <= y0 <= H - 1; outside that range every tap is outside the image
    ok = (x0 >= -1) & (x0 <= W - 1) & (y0 >= -1) & (y0 <= H - 1)
    row = jnp.clip(y0 + 1, 0, H).astype(jnp.int32) * (W + 2) + jnp.clip(x0 + 1, 0, W).astype(jnp.int32)
    return jnp.where(ok, x - x0, 0.0), jnp.where(ok, y - y0, 0.0), ok, row  # 0: no NaN weights


_TAPS = ((0, 0), (0, 1), (1, 0), (1, 1))  # (dx, dy)


def _weights(fx, fy):
    """Bilinear weights of the taps in _TAPS order."""
    return ((1.0 - fx) * (1.0 - fy), (1.0 - fx) * fy, fx * (1.0 - fy), fx * fy)


def _taps(img, row):
    """img: [H, W, C]; row: [...] top-left table rows -> the four taps in _TAPS order, 4 x [..., C]."""
    H, W, C = img.shape
    table = jnp.pad(img, ((1, 1), (1, 1), (0, 0))).reshape((H + 2) * (W + 2), C)
    return [jnp.take(table, row + (dy * (W + 2) + dx), axis=0, mode="clip") for dx, dy in _TAPS]


def _sample_fwd(img, grid):
    H, W, C = img.shape
    fx, fy, ok, row = _setup(grid, H, W)
    out = 0.0
    for w, v in zip(_weights(fx, fy), _taps(img, row)):
        out = out + w[..., None] * v
    # the taps are gathered again in the backward pass rather than kept (4 C floats a sample)
    return jnp.where(ok[..., None], out, 0.0), (fx, fy, ok, row, img)


def _sample_bwd(res, g):
    fx, fy, ok, row, img = res
    H, W, C = img.shape
    taps = _taps(img, row)
    g = jnp.where(ok[..., None], g, 0.0)
    n = (H + 2) * (W + 2)
    # samples whose incoming gradient is zero (out of range, or the background of a masked loss
    # such as DECA's photometric one, where every gradient through here is masked) are left out
    # of the scatter-adds (their row moved out of bounds, dropped) instead of adding zeros: the
    # sums are the same bit for bit. On XLA:CPU (benchmarks/texture.py's data, texture and grid
    # f+b, old and new alternated in one process) the masked loss took 1.8 ms instead of 2.6 at
    # batch 1 and 8.9 instead of 14.4 at batch 8 (training's compiler options: 1.8 vs 2.2 and
    # 13.5 vs 15.3); an unmasked loss, which drops nothing, paid for the test: the same at
    # batch 1, 11% (training's options: 18%) more at batch 8.
    row = jnp.where(fold_last(jnp.logical_or, g != 0)[..., 0], row, n)  # elementwise: no short-axis reduction
    gt = jnp.zeros((n, C), img.dtype)
    for w, (dx, dy) in zip(_weights(fx, fy), _TAPS):
        gt = gt.at[row + (dy * (W + 2) + dx)].add((w[..., None] * g).astype(img.dtype), mode="drop")
    s00, s01, s10, s11 = (jnp.sum(g * v, -1) for v in taps)
    d_fx = (1.0 - fy) * (s10 - s00) + fy * (s11 - s01)
    d_fy = (1.0 - fx) * (s01 - s00) + fx * (s11 - s10)
    d_grid = jnp.stack([d_fx * (W / 2.0), d_fy * (H / 2.0)], -1).astype(fx.dtype)
    return gt.reshape(H + 2, W + 2, C)[1:-1, 1:-1], d_grid


_sample = images_custom_vjp(_sample_fwd, _sample_bwd)  # img [B, H, W, C], grid [B, ..., 2]


def grid_sample(img, grid):
    """Sample img at normalised coordinates with zero padding.

    img: [B, H, W, C] (NHWC); grid: [B, Ho, Wo, 2] with (x, y) in [-1, 1] addressing pixel
    edges (align_corners=False); x = -1 is the left edge of column 0, y = -1 the top edge.
    Returns [B, Ho, Wo, C]. Out-of-range taps read zeros exactly like torch. Gradients: reverse
    mode (custom VJP); the grid's is that of the bilinear weights, one-sided like torch's at
    integer taps.
    """
    if jnp.ndim(img) != 4 or jnp.ndim(grid) < 2 or jnp.shape(grid)[-1] != 2:
        raise ValueError(f"grid_sample: img must be [B, H, W, C] and grid [B, ..., 2] ((x, y) in [-1, 1]), "
                         f"got shapes {tuple(jnp.shape(img))} and {tuple(jnp.shape(grid))}")
    return _sample(img, grid)
