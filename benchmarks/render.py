"""Renderer benchmark: ms per batch (median) and peak memory at 224 x 224, ours vs peers.

    python benchmarks/render.py [--batches 1,8,32] [--repeats 3] [--size 224] [--batch-size N|all] [--blend]

Meshes: a 10k-face UV sphere and the demo head (jaxdeca/assets/demo_head.npz), scaled to
fill ~90% of the image. Batch B renders B copies of the mesh; ours rasterizes them one at a
time on CPU and all together on accelerators (`rasterize`'s default; --batch-size overrides).

Ours: DECA image-space rasterization (hard z-buffer + SoftRas soft coverage, sigma = 1 px^2),
interpolation of vertex normals, 9-band SH shading, times alpha; 'fwd+bwd' adds the gradient
of the image sum w.r.t. the vertices. Both are compiled as jaxdeca compiles its own programs
(`jaxdeca.xla_options.jit`: on CPU, YNNPACK only for dot products). 'hard f+b' is the same with
sigma = 0 (alpha = hard mask), i.e. what the SoftRas pass costs on top. Memory: XLA's memory_analysis() of the compiled call
(temp + argument + output bytes), i.e. what one call needs on the device.

Peers, each given our exact pixel positions and depths of the same mesh at the same image size,
and per-vertex colours that are the same SH shading evaluated at the vertices (Gouraud; ours is
per pixel); 'f+b' is the gradient of the image sum w.r.t. the vertex positions (DEODR's 2D
ones, jaxrenderer's 3D clip-space ones) and colours.
Each runs in a subprocess of its own venv (their dependencies are kept out of the project's):
- DEODR (PyPI `deodr` 0.2.3): C++ differentiable rasterizer (z-buffer, per-vertex colour
  interpolation, silhouette-edge antialiasing with analytic gradients), CPU only, one image per
  call, so a batch is a loop; backface culling on (DEODR needs it for gradients), sigma = 1.
  Memory: tracemalloc peak (numpy buffers DEODR allocates) for one batch, its B images kept.

      python3.11 -m venv /tmp/peer_venv
      /tmp/peer_venv/bin/pip install deodr==0.2.3 trimesh typing_extensions

- jaxrenderer (PyPI `jaxrenderer` 0.4.0, imported as `renderer`): a JAX rasterizer (OpenGL-style
  pipeline: every pixel row tests every triangle, depth test, perspective-correct
  interpolation), so it runs on the same backends as ours; gradients by JAX autodiff through its
  hard rasterization (no silhouette term), a batch by jax.vmap. It needs Python >= 3.12 and
  jax >= 0.11.2, so its venv has its own jax:

      python3.12 -m venv /tmp/jaxrenderer_venv
      /tmp/jaxrenderer_venv/bin/pip install jaxrenderer==0.4.0

  One image takes seconds on a CPU, so a batch B > 1 is timed only when B times the measured
  batch-1 time (fwd and fwd+bwd), over the warm-up and repeats, fits in --peer-budget seconds
  (else the row says so).
  Memory: XLA's memory_analysis(), as ours. The note line says whether its gradients are finite
  (0.4.0's README lists gradients w.r.t. the mesh as not yet supported): on the sphere they are
  NaN, from its 200 zero-area pole faces (without them they are finite; ours skips such faces).

Interpreters: PEER_PYTHON (DEODR) and JAXRENDERER_PYTHON, else the /tmp venvs above when they
exist, else this interpreter; when a peer cannot be run or imported the reason is printed (our
figures still are). Other registry candidates tried on Python 3.11 CPU: pytorch3d (no wheel or
sdist in the registry), nvdiffrast/diffrp (CUDA only), kaolin (placeholder wheel).
'ours cull' is the same with back faces culled (`rasterize(cull_backfaces=True)`): the same work as
DEODR's scene, which culls them (jaxrenderer does not).
A ratio x is peer ms / our ms for the same batch: > 1 means we are faster.

Timing on the 2-vCPU CI machines: ours runs on XLA:CPU's two threads, DEODR on one. There the
same compiled program switched between two speeds in phases of seconds to a minute (demo head,
culled, B = 1, f+b: 12.5 ms or 20-21 ms), both vCPUs equally busy in either and no steal time
reported; pinned to one core (`taskset -c 0`) it took 20.5-22 ms, the slow speed. Alternated with
ours in 400 rounds of 9 calls each, DEODR took 4.8 ms in the rounds where ours was slow and
4.7 ms in the others. One run's ratio against DEODR can therefore be up to 1.7x too low. The
script times our f+b at the smallest batch again after the peers and prints both times (a phase
change between our rows and the peers' shows there); run it more than once.
"""
import argparse
import functools
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

