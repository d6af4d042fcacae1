"""Renderer benchmark: ms per batch (median) and peak memory at 224 x 224, ours vs a peer.

    python benchmarks/render.py [--batches 1,8,32] [--repeats 3] [--size 224] [--batch-size N|all]

Meshes: a 10k-face UV sphere and the demo head (jaxdeca/assets/demo_head.npz), scaled to
fill ~90% of the image. Batch B renders B copies of the mesh; ours rasterizes them one at a
time on CPU and all together on accelerators (`rasterize`'s default; --batch-size overrides).

Ours: DECA image-space rasterization (hard z-buffer + SoftRas soft coverage, sigma = 1 px^2),
interpolation of vertex normals, 9-band SH shading, times alpha; 'fwd+bwd' adds the gradient
of the image sum w.r.t. the vertices. Both are compiled as jaxdeca compiles its own programs
(`jaxdeca.xla_options.jit`: on CPU, YNNPACK only for dot products). 'hard f+b' is the same with
sigma = 0 (alpha = hard mask), i.e. what the SoftRas pass costs on top. Memory: XLA's memory_analysis() of the compiled call
(temp + argument + output bytes), i.e. what one call needs on the device.

Peer: DEODR (PyPI `deodr` 0.2.3, C++ differentiable rasterizer: z-buffer, per-vertex colour
interpolation, silhouette-edge antialiasing with analytic gradients; CPU, one image per
call, so a batch is a loop). Same mesh, same pixel positions and depths, same image size;
its per-vertex colours are the same SH shading evaluated at the vertices (Gouraud; ours is
per pixel), backface culling on (DEODR needs it for gradients), sigma = 1, gradient of the
image sum w.r.t. 2D vertex positions and colours. Memory: tracemalloc peak (numpy buffers
DEODR allocates) for one batch. DEODR (and the trimesh/typing_extensions its import needs)
is kept out of the project venv, so it runs in a subprocess of its own venv:

    python3.11 -m venv /tmp/peer_venv
    /tmp/peer_venv/bin/pip install deodr==0.2.3 trimesh typing_extensions
    PEER_PYTHON=/tmp/peer_venv/bin/python python benchmarks/render.py

Without PEER_PYTHON, /tmp/peer_venv/bin/python is used when it exists, else this interpreter;
when the peer cannot be run or imported the reason is printed (our figures still are). Other
registry candidates tried on Python 3.11 CPU: pytorch3d (no wheel), jaxrenderer 0.4.0 (needs
Python >= 3.12; 0.3.2 fails with jax 0.10.2), nvdiffrast/diffrp (CUDA only), kaolin (placeholder
wheel).
The ratio column is peer ms / our ms for the same batch: > 1 means we are faster.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from timing import median_ms

HERE = os.path.dirname(os.path.abspath(__file__))
LIGHT = np.zeros((9, 3), np.float32)
LIGHT[0], LIGHT[3] = 1.0, 0.5


def meshes():
    from jaxdeca.render.meshes import uv_sphere
    out = {}
    s = uv_sphere(50, 100, radius=0.9)
    out["sphere_10k"] = (np.asarray(s["verts"], np.float32), np.asarray(s["faces"], np.int32))
    head = os.path.join(HERE, "..", "jaxdeca", "assets", "demo_head.npz")
    if os.path.exists(head):
        d = np.load(head)
        v = d["v_template"]
        v = (v - v.mean(0)) / np.abs(v - v.mean(0)).max() * 0.9
        out["demo_head"] = (v.astype(np.float32), d["faces"].astype(np.int32))
    return out


# ----------------------------------------------------------------------------- ours

def make_fns(faces, size, sigma=1.0, batch_size=None):
    import jax
    import jax.numpy as jnp

    from jaxdeca import xla_options
    from jaxdeca.render import interpolate, orth_proj, rasterize, sh_shading, vertex_normals

    def image(verts):
        tv = orth_proj(verts, jnp.tile(jnp.array([[1.0, 0.0, 0.0]]), (verts.shape[0], 1)))
        tv = tv.at[..., 2].add(10.0)
        fr = rasterize(tv, faces, (size, size), sigma=sigma, batch_size=batch_size)
        n = interpolate(vertex_normals(verts, faces), faces, fr)
        light = jnp.broadcast_to(jnp.asarray(LIGHT), (verts.shape[0], 9, 3))
        return sh_shading(n, light) * fr.alpha[..., None]

    fwd = xla_options.jit(image)
    bwd = xla_options.jit(jax.grad(lambda v: jnp.sum(image(v))))
    return fwd, bwd


def mem_mib(fn, x):
    m = fn.lower(x).compile().memory_analysis()
    if m is None:
        return float("nan")
    return (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes) / 2**20


def run_ours(v, f, size, batches, repeats, batch_size=None):
    import jax
    import jax.numpy as jnp
    rows = {}
    for B in batches:
        bs = B if batch_size == "all" else batch_size
        fwd, bwd = make_fns(jnp.asarray(f), size, batch_size=bs)
        _, hbwd = make_fns(jnp.asarray(f), size, sigma=0.0, batch_size=bs)
        x = jnp.broadcast_to(jnp.asarray(v), (B,) + v.shape)
        tf = median_ms(lambda: jax.block_until_ready(fwd(x)), repeats)
        tb = median_ms(lambda: jax.block_until_ready(bwd(x)), repeats)
        hb = median_ms(lambda: jax.block_until_ready(hbwd(x)), repeats)
        rows[B] = dict(fwd=tf, bwd=tb, fwd_mib=mem_mib(fwd, x), bwd_mib=mem_mib(bwd, x), hard_bwd=hb)
    return rows


# ----------------------------------------------------------------------------- peer (DEODR)

def _sh_vertex_colours(v, f):
    """SH shading of area-weighted vertex normals (same constants as jaxdeca.render)."""
    fv = v[f]
    n = np.zeros_like(v)
    for i in range(3):
        a, b, c = fv[:, i], fv[:, (i + 1) % 3], fv[:, (i + 2) % 3]
        np.add.at(n, f[:, i], np.cross(b - a, c - a))
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
    x, y, z = n[:, 0], n[:, 1], n[:, 2]
    basis = np.stack([np.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1], -1)
    const = np.array([0.282095, 1.023327, 1.023327, 1.023327, 0.858086, 0.858086, 0.858086, 0.429043, 0.247708])
    return (basis * const) @ LIGHT.astype(np.float64)


def _silhouette_edges(ij, f, front):
    """[F, 3] bool: edge (i, i+1) of a front face whose other face is culled or missing."""
    e = np.sort(np.stack([f, np.roll(f, -1, 1)], -1).reshape(-1, 2), 1)
    _, inv = np.unique(e, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    nfront = np.bincount(inv, weights=np.repeat(front, 3).astype(float))
    return (nfront[inv] == 1).reshape(-1, 3) & front[:, None]


def peer_worker(path, batches, repeats):
    """Runs in the peer interpreter: prints one JSON line per batch size."""
    import tracemalloc

    from deodr.differentiable_renderer import Scene2D

    d = np.load(path)
    ij, depth, f, col, size = d["ij"], d["depth"], d["faces"].astype(np.uint32), d["colours"], int(d["size"])
    F, V = len(f), len(ij)
    tri = ij[f]
    d1, d2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]  # np.cross of 2-vectors is gone in numpy 2.5

    def scene(clockwise):
        front = area > 0 if clockwise else area < 0
        return Scene2D(faces=f, faces_uv=f, ij=ij.copy(), depths=depth, textured=np.zeros(F, bool),
                       uv=np.zeros((V, 2)), shade=np.zeros(V), colors=col, shaded=np.zeros(F, bool),
                       edgeflags=_silhouette_edges(ij, f, front), height=size, width=size, nb_colors=3,
                       texture=np.zeros((0, 0, 3)), background_color=np.zeros(3), clockwise=clockwise,
                       backface_culling=True, integer_pixel_centers=False)

    # the winding whose visible surface is nearer is the front one
    depths = {}
    for cw in (False, True):
        _, z = scene(cw).render(1.0)
        depths[cw] = np.mean(z[np.isfinite(z) & (z < 1e9)])
    sc = scene(min(depths, key=depths.get))

    def fwd(B):
        for _ in range(B):
            sc.render(1.0)

    def fwd_bwd(B):
        for _ in range(B):
            im, _ = sc.render(1.0)
            sc.ij_b[:] = 0
            sc.colors_b[:] = 0
            sc.render_backward(np.ones_like(im))

    for B in batches:
        row = dict(B=B, fwd=median_ms(lambda: fwd(B), repeats), bwd=median_ms(lambda: fwd_bwd(B), repeats))
        for k, fn in (("fwd_mib", fwd), ("bwd_mib", fwd_bwd)):
            tracemalloc.start()
            fn(B)
            row[k] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        print(json.dumps(row), flush=True)


def run_peer(v, f, size, batches, repeats, python):
    """Our exact pixel positions/depths handed to DEODR in a subprocess -> ({B: row}, note)."""
    px = (v[:, 0] + 1.0) * size / 2.0   # orth_proj with s = 1, t = 0, then to_pixels
    py = (-v[:, 1] + 1.0) * size / 2.0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mesh.npz")
        np.savez(path, ij=np.stack([px, py], -1).astype(np.float64), depth=(10.0 - v[:, 2]).astype(np.float64),
                 faces=f, colours=_sh_vertex_colours(v.astype(np.float64), f), size=size)
        cmd = [python, os.path.abspath(__file__), "--peer-worker", path,
               "--batches", ",".join(map(str, batches)), "--repeats", str(repeats)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:  # PEER_PYTHON names no runnable interpreter
            return {}, f"DEODR unavailable: cannot run {python} ({e.strerror})"
    if p.returncode != 0:
        return {}, f"DEODR unavailable with {python}: {p.stderr.strip().splitlines()[-1:]}"
    rows = {}
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            rows[r["B"]] = r
    return rows, f"DEODR via {python}"


def peer_python():
    if os.environ.get("PEER_PYTHON"):
        return os.environ["PEER_PYTHON"]
    if os.path.exists("/tmp/peer_venv/bin/python"):
        return "/tmp/peer_venv/bin/python"
    return sys.executable


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", default=None,
                   help="our images rasterized together: N, 'all', or unset for rasterize's default "
                        "(1 on CPU, the whole batch on accelerators)")
    p.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    if a.peer_worker:
        return peer_worker(a.peer_worker, batches, a.repeats)

    import jax
    bs = a.batch_size if a.batch_size in (None, "all") else int(a.batch_size)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), image {a.size}x{a.size}, "
          f"{os.cpu_count()} CPUs; ms per batch (median of {a.repeats}), memory MiB; "
          f"rasterize batch_size={'default' if bs is None else bs}")
    python = peer_python()
    hdr = (f"{'mesh':<11}{'faces':>6}{'B':>4} | {'ours fwd':>9}{'MiB':>7}{'f+b':>9}{'MiB':>7}{'hard f+b':>9} | "
           f"{'DEODR fwd':>10}{'MiB':>7}{'f+b':>9}{'MiB':>7} | {'fwd x':>6}{'f+b x':>7}")
    print(hdr)
    notes = set()
    for name, (v, f) in meshes().items():
        ours = run_ours(v, f, a.size, batches, a.repeats, bs)
        peer, note = run_peer(v, f, a.size, batches, a.repeats, python)
        notes.add(note)
        for B in batches:
            o = ours[B]
            q = peer.get(B)
            line = (f"{name:<11}{len(f):>6}{B:>4} | {o['fwd']:>9.1f}{o['fwd_mib']:>7.0f}{o['bwd']:>9.1f}"
                    f"{o['bwd_mib']:>7.0f}{o['hard_bwd']:>9.1f} | ")
            if q:
                line += (f"{q['fwd']:>10.1f}{q['fwd_mib']:>7.0f}{q['bwd']:>9.1f}{q['bwd_mib']:>7.0f} | "
                         f"{q['fwd'] / o['fwd']:>6.2f}{q['bwd'] / o['bwd']:>7.2f}")
            else:
                line += f"{'n/a':>10}"
            print(line, flush=True)
    for n in sorted(notes):
        print("peer:", n)
    print("ratio x = peer ms / our ms (> 1: ours faster); 'hard f+b' = ours with sigma = 0 (no soft")
    print("coverage: gradients through barycentrics only), for the cost of the SoftRas pass")


if __name__ == "__main__":
    main()
