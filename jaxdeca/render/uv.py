"""UV space: rasterize the mesh by its UVs, world2uv, displacement -> detail normals.

UV image layout follows DECA: uv_coords [T, 2] in [0, 1] with v up become image space
(2u - 1, -(2v - 1)), so row 0 of a UV map is v = 1. Topology is shared by the batch, so
the UV rasterization is done once (no gradients needed: UVs are constants) and reused.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdeca import xla_options
from jaxdeca.render import checks
from jaxdeca.render.interpolate import at_least_float32, corner_cross, face_vertices, unit_vectors, vertex_normals
from jaxdeca.render.rasterize import rasterize
from jaxdeca.render.texture import grid_sample


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class UVRaster:
    """UV-space fragments shared by a batch. face_index: [R, R] int32; bary: [R, R, 3]; mask: [R, R]."""
    face_index: jax.Array
    bary: jax.Array
    mask: jax.Array


def uv_to_image(uv_coords):
    """uv_coords: [T, 2] in [0, 1], v up -> [T, 2] DECA image space / grid_sample grid (y down).
    A numpy array gives a numpy array (no device program), a jax array a jax array, same bits."""
    return (uv_coords * 2.0 - 1.0) * np.asarray([1.0, -1.0], np.float32)


def uv_rasterize(uv_coords, uv_faces, size=256):
    """Rasterize the UV layout. uv_coords: [T, 2]; uv_faces: [F, 3] -> UVRaster at size x size.

    Runs as one jitted setup program (`xla_options.setup_jit`: on CPU the same bits as op by op,
    where the rasterizer's eager operations were about 90 small XLA compilations, 3.5 s)."""
    if np.ndim(uv_coords) != 2 or np.shape(uv_coords)[1] != 2:
        raise ValueError(f"uv_rasterize: uv_coords must be [T, 2], got shape {tuple(np.shape(uv_coords))}")
    uv_faces = checks.mesh_faces(uv_faces, np.shape(uv_coords)[0], "uv_rasterize", "uv_faces")
    return _uv_rasterize(uv_coords, uv_faces, int(size))


@functools.partial(xla_options.setup_jit, static_argnums=2)
def _uv_rasterize(uv_coords, uv_faces, size):
    g = uv_to_image(jnp.asarray(uv_coords, jnp.float32))
    v = jnp.concatenate([g, jnp.ones_like(g[:, :1])], -1)[None]
    fr = rasterize(jax.lax.stop_gradient(v), jnp.asarray(uv_faces, jnp.int32), (size, size), sigma=0.0)
    return UVRaster(fr.face_index[0], fr.bary[0], fr.mask[0])


def world2uv(attr, faces, uvr):
    """DECA Renderer.world2uv: per-vertex attr [B, V, C] -> UV map [B, R, R, C] (0 outside)."""
    fa = face_vertices(attr, faces)  # [B, F, 3, C]
    fa = fa[:, jnp.maximum(uvr.face_index, 0)]  # [B, R, R, 3, C]
    out = jnp.sum(uvr.bary[None, ..., None] * fa, -2)
    return out * uvr.mask[None, ..., None]


def dense_grid_faces(h, w, margin_x=2, margin_y=5):
    """DECA util.generate_triangles: triangles of the h x w pixel grid, with margins. -> [F, 3] int32."""
    xs, ys = np.meshgrid(np.arange(margin_x, w - 1 - margin_x), np.arange(margin_y, h - 1 - margin_y), indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    t0 = np.stack([ys * w + xs, ys * w + xs + 1, (ys + 1) * w + xs], -1)
    t1 = np.stack([ys * w + xs + 1, (ys + 1) * w + xs + 1, (ys + 1) * w + xs], -1)
    tris = np.stack([t0, t1], 1).reshape(-1, 3)  # DECA appends triangle0, triangle1 per cell
    return tris[:, [0, 2, 1]].astype(np.int32)


def grid_normals(pts, margin_x=2, margin_y=5):
    """Normals of the dense grid mesh: `vertex_normals(pts.reshape(B, H * W, 3),
    dense_grid_faces(H, W, margin_x, margin_y), scale_free=True)` as [B, H, W, 3], the same
    cross products (to float rounding: the sums are added in another order).

    Each grid cell (y, x) of DECA's margins holds the triangles (p00, p10, p01) and
    (p01, p10, p11) (pYX = pts[:, y + Y, x + X]); every corner's cross product is computed for
    all cells at once from shifted slices and added to the vertices by padding, so no gather or
    scatter runs: forward+backward of `displacement_to_normals` on the 2-core CI machine took
    6.3 ms for 32 maps of 64 x 64 (24.5 ms through `vertex_normals`) and 107 ms for 16 of
    256 x 256 (369 ms). pts: [B, H, W, 3] -> [B, H, W, 3] (computed in float32 at least, as
    `vertex_normals`); vertices of no cell (the margins) get 0.
    """
    dtype = pts.dtype
    pts = at_least_float32(pts)
    _, H, W, _ = pts.shape
    y0, y1 = margin_y, H - 1 - margin_y  # the cells' rows and columns
    x0, x1 = margin_x, W - 1 - margin_x
    if y1 <= y0 or x1 <= x0:
        return jnp.zeros(pts.shape, dtype)

    def corner(dy, dx):  # the (y + dy, x + dx) corner of every cell: 3 x [B, y1 - y0, x1 - x0]
        return tuple(pts[:, y0 + dy:y1 + dy, x0 + dx:x1 + dx, k] for k in range(3))

    p00, p10, p01, p11 = corner(0, 0), corner(1, 0), corner(0, 1), corner(1, 1)
    # (receiving corner, its cross product) in vertex_normals' order: corner 1 of both
    # triangles, then corner 2, then corner 0 (dense_grid_faces: (p00, p10, p01), (p01, p10, p11))
    parts = [((1, 0), corner_cross(p10, p01, p00)), ((1, 0), corner_cross(p10, p11, p01)),
             ((0, 1), corner_cross(p01, p00, p10)), ((1, 1), corner_cross(p11, p01, p10)),
             ((0, 0), corner_cross(p00, p10, p01)), ((0, 1), corner_cross(p01, p10, p11))]
    n = []
    for k in range(3):
        n.append(sum(jnp.pad(c[k], ((0, 0), (y0 + dy, H - y1 - dy), (x0 + dx, W - x1 - dx)))
                     for (dy, dx), c in parts))
    return unit_vectors(jnp.stack(n, -1)).astype(dtype)


def displacement_to_normals(uv_z, uv_coarse_vertices, uv_coarse_normals, uv_face_eye_mask,
                            fixed_displacement, dense_faces=None):
    """DECA displacement2normal.

    uv_z: [B, R, R, 1] displacement; uv_coarse_vertices / normals: [B, R, R, 3] (world2uv of
    the coarse mesh, treated as constants like DECA's .detach()); uv_face_eye_mask: [R, R];
    fixed_displacement: [R, R]. Returns uv_detail_normals [B, R, R, 3].
    dense_faces: None for DECA's grid mesh (`dense_grid_faces(R, R)`, computed by `grid_normals`),
    or [Fd, 3] other triangles of the R x R texels (`vertex_normals`).
    The dense grid's normals are normalised whatever their length (`vertex_normals`'
    scale_free): DECA's eps 1e-6 m^2 exceeds the area-weighted sums of texels ~0.4 mm apart,
    which left them shorter than unit (on the demo head: median 0.35 at 1024 px; at 256 px 1-2%
    of the face's texels, down to 0.5 for zero codes and 0.04 for random ones), darkening the
    detail shading by that factor.
    """
    B, R = uv_z.shape[0], uv_z.shape[1]
    cv = jax.lax.stop_gradient(uv_coarse_vertices)
    cn = jax.lax.stop_gradient(uv_coarse_normals)
    m = uv_face_eye_mask[None, ..., None]
    z = uv_z * m
    pts = cv + z * cn + fixed_displacement[None, ..., None] * cn
    if dense_faces is None:
        n = grid_normals(pts)
    else:
        n = vertex_normals(pts.reshape(B, R * R, 3), jnp.asarray(dense_faces), scale_free=True).reshape(B, R, R, 3)
    return n * m + cn * (1.0 - m)


def detail_vertices(uv_z, uv_coarse_vertices, uv_coarse_normals, fixed_displacement):
    """DECA util.upsample_mesh (the detailed mesh it saves): each texel's position plus
    (displacement + fixed displacement) along its interpolated vertex normal NORMALISED, with the
    displacement not masked. (displacement2normal, for the detail normals, offsets a masked
    displacement along the unnormalised interpolated normal: `displacement_to_normals`.)

    uv_z: [B, R, R, 1]; uv_coarse_vertices / normals: [B, R, R, 3] (world2uv, 0 where no face
    covers the texel); fixed_displacement: [R, R]. Returns [B, R, R, 3], 0 outside the coverage
    (the zero normals stay 0 with finite gradients: double where).
    """
    sq = jnp.sum(uv_coarse_normals * uv_coarse_normals, axis=-1, keepdims=True)
    ok = sq > 0
    unit = jnp.where(ok, uv_coarse_normals * jax.lax.rsqrt(jnp.where(ok, sq, 1.0)), 0.0)
    return uv_coarse_vertices + (uv_z + fixed_displacement[None, ..., None]) * unit


def extract_texture(images, uv_pverts):
    """DECA texture extraction: sample images [B, H, W, C] at uv_pverts [B, R, R, >=2]
    (world2uv of the transformed vertices, image space) -> [B, R, R, C]."""
    return grid_sample(images, uv_pverts[..., :2])