def make_fns(faces, size, sigma=1.0, batch_size=None, cull=False, blend=False):
    """Our image and the gradient of its sum. blend: SoftRas's colour blend (`soft_blend`, gamma
    1e-4) of the SH shading evaluated at the vertices (Gouraud, as the peers'), instead of the hard
    z-buffer's per-pixel shading times alpha."""
    import jax
    import jax.numpy as jnp

    from jaxdeca import xla_options
    from jaxdeca.render import interpolate, orth_proj, rasterize, sh_shading, soft_blend, vertex_normals

    def image(verts):
        tv = orth_proj(verts, jnp.tile(jnp.array([[1.0, 0.0, 0.0]]), (verts.shape[0], 1)))
        tv = tv.at[..., 2].add(10.0)
        light = jnp.broadcast_to(jnp.asarray(LIGHT), (verts.shape[0], 9, 3))
        if blend:
            colours = sh_shading(vertex_normals(verts, faces), light)
            return soft_blend(tv, faces, colours, (size, size), sigma=sigma, z_range=(8.0, 12.0),
                              batch_size=batch_size, cull_backfaces=cull)
        fr = rasterize(tv, faces, (size, size), sigma=sigma, batch_size=batch_size, cull_backfaces=cull)
        n = interpolate(vertex_normals(verts, faces), faces, fr)
        return sh_shading(n, light) * fr.alpha[..., None]

    fwd = xla_options.jit(image)
    bwd = xla_options.jit(jax.grad(lambda v: jnp.sum(image(v))))
    return fwd, bwd


def mem_mib(fn, x):
    m = fn.lower(x).compile().memory_analysis()
    if m is None:
        return float("nan")
    return (m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes) / 2**20


def run_ours(v, f, size, batches, repeats, batch_size=None, cull=False, blend=False):
    import jax
    import jax.numpy as jnp
    rows = {}
    for B in batches:
        bs = B if batch_size == "all" else batch_size
        fwd, bwd = make_fns(jnp.asarray(f), size, batch_size=bs, cull=cull, blend=blend)
        x = jnp.broadcast_to(jnp.asarray(v), (B,) + v.shape)
        tf = median_ms(lambda: jax.block_until_ready(fwd(x)), repeats)
        time_bwd = functools.partial(median_ms, lambda bwd=bwd, x=x: jax.block_until_ready(bwd(x)), repeats)
        rows[B] = dict(fwd=tf, bwd=time_bwd(), fwd_mib=mem_mib(fwd, x), bwd_mib=mem_mib(bwd, x),
                       hard_bwd=float("nan"))
        if B == min(batches):  # the same timing again after the peers (main)
            rows[B]["again"] = time_bwd
        if not blend:
            _, hbwd = make_fns(jnp.asarray(f), size, sigma=0.0, batch_size=bs, cull=cull)
            rows[B]["hard_bwd"] = median_ms(lambda: jax.block_until_ready(hbwd(x)), repeats)
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


