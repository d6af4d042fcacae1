"""Triangle rasterizer in pure jax.numpy: hard z-buffer plus soft coverage, face-centric.

Scheme. Every face is visited only at the pixels of its own screen bounding box, never
against the whole image: the box is cut into `window` x `window` pixel windows (a small
face needs one, a face covering the image needs many), and windows are processed `slots`
at a time (slot s of round r is window r * slots + s of the face list, found by
searchsorted on the cumulative window counts). A while loop runs the rounds until every
window is done, so the result is exact for any triangle size and count. Several images are
rasterized together as one face list on one canvas: image g's faces follow image g - 1's,
and its rows of the canvas follow g - 1's, each image with S rows and columns of padding
that windows at its edges may run into (`batch_size`: one image at a time on CPU, the
whole batch on accelerators; under a context mesh each device takes its own images).
Rounds hold all faces plus 25%, capped at 2^19 pixels on CPU (so that their working set
stays in cache) and 2^24 on accelerators, so memory is O(slots * window^2) for one round,
independent of the image-times-faces product. Windows are written to and read from the
canvas as [S, S] blocks (one scatter/gather index per window).

* Hard pass (no gradients): each window pixel inside its face gives a depth; a scatter-min
  (`.at[].min`) builds the z-buffer, and a second scatter-min over the pixels whose depth
  equals the buffer picks the lowest face index on ties (as a sequential z-test would).
  A tie is exact equality of the computed depths: faces of constant depth (UV maps) tie
  exactly, but copies of a sloped face (a double-sided mesh, its corners in another order)
  can differ in the last bit, so either copy may win a pixel, and the winner can change
  with `window`.
  Barycentrics and depth of the winning face are then recomputed from its differentiable
  vertices by a gather, so gradients reach vertex positions through barycentrics
  (nvdiffrast-style interior gradients); their VJP is written out (`_hit_geometry_bwd`) and
  added to the vertices with one scatter-add.
* Soft coverage alpha = 1 - prod_j (1 - sigmoid(delta_j d_j^2 / sigma)) (SoftRas; d_j the
  distance from the pixel centre to face j, delta_j = +1 inside, -1 outside, sigma in
  pixel^2) moves silhouette edges. Faces farther than sqrt(16 sigma) pixels are dropped
  (their term is < 1e-7), so each face is visited over its box dilated by that radius and
  its 1 - D_j multiplies the pixels (scatter-multiply). A custom VJP replays the rounds in
  the backward pass (while loops are not reverse differentiable): a gather of the incoming
  gradient times prod_j (1 - D_j) at the window pixels, a hand-written per-pixel gradient of
  log(1 - D_j) (through the nearest point of the nearest edge) and a scatter-add of per-face
  vertex gradients.
  Degenerate faces (|area| <= 1e-6 x longest edge^2) and faces with non-finite vertices
  are skipped. sigma -> 0 recovers the hard mask.
No back-face culling by default: the nearest depth wins whatever the winding (as in DECA);
`cull_backfaces=True` leaves out the faces turned away from the viewer in both passes.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from jaxdeca.explicit_sharding import batch_sharding, split_as_one
from jaxdeca.render import checks
from jaxdeca.render.batching import batch_mesh_axes, images_custom_vjp, map_groups, split_batch
from jaxdeca.render.camera import to_pixels
from jaxdeca.render.interpolate import fold_last, hit_vertex_ids

_EPS_AREA = 1e-10
_SOFT_RADIUS2 = 16.0  # faces farther than sqrt(_SOFT_RADIUS2 * sigma) px are dropped (term < 1e-7)
# SoftRas's kernel drops them beyond d^2 = 9.21 sigma (its dist_eps: term < 1e-4). With that cutoff
# (XLA:CPU, benchmarks/render.py's pipeline, culled, one image, f+b, A/B in one process) the demo head
# took as long with the default 16 x 16 soft windows, 10.7 ms with 8 x 8 against 12.8 ms with this
# cutoff, but the 10k-face sphere 15.0 ms against 13.5 ms, and alpha moved by up to 3e-3: not taken.
SMALLEST_SHARPNESS = 2.0 ** -126  # float32's smallest normal: the least positive sigma (and gamma)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Fragments:
    """Rasterizer output for a batch.

    face_index: [B, H, W] int32, -1 for background.
    bary: [B, H, W, 3] barycentrics of the pixel centre in the winning face (0 on background).
    depth: [B, H, W] interpolated z of the winning face (0 on background).
    mask: [B, H, W] float hard coverage (face_index >= 0).
    alpha: [B, H, W] soft coverage (== mask when sigma == 0).
    """
    face_index: jax.Array
    bary: jax.Array
    depth: jax.Array
    mask: jax.Array
    alpha: jax.Array


def _cross2(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def barycentric(p, v0, v1, v2):
    """Barycentrics of points p in triangles (v0, v1, v2), 2D.

    p, v*: [..., 2]. Returns (bary [..., 3], area [...]) with signed doubled area; either
    winding works. Degenerate triangles give bary = 0.
    """
    w0 = _cross2(v2 - v1, p - v1)
    w1 = _cross2(v0 - v2, p - v2)
    w2 = _cross2(v1 - v0, p - v0)
    area = w0 + w1 + w2
    ok = jnp.abs(area) > _EPS_AREA
    safe = jnp.where(ok, area, 1.0)
    b = jnp.stack([w0, w1, w2], -1) / safe[..., None]
    return jnp.where(ok[..., None], b, 0.0), area


# ----------------------------------------------------------------------------- windows

def front_facing(xy):
    """Whether faces face the viewer. xy: [..., 3, 2] pixels (x right, y down) -> [...] bool.

    Front faces run counter-clockwise as the viewer sees them (OpenGL's and PyTorch3D's
    convention), i.e. a negative signed area in pixel space, where y points down. FLAME's
    outward winding is front-facing under DECA's orthographic camera and `perspective_proj`
    alike (each flips y; their z flip or perspective divide keeps the orientation on screen).
    """
    return _signed_area2(xy) < 0


def _signed_area2(xy):
    """Doubled signed area of triangles. xy: [..., 3, 2] -> [...]."""
    return _cross2(xy[..., 1, :] - xy[..., 0, :], xy[..., 2, :] - xy[..., 0, :])


def _face_boxes(xy, H, W, margin, cull=False):
    """Pixel-index boxes of faces. xy: [F, 3, 2] pixels -> (x0, y0, nx, ny) each [F] int32.

    Pixel (row i, col j) has its centre at (j + 0.5, i + 0.5); the box holds the pixels whose
    centre lies within `margin` of the face's bounding box, clipped to the image. Faces with
    non-finite vertices, and back faces when `cull`, get an empty box (no window visits them).
    """
    finite = jnp.all(jnp.isfinite(xy), axis=(1, 2))
    xy = jnp.where(finite[:, None, None], xy, 0.0)
    keep = finite & front_facing(xy) if cull else finite
    corners = jnp.swapaxes(xy, 1, 2)  # [F, 2, 3]: min and max over the corners elementwise (fold_last)
    lo = fold_last(jnp.minimum, corners)[..., 0] - margin - 0.5
    hi = fold_last(jnp.maximum, corners)[..., 0] + margin - 0.5
    size = jnp.array([W, H], xy.dtype)
    a = jnp.clip(jnp.ceil(lo), 0.0, size).astype(jnp.int32)
    b = jnp.clip(jnp.floor(hi), -1.0, size - 1).astype(jnp.int32)
    n = jnp.where(keep[:, None], jnp.maximum(b - a + 1, 0), 0)
    return a[:, 0], a[:, 1], n[:, 0], n[:, 1]


def _window_table(boxes, window):
    """Windows per face and their running count. Returns (wx [F], cum [F], total [])."""
    x0, y0, nx, ny = boxes
    wx = (nx + window - 1) // window
    wy = (ny + window - 1) // window
    cum = jnp.cumsum(wx * wy)
    return wx, cum, cum[-1]


def _round_windows(boxes, wx, cum, total, r, slots, window, H, W):
    """Windows of round r, M = slots of them.

    Returns face [M] int32, window origin ox, oy [M] int32 (top-left pixel) and ok
    [M, window, window] bool: the pixel exists (inside the face's box and the image).
    """
    x0, y0, nx, ny = boxes
    F = cum.shape[0]
    g = r * slots + jnp.arange(slots, dtype=jnp.int32)
    face = jnp.minimum(jnp.searchsorted(cum, g, side="right"), F - 1).astype(jnp.int32)
    wxf = wx[face]
    start = cum[face] - wxf * ((ny[face] + window - 1) // window)
    local = g - start
    wxf = jnp.maximum(wxf, 1)
    lx = (local % wxf) * window
    ly = (local // wxf) * window
    live = g < total
    mx = jnp.where(live, nx[face] - lx, 0)
    my = jnp.where(live, ny[face] - ly, 0)
    dx, dy = _offsets(window, jnp.int32)
    ok = (dx < mx[:, None, None]) & (dy < my[:, None, None])
    ox = jnp.clip(x0[face] + lx, 0, W)
    oy = jnp.clip(y0[face] + ly, 0, H)
    return face, ox, oy, ok


def _n_rounds(total, slots):
    return (total + slots - 1) // slots


def _offsets(window, dtype):
    """Pixel offsets inside a window: dx [1, 1, S], dy [1, S, 1] (rows are y)."""
    d = jnp.arange(window, dtype=dtype)
    return d[None, None, :], d[None, :, None]


# Windows are written to / read from images padded by one window on the bottom and right,
# as [M, S, S] blocks at their origins: one scatter/gather index per window, not per pixel
# (and it keeps XLA from fusing the per-pixel work into a scalar scatter loop on CPU).
_BLOCK_DN = jax.lax.ScatterDimensionNumbers(
    update_window_dims=(1, 2), inserted_window_dims=(), scatter_dims_to_operand_dims=(0, 1))
_GATHER_DN = jax.lax.GatherDimensionNumbers(
    offset_dims=(1, 2), collapsed_slice_dims=(), start_index_map=(0, 1))
_IN_BOUNDS = jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS


def _block_scatter(op, img, blocks, ox, oy):
    """img: [H + S, W + S]; blocks: [M, S, S] combined into img at (oy, ox) by op (add/min/max/mul)."""
    fn = {"add": jax.lax.scatter_add, "min": jax.lax.scatter_min, "max": jax.lax.scatter_max,
          "mul": jax.lax.scatter_mul}[op]
    return fn(img, jnp.stack([oy, ox], -1), blocks, _BLOCK_DN, mode=_IN_BOUNDS)


def _block_gather(img, ox, oy, window):
    """img: [H + S, W + S] -> [M, S, S] blocks at (oy, ox)."""
    return jax.lax.gather(img, jnp.stack([oy, ox], -1), _GATHER_DN, (window, window), mode=_IN_BOUNDS)


def _canvas_rows(oy, face, F, H, S):
    """Canvas row of window origins: image g = face // F owns rows g (H + S) .. g (H + S) + H + S - 1
    (its H rows and S rows of padding that windows may run into). oy, face: [M] -> [M] int32."""
    return oy + (face // F) * (H + S)


def _to_canvas(x, S):
    """[G, H, W] images -> [G (H + S), W + S] canvas (zero padding)."""
    G, H, W = x.shape
    return jnp.pad(x, ((0, 0), (0, S), (0, S))).reshape(G * (H + S), W + S)


def _from_canvas(canvas, G, H, W):
    """[G (H + S), W + S] canvas -> [G, H, W] images."""
    return canvas.reshape(G, canvas.shape[0] // G, canvas.shape[1])[:, :H, :W]


def _edges(fv, ox, oy):
    """Edge functions of faces relative to window origins, affine in the pixel offset.

    fv: [M, 3, 2] pixels; ox, oy: [M] int32 window origins. Edge k joins v[k+1] -> v[k+2]
    (opposite v[k]); w_k(dx, dy) = c[k] + a[k] dx + b[k] dy equals `barycentric`'s
    un-normalised weight of v[k] at the pixel centre (ox + dx + .5, oy + dy + .5).
    Returns (a, b, c) each [M, 3], edge vectors e [M, 3, 2], the start vertex of each edge
    relative to the origin q0 [M, 3, 2] and the doubled signed area [M].
    """
    o = jnp.stack([ox, oy], -1).astype(fv.dtype)[:, None, :] + 0.5
    start = jnp.roll(fv, -1, axis=1)  # v1, v2, v0
    end = jnp.roll(fv, -2, axis=1)    # v2, v0, v1
    e = end - start
    q0 = o - start
    c = _cross2(e, q0)
    a, b = -e[..., 1], e[..., 0]
    area = _signed_area2(fv)
    return a, b, c, e, q0, area


def _col(v, k):
    """v[:, k] as [M, 1, 1] for broadcasting against [M, S, S] windows."""
    return v[:, k, None, None]


# ----------------------------------------------------------------------------- hard pass

def _hard_index(xyz, F, H, W, window, slots, cull=False):
    """Nearest face per pixel (no gradients).

    xyz: [G * F, 3, 3] pixels + depth, the faces of G images one after another -> [G, H, W]
    int32 face index within its image (-1 for background). cull: skip back faces.
    """
    S = window
    G = xyz.shape[0] // F
    boxes = _face_boxes(xyz[..., :2], H, W, 0.0, cull)
    wx, cum, total = _window_table(boxes, S)
    big = jnp.iinfo(jnp.int32).max
    dx, dy = _offsets(S, xyz.dtype)
    canvas = (G * (H + S), W + S)

    def body(carry):
        r, zbuf, fbuf = carry
        face, ox, oy, ok = _round_windows(boxes, wx, cum, total, r, slots, S, H, W)
        cy = _canvas_rows(oy, face, F, H, S)
        fv = xyz[face]  # [M, 3, 3]
        a, b, c, _, _, area = _edges(fv[..., :2], ox, oy)
        nondeg = jnp.abs(area) > _EPS_AREA
        sgn = jnp.where(area < 0, -1.0, 1.0)[:, None, None]
        inside = ok & nondeg[:, None, None]
        for k in range(3):
            inside &= sgn * (_col(c, k) + _col(a, k) * dx + _col(b, k) * dy) >= 0
        inv = jnp.where(nondeg, 1.0 / jnp.where(nondeg, area, 1.0), 0.0)
        # depth = z_0 + sum_k w_k (z_k - z_0) / area, affine too; measured from corner 0 it is
        # exact on faces of constant depth, so ties between them (UV maps: all at z = 1) go to
        # the lowest face index whatever the window, not to the rounding of each window's sum
        z0 = fv[:, 0, 2]
        zw = (fv[..., 2] - z0[:, None]) * inv[:, None]
        zc, za, zb = (fold_last(jnp.add, t * zw)[:, :, None] for t in (c, a, b))
        z = jnp.where(inside, z0[:, None, None] + (zc + za * dx + zb * dy), jnp.inf)
        zr = _block_scatter("min", jnp.full(canvas, jnp.inf, xyz.dtype), z, ox, cy)
        win = inside & (z == _block_gather(zr, ox, cy, S))
        fcand = jnp.where(win, face[:, None, None], big)
        fr = _block_scatter("min", jnp.full(canvas, big, jnp.int32), fcand, ox, cy)
        better = (zr < zbuf) | ((zr == zbuf) & (fr < fbuf))
        return r + 1, jnp.where(better, zr, zbuf), jnp.where(better, fr, fbuf)

    n = _n_rounds(total, slots)
    init = (jnp.int32(0), jnp.full(canvas, jnp.inf, xyz.dtype), jnp.full(canvas, big, jnp.int32))
    _, _, fbuf = jax.lax.while_loop(lambda c: c[0] < n, body, init)
    fbuf = _from_canvas(fbuf, G, H, W)
    return jnp.where(fbuf == big, -1, fbuf % F)


# ----------------------------------------------------------------------------- soft pass

def _soft_coefs(fv, ox, oy):
    """Per-window affine coefficients of the soft term (differentiable in fv).

    fv: [M, 3, 2] pixels; ox, oy: [M] window origins. For edge k (start A_k, vector e_k):
    w_k = c + a dx + b dy is its edge function, t_k = t0 + tx dx + ty dy the projection
    parameter of the pixel centre along it, q0 = origin centre - A_k ([M, 3, 2]) and e
    ([M, 3, 2]); coefficients [M, 3]. Also whether the face is non-degenerate [M].
    """
    a, b, c, e, q0, area = _edges(fv, ox, oy)
    l2 = jnp.sum(e * e, -1)
    il2 = 1.0 / jnp.maximum(l2, 1e-12)
    t0 = jnp.sum(q0 * e, -1) * il2
    area = jax.lax.stop_gradient(area)
    nondeg = jnp.abs(area) > jnp.maximum(_EPS_AREA, 1e-6 * jax.lax.stop_gradient(jnp.max(l2, -1)))
    return (a, b, c, t0, e[..., 0] * il2, e[..., 1] * il2, q0, e), jnp.sign(area), nondeg


def _soft_pixels(co, sgn, nondeg, ok, sigma):
    """Per-pixel soft term pieces. co, sgn, nondeg: _soft_coefs; ok: [M, S, S].

    D = sigmoid(+-d^2 / sigma) with d the distance from the pixel centre to the triangle
    (+ inside): d^2 = min_k |r_k|^2, r_k = p - (A_k + clip(t_k, 0, 1) e_k).
    Returns x = +-d^2 / sigma, use mask, inside, and of the nearest edge its index and
    clipped t (each [M, S, S]).
    """
    a, b, c, t0, tx, ty, q0, e = co
    dx, dy = _offsets(ok.shape[-1], a.dtype)
    sgn = sgn[:, None, None]
    ok = ok & nondeg[:, None, None]
    inside = ok
    for k in range(3):
        w = _col(c, k) + _col(a, k) * dx + _col(b, k) * dy
        t = jnp.clip(_col(t0, k) + _col(tx, k) * dx + _col(ty, k) * dy, 0.0, 1.0)
        rx = _col(q0[..., 0], k) + dx - t * _col(e[..., 0], k)
        ry = _col(q0[..., 1], k) + dy - t * _col(e[..., 1], k)
        dk = rx * rx + ry * ry
        if k == 0:
            d2, kmin, tn = dk, jnp.zeros(dk.shape, jnp.int32), t
        else:
            better = dk < d2
            d2 = jnp.where(better, dk, d2)
            kmin = jnp.where(better, k, kmin)
            tn = jnp.where(better, t, tn)
        inside &= sgn * w >= 0
    use = ok & (inside | (d2 < _SOFT_RADIUS2 * sigma))
    x = jnp.where(inside, d2, -d2) * (1.0 / sigma)
    return x, use, inside, kmin, tn


def _soft_factor(fv, ox, oy, ok, sigma):
    """1 - D = 1 / (1 + exp(x)) of each window pixel for its face: [M, S, S]; 1 where unused.

    fv: [M, 3, 2] pixels; ox, oy: [M] window origins; ok: [M, S, S] pixel exists.
    The factors are multiplied into the pixels; summing log(1 - D) = -softplus(x) instead
    took 1.4x as long for the soft pass's forward on XLA:CPU (its log1p).
    """
    x, use = _soft_pixels(*_soft_coefs(fv, ox, oy), ok, sigma)[:2]
    return jnp.where(use, 1.0 / (1.0 + jnp.exp(x)), 1.0)


def _soft_term_vjp(fv, ox, oy, ok, sigma, g, live=None):
    """Gradient of sum(g * log(_soft_factor(fv, ...))) w.r.t. fv [M, 3, 2]; g: [M, S, S].

    Written out by hand (autodiff of the per-pixel code makes XLA recompute it once per
    coefficient on CPU). With q = A + tc (B - A) the nearest point of the nearest edge
    (A, B) and r = p - q: d^2 = |r|^2, d d^2/dA = -2 (1 - tc) r, d d^2/dB = -2 tc r.
    live: optional runtime-true bool scalar used as a fusion barrier (see below).
    """
    dx, dy = _offsets(ok.shape[-1], fv.dtype)
    co, sgn, nondeg = _soft_coefs(fv, ox, oy)

    def per_pixel(co):
        x, use, inside, kmin, tc = _soft_pixels(co, sgn, nondeg, ok, sigma)
        # d/dx of -softplus(x) = -sigmoid(x); x = +-d2 / sigma
        gd2 = jnp.where(use, -2.0 * g * jax.nn.sigmoid(x) * jnp.where(inside, 1.0, -1.0) / sigma, 0.0)
        return gd2, 2.0 * kmin.astype(fv.dtype) + tc  # nearest edge k and clipped t as 2 k + t

    if live is None:
        gd2, kt = per_pixel(co)
    else:
        # A conditional on a runtime-true predicate is a fusion barrier: the per-pixel pass
        # is computed once and materialised, and the consumers below only decode it (fused
        # into each of them, XLA would recompute all three edges six times on CPU).
        gd2, kt = jax.lax.cond(live, per_pixel, lambda co: (jnp.zeros_like(g), jnp.zeros_like(g)), co)
    kmin = jnp.floor(kt * 0.5)
    tc = kt - 2.0 * kmin
    _, _, _, _, _, _, q0, e = co

    def sel(v):  # v: [M, 3] per edge -> [M, S, S] value of the nearest edge
        return jnp.where(kmin == 0, _col(v, 0), jnp.where(kmin == 1, _col(v, 1), _col(v, 2)))

    rx = sel(q0[..., 0]) + dx - tc * sel(e[..., 0])
    ry = sel(q0[..., 1]) + dy - tc * sel(e[..., 1])
    out = []
    for j in range(3):  # vertex j starts edge (j + 2) % 3 and ends edge (j + 1) % 3
        wj = gd2 * (jnp.where(kmin == (j + 2) % 3, 1.0 - tc, 0.0) + jnp.where(kmin == (j + 1) % 3, tc, 0.0))
        out.append(jnp.stack([jnp.sum(wj * rx, (1, 2)), jnp.sum(wj * ry, (1, 2))], -1))
    return -jnp.stack(out, 1)


def _finite_faces(xy):
    """xy [N, 3, D] with the faces that have a non-finite vertex set to 0. Such faces have no
    windows, but a last round's unused slots repeat the last face with zero weight: 0 x NaN (or
    inf) would put NaN into the pixels those slots touch and into the gradients of finite
    vertices."""
    return jnp.where(jnp.all(jnp.isfinite(xy), axis=(1, 2))[:, None, None], xy, 0.0)


def _soft_setup(xy, H, W, window, sigma, cull):
    boxes = _face_boxes(xy, H, W, (_SOFT_RADIUS2 * sigma) ** 0.5, cull)
    wx, cum, total = _window_table(boxes, window)
    return boxes, wx, cum, total


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5, 6, 7))
def _soft_transmittance(xy, F, H, W, window, slots, sigma, cull):
    """prod_j (1 - D_j) per pixel (1 - alpha), over the front faces only when `cull`.
    xy: [G * F, 3, 2] pixels, the faces of G images one after another -> [G, H, W]."""
    return _soft_transmittance_fwd(xy, F, H, W, window, slots, sigma, cull)[0]


def _soft_transmittance_fwd(xy, F, H, W, window, slots, sigma, cull):
    S = window
    G = xy.shape[0] // F
    boxes, wx, cum, total = _soft_setup(xy, H, W, S, sigma, cull)

    def body(carry):
        r, acc = carry
        face, ox, oy, ok = _round_windows(boxes, wx, cum, total, r, slots, S, H, W)
        term = _soft_factor(xy[face], ox, oy, ok, sigma)
        return r + 1, _block_scatter("mul", acc, term, ox, _canvas_rows(oy, face, F, H, S))

    n = _n_rounds(total, slots)
    init = (jnp.int32(0), jnp.ones((G * (H + S), W + S), xy.dtype))
    _, acc = jax.lax.while_loop(lambda c: c[0] < n, body, init)
    t = _from_canvas(acc, G, H, W)
    return t, (xy, t)


def _soft_transmittance_bwd(F, H, W, window, slots, sigma, cull, res, g):
    """d prod_j (1 - D_j) = prod_j (1 - D_j) * sum_j d log(1 - D_j): the per-window VJP of the
    log terms, with the incoming gradient times the transmittance."""
    xy, t = res
    S = window
    boxes, wx, cum, total = _soft_setup(xy, H, W, S, sigma, cull)
    xy = _finite_faces(xy)
    gpad = _to_canvas(g * t, S)

    def body(carry):
        r, gxy = carry
        face, ox, oy, ok = _round_windows(boxes, wx, cum, total, r, slots, S, H, W)
        gw = _block_gather(gpad, ox, _canvas_rows(oy, face, F, H, S), S)
        gfv = _soft_term_vjp(xy[face], ox, oy, ok, sigma, gw, live=r < n)
        return r + 1, gxy.at[face].add(gfv)

    n = _n_rounds(total, slots)
    _, gxy = jax.lax.while_loop(lambda c: c[0] < n, body, (jnp.int32(0), jnp.zeros_like(xy)))
    return (gxy,)


_soft_transmittance.defvjp(_soft_transmittance_fwd, _soft_transmittance_bwd)


# ----------------------------------------------------------------------------- public

def _pixel_centres(H, W, dtype):
    """[H, W, 2] (x, y) pixel centres."""
    ys, xs = jnp.meshgrid(jnp.arange(H) + 0.5, jnp.arange(W) + 0.5, indexing="ij")
    return jnp.stack([xs, ys], -1).astype(dtype)


def _hit_corners(vp, vid, hit):
    """Corners of each pixel's winning face: 3 x [H, W, 3]; zero on background, so that a
    non-finite vertex of face 0 (which background pixels read) puts no NaN anywhere.
    vp: [V, 3]; vid: [H, W, 3] vertex ids; hit: [H, W]. One row gather per corner (a gather
    of [3, 3] blocks is ~10x slower on XLA's CPU)."""
    return [jnp.where(hit[..., None], vp[vid[..., k]], 0.0) for k in range(3)]


def _hit_geometry_fwd(vp, vid, hit):
    """Barycentrics [H, W, 3] and depth [H, W] of the pixel centres in their winning faces (0 on
    background). vp: [V, 3] pixels + depth; vid: [H, W, 3] the winning face's vertex ids."""
    c = _hit_corners(vp, vid, hit)
    H, W = hit.shape
    b, _ = barycentric(_pixel_centres(H, W, vp.dtype), c[0][..., :2], c[1][..., :2], c[2][..., :2])
    b = jnp.where(hit[..., None], b, 0.0)
    depth = b[..., 0] * c[0][..., 2] + b[..., 1] * c[1][..., 2] + b[..., 2] * c[2][..., 2]
    return (b, depth), (vp, vid, hit)


def _hit_geometry_bwd(res, g):
    """Gradient of _hit_geometry w.r.t. vp, written out: autodiff's per-pixel chain rule of
    `barycentric` took 5.6 ms (CPU time) for benchmarks/render.py's sphere at 224 x 224 on
    XLA:CPU, split over many fusions that recompute each other's terms.

    With w_k = cross(P_k+1 - p, P_k+2 - p) (doubled signed areas), A = sum_k w_k, b_k = w_k / A
    and depth = sum_k b_k z_k: gt_k = g_b_k + g_depth z_k is the gradient of b_k, u_k =
    (gt_k - sum_j gt_j b_j) / A that of w_k, and corner P_j receives u_j-1 d w_j-1 / d P_j +
    u_j+1 d w_j+1 / d P_j = u_j-1 perp(P_j+1 - p) - u_j+1 perp(P_j-1 - p), perp(x, y) = (y, -x);
    z_j receives g_depth b_j.
    """
    vp, vid, hit = res
    gb, gd = g
    H, W = hit.shape

    def per_pixel(gb, gd):
        c = _hit_corners(vp, vid, hit)
        p = _pixel_centres(H, W, vp.dtype)
        rel = [ck[..., :2] - p for ck in c]  # P_k - p
        w = [_cross2(rel[(k + 1) % 3], rel[(k + 2) % 3]) for k in range(3)]
        area = w[0] + w[1] + w[2]
        ok = hit & (jnp.abs(area) > _EPS_AREA)
        inv = 1.0 / jnp.where(ok, area, 1.0)
        b = [wk * inv for wk in w]
        gt = [gb[..., k] + gd * c[k][..., 2] for k in range(3)]
        s = gt[0] * b[0] + gt[1] * b[1] + gt[2] * b[2]
        u = [(gt[k] - s) * inv for k in range(3)]
        out = []
        for j in range(3):
            q, r = rel[(j + 1) % 3], rel[(j + 2) % 3]
            um, up = u[(j + 2) % 3], u[(j + 1) % 3]
            out.append(jnp.stack([um * q[..., 1] - up * r[..., 1],
                                  up * r[..., 0] - um * q[..., 0], gd * b[j]], -1))
        return jnp.where(ok[..., None, None], jnp.stack(out, -2), 0.0)  # [H, W, 3, 3]

    # a conditional is a fusion barrier on XLA:CPU (optimization barriers are removed there
    # before fusion): the per-pixel gradient is computed once, not again inside the scatter
    # (and with no pixel hit the gradient is zero either way)
    gc = jax.lax.cond(jnp.any(hit), per_pixel, lambda gb, gd: jnp.zeros(hit.shape + (3, 3), vp.dtype),
                      gb, gd)
    gvp = jnp.zeros_like(vp).at[vid.reshape(-1)].add(gc.reshape(-1, 3))
    return gvp, None, None


_hit_geometry = images_custom_vjp(_hit_geometry_fwd, _hit_geometry_bwd)


def _rasterize_group(v_pix, faces, H, W, sigma, window, soft_window, slots, soft_slots, cull):
    """G images rasterized together on one canvas. v_pix: [G, V, 3] pixels + depth ->
    Fragments [G, H, W]."""
    G = v_pix.shape[0]
    F = faces.shape[0]
    xyz = v_pix[:, faces].reshape(G * F, 3, 3)  # the faces of image g are rows g F .. g F + F - 1
    fidx = _hard_index(jax.lax.stop_gradient(xyz), F, H, W, window, slots, cull)
    hit = fidx >= 0
    # barycentrics and depth of the winning face, recomputed from its differentiable vertices
    b, depth = _hit_geometry(v_pix, hit_vertex_ids(faces, fidx), hit)
    mask = hit.astype(v_pix.dtype)
    if sigma > 0:
        alpha = 1.0 - _soft_transmittance(xyz[..., :2], F, H, W, soft_window, soft_slots, float(sigma), cull)
    else:
        alpha = mask
    return Fragments(fidx, b, depth, mask, alpha)


def static_number(name, value):
    """float(value) for an argument that shapes the program (window sizes, cut-offs); a TypeError
    naming it when it is a traced value (an argument of the caller's jit, grad or vmap)."""
    try:
        return float(value)
    except jax.errors.ConcretizationTypeError:
        raise TypeError(f"{name} must be a Python number, not a traced value: it is built into the "
                        f"renderer's program (window sizes, cut-offs), so under jit pass it as a static "
                        f"argument (static_argnums / static_argnames); each value compiles once") from None


def sharpness_ok(value: float, zero_ok: bool = False) -> bool:
    """Whether `value` is a usable sigma (or soft_blend's gamma): finite and at least
    SMALLEST_SHARPNESS (below it 1 / value overflows float32), or 0 when `zero_ok` (hard)."""
    return (zero_ok and value == 0) or SMALLEST_SHARPNESS <= value < math.inf


def _default_window():
    """Hard-pass window side: 4 on CPU, 8 on accelerators (4 not measured there).

    On XLA:CPU the hard pass of benchmarks/render.py's meshes (faces with median boxes of 3 and
    5 px) took 3.0-3.7 ms with 4 x 4 windows (15k and 23k windows, 0.24 M and 0.37 M pixels)
    against 4.7-5.6 ms with 8 x 8 (10k windows, 0.64 M and 0.61 M pixels)."""
    return 4 if jax.default_backend() == "cpu" else 8


def _default_soft_window(sigma, window):
    """Smallest multiple of 8 holding a `window`-px face dilated by the soft radius
    (multiples of 8 keep XLA's CPU loops vectorised)."""
    w = window + 2 * math.ceil((_SOFT_RADIUS2 * sigma) ** 0.5)
    return max(8, -(-w // 8) * 8)


# Pixels per round. CPU: rounds whose working set stays in cache are ~2.5x faster than one
# round over all faces (10k faces, 224^2: soft pass 24 ms vs 60 ms per image). Accelerators:
# one round holds all faces of a few images (a DECA head's 10k faces take 3.2 M soft-pass
# pixels per image), so a batch's working set stays bounded however large it is (below).
_CPU_ROUND_PIXELS = 2 ** 19
_ACCELERATOR_ROUND_PIXELS = 2 ** 24


def _default_slots(n_faces, window):
    """Windows per round: all faces (plus 25% for multi-window faces), at most
    _CPU_ROUND_PIXELS (CPU) or _ACCELERATOR_ROUND_PIXELS (others) pixels per round."""
    cap = _CPU_ROUND_PIXELS if jax.default_backend() == "cpu" else _ACCELERATOR_ROUND_PIXELS
    return max(min(n_faces + n_faces // 4, cap // (window * window)), 1)


def rasterize(verts_img, faces, image_size, sigma=1.0, window=None, soft_window=None, slots=None,
              batch_size=None, cull_backfaces=False, perspective=False):
    """Rasterize a batch of meshes given in DECA image space.

    verts_img: [B, V, 3] image space ([-1, 1], y down; z smaller = nearer), e.g. DECA's
      transformed vertices; faces: [F, 3] int vertex indices in [0, V)
      (`checks.mesh_faces`); image_size: (H, W) static.
    perspective: False for an orthographic camera (DECA's `orth_proj`): z is affine in screen
      space and is interpolated with the screen-space barycentrics. True for `perspective_proj`'s
      output, whose z is the view distance d > 0: under a pinhole camera 1 / d is the affine
      quantity, so the z-test runs on -1 / d and bary and depth come out perspective-correct
      (the barycentrics of the surface point seen at the pixel centre, depth its distance).
      Interpolating d itself showed faces hidden behind a receding one and gave depths several
      times too large.
    sigma: soft-coverage sharpness in pixel^2 (0 -> alpha is the hard mask; else finite and at
      least SMALLEST_SHARPNESS, float32's smallest normal number, 1.18e-38). A Python number,
      static under jit (it sets the soft pass's window size): each value compiles once.
    cull_backfaces: skip the faces that turn away from the viewer (`front_facing`) in both
      passes, as PyTorch3D's option of that name does; they are neither hit nor part of the
      soft coverage (so alpha inside a closed mesh is lower). Off by default, as in DECA. On a
      closed mesh the hard result is the same and about half the faces have windows: on CPU,
      fewer rounds (benchmarks/render.py, 224 px: forward+backward 17.7 -> 13.1 ms for the
      sphere, 16.9 -> 14.0 for the demo head); on accelerators a round still has slots for
      all faces, so there it saves little or nothing (not measured).
    batch_size: images rasterized together, as one canvas of batch_size images whose faces
      are one list; groups run one after another (lax.map). Default (None): 1 on CPU, where
      the forward + backward of a whole batch of 32 (benchmarks/render.py image, 10k faces)
      ran 8-30% slower than one image at a time on 2 cores; the whole batch on
      accelerators, which then run all images' faces in parallel instead of looping over
      the images.
    window, soft_window, slots: speed knobs only (results do not depend on them or on
      batch_size, but for the winner among copies of a face; module docstring): side in pixels
      of the per-face windows of the hard pass (default 4 on CPU, 8 on accelerators) and of the
      soft pass (default: `window` plus the soft radius on both sides, rounded up to a multiple
      of 8), and windows processed per round in both passes
      (default: all faces of the group plus 25%, at most 2^19 pixels per round on CPU and
      2^24 on accelerators).
    On a device mesh: under a context mesh (`jax.set_mesh`, `jax.sharding.use_abstract_mesh`;
      `jaxdeca.train.steps` traces its steps so) whose devices split B evenly, the batch is
      split over all its devices (shard_map) and each rasterizes its own images; XLA's
      partitioner cannot split the data-dependent windows itself and would rasterize the
      whole batch on every device. batch_size then counts each device's images.
    Returns Fragments ([B, H, W] ...): empty ones for an empty batch (B = 0), background at every
    pixel (face_index -1, alpha 0) for a mesh with no faces (F = 0).
    Memory per group: O(slots * window^2) for the hard pass and O(slots * soft_window^2)
    for the soft pass, never O(pixels * faces). XLA's accounting for the forward + backward
    of the alpha sum, 10k faces at 224 x 224, sigma = 1, batch 32: 30 MiB one image at a
    time (CPU default), 421 MiB with all 32 images on one canvas in rounds of 2^24 pixels
    (the accelerators' default, compiled for the CPU).
    Precision: float32 at least. Half-precision vertices (bfloat16 holds 8 significant bits: a
      pixel position near 200 to within 1 px) are promoted, so the outputs are float32 then.
    """
    H, W = image_size
    sigma = static_number("sigma", sigma)
    if not sharpness_ok(sigma, zero_ok=True):
        raise ValueError(f"rasterize needs sigma = 0 or a finite sigma >= {SMALLEST_SHARPNESS:.3g} "
                         f"(float32's smallest normal number: below it 1 / sigma overflows), got {sigma}")
    verts_img = checks.per_vertex(verts_img, "rasterize", "verts_img", 3)
    verts_img = verts_img.astype(jnp.promote_types(verts_img.dtype, jnp.float32))
    faces = checks.mesh_faces(faces, verts_img.shape[1], "rasterize")
    if perspective:  # the z-buffer on -1 / d, then the barycentrics made perspective-correct
        inverse = jnp.concatenate([verts_img[..., :2], -1.0 / verts_img[..., 2:3]], -1)
        frags = rasterize(inverse, faces, image_size, sigma, window, soft_window, slots, batch_size, cull_backfaces)
        return _perspective_correct(frags, verts_img[..., 2], faces)
    v_pix = to_pixels(verts_img, (H, W))
    window = int(window) if window else _default_window()
    soft_window = int(soft_window) if soft_window else _default_soft_window(float(sigma), window)
    run = functools.partial(_rasterize_batch, H=H, W=W, sigma=sigma, window=window,
                            soft_window=soft_window, slots=slots, batch_size=batch_size,
                            cull=bool(cull_backfaces))
    mesh, axes = batch_mesh_axes(v_pix.shape[0])
    if axes:
        P = jax.sharding.PartitionSpec
        v_pix = split_batch(v_pix, mesh, axes)
        return jax.shard_map(run, mesh=mesh, in_specs=(P(axes), P()), out_specs=P(axes),
                             check_vma=False)(v_pix, faces)
    return run(v_pix, faces)


def _perspective_correct(frags, distance, faces):
    """Fragments rasterized on -1 / d (screen-space affine under a pinhole camera) -> the
    barycentrics and depth of the surface point at each pixel centre.

    distance: [B, V] view distances d of the vertices. With b_k the screen-space barycentrics,
    the surface point's are b_k / d_k / q and its distance 1 / q, q = sum_k b_k / d_k (the
    interpolated 1 / d). Plain jnp: autodiff differentiates it, and `rasterize`'s own VJP the
    screen-space part."""
    if faces.shape[0] == 0:  # background everywhere: nothing to correct
        return frags
    hit = frags.face_index >= 0
    vid = hit_vertex_ids(faces, frags.face_index)  # [B, H, W, 3]
    d = jax.vmap(lambda dist, v: dist[v])(*split_as_one((distance, vid)))
    d = jnp.where(hit[..., None], d, 1.0)  # background (face 0's corners, maybe NaN) out of the sums
    w = frags.bary / d
    q = jnp.where(hit, w.sum(-1), 1.0)
    bary = jnp.where(hit[..., None], w / q[..., None], 0.0)
    depth = jnp.where(hit, 1.0 / q, 0.0)
    return dataclasses.replace(frags, bary=bary, depth=depth)


def _rasterize_batch(v_pix, faces, H, W, sigma, window, soft_window, slots, batch_size, cull):
    """v_pix: [B, V, 3] pixels + depth -> Fragments [B, H, W], in groups of batch_size images."""
    B, F = v_pix.shape[0], faces.shape[0]
    if F == 0:  # no face covers a pixel: every pixel is background
        split = batch_sharding(v_pix)
        zeros = jnp.zeros((B, H, W), v_pix.dtype, out_sharding=split)
        return Fragments(jnp.full((B, H, W), -1, jnp.int32, out_sharding=split),
                         jnp.zeros((B, H, W, 3), v_pix.dtype, out_sharding=split), zeros, zeros, zeros)
    if batch_size is None:
        batch_size = 1 if jax.default_backend() == "cpu" else B
    G = max(1, min(int(batch_size), B))
    hard_slots = int(slots) if slots else _default_slots(G * F, window)
    soft_slots = int(slots) if slots else _default_slots(G * F, soft_window)
    fn = functools.partial(_rasterize_group, faces=faces, H=H, W=W, sigma=sigma, window=window,
                           soft_window=soft_window, slots=hard_slots, soft_slots=soft_slots, cull=cull)
    return map_groups(fn, G, v_pix)
