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
from jaxdeca.render.interpolate import face_vertices, vertex_normals
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


def displacement_to_normals(uv_z, uv_coarse_vertices, uv_coarse_normals, uv_face_eye_mask,
                            fixed_displacement, dense_faces=None):
    """DECA displacement2normal.

    uv_z: [B, R, R, 1] displacement; uv_coarse_vertices / normals: [B, R, R, 3] (world2uv of
    the coarse mesh, treated as constants like DECA's .detach()); uv_face_eye_mask: [R, R];
    fixed_displacement: [R, R]. Returns uv_detail_normals [B, R, R, 3].
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
        dense_faces = dense_grid_faces(R, R)
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
