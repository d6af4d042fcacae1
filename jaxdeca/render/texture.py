"""Bilinear texture sampling identical to torch grid_sample(bilinear, zeros, align_corners=False)."""
import jax
import jax.numpy as jnp


def _sample_one(img, grid):
    H, W, C = img.shape
    x = ((grid[..., 0] + 1.0) * W - 1.0) / 2.0
    y = ((grid[..., 1] + 1.0) * H - 1.0) / 2.0
    x0 = jnp.floor(x)
    y0 = jnp.floor(y)
    out = 0.0
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            w = (1.0 - jnp.abs(x - xi)) * (1.0 - jnp.abs(y - yi))
            ok = (xi >= 0) & (xi <= W - 1) & (yi >= 0) & (yi <= H - 1)
            xc = jnp.clip(xi, 0, W - 1).astype(jnp.int32)
            yc = jnp.clip(yi, 0, H - 1).astype(jnp.int32)
            v = img[yc, xc]
            out = out + jnp.where(ok[..., None], w[..., None] * v, 0.0)
    return out


def grid_sample(img, grid):
    """Sample img at normalised coordinates with zero padding.

    img: [B, H, W, C] (NHWC); grid: [B, Ho, Wo, 2] with (x, y) in [-1, 1] addressing pixel
    edges (align_corners=False); x = -1 is the left edge of column 0, y = -1 the top edge.
    Returns [B, Ho, Wo, C]. Out-of-range taps read zeros exactly like torch.
    """
    return jax.vmap(_sample_one)(img, grid)
