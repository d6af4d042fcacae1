"""Renderer benchmark: ms per batch (median) and compiled peak temp memory, 224 x 224.

    python benchmarks/render.py [--batches 1,8,32] [--repeats 3] [--size 224]

Meshes: a ~10k-face UV sphere and, when present, the demo head (jaxdeca/assets/demo_head.npz).
Work per call: DECA image-space rasterization (hard z-buffer + soft coverage, sigma = 1 px^2),
interpolation of vertex normals, SH shading, alpha compositing; 'fwd+bwd' adds the gradient
of the image sum w.r.t. the vertices. Memory is XLA's memory_analysis() of the compiled
executable (temp + argument + output bytes), which is what one call needs on the device.
Peers: jaxrenderer (PyPI) and pytorch3d are tried; the reason is printed when unavailable.
"""
import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdeca.render import interpolate, orth_proj, rasterize, sh_shading, vertex_normals
from jaxdeca.render.meshes import uv_sphere


def meshes():
    out = {}
    s = uv_sphere(50, 100, radius=0.9)
    out["sphere_10k"] = (s["verts"], s["faces"])
    head = os.path.join(os.path.dirname(__file__), "..", "jaxdeca", "assets", "demo_head.npz")
    if os.path.exists(head):
        d = np.load(head)
        v = d["v_template"]
        v = (v - v.mean(0)) / np.abs(v - v.mean(0)).max() * 0.9
        out["demo_head"] = (v.astype(np.float32), d["faces"].astype(np.int32))
    return out


def make_fns(faces, size):
    def image(verts):
        tv = orth_proj(verts, jnp.tile(jnp.array([[1.0, 0.0, 0.0]]), (verts.shape[0], 1)))
        tv = tv.at[..., 2].add(10.0)
        fr = rasterize(tv, faces, (size, size), sigma=1.0)
        n = interpolate(vertex_normals(verts, faces), faces, fr)
        light = jnp.zeros((verts.shape[0], 9, 3)).at[:, 0].set(1.0).at[:, 3].set(0.5)
        return sh_shading(n, light) * fr.alpha[..., None]

    fwd = jax.jit(image)
    bwd = jax.jit(jax.grad(lambda v: jnp.sum(image(v))))
    return fwd, bwd


def timeit(fn, x, repeats):
    jax.block_until_ready(fn(x))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(x))
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def mem_mb(fn, x):
    m = fn.lower(x).compile().memory_analysis()
    if m is None:
        return float("nan")
    return (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes) / 2**20


def peers():
    notes = []
    try:
        import renderer  # noqa: F401  (PyPI jaxrenderer)
        notes.append("jaxrenderer: imported, but no adapter benchmarked")
    except Exception as e:  # report why the peer is missing
        notes.append(f"jaxrenderer: unavailable ({type(e).__name__}: {e})")
    try:
        import pytorch3d  # noqa: F401
        notes.append("pytorch3d: imported, but no adapter benchmarked")
    except Exception as e:
        notes.append(f"pytorch3d: unavailable ({type(e).__name__}: {e})")
    return notes


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), image {a.size}x{a.size}")
    print(f"{'mesh':<12}{'faces':>7}{'B':>4}{'fwd ms':>10}{'fwd MiB':>9}{'f+b ms':>10}{'f+b MiB':>9}")
    for name, (v, f) in meshes().items():
        fwd, bwd = make_fns(jnp.asarray(f), a.size)
        for B in [int(b) for b in a.batches.split(",")]:
            x = jnp.broadcast_to(jnp.asarray(v), (B,) + v.shape)
            tf, tb = timeit(fwd, x, a.repeats), timeit(bwd, x, a.repeats)
            print(f"{name:<12}{len(f):>7}{B:>4}{tf:>10.1f}{mem_mb(fwd, x):>9.1f}{tb:>10.1f}{mem_mb(bwd, x):>9.1f}",
                  flush=True)
    for n in peers():
        print("peer", n)


if __name__ == "__main__":
    main()
