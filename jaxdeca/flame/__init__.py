"""FLAME in JAX: skinning, landmarks with DECA's dynamic contour, albedo, official-file loaders.

    from jaxdeca.flame import load_model
    model = load_model()            # None = the embedded demo head; or a FLAME npz path
    out = model(shape, expression, pose)   # [B,100], [B,50], [B,6] -> vertices, landmarks2d/3d
"""
from jaxdeca.flame import io, lbs, texture
from jaxdeca.flame.io import FlameFileError
from jaxdeca.flame.model import DEMO_HEAD, FlameModel, dynamic_row, from_arrays, load_arrays, load_model

__all__ = ["FlameModel", "FlameFileError", "DEMO_HEAD", "dynamic_row", "from_arrays", "io", "lbs", "load_arrays",
           "load_model", "texture"]
