"""One-call DECA render of a decoded batch (DECA's Renderer.forward + render_shape +
render_depth + world2uv + displacement2normal, in that order of its decode())."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxdeca.render.interpolate import interpolate, interpolate_face_attr, vertex_normals
from jaxdeca.render.rasterize import rasterize
from jaxdeca.render.shading import SHAPE_GREY, directional_shading, sh_shading
from jaxdeca.render.texture import grid_sample
from jaxdeca.render.uv import (UVRaster, displacement_to_normals, uv_rasterize,
                               uv_to_image, world2uv)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Topology:
    """Mesh topology and UV data for rendering (a pytree of arrays).

    faces: [F, 3] i32; uv_faces: [F, 3] i32; uv_grid: [F, 3, 2] per-corner UVs in grid space;
    uv_raster: UVRaster at R x R; uv_face_eye_mask, fixed_displacement: [R, R]. (The dense
    R x R grid mesh of the detail normals needs no array: `render.grid_normals`.)
    """
    faces: jax.Array
    uv_faces: jax.Array
    uv_grid: jax.Array
    uv_raster: UVRaster
    uv_face_eye_mask: jax.Array
    fixed_displacement: jax.Array


def _check(d, key, ndim, where):
    if key not in d:
        raise KeyError(f"{where}: missing key '{key}'")
    a = np.asarray(d[key])
    if a.ndim != ndim:
        raise ValueError(f"{where}: key '{key}' has shape {a.shape}, expected {ndim} dims")
    return a


def make_topology(model, uv_size=256, where="FLAME npz"):
    """Build a Topology from a FLAME npz dict (CONTRIBUTING schema). Missing optional masks
    default to ones (face-eye mask) and zeros (fixed displacement)."""
    faces = _check(model, "faces", 2, where).astype(np.int32)
    uv_coords = _check(model, "uv_coords", 2, where).astype(np.float32)
    uv_faces = _check(model, "uv_faces", 2, where).astype(np.int32)
    if uv_faces.shape != faces.shape:
        raise ValueError(f"{where}: 'uv_faces' shape {uv_faces.shape} != 'faces' shape {faces.shape}")
    mask = uv_face_eye_mask(model, uv_size, where)
    fixed = fixed_displacement(model, uv_size, where)
    put = jax.device_put  # a transfer; jnp.asarray compiles a small program per new shape
    return Topology(
        faces=put(faces), uv_faces=put(uv_faces), uv_grid=put(uv_to_image(uv_coords)[uv_faces]),  # on the host
        uv_raster=uv_rasterize(uv_coords, uv_faces, uv_size),
        uv_face_eye_mask=put(mask), fixed_displacement=put(fixed))


def _uv_map(model, key, uv_size, fill, where):
    """The model's square UV map `key` (float32), or [uv_size, uv_size] of `fill` when absent."""
    if key not in model:
        return np.full((uv_size, uv_size), fill, np.float32)
    a = np.asarray(model[key], np.float32)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{where}: '{key}' has shape {a.shape}, expected a square UV map "
                         f"such as {(uv_size, uv_size)}")
    return a


def uv_face_eye_mask(model, uv_size=256, where="FLAME npz"):
    """The FLAME dict's UV face-eye mask at [uv_size, uv_size] float32, as Topology holds it:
    ones when the dict has none; of another size (small test/demo configs), area-resized and
    thresholded at 0.5."""
    mask = _uv_map(model, "uv_face_eye_mask", uv_size, 1.0, where)
    if mask.shape[0] != uv_size:
        mask = (_resize_area(mask, uv_size) > 0.5).astype(np.float32)
    return mask


def fixed_displacement(model, uv_size=256, where="FLAME npz"):
    """The FLAME dict's fixed displacement at [uv_size, uv_size] float32 (zeros when absent,
    area-resized when its size differs), as Topology holds it."""
    fixed = _uv_map(model, "fixed_displacement", uv_size, 0.0, where)
    return fixed if fixed.shape[0] == uv_size else _resize_area(fixed, uv_size)


def _resize_area(a, size):
    """[R, R] -> [size, size] float32 by area averaging (bilinear when enlarging)."""
    import cv2
    interp = cv2.INTER_AREA if size < a.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(np.asarray(a, np.float32), (size, size), interpolation=interp)


def depth_image(trans_verts, faces, frags):
    """DECA render_depth: z normalised per image so that its nearest vertex is 1 and its
    farthest 0 (DECA normalises over the batch, but its demo decodes one image at a time).
    trans_verts: [B, V, 3] -> [B, H, W] (0 on background)."""
    tz = trans_verts[..., 2]
    hi, lo = tz.max(-1, keepdims=True), tz.min(-1, keepdims=True)
    z = (hi - tz) / jnp.maximum(hi - lo, 1e-12)
    return interpolate(z[..., None], faces, frags)[..., 0]


def face_texture(uv_photo, uv_texture, uv_face_eye_mask):
    """DECA's extracted texture (decode with extract_tex, `uv_texture_gt`): the photo sampled
    into UV inside the face-eye mask, the model's texture (albedo x SH shading, render's
    'uv_texture') outside it. uv_photo, uv_texture: [B, R, R, 3]; uv_face_eye_mask: [R, R]
    -> [B, R, R, 3]."""
    m = uv_face_eye_mask[..., None]
    return uv_photo[..., :3] * m + uv_texture[..., :3] * (1.0 - m)


