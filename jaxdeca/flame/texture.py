"""FLAME albedo: a linear texture model in UV space, exactly as DECA's FLAMETex applies it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdeca.explicit_sharding import batch_sharding
from jaxdeca.flame.io import FlameFileError


def _nearest_index(R: int, size: int) -> np.ndarray:
    """Source rows of torch's 'nearest' resize from R to size: floor(dst * R / size) in float32."""
    return np.floor(np.arange(size, dtype=np.float32) * np.float32(R / size)).astype(np.int32)


def albedo(mean, basis, texcode, size: int = 256):
    """mean + basis . texcode, nearest-resized to `size`, channels reversed (DECA's FLAMETex).

    mean: [R, R, 3]; basis: [R, R, 3, K]; texcode: [B, n_tex] with n_tex <= K (else ValueError).
    Returns [B, size, size, 3]. DECA resizes with torch's default F.interpolate mode
    ('nearest': source index floor(dst * R / size)) and reverses the channels [2, 1, 0], which
    turns the official files' BGR order into RGB. The resize picks texels, so it is applied to
    the model before the product: numpy mean/basis are cut to the texels and the n_tex
    components used before they reach jax, and a jitted caller holds only that part as a
    constant (the official basis is 512 x 512 x 3 x 199 float32, 626 MB; DECA at 256 px with
    50 components needs 39 MB of it).
    """
    n = texcode.shape[-1]
    if n > basis.shape[-1]:
        raise ValueError(f"albedo: texcode has {n} components, the albedo basis only {basis.shape[-1]}")
    idx = _nearest_index(mean.shape[0], size)
    rows, cols = idx[:, None], idx[None, :]  # one gather (chained, numpy first copies half the basis)
    mean = jnp.asarray(mean[rows, cols])
    basis = jnp.asarray(basis[rows, cols, :, :n])
    # full float32 on GPUs and TPUs too: at the default precision (TF32 / bfloat16 operands) the
    # demo head's albedo for random codes came out up to 7e-5 / 1.7e-3 off (emulated on the CPU)
    tex = mean[None] + jnp.einsum("hwck,bk->bhwc", basis, texcode, precision=jax.lax.Precision.HIGHEST)
    return tex[..., ::-1]


def check_components(arrays: dict, n_tex: int, where: str) -> None:
    """Refuses (FlameFileError naming `where`) a FLAME npz dict whose albedo basis has fewer
    than the n_tex components a texture code holds (DECA: 50; the official BFM and FLAME albedo
    files have 199 and 200). A model without an albedo is fine (flat grey)."""
    if "albedo_basis" in arrays and arrays["albedo_basis"].shape[-1] < n_tex:
        raise FlameFileError(f"{where}: the albedo basis has {arrays['albedo_basis'].shape[-1]} components, the "
                             f"texture code {n_tex}: use an albedo with at least {n_tex}")


def albedo_from_arrays(arrays: dict, texcode, size: int = 256):
    """`albedo` with the mean/basis of a FLAME npz dict; a flat grey albedo (0.5) when the
    model has no albedo basis. texcode: [B, n_tex] -> [B, size, size, 3]."""
    if "albedo_mean" not in arrays:
        return jnp.full((texcode.shape[0], size, size, 3), 0.5, jnp.float32, out_sharding=batch_sharding(texcode))
    return albedo(arrays["albedo_mean"], arrays["albedo_basis"], texcode, size)
