"""Argument checks of the renderer's public functions: one ValueError naming the function and
the problem, instead of a wrong picture.

JAX's gathers clamp an index past the end and wrap a negative one, and its scatters drop them,
so a face list that does not belong to the vertices given (another mesh's faces, a 1-based OBJ
list, a vertex array cut short) rendered and shaded without a word. Shapes are checked at trace
time; face indices when their values are known there (numpy arrays, constants closed over by
the caller's jit), and not when they are a tracer (faces passed as an argument of the caller's
jit, vmap or grad), whose values no one can read until it runs.
"""
import jax
import jax.numpy as jnp
import numpy as np


def per_vertex(x, where, name="verts", width=None):
    """x as a jax array, checked to be [B, V, C] (C == width when given)."""
    x = jnp.asarray(x)
    if x.ndim != 3 or (width is not None and x.shape[-1] != width):
        want = f"[B, V, {width}]" if width is not None else "[B, V, C]"
        raise ValueError(f"{where}: {name} must be {want} (a batch of per-vertex arrays), got shape {tuple(x.shape)}")
    return x


def mesh_faces(faces, n_verts, where, name="faces"):
    """faces as int32 [F, 3], checked: integer vertex indices, shape [F, 3], and, when their
    values are known at trace time, each in [0, n_verts)."""
    if not hasattr(faces, "dtype"):  # a list of index triples: read once
        faces = np.asarray(faces)
    shape = tuple(faces.shape)
    if len(shape) != 2 or shape[1] != 3:
        raise ValueError(f"{where}: {name} must be [F, 3] vertex indices, got shape {shape}")
    if not jnp.issubdtype(faces.dtype, jnp.integer):
        raise ValueError(f"{where}: {name} must be integer vertex indices, got dtype {faces.dtype}")
    try:
        values = np.asarray(faces)
    except jax.errors.TracerArrayConversionError:  # a tracer: its values are unknown until it runs
        return jnp.asarray(faces, jnp.int32)
    if values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= n_verts:
            raise ValueError(f"{where}: {name} hold vertex indices {lo}..{hi}, but there are {n_verts} vertices "
                             f"(valid: 0..{n_verts - 1}; faces of another mesh, or 1-based indices?)")
    return jnp.asarray(faces, jnp.int32)  # a jax array stays where it is (no round trip through the host)