def deodr_worker(path, batches, repeats, budget):
    """Runs in DEODR's interpreter: prints one JSON line per batch size."""
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

    # each image is kept until the batch is done, as a batched renderer's output holds them all
    # (ours and jaxrenderer's memory figures include the B output images)
    def fwd(B):
        return [sc.render(1.0)[0] for _ in range(B)]

    def fwd_bwd(B):
        out = []
        for _ in range(B):
            im, _ = sc.render(1.0)
            sc.ij_b[:] = 0
            sc.colors_b[:] = 0
            sc.render_backward(np.ones_like(im))
            out.append(im)
        return out

    for B in batches:
        row = dict(B=B, fwd=median_ms(lambda: fwd(B), repeats), bwd=median_ms(lambda: fwd_bwd(B), repeats))
        for k, fn in (("fwd_mib", fwd), ("bwd_mib", fwd_bwd)):
            tracemalloc.start()
            fn(B)
            row[k] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        print(json.dumps(row), flush=True)


def jaxrenderer_worker(path, batches, repeats, budget):
    """Runs in jaxrenderer's interpreter: prints one JSON line per batch size (B > 1 only within
    `budget` seconds, see the module docstring), then one {"note": ...} line."""
    from typing import NamedTuple

    import jax
    import jax.numpy as jnp
    from renderer import Buffers, Camera, render
    from renderer.geometry import to_homogeneous
    from renderer.shader import PerVertex, Shader

    d = np.load(path)
    size = int(d["size"])
    # pixels -> the bi-unit cube its viewport maps onto [0, size]^2, half a pixel left and up: it
    # samples pixel (x, y) at integer coordinates, ours at the centre (+0.5), and so shifted its
    # coverage is our hard mask pixel for pixel (checked at 224 px on both meshes; its buffers
    # are [x, y], ours [y, x]). Depth 9.1..10.9 -> z in (-1, 1), nearer = smaller (its default
    # depth test keeps the smallest z, as ours).
    pos = np.concatenate([(d["ij"] - 0.5) / size * 2.0 - 1.0, d["depth"][:, None] - 10.0], -1).astype(np.float32)
    faces = jnp.asarray(d["faces"].astype(np.int32))

    class Extra(NamedTuple):
        position: jax.Array  # [V, 3]
        colour: jax.Array    # [V, 3]

    class Varying(NamedTuple):
        colour: jax.Array

    class ColourShader(Shader):
        """Clip position = the given position (identity view and projection); Gouraud colour."""
        @staticmethod
        def vertex(gl_VertexID, gl_InstanceID, camera, extra):
            p = camera.to_clip(to_homogeneous(extra.position[gl_VertexID]))
            return PerVertex(gl_Position=p), Varying(colour=extra.colour[gl_VertexID])

    eye = jnp.identity(4)
    cam = Camera.create(view=eye, projection=eye,
                        viewport=Camera.viewport_matrix(jnp.zeros(2), jnp.array([size, size]), 1))

    def image(p, c):
        buffers = Buffers(zbuffer=jnp.full((size, size), 1e10, jnp.float32),
                          targets=(jnp.zeros((size, size, 3), jnp.float32),))
        return render(cam, ColourShader, buffers, faces, Extra(position=p, colour=c)).targets[0]

    # compiled as jaxrenderer users compile it: its venv's own jax with XLA's defaults (no jaxdeca there)
    fwd = jax.jit(jax.vmap(image))  # peer program
    bwd = jax.jit(jax.grad(lambda p, c: jnp.sum(jax.vmap(image)(p, c)), argnums=(0, 1)))  # peer program

    def inputs(B):
        return (jnp.asarray(np.broadcast_to(pos, (B,) + pos.shape)),
                jnp.asarray(np.broadcast_to(d["colours"].astype(np.float32), (B,) + pos.shape)))

    finite, t1 = None, None
    if min(batches) > 1:  # the batch-1 time the budget is judged by: one call each, once compiled
        t1 = sum(median_ms(lambda: jax.block_until_ready(fn(*inputs(1))), 1) for fn in (fwd, bwd))
    for B in sorted(batches):
        args = inputs(B)
        if B > 1 and B * t1 * (repeats + 1) > budget * 1e3:
            print(json.dumps(dict(B=B, skipped=f"over --peer-budget {budget:g} s")), flush=True)
            continue
        row = dict(B=B, fwd=median_ms(lambda: jax.block_until_ready(fwd(*args)), repeats),
                   bwd=median_ms(lambda: jax.block_until_ready(bwd(*args)), repeats))
        for k, fn in (("fwd_mib", fwd), ("bwd_mib", bwd)):
            m = fn.lower(*args).compile().memory_analysis()
            row[k] = float("nan") if m is None else (
                m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes) / 2**20
        if B == 1:
            t1 = row["fwd"] + row["bwd"]
        if finite is None:
            finite = all(bool(jnp.all(jnp.isfinite(g))) for g in bwd(*args))
        print(json.dumps(row), flush=True)
    tri = d["ij"][d["faces"]]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    flat = int(np.sum(np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]) < 1e-6))  # zero-area faces on screen
    grads = {True: "finite", None: "not checked (no batch size timed)",
             False: "NOT finite" + (f" (the mesh has {flat} zero-area faces)" if flat else "")}[finite]
    print(json.dumps(dict(note=f"jax {jax.__version__} on {jax.default_backend()}; gradients {grads}")), flush=True)


