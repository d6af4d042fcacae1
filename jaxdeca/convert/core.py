"""Map a PyTorch-named state dict onto a Flax variables template, strictly, and save/load it.

Naming rule (the Flax modules in ``jaxdeca.models`` are built for it): a torch key's numeric
segments fold into the preceding name (``layer1.0.downsample.1.running_mean`` ->
``layer1_0/downsample_1``), and the leaf maps as

* conv ``weight`` [O, I, kh, kw] -> ``params/.../kernel`` [kh, kw, I, O]
* linear ``weight`` [O, I] -> ``params/.../kernel`` [I, O]
* ``bias`` -> ``params/.../bias``
* BatchNorm ``weight``/``bias`` -> ``params/.../scale``/``bias``;
  ``running_mean``/``running_var`` -> ``batch_stats/.../mean``/``var``.

Every key must be consumed and every template leaf filled, else one ``ConversionError`` names
the wrong-shaped keys (in the file's torch layout), the unconsumed keys and the missing
variables (each list cut to its first ``LISTED`` names). ``num_batches_tracked`` and caller-named
prefixes (``fc.``, ``classifier.``) are explicit ignores.
"""

from __future__ import annotations

import os
import re
from typing import Iterable

import jax
import numpy as np

from jaxdeca.convert.torch_io import ConversionError

ALWAYS_IGNORED = ("num_batches_tracked",)
LISTED = 8  # names per list in a ConversionError


def flax_path(key: str) -> tuple:
    """``'encoder.layer1.0.conv1'`` -> ``('encoder', 'layer1_0', 'conv1')``."""
    out = []
    for seg in key.split("."):
        if re.fullmatch(r"\d+", seg) and out:
            out[-1] = f"{out[-1]}_{seg}"
        else:
            out.append(seg)
    return tuple(out)


def _flatten(tree, prefix=()):
    flat = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            flat.update(_flatten(v, prefix + (k,)))
        else:
            flat[prefix + (k,)] = v
    return flat


def _unflatten(flat):
    tree = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def torch_to_flax(state: dict, template, source: str, ignore: Iterable[str] = ()) -> dict:
    """state: {torch key: np array}; template: Flax variables (or their ShapeDtypeStructs).

    Returns ``{'params': ..., 'batch_stats': ...}`` (only the collections in the template) of
    float32 numpy arrays. ``source`` names the file (and part) in error messages; ``ignore`` are
    key prefixes dropped on purpose.
    """
    want = {p: tuple(v.shape) for p, v in _flatten(dict(template)).items()}
    modules = {}
    for key, value in state.items():
        if key.endswith(ALWAYS_IGNORED) or any(key == i or key.startswith(i) for i in ignore):
            continue
        mod, _, leaf = key.rpartition(".")
        modules.setdefault(mod, {})[leaf] = (key, np.asarray(value))
    got, unconsumed, problems, mismatched = {}, [], [], set()
    for mod, leaves in modules.items():
        path = flax_path(mod)
        is_bn = "running_mean" in leaves or "running_var" in leaves
        for leaf, (key, raw) in leaves.items():  # raw: the file's layout (messages show it)
            dest, v = _flax_leaf(leaf, raw, is_bn)
            full = None if dest is None else (dest[0],) + path + (dest[1],)
            if full is None or full not in want:
                unconsumed.append(key)
            elif tuple(v.shape) != want[full]:
                problems.append(f"{key}: found shape {tuple(raw.shape)}, expected "
                                f"{torch_shape(want[full], dest[1])}")
                mismatched.add(full)
            else:
                got[full] = v.astype(np.float32)
    missing = sorted("/".join(p) for p in want if p not in got and p not in mismatched)
    if unconsumed or missing or problems:
        msg = [f"{source}: weights do not match the network"]
        if problems:
            msg.append("shape mismatches: " + _listed(problems, "; "))
        if unconsumed:
            msg.append("unconsumed keys: " + _listed(sorted(unconsumed)))
        if missing:
            msg.append("missing: " + _listed(missing))
        raise ConversionError("\n  ".join(msg))
    return _unflatten(got)


