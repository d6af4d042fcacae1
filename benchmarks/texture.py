"""Bilinear texture sampling: jaxdeca.render.grid_sample (jit) vs torch.nn.functional.grid_sample.

    .venv/bin/python benchmarks/texture.py [--batches 1 8] [--repeats 7] [--texture 256] [--size 224]

What DECA's render does per image: a 224 x 224 grid of UVs samples a 256 x 256 RGB texture
(bilinear, zero padding, align_corners=False). The UVs are those of the demo head rendered by
jaxdeca (about 30% of the pixels; the background samples the texture's centre, as in DECA).
Columns: forward; forward+backward for the texture (what the albedo code's gradient needs);
forward+backward for the texture and the grid (what training needs: the grid moves with the
geometry). The loss is the sum of squares of the samples. Ours is compiled as jaxdeca compiles
its own programs (`jaxdeca.xla_options.jit`: on CPU, YNNPACK only for dot products).
Ratio = torch ms / our ms (> 1: ours faster). torch runs with as many threads as this machine
has cores; it is in the test extra.
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from timing import median_ms


def demo_uvs(batch, size):
    """[batch, size, size, 2] UV grids of the demo head rendered at random shapes and poses."""
    from jaxdeca import flame, render
    arrays = flame.load_arrays(None)
    model, topo = flame.from_arrays(arrays), render.make_topology(arrays)
    rng = np.random.default_rng(0)
    out = model(jnp.asarray(rng.normal(size=(batch, model.n_shape)) * 0.5, jnp.float32),
                jnp.zeros((batch, model.n_exp)), jnp.asarray(rng.normal(size=(batch, 6)) * 0.05, jnp.float32))
    cam = jnp.tile(jnp.array([[7.0, 0.0, 0.0]]), (batch, 1))
    trans = render.orth_proj(out["vertices"], cam)
    return render.image_geometry(out["vertices"], trans, topo, (size, size), sigma=0.0)[2]


def ours(tex, grid, repeats):
    from jaxdeca import xla_options
    from jaxdeca.render import grid_sample
    loss = lambda t, g: jnp.sum(grid_sample(t, g) ** 2)  # noqa: E731
    fwd = xla_options.jit(lambda t, g: grid_sample(t, g))
    b_tex = xla_options.jit(jax.grad(loss))
    b_both = xla_options.jit(jax.grad(loss, (0, 1)))
    return [median_ms(lambda f=f: jax.block_until_ready(f(tex, grid)), repeats) for f in (fwd, b_tex, b_both)]


def peer(tex, grid, repeats):
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = torch.from_numpy(np.array(tex)).permute(0, 3, 1, 2).contiguous()
    g0 = torch.from_numpy(np.array(grid))

    def fwd():
        with torch.no_grad():
            return torch.nn.functional.grid_sample(t0, g0, mode="bilinear", padding_mode="zeros", align_corners=False)

    def f_b(with_grid):  # fresh leaves sharing t0's and g0's storage: no copy in the timed call
        t = t0.detach().requires_grad_()
        g = g0.detach().requires_grad_(with_grid)
        torch.nn.functional.grid_sample(t, g, align_corners=False).pow(2).sum().backward()
        return None

    return [median_ms(fn, repeats) for fn in (fwd, lambda: f_b(False), lambda: f_b(True))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--texture", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args()
    print(f"device: {jax.devices()[0].platform}, texture {a.texture}^2 x 3, grid {a.size}^2; ms per batch (median)")
    print("  B | ours fwd  f+b tex  f+b both | torch fwd  f+b tex  f+b both | ratio fwd  tex  both")
    for B in a.batches:
        grid = demo_uvs(B, a.size)
        tex = jnp.asarray(np.random.default_rng(1).uniform(size=(B, a.texture, a.texture, 3)), jnp.float32)
        o = ours(tex, grid, a.repeats)
        try:
            t = peer(tex, grid, a.repeats)
        except (ImportError, OSError) as e:  # OSError: a torch install whose libraries do not load
            print(f"{B:3d} | {o[0]:8.2f} {o[1]:8.2f} {o[2]:9.2f} | torch unavailable ({e})")
            continue
        r = [x / y for x, y in zip(t, o)]
        print(f"{B:3d} | {o[0]:8.2f} {o[1]:8.2f} {o[2]:9.2f} | {t[0]:9.2f} {t[1]:8.2f} {t[2]:9.2f} |"
              f" {r[0]:9.2f} {r[1]:4.2f} {r[2]:5.2f}")


if __name__ == "__main__":
    main()
