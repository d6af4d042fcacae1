"""How the renderer's per-image functions are applied to a batch, and how a batch splits over a
device mesh."""
import math

import jax
import jax.numpy as jnp

from jaxdeca.explicit_sharding import explicit_axes, split_as_one


def batch_mesh_axes(B):
    """(mesh, axes) to split a batch of B images over: the context mesh's (`jax.set_mesh`,
    `jax.sharding.use_abstract_mesh`) axes that are not already manual, when it has more than
    one device along them and B splits evenly; else (None, ())."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None, ()
    axes = tuple(a for a, t in zip(mesh.axis_names, mesh.axis_types) if t != jax.sharding.AxisType.Manual)
    n = math.prod(mesh.shape[a] for a in axes)
    return (mesh, axes) if n > 1 and B % n == 0 else (None, ())


def split_batch(arrays, mesh, axes):
    """arrays (a pytree of [B, ...]) split over the mesh axes `axes` along B, for a shard_map
    whose in_specs say so: under Explicit axes an input's sharding must equal its in_spec, and a
    replicated (or otherwise split) input is resharded; under Auto axes the partitioner does it."""
    return split_as_one(arrays, jax.P(axes)) if explicit_axes(mesh, axes) else arrays


def _batch(arrays):
    """The batch size B shared by every leaf of arrays; ValueError naming the shapes when the
    leaves disagree (one image among several was read with another's data, silently)."""
    leaves = jax.tree.leaves(arrays)
    sizes = {x.shape[0] for x in leaves}
    if len(sizes) != 1:
        raise ValueError(f"arrays of one batch must share their leading (batch) size, got shapes "
                         f"{[tuple(x.shape) for x in leaves]}")
    return sizes.pop()


def vmap_images(fn, *arrays):
    """fn vmapped over the batch axis of arrays (pytrees of [B, ...]); one image is passed to
    fn directly."""
    if _batch(arrays) == 1:
        return jax.tree.map(lambda x: x[None], fn(*jax.tree.map(lambda a: a[0], arrays)))
    return jax.vmap(fn)(*arrays)


def loop_images(fn, *arrays):
    """fn over the batch axis of arrays (pytrees of [B, ...]), one image after another
    (lax.map) on the CPU backend unless a context mesh splits the batch (`batch_mesh_axes`: the
    partitioner cannot split a loop over the batch); vmapped elsewhere. One image is passed to
    fn directly."""
    B = _batch(arrays)
    if B > 1 and jax.default_backend() == "cpu" and not batch_mesh_axes(B)[1]:
        return jax.lax.map(lambda xs: fn(*xs), arrays)
    return vmap_images(fn, *arrays)


def map_groups(fn, G, *arrays):
    """fn over the batch axis of arrays ([B, ...]) in groups of G images: fn(*[G, ...]) -> a
    pytree of [G, ...]. Whole groups run one after another (lax.map), a smaller last group
    after them. Returns the pytree of [B, ...]; for an empty batch (B = 0) the pytree of
    [0, ...] that a group would give (fn is traced for its shapes, not run)."""
    B = _batch(arrays)
    if B == 0:
        one = tuple(jax.ShapeDtypeStruct((G,) + a.shape[1:], a.dtype) for a in arrays)
        return jax.tree.map(lambda s: jnp.zeros((0,) + s.shape[1:], s.dtype), jax.eval_shape(fn, *one))
    n, rest = divmod(B, G)
    parts = []
    if n == 1:
        parts.append(fn(*(a[:G] for a in arrays)))
    elif n > 1:
        groups = jax.lax.map(lambda xs: fn(*xs), tuple(a[:n * G].reshape((n, G) + a.shape[1:]) for a in arrays))
        parts.append(jax.tree.map(lambda x: x.reshape((n * G,) + x.shape[2:]), groups))
    if rest:
        parts.append(fn(*(a[n * G:] for a in arrays)))
    return parts[0] if len(parts) == 1 else jax.tree.map(lambda *x: jnp.concatenate(x), *parts)


def images_custom_vjp(fwd, bwd):
    """A function of batched arrays [B, ...] with a custom VJP, from per-image rules:
    fwd(*xs) -> (out, residuals) and bwd(residuals, g) -> cotangents of xs.

    The forward pass is `vmap_images`, the backward pass `loop_images`. Measured on XLA:CPU
    (2 cores, interleaved medians, forward+backward):
      - one image: a vmapped backward pass took 5x as long for grid_sample and 1.2x for the
        image of benchmarks/render.py (take_rows in interpolate, sigma 0: 12.9 ms against 11.0);
      - 8 and 32 images: vmapped, grid_sample took 2.5x and 1.9x as long (benchmarks/texture.py:
        47 ms against 19, 176 against 95; at 8, vmapped, it made no difference whether its taps
        were kept or gathered again), and the render image 1.0-1.17x (demo head at 32: 1059 ms
        against 970);
      - a looped forward pass (gathers) is 1.6x slower than the vmapped one (grid_sample, 8
        and 32 images).
    Under an Explicit-axes mesh the inputs' batch axes are split alike first (`split_as_one`).
    """
    @jax.custom_vjp
    def f(*xs):
        return vmap_images(lambda *a: fwd(*a)[0], *xs)

    f.defvjp(lambda *xs: vmap_images(fwd, *xs), lambda res, g: loop_images(bwd, res, g))
    # batch axes split alike before the custom VJP, whose cotangents must have its inputs' types
    return lambda *xs: f(*split_as_one(xs))