_BATCH_NORM_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                      "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}


def _flax_leaf(leaf: str, value: np.ndarray, batch_norm: bool) -> tuple[tuple[str, str] | None, np.ndarray]:
    """A torch module's entry -> ((collection, Flax name) or None: no Flax counterpart, the value
    in Flax's layout). BatchNorm (batch_norm: the module has running statistics): weight, bias,
    running_mean, running_var -> params scale, bias, batch_stats mean, var. Otherwise weight ->
    kernel (a conv's [O, I, kh, kw] -> [kh, kw, I, O], a linear's [O, I] -> [I, O]) and bias."""
    if batch_norm:
        return _BATCH_NORM_LEAVES.get(leaf), value
    if leaf == "weight":
        kernel = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T if value.ndim == 2 else value
        return ("params", "kernel"), kernel
    if leaf == "bias":
        return ("params", "bias"), value
    return None, value


def torch_shape(flax_shape: tuple, leaf: str) -> tuple:
    """The torch shape whose layout change gives ``flax_shape``: a conv ``kernel`` [kh, kw, I, O]
    -> [O, I, kh, kw], a linear ``kernel`` [I, O] -> [O, I], anything else unchanged."""
    if leaf == "kernel" and len(flax_shape) == 4:
        return tuple(flax_shape[i] for i in (3, 2, 0, 1))
    return tuple(reversed(flax_shape)) if leaf == "kernel" else tuple(flax_shape)


def _listed(names: list, sep: str = ", ") -> str:
    """The first LISTED names joined, then 'and N more'."""
    more = f"{sep}and {len(names) - LISTED} more" if len(names) > LISTED else ""
    return sep.join(names[:LISTED]) + more


def init_template(module, *example_args):
    """Shapes of ``module.init`` without running it: {'params': ..., 'batch_stats': ...}."""
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *example_args))


def save_variables(variables: dict, out_dir: str) -> str:
    """Write a (nested) dict of arrays as an orbax PyTree checkpoint directory; returns its path."""
    import orbax.checkpoint as ocp

    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        raise ConversionError(f"{out_dir}: output directory already exists; choose a new one")
    try:  # orbax writes a temporary directory beside out_dir and renames it when complete
        ocp.PyTreeCheckpointer().save(out_dir, jax.tree.map(np.asarray, variables))
    except OSError as e:  # an unwritable parent, a file in the way
        _remove_orbax_temporary(out_dir)
        raise ConversionError(f"{out_dir}: cannot write: {e.strerror or e}"
                              + (f" ({e.filename})" if e.filename and e.filename != out_dir else "")) from None
    except ValueError as e:  # tensorstore's writes: a full disk is 'OUT_OF_RANGE: ... [os_error_code=27]'
        if "os_error_code" not in str(e):
            raise
        _remove_orbax_temporary(out_dir)
        raise ConversionError(f"{out_dir}: cannot write: {str(e).splitlines()[0]}") from None
    return out_dir


def _remove_orbax_temporary(out_dir: str) -> None:
    """Removes what a failed orbax save left beside out_dir (which did not exist before it):
    its temporary directory, '<out_dir>.orbax-checkpoint-tmp' (a timestamp after it in some
    orbax versions)."""
    import glob
    import shutil
    for tmp in glob.glob(glob.escape(out_dir) + ".orbax-checkpoint-tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)


def load_variables(directory: str) -> dict:
    """Read a directory written by ``save_variables`` back into a nested dict of jax arrays."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise ConversionError(f"{directory}: no such checkpoint directory")
    try:
        return ocp.PyTreeCheckpointer().restore(directory)
    except Exception as e:
        raise ConversionError(f"{directory}: not a readable orbax checkpoint: "
                              f"{type(e).__name__}: {e}") from None
