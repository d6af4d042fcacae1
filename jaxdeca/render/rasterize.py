"""Tiled triangle rasterizer in pure jax.numpy: hard z-buffer plus soft coverage.

Scheme (per image). The image is split into `tile` x `tile` pixel tiles. A face is binned
to every tile its (margin-dilated) screen bounding box touches; ranks = cumsum of that
[tiles, F] boolean table give each tile an ordered face list without materialising
anything of size pixels x faces. Faces are then consumed `capacity` at a time per tile
(slot k of chunk c is found with searchsorted on the ranks), and a running z-buffer keeps
the nearest face; the loop runs until the fullest tile is exhausted, so the result is
exact for any triangle size and count. Memory per image is O(tiles * F) ints for the
table plus O(H * W * capacity) floats for one chunk.

Differentiability:
* the winning face index is found without gradients; barycentrics and depth are then
  recomputed from that face's (differentiable) vertices, so gradients reach vertex
  positions through barycentrics (nvdiffrast-style interior gradients);
* soft coverage alpha = 1 - prod_j (1 - sigmoid(delta_j d_j^2 / sigma)) (SoftRas, d_j the
  pixel's distance to face j, delta_j = +1 inside, -1 outside, sigma in pixel^2) moves
  silhouette edges. Its log is a sum over faces, so it is accumulated over the same
  chunks; a custom VJP replays the chunks in the backward pass (while loops are not
  reverse differentiable). Faces farther than sqrt(16 sigma) pixels are dropped (their
  term is < 1e-7). sigma -> 0 recovers the hard mask.
No back-face culling: the nearest depth wins whatever the winding (as in DECA).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxdeca.render.camera import to_pixels

_EPS_AREA = 1e-10


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


def _seg_dist2(p, a, b):
    ab = b - a
    t = jnp.clip(jnp.sum((p - a) * ab, -1) / jnp.maximum(jnp.sum(ab * ab, -1), 1e-12), 0.0, 1.0)
    d = p - a - t[..., None] * ab
    return jnp.sum(d * d, -1)


def _tiles(H, W, tile):
    nty, ntx = -(-H // tile), -(-W // tile)
    ty, tx = jnp.meshgrid(jnp.arange(nty), jnp.arange(ntx), indexing="ij")
    oy, ox = jnp.meshgrid(jnp.arange(tile), jnp.arange(tile), indexing="ij")
    py = ty.reshape(-1, 1) * tile + oy.reshape(1, -1) + 0.5
    px = tx.reshape(-1, 1) * tile + ox.reshape(1, -1) + 0.5
    return nty, ntx, jnp.stack([px, py], -1).astype(jnp.float32)  # [T, P, 2]


def _bin(xy, valid_face, H, W, tile, margin):
    """Ranks of faces per tile. xy: [F, 3, 2] pixels. Returns (ranks [T, F], counts [T])."""
    nty, ntx = -(-H // tile), -(-W // tile)
    lo = xy.min(1) - margin
    hi = xy.max(1) + margin
    t0 = jnp.arange(ntx) * tile + 0.5
    ox = (lo[None, :, 0] <= t0[:, None] + tile - 1) & (hi[None, :, 0] >= t0[:, None])
    s0 = jnp.arange(nty) * tile + 0.5
    oy = (lo[None, :, 1] <= s0[:, None] + tile - 1) & (hi[None, :, 1] >= s0[:, None])
    over = (oy[:, None, :] & ox[None, :, :] & valid_face[None, None, :]).reshape(nty * ntx, -1)
    ranks = jnp.cumsum(over.astype(jnp.int32), axis=-1)
    return ranks, ranks[:, -1]


def _chunk_faces(ranks, counts, c, capacity):
    q = c * capacity + jnp.arange(1, capacity + 1, dtype=jnp.int32)
    fidx = jax.vmap(lambda r: jnp.searchsorted(r, q, side="left"))(ranks)
    valid = q[None, :] <= counts[:, None]
    return jnp.where(valid, fidx, 0).astype(jnp.int32), valid


def _soft_term(fv, valid, pix, sigma):
    """Sum over chunk faces of log(1 - D_j). fv: [T, K, 3, 2]; pix: [T, P, 2] -> [T, P]."""
    p = pix[:, :, None, :]
    v0, v1, v2 = (fv[:, None, :, i, :] for i in range(3))
    b, area = barycentric(p, v0, v1, v2)
    inside = jnp.all(b >= 0, -1) & (jnp.abs(area) > _EPS_AREA)
    d2 = jnp.minimum(jnp.minimum(_seg_dist2(p, v0, v1), _seg_dist2(p, v1, v2)), _seg_dist2(p, v2, v0))
    x = jnp.where(inside, d2, -d2) / sigma
    ok = valid[:, None, :] & (jnp.abs(area) > _EPS_AREA)
    return jnp.sum(jnp.where(ok, -jax.nn.softplus(x), 0.0), -1)


def _n_chunks(counts, capacity):
    return (jnp.max(counts) + capacity - 1) // capacity


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _soft_logt(xy, H, W, tile, capacity, sigma):
    return _soft_logt_fwd(xy, H, W, tile, capacity, sigma)[0]


def _soft_setup(xy, H, W, tile, sigma):
    valid_face = jnp.all(jnp.isfinite(xy), axis=(1, 2))
    return _bin(xy, valid_face, H, W, tile, jnp.sqrt(16.0 * sigma))


def _soft_logt_fwd(xy, H, W, tile, capacity, sigma):
    nty, ntx, pix = _tiles(H, W, tile)
    ranks, counts = _soft_setup(xy, H, W, tile, sigma)

    def body(carry):
        c, acc = carry
        fidx, valid = _chunk_faces(ranks, counts, c, capacity)
        return c + 1, acc + _soft_term(xy[fidx], valid, pix, sigma)

    n = _n_chunks(counts, capacity)
    _, acc = jax.lax.while_loop(lambda cr: cr[0] < n, body, (jnp.int32(0), jnp.zeros(pix.shape[:2])))
    return _untile(acc, nty, ntx, tile, H, W), xy


def _soft_logt_bwd(H, W, tile, capacity, sigma, xy, g):
    nty, ntx, pix = _tiles(H, W, tile)
    ranks, counts = _soft_setup(xy, H, W, tile, sigma)
    gt = _tile(g, nty, ntx, tile)

    def body(carry):
        c, gxy = carry
        fidx, valid = _chunk_faces(ranks, counts, c, capacity)
        _, vjp = jax.vjp(lambda fv: _soft_term(fv, valid, pix, sigma), xy[fidx])
        (gfv,) = vjp(gt)
        gfv = jnp.where(valid[..., None, None], gfv, 0.0)
        return c + 1, gxy.at[fidx].add(gfv)

    n = _n_chunks(counts, capacity)
    _, gxy = jax.lax.while_loop(lambda cr: cr[0] < n, body, (jnp.int32(0), jnp.zeros_like(xy)))
    return (gxy,)


_soft_logt.defvjp(_soft_logt_fwd, _soft_logt_bwd)


def _untile(a, nty, ntx, tile, H, W):
    a = a.reshape(nty, ntx, tile, tile).transpose(0, 2, 1, 3).reshape(nty * tile, ntx * tile)
    return a[:H, :W]


def _tile(a, nty, ntx, tile):
    H, W = a.shape
    a = jnp.pad(a, ((0, nty * tile - H), (0, ntx * tile - W)))
    return a.reshape(nty, tile, ntx, tile).transpose(0, 2, 1, 3).reshape(nty * ntx, tile * tile)


def _hard_index(xyz, H, W, tile, capacity):
    """Nearest face per pixel (no gradients). xyz: [F, 3, 3] pixels + depth -> [H, W] int32."""
    nty, ntx, pix = _tiles(H, W, tile)
    valid_face = jnp.all(jnp.isfinite(xyz), axis=(1, 2))
    ranks, counts = _bin(xyz[..., :2], valid_face, H, W, tile, 0.0)

    def body(carry):
        c, zbuf, fbuf = carry
        fidx, valid = _chunk_faces(ranks, counts, c, capacity)
        fv = xyz[fidx]  # [T, K, 3, 3]
        p = pix[:, :, None, :]
        b, area = barycentric(p, *(fv[:, None, :, i, :2] for i in range(3)))
        inside = jnp.all(b >= 0, -1) & (jnp.abs(area) > _EPS_AREA) & valid[:, None, :]
        z = jnp.sum(b * fv[:, None, :, :, 2], -1)
        z = jnp.where(inside, z, jnp.inf)
        k = jnp.argmin(z, -1)
        zk = jnp.take_along_axis(z, k[..., None], -1)[..., 0]
        fk = jnp.take_along_axis(fidx, k, -1)
        better = zk < zbuf
        return c + 1, jnp.where(better, zk, zbuf), jnp.where(better, fk, fbuf)

    n = _n_chunks(counts, capacity)
    init = (jnp.int32(0), jnp.full(pix.shape[:2], jnp.inf), jnp.full(pix.shape[:2], -1, jnp.int32))
    _, _, fbuf = jax.lax.while_loop(lambda cr: cr[0] < n, body, init)
    return _untile(fbuf, nty, ntx, tile, H, W)


def _rasterize_one(v_pix, faces, H, W, sigma, tile, capacity):
    xyz = v_pix[faces]  # [F, 3, 3]
    fidx = _hard_index(jax.lax.stop_gradient(xyz), H, W, tile, capacity)
    hit = fidx >= 0
    fv = xyz[jnp.maximum(fidx, 0)]  # [H, W, 3, 3]
    ys, xs = jnp.meshgrid(jnp.arange(H) + 0.5, jnp.arange(W) + 0.5, indexing="ij")
    p = jnp.stack([xs, ys], -1).astype(v_pix.dtype)
    b, _ = barycentric(p, fv[..., 0, :2], fv[..., 1, :2], fv[..., 2, :2])
    b = jnp.where(hit[..., None], b, 0.0)
    depth = jnp.sum(b * fv[..., 2], -1)
    mask = hit.astype(v_pix.dtype)
    if sigma > 0:
        alpha = 1.0 - jnp.exp(_soft_logt(xyz[..., :2], H, W, tile, capacity, float(sigma)))
    else:
        alpha = mask
    return Fragments(fidx, b, depth, mask, alpha)


def rasterize(verts_img, faces, image_size, sigma=1.0, tile=8, capacity=32):
    """Rasterize a batch of meshes given in DECA image space.

    verts_img: [B, V, 3] image space ([-1, 1], y down; z smaller = nearer), e.g. DECA's
      transformed vertices; faces: [F, 3] int; image_size: (H, W) static.
    sigma: soft-coverage sharpness in pixel^2 (0 -> alpha is the hard mask).
    tile, capacity: tile side in pixels and faces per tile per chunk (speed knobs only;
      results do not depend on them).
    Returns Fragments ([B, H, W] ...). Images are processed one after another (lax.map) to
    bound memory; wrap in jax.vmap for other layouts.
    """
    H, W = image_size
    v_pix = to_pixels(verts_img, (H, W))
    faces = jnp.asarray(faces, jnp.int32)
    fn = functools.partial(_rasterize_one, faces=faces, H=H, W=W, sigma=sigma, tile=tile, capacity=capacity)
    return jax.lax.map(fn, v_pix)
