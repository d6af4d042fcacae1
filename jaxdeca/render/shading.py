"""Lighting: DECA's 9-band spherical harmonics and its directional 'shape' lights."""
import numpy as np
import jax.numpy as jnp

_PI = np.pi
# DECA Renderer.constant_factor
SH_CONSTANTS = np.array([
    1 / np.sqrt(4 * _PI),
    ((2 * _PI) / 3) * np.sqrt(3 / (4 * _PI)),
    ((2 * _PI) / 3) * np.sqrt(3 / (4 * _PI)),
    ((2 * _PI) / 3) * np.sqrt(3 / (4 * _PI)),
    (_PI / 4) * 3 * np.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 3 * np.sqrt(5 / (12 * _PI)),
    (_PI / 4) * 3 * np.sqrt(5 / (12 * _PI)),
    (_PI / 4) * (3 / 2) * np.sqrt(5 / (12 * _PI)),
    (_PI / 4) * (1 / 2) * np.sqrt(5 / (4 * _PI)),
], np.float32)

# DECA render_shape: light positions (normalised to directions) and intensity.
SHAPE_LIGHT_POSITIONS = np.array([[-1, 1, 1], [1, 1, 1], [-1, -1, 1], [1, -1, 1], [0, 0, 1]], np.float32)
SHAPE_LIGHT_INTENSITY = 1.7
SHAPE_GREY = 180.0 / 255.0


def sh_basis(normals):
    """normals: [..., 3] -> [..., 9] scaled SH basis (DECA's add_SHlight order)."""
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    b = jnp.stack([jnp.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1], -1)
    return b * SH_CONSTANTS


def sh_shading(normals, light):
    """DECA add_SHlight. normals: [B, ..., 3]; light: [B, 9, 3] -> shading [B, ..., 3]."""
    b = sh_basis(normals)
    B = normals.shape[0]
    flat = b.reshape(B, -1, 9)
    return jnp.einsum("bpk,bkc->bpc", flat, light).reshape(normals.shape[:-1] + (3,))


def directional_shading(normals, positions=SHAPE_LIGHT_POSITIONS, intensity=SHAPE_LIGHT_INTENSITY):
    """DECA add_directionlight: mean over lights of clamp(n . l_hat, 0, 1) * intensity.

    normals: [..., 3] (DECA passes world-space normals); positions: [L, 3] -> [..., 3].
    """
    d = positions / np.linalg.norm(positions, axis=-1, keepdims=True)
    ndl = jnp.clip(jnp.einsum("...c,lc->...l", normals, jnp.asarray(d)), 0.0, 1.0)
    return jnp.broadcast_to(jnp.mean(ndl * intensity, -1)[..., None], normals.shape[:-1] + (3,))


def vertex_visibility(transformed_normals, threshold=0.1):
    """Front-facing test from normals in DECA image space (z toward the viewer is negative).

    transformed_normals: [B, N, 3] -> [B, N] float, 1 where n_z < threshold (DECA's
    landmark visibility convention).
    """
    return (transformed_normals[..., 2] < threshold).astype(transformed_normals.dtype)