PEERS = {  # name: (worker, environment variable naming its interpreter, default venv)
    "DEODR": (deodr_worker, "PEER_PYTHON", "/tmp/peer_venv/bin/python"),
    "jaxrenderer": (jaxrenderer_worker, "JAXRENDERER_PYTHON", "/tmp/jaxrenderer_venv/bin/python"),
}


def run_peer(v, f, size, batches, repeats, python, peer="DEODR", budget=120.0):
    """Our exact pixel positions/depths handed to `peer` (a PEERS name) in a subprocess of
    interpreter `python` -> ({B: row}, note)."""
    px = (v[:, 0] + 1.0) * size / 2.0   # orth_proj with s = 1, t = 0, then to_pixels
    py = (-v[:, 1] + 1.0) * size / 2.0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mesh.npz")
        np.savez(path, ij=np.stack([px, py], -1).astype(np.float64), depth=(10.0 - v[:, 2]).astype(np.float64),
                 faces=f, colours=_sh_vertex_colours(v.astype(np.float64), f), size=size)
        cmd = [python, os.path.abspath(__file__), "--peer-worker", path, "--peer", peer,
               "--batches", ",".join(map(str, batches)), "--repeats", str(repeats), "--peer-budget", str(budget)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:  # the variable names no runnable interpreter
            return {}, f"{peer} unavailable: cannot run {python} ({e.strerror})"
    rows, extra = {}, ""
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            if "note" in r:
                extra = f" ({r['note']})"
            else:
                rows[r["B"]] = r
    if p.returncode != 0:  # the rows it printed before it stopped (e.g. out of memory at B = 32) are kept
        why = p.stderr.strip().splitlines()[-1:]
        return rows, f"{peer} {'stopped' if rows else 'unavailable'} with {python}: {why}"
    return rows, f"{peer} via {python}{extra}"


def peer_python(peer="DEODR"):
    """The interpreter `peer` runs in: its variable, else its default venv, else this one."""
    _, var, default = PEERS[peer]
    if os.environ.get(var):
        return os.environ[var]
    if os.path.exists(default):
        return default
    return sys.executable


def print_row(mesh, n_faces, B, who, r, rest):
    """One table row: r's fwd and f+b ms and MiB (or why it has none: r['skipped']), then rest."""
    head = f"{mesh:<11}{n_faces:>6}{B:>4} {who:<12}| "
    if "skipped" in r:
        print(head + r["skipped"], flush=True)
    else:
        print(head + f"{r['fwd']:>9.1f}{r['fwd_mib']:>7.0f}{r['bwd']:>9.1f}{r['bwd_mib']:>7.0f} | {rest}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", default=None,
                   help="our images rasterized together: N, 'all', or unset for rasterize's default "
                        "(1 on CPU, the whole batch on accelerators)")
    p.add_argument("--peers", default=",".join(PEERS), help=f"peers to run, of {', '.join(PEERS)} ('' for none)")
    p.add_argument("--peer-budget", type=float, default=120.0,
                   help="seconds a slow peer (jaxrenderer) may spend on a batch size above 1 (module docstring)")
    p.add_argument("--blend", action="store_true",
                   help="also time 'ours blend': SoftRas's colour blend (soft_blend) of per-vertex SH colours")
    p.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--peer", default="DEODR", help=argparse.SUPPRESS)
    a = p.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    peers = [n for n in a.peers.split(",") if n]
    unknown = [n for n in peers if n not in PEERS]
    if unknown:
        p.error(f"--peers: unknown {', '.join(unknown)} (known: {', '.join(PEERS)})")
    if a.peer_worker:
        return PEERS[a.peer][0](a.peer_worker, batches, a.repeats, a.peer_budget)

    import jax
    bs = a.batch_size if a.batch_size in (None, "all") else int(a.batch_size)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), image {a.size}x{a.size}, "
          f"{os.cpu_count()} CPUs; ms per batch (median of {a.repeats}), memory MiB; "
          f"rasterize batch_size={'default' if bs is None else bs}")
    print(f"{'mesh':<11}{'faces':>6}{'B':>4} {'':<12}| {'fwd':>9}{'MiB':>7}{'f+b':>9}{'MiB':>7} | "
          f"{'hard f+b':>9} | {'fwd x':>6}{'f+b x':>7}{'cull fwd x':>11}{'f+b x':>7}")
    # ours on every mesh first: a run stopped by a time limit (run_all.sh) during a slow peer
    # keeps all of our rows
    ours, culled, notes, mesh_list = {}, {}, [], meshes()
    for name, (v, f) in mesh_list.items():
        ours[name] = run_ours(v, f, a.size, batches, a.repeats, bs)
        for B in batches:
            print_row(name, len(f), B, "ours", ours[name][B], f"{ours[name][B]['hard_bwd']:>9.1f} |")
        culled[name] = run_ours(v, f, a.size, batches, a.repeats, bs, cull=True)
        for B in batches:
            print_row(name, len(f), B, "ours cull", culled[name][B], f"{culled[name][B]['hard_bwd']:>9.1f} |")
        if a.blend:
            blended = run_ours(v, f, a.size, batches, a.repeats, bs, blend=True)
            for B in batches:
                print_row(name, len(f), B, "ours blend", blended[B], f"{'':>9} |")
    for n in peers:
        for name, (v, f) in mesh_list.items():
            rows, note = run_peer(v, f, a.size, batches, a.repeats, peer_python(n), n, a.peer_budget)
            notes.append(f"{name}: {note}")
            for B in batches:
                q, o, c = rows.get(B) or {"skipped": "n/a"}, ours[name][B], culled[name][B]
                print_row(name, len(f), B, n, q, f"{'':>9} | {q.get('fwd', 0) / o['fwd']:>6.2f}"
                                                 f"{q.get('bwd', 0) / o['bwd']:>7.2f}"
                                                 f"{q.get('fwd', 0) / c['fwd']:>11.2f}{q.get('bwd', 0) / c['bwd']:>7.2f}")
    for note in notes:
        print("peer:", note)
    if peers:  # the peers ran after ours: did the machine's speed change meanwhile?
        b = min(batches)
        again = [f"{name}{label} {r[b]['again']():.1f} ({r[b]['bwd']:.1f})" for name in mesh_list
                 for label, r in (("", ours[name]), (" cull", culled[name]))]
        print(f"ours f+b at B = {b} timed again after the peers, ms (first time in brackets): {', '.join(again)};")
        print("a change well beyond noise means the machine's speed changed between our rows and the peers'")
        print("(module docstring: the two-speed phases of the 2-vCPU machines), and the ratios with it")
    print("ratio x = peer ms / our ms (> 1: ours faster), against 'ours' and, under 'cull', against")
    print("'ours cull' (back faces culled, as DEODR renders); 'hard f+b' = ours with sigma = 0 (no soft")
    print("coverage: gradients through barycentrics only), for the cost of the SoftRas pass; 'ours blend'")
    print("(--blend) = SoftRas's colour blend (soft_blend) of per-vertex SH colours instead of the z-buffer's")


if __name__ == "__main__":
    main()
