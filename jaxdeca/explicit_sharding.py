"""Batch-shaped arrays that jaxdeca's functions make themselves, sharded as their inputs' batch.

Under a mesh with Explicit axes (`jax.make_mesh`'s default, used through `jax.set_mesh`) a
sharding is part of an array's type, and JAX refuses to combine a batch split over devices with
one that is not: `jnp.zeros((B, 3))` or `jnp.broadcast_to(table, (B, 51))` is replicated, and
concatenating it with the codes of a split batch is a ShardingTypeError. Such arrays take the
batch axis's sharding of an input (`batch_sharding`). Under Auto axes (jaxdeca's own training
mesh, `jaxdeca.train.parallel.make_mesh`) and without a mesh, a sharding is not part of the
type: `batch_sharding` is None and nothing changes.
"""
import jax


def batch_sharding(like):
    """The `out_sharding` of a [B, ...] array made to go with `like` ([B, ...]): P(axes) with
    the mesh axes like's batch axis is split over, when they are Explicit; else None."""
    spec = jax.typeof(like).sharding.spec
    axes = spec[0] if len(spec) else None
    return None if axes is None else jax.P(axes)


def split_as_one(tree, split=None):
    """A pytree of [B, ...] arrays with one batch split: under an Explicit-axes mesh, the leaves
    whose batch axis is not split as `split` (default: the first split leaf's) are resharded to
    it (a replicated albedo beside split codes: jax.vmap and concatenate refuse the mix).
    Unchanged otherwise."""
    leaves, treedef = jax.tree.flatten(tree)
    if split is None:
        split = next((s for s in map(batch_sharding, leaves) if s is not None), None)
    if split is None:
        return tree
    return jax.tree.unflatten(treedef, [x if batch_sharding(x) == split else jax.sharding.reshard(x, split)
                                        for x in leaves])


def explicit_axes(mesh, axes) -> bool:
    """Whether the mesh axes `axes` are Explicit (a sharding is then part of an array's type)."""
    types = dict(zip(mesh.axis_names, mesh.axis_types))
    return any(types[a] == jax.sharding.AxisType.Explicit for a in axes)
