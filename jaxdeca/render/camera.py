"""Cameras: world vertices -> DECA image space [-1, 1] (y down) -> pixels.

DECA's `batch_orth_proj` followed by its y/z negation:
    x_img = s * (x + tx),  y_img = -s * (y + ty),  z_img = -s * z.
Image space is [-1, 1] with y pointing down; smaller z_img is nearer the camera
(the face looks along +z in world space). Pixels follow `pixel = (v + 1) * size / 2`,
so pixel (row i, column j) has its centre at (j + 0.5, i + 0.5): this is the
pytorch3d rasterizer convention as DECA uses it (DECA negates x, y before pytorch3d,
whose NDC pixel centre is 1 - (2 j + 1) / W).
"""
import jax.numpy as jnp


def orth_proj(verts, cam):
    """DECA orthographic camera with its y/z flip.

    verts: [B, V, 3] world; cam: [B, 3] = (s, tx, ty). Returns [B, V, 3] image space.
    """
    vs, cs = tuple(jnp.shape(verts)), tuple(jnp.shape(cam))
    if len(vs) != 3 or len(cs) != 2 or cs[1] != 3 or (vs[0] != cs[0] and 1 not in (vs[0], cs[0])):
        raise ValueError(f"orth_proj: verts must be [B, V, 3] and cam [B, 3] (scale, tx, ty) of one batch size "
                         f"(or 1), got shapes {vs} and {cs}")
    s = cam[:, None, 0:1]
    xy = s * (verts[..., :2] + cam[:, None, 1:3])
    z = s * verts[..., 2:3]
    return jnp.concatenate([xy[..., :1], -xy[..., 1:2], -z], axis=-1)


def perspective_proj(verts, focal, principal, image_size):
    """Pinhole camera looking down -z (camera at origin, +y up in camera space).

    verts: [B, V, 3] camera space (visible points have z < 0); focal: [B] or [B, 2] in
    pixels; principal: [B, 2] pixels (x, y); image_size: (H, W).
    Returns [B, V, 3] in the same image space as `orth_proj` ([-1, 1], y down,
    z = distance along the view axis, smaller is nearer); rasterize it with
    `rasterize(..., perspective=True)`, which interpolates 1 / z (the quantity that is affine
    on screen) for its depth test, barycentrics and depth. A point at or behind the camera
    (z >= 0) comes out NaN, with zero gradient: `rasterize` leaves out every face with such a
    vertex (there is no near-plane clipping). Divided through, it landed mirrored on the image
    with a negative depth, so it was drawn and hid everything in front of the camera.
    """
    H, W = image_size
    f = jnp.asarray(focal, verts.dtype)
    f = jnp.broadcast_to(f.reshape(f.shape[0], -1), (f.shape[0], 2))[:, None, :]
    depth = -verts[..., 2:3]
    front = depth > 0
    d = jnp.where(front, depth, 1.0)  # no inf or NaN in the gradient of the points behind
    px = f[..., 0:1] * verts[..., 0:1] / d + principal[:, None, 0:1]
    py = -f[..., 1:2] * verts[..., 1:2] / d + principal[:, None, 1:2]
    out = jnp.concatenate([px * 2.0 / W - 1.0, py * 2.0 / H - 1.0, depth], axis=-1)
    return jnp.where(front, out, jnp.nan)


def to_pixels(v_img, image_size):
    """Image space -> pixel units: pixel = (v + 1) * size / 2 (centres at k + 0.5).

    v_img: [..., 2 or 3] (x, y[, z]); z is passed through. image_size: (H, W).
    """
    H, W = image_size
    x = (v_img[..., 0:1] + 1.0) * (W / 2.0)
    y = (v_img[..., 1:2] + 1.0) * (H / 2.0)
    return jnp.concatenate([x, y, v_img[..., 2:]], axis=-1)