def shape_image(normal_images, trans_normal_images, mask):
    """DECA render_shape: grey 180/255 x mean directional shading of world normals, masked by
    coverage and trans normal z < 0.15. normal_images, trans_normal_images: [B, H, W, 3] (world and
    image-space normals); mask: [B, H, W] coverage -> [B, H, W, 3]."""
    alpha = mask * (trans_normal_images[..., 2] < 0.15)
    return SHAPE_GREY * directional_shading(normal_images) * alpha[..., None]


def image_geometry(verts, trans_verts, topo, image_size=(224, 224), sigma=1.0, cull_backfaces=False):
    """The geometry's part of a render: (frags, world vertex normals [B, V, 3], the pixels' UVs
    grid [B, H, W, 2], their normals normal_images [B, H, W, 3]). verts, trans_verts: [B, V, 3].
    sigma, cull_backfaces: as `rasterize`."""
    frags = rasterize(trans_verts, topo.faces, image_size, sigma=sigma, cull_backfaces=cull_backfaces)
    normals = vertex_normals(verts, topo.faces)
    uv_grid = jnp.broadcast_to(topo.uv_grid, (verts.shape[0],) + topo.uv_grid.shape)
    return frags, normals, interpolate_face_attr(uv_grid, frags), interpolate(normals, topo.faces, frags)


def shade_image(albedo_images, light, normal_images, mask):
    """DECA's rendered image: the albedo at the pixels (grid_sample of the UV albedo at the
    pixels' UVs, image_geometry's grid) x SH shading of their normals x the hard mask.
    albedo_images, normal_images: [B, H, W, 3]; light: [B, 9, 3]; mask: [B, H, W] -> [B, H, W, 3]."""
    return albedo_images * sh_shading(normal_images, light) * mask[..., None]


def render(verts, trans_verts, albedo, light, topo, image_size=(224, 224), uv_z=None, sigma=1.0,
           cull_backfaces=False):
    """Render a DECA decode.

    verts: [B, V, 3] world; trans_verts: [B, V, 3] image space (orth_proj output);
    albedo: [B, R, R, 3] UV texture; light: [B, 9, 3] SH; topo: Topology;
    uv_z: optional [B, R, R, 1] displacement. sigma: soft-coverage sharpness (pixel^2), a Python
    number (static under jit), as `rasterize`'s.
    cull_backfaces: leave out the faces turned away from the viewer (`rasterize`); off as in DECA.
    Returns dict: images [B,H,W,3] (albedo x SH shading x hard mask, DECA), albedo_images
    [B,H,W,3] (the albedo at the pixels, not masked: background pixels, whose grid is 0, hold
    the albedo at the UV centre, as DECA's trainer samples it for the identity loss), mask [B,H,W],
    alpha [B,H,W] (soft coverage, for silhouette gradients), grid [B,H,W,2], normal_images,
    pos_mask [B,H,W], shape_images (for display: its normals are detached, as in DECA's
    render_shape, so no gradient reaches the geometry), depth_images [B,H,W], uv_pverts, uv_coarse_vertices,
    uv_coarse_normals [B,R,R,3], normals [B,V,3], trans_normals [B,V,3]; with uv_z also
    uv_detail_normals [B,R,R,3], uv_shading, uv_texture and shape_detail_images.
    """
    faces = topo.faces
    frags, normals, grid, normal_images = image_geometry(verts, trans_verts, topo, image_size, sigma,
                                                         cull_backfaces)
    mask = frags.mask
    tnormals = vertex_normals(trans_verts, faces)
    tnormal_images = interpolate(tnormals, faces, frags)
    albedo_images = grid_sample(albedo, grid)
    images = shade_image(albedo_images, light, normal_images, mask)
    out = dict(
        images=images, albedo_images=albedo_images, mask=mask, alpha=frags.alpha, grid=grid,
        normal_images=normal_images,
        pos_mask=(tnormal_images[..., 2] < -0.05).astype(mask.dtype),
        shape_images=shape_image(jax.lax.stop_gradient(normal_images), tnormal_images, mask),
        depth_images=depth_image(trans_verts, faces, frags),
        uv_pverts=world2uv(trans_verts, faces, topo.uv_raster),
        uv_coarse_vertices=world2uv(verts, faces, topo.uv_raster),
        uv_coarse_normals=world2uv(normals, faces, topo.uv_raster),
        normals=normals, trans_normals=tnormals)
    if uv_z is not None:
        n = displacement_to_normals(uv_z, out["uv_coarse_vertices"], out["uv_coarse_normals"],
                                    topo.uv_face_eye_mask, topo.fixed_displacement)
        uv_shading = sh_shading(n, light)
        detail_normal_images = grid_sample(n, grid) * mask[..., None]
        out.update(uv_detail_normals=n, uv_shading=uv_shading, uv_texture=albedo * uv_shading,
                   shape_detail_images=shape_image(detail_normal_images, tnormal_images, mask))
    return out
