"""Bilinear texture sampling: jaxdeca.render.grid_sample (jit) vs torch.nn.functional.grid_sample.

    .venv/bin/python benchmarks/texture.py [--batches 1 8] [--repeats 7] [--rounds 3] [--texture 256] [--size 224]

What DECA's render does per image: a 224 x 224 grid of UVs samples a 256 x 256 RGB texture
(bilinear, zero padding, align_corners=False). The UVs are those of the demo head rendered by
jaxdeca (about 30% of the pixels; the background samples the texture's centre, as in DECA).
Columns: forward; forward+backward for the texture (what the albedo code's gradient needs);
forward+backward for the texture and the grid (what training needs: the grid moves with the
geometry). Two losses, a row each: 'sum', the sum of squares of all samples, and 'masked', that
of the samples times the demo head's mask, as DECA's photometric loss sees the rendered image
(albedo x shading x mask): the background's samples then get a zero gradient, which ours leaves
out of the texture's scatter-adds and torch adds. Ours is compiled as jaxdeca compiles its own
programs (`jaxdeca.xla_options.jit`: on CPU, YNNPACK only for dot products).
Ratio = torch ms / our ms (> 1: ours faster). torch runs with as many threads as this machine
has cores; it is in the test extra. Ours and torch are timed alternately, --rounds times, and
each figure is the median over the rounds (`timing.interleaved_ms`).
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from timing import interleaved_ms


def demo_uvs(batch, size):
    """UV grids [batch, size, size, 2] of the demo head rendered at random shapes and poses, and
    its masks [batch, size, size]."""
    from jaxdeca import flame, render
    arrays = flame.load_arrays(None)
    model, topo = flame.from_arrays(arrays), render.make_topology(arrays)
    rng = np.random.default_rng(0)
    out = model(jnp.asarray(rng.normal(size=(batch, model.n_shape)) * 0.5, jnp.float32),
                jnp.zeros((batch, model.n_exp)), jnp.asarray(rng.normal(size=(batch, 6)) * 0.05, jnp.float32))
    cam = jnp.tile(jnp.array([[7.0, 0.0, 0.0]]), (batch, 1))
    trans = render.orth_proj(out["vertices"], cam)
    frags, _, grid, _ = render.image_geometry(out["vertices"], trans, topo, (size, size), sigma=0.0)
    return grid, frags.mask


def our_programs():
    """Our forward, f+b texture and f+b texture and grid, jitted once: the loss is
    sum((samples * weight)^2) with weight [B, H, W, 1] an argument (not a constant XLA could fold),
    so both losses' rows run the same compiled programs."""
    from jaxdeca import xla_options
    from jaxdeca.render import grid_sample
    loss = lambda t, g, w: jnp.sum((grid_sample(t, g) * w) ** 2)  # noqa: E731
    return (xla_options.jit(lambda t, g, w: grid_sample(t, g)), xla_options.jit(jax.grad(loss)),
            xla_options.jit(jax.grad(loss, (0, 1))))


def ours(programs, tex, grid, weight):
    """Calls of `our_programs` on these inputs, each blocking until done."""
    return [lambda f=f: jax.block_until_ready(f(tex, grid, weight)) for f in programs]


def peer(tex, grid, weight):
    """torch's calls as `ours`' (weight [B, H, W, 1])."""
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = torch.from_numpy(np.array(tex)).permute(0, 3, 1, 2).contiguous()
    g0 = torch.from_numpy(np.array(grid))
    w0 = torch.from_numpy(np.array(weight)).permute(0, 3, 1, 2).contiguous()

    def fwd():
        with torch.no_grad():
            return torch.nn.functional.grid_sample(t0, g0, mode="bilinear", padding_mode="zeros", align_corners=False)

    def f_b(with_grid):  # fresh leaves sharing t0's and g0's storage: no copy in the timed call
        t = t0.detach().requires_grad_()
        g = g0.detach().requires_grad_(with_grid)
        (torch.nn.functional.grid_sample(t, g, align_corners=False) * w0).pow(2).sum().backward()
        return None

    return [fwd, lambda: f_b(False), lambda: f_b(True)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--rounds", type=int, default=3, help="rounds of ours and torch alternately (median over them)")
    p.add_argument("--texture", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args()
    print(f"device: {jax.devices()[0].platform}, texture {a.texture}^2 x 3, grid {a.size}^2; ms per batch "
          f"(median of {a.rounds} rounds, ours and torch alternately)")
    print("  B loss   | ours fwd  f+b tex  f+b both | torch fwd  f+b tex  f+b both | ratio fwd  tex  both")
    programs = our_programs()
    for B in a.batches:
        grid, mask = demo_uvs(B, a.size)
        tex = jnp.asarray(np.random.default_rng(1).uniform(size=(B, a.texture, a.texture, 3)), jnp.float32)
        for loss, weight in (("sum", jnp.ones(mask.shape + (1,))), ("masked", mask[..., None])):
            calls = {"ours": ours(programs, tex, grid, weight)}
            try:
                calls["torch"] = peer(tex, grid, weight)
            except (ImportError, OSError) as e:  # OSError: a torch install whose libraries do not load
                missing = e
            ms = interleaved_ms(calls, a.repeats, a.rounds)
            o = ms["ours"]
            head = f"{B:3d} {loss:6s} | {o[0]:8.2f} {o[1]:8.2f} {o[2]:9.2f} |"
            if "torch" not in ms:
                print(f"{head} torch unavailable ({missing})")
                continue
            t = ms["torch"]
            r = [x / y for x, y in zip(t, o)]
            print(f"{head} {t[0]:9.2f} {t[1]:8.2f} {t[2]:9.2f} | {r[0]:9.2f} {r[1]:4.2f} {r[2]:5.2f}")


if __name__ == "__main__":
    main()
