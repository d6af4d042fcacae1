"""Checkpoints with orbax: periodic async saves, keep-last-N, resume with fallback.

A checkpoint holds two items:
  state   the train-state pytree (params, batch statistics, optimiser state, step, RNG key)
  extra   a small JSON dict (data-loader position, stage name, anything the loop wants back)

Orbax writes every checkpoint into a temporary directory and renames it when complete, so a
run killed mid-save leaves no half-written step behind the latest complete one. A latest
checkpoint that is nonetheless unreadable (a truncated file, a disk error) is skipped with a
warning and the previous one is restored instead (the training loop renames the unreadable
ones to `<step>.unreadable`, so that it saves those steps again); only when none can be read
does resuming fail, naming every step it tried. A checkpoint whose structure or shapes differ
from the state asked for (written with another config: network width, optimiser) is not
unreadable: restoring stops there with a CheckpointError naming the first entry that differs
(one the state asks for that the checkpoint lacks, one of other shape, or one the checkpoint
holds that the state has no place for). A caller that knows which config values the extra
records (the training loop: the learning-rate schedule) passes `check_extra`, which sees each
checkpoint's extra before its state is restored and can refuse it naming the config field.

Restoring onto a given structure reads what that structure asks for: entries a checkpoint
holds beyond it (a dict key a stage no longer saves, e.g. the frozen feature networks that
checkpoints written before they were left out still carry) are read and dropped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jaxdeca.train import paths


class CheckpointError(RuntimeError):
    """No checkpoint in a directory could be restored, or one could not be written."""


# what the storage says when the checkpoint folder cannot take a write (tensorstore's statuses
# come as ValueError / RuntimeError text, a local file system's as OSError)
_STORAGE_FAILURES = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "No space left on device", "Disk quota exceeded",
                     "Read-only file system")


@contextlib.contextmanager
def write_errors(directory: str, what: str = "a checkpoint"):
    """Turns a storage failure of orbax writing a checkpoint (a full disk or quota, a folder that
    became read-only; raised by the save, or by the next save or wait of an async one) into one
    CheckpointError naming the folder and what is kept. Before, a full disk ended the run in
    orbax's ValueError among hundreds of tracebacks of its writer tasks."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as e:
        text = str(e)
        if isinstance(e, CheckpointError) or not (isinstance(e, OSError) or any(k in text for k in _STORAGE_FAILURES)):
            raise
        # the storage's own words when it gives them (tensorstore's text names every file and chunk)
        reason = next((k for k in _STORAGE_FAILURES[2:] if k in text), None) or \
            (text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__)
        raise CheckpointError(
            f"{what} could not be written in {directory} ({reason}); the checkpoints written before it are "
            "kept (orbax renames a checkpoint into place only when it is whole): make room and run the same "
            "command again to resume from the latest") from e


def _item_handlers():
    return {"state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()}


def make_manager(directory: str, *, max_to_keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
    """A CheckpointManager for `directory` keeping the last `max_to_keep` checkpoints."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        create=True,
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(paths.resolve(directory), options=options, item_handlers=_item_handlers())


def save(manager: ocp.CheckpointManager, step: int, state: Any, extra: dict | None = None, *, force: bool = False) -> bool:
    """Starts saving `state` (and the JSON-able `extra`) as checkpoint `step`.

    Returns whether a save was started. With async saving the write finishes in the
    background; call `wait(manager)` before exiting. A Ctrl-C (SIGINT) while
    this call copies the state to host memory is held until the save is handed over, then
    raised: it used to stop orbax half way, leaving `<step>.orbax-checkpoint-tmp` that no wait
    could finish (the run resumed from the checkpoint before).
    """
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra or {}))
    # an async save's storage failure surfaces at the next save (or at `wait`)
    with _sigint_held(), write_errors(str(manager.directory), f"checkpoint step {step} (or the one before it)"):
        return manager.save(int(step), args=args, force=force)


def wait(manager: ocp.CheckpointManager) -> None:
    """manager.wait_until_finished(), a storage failure of the checkpoint being written as one
    CheckpointError (`write_errors`)."""
    with write_errors(str(manager.directory), "the last checkpoint started"):
        manager.wait_until_finished()


@contextlib.contextmanager
def _sigint_held():
    """SIGINT received inside the block is delivered when it ends (main thread only; elsewhere
    Python delivers no signal anyway; nor when the handler was set outside Python, which
    signal.signal could not put back)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    received = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if received:
            signal.raise_signal(signal.SIGINT)  # its own handler now: KeyboardInterrupt by default


def open_for_reading(directory: str) -> ocp.CheckpointManager:
    """A manager over an existing checkpoint directory that reads item metadata too (no writes)."""
    return ocp.CheckpointManager(paths.resolve(directory), options=ocp.CheckpointManagerOptions(create=False),
                                 item_handlers=_item_handlers())


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any = None, *,
                   set_aside_unreadable: bool = False,
                   check_extra: Callable[[int, dict], None] | None = None) -> tuple[int, Any, dict] | None:
    """Restores the newest readable checkpoint.

    Args:
      manager: from `make_manager` (or `open_for_reading` when abstract_state is None).
      abstract_state: a pytree with the structure, shapes, dtypes (and shardings) of the state,
        e.g. `jax.eval_shape(init_fn)` or the freshly initialised state itself; None restores
        the structure saved in the checkpoint's own metadata as host numpy arrays. Dict
        entries the checkpoint holds beyond abstract_state are read and dropped.
      set_aside_unreadable: rename the unreadable checkpoints newer than the one restored to
        `<step>.unreadable` (kept for inspection, no longer steps of the manager), so that a
        run going on from the restored one saves those steps again (orbax does not save a
        step that exists). For a manager that writes (the training loop's).
      check_extra: called as check_extra(step, extra) with each checkpoint's extra dict before
        its state is restored; it raises (e.g. paths.ConfigError) to refuse a checkpoint written
        with a config this run must not resume with (another optimiser schedule: the state's tree
        differs too, which orbax would report as a mismatch). What it raises stops the restore
        as it is, nothing set aside; a checkpoint whose extra cannot be read is unreadable.

    Returns:
      (step, state, extra), or None when the directory holds no checkpoint.

    Raises:
      CheckpointError: checkpoints exist but none could be read.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        return None
    abstract = None if abstract_state is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    failures = []
    for step in steps:
        try:
            meta = manager.item_metadata(step)["state"]
            target = _host_target(meta) if abstract is None else _with_unasked(abstract, meta)
            extra = _read_extra(manager, step)  # a JSON file: read first, and once
        except Exception as e:  # noqa: BLE001 -- unreadable metadata: fall back to the previous one
            failures.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            logging.warning("checkpoint %d in %s is unreadable (%s); trying the previous one", step, manager.directory, failures[-1])
            continue
        if check_extra is not None:  # a config it refuses is not an unreadable checkpoint: not caught
            check_extra(step, extra)
        if abstract is not None and meta is not None:
            _check_matches(manager, step, target, meta)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint falls back to the previous one
            failures.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            logging.warning("checkpoint %d in %s is unreadable (%s); trying the previous one", step, manager.directory, failures[-1])
            continue
        state = restored["state"] if abstract is None else _asked(restored["state"], abstract)
        if set_aside_unreadable and failures:
            _set_aside(manager, [s for s in steps if s > step])
        return step, state, extra
    raise CheckpointError(f"no readable checkpoint in {manager.directory}:\n  " + "\n  ".join(failures))


def _read_extra(manager: ocp.CheckpointManager, step: int) -> dict:
    """Checkpoint `step`'s extra dict alone (its state is not read)."""
    return dict(manager.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))["extra"] or {})


def _leaf_shapes(tree) -> dict[str, tuple]:
    """{'params/Dense_0/kernel': shape} of a state, abstract state or checkpoint metadata tree."""
    def name(k):
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {"/".join(name(k) for k in path): tuple(getattr(x, "shape", ())) for path, x in leaves}


def _check_matches(manager, step, target, meta) -> None:
    """Raises CheckpointError when checkpoint `step` (its metadata `meta`) holds another tree or
    other shapes than `target`: it was written by another config, not damaged. `target` holds
    the dict entries of the checkpoint beyond the state asked for (`_with_unasked`); an entry
    elsewhere (an optimiser state's tuple: another schedule or clipping) that it has no place
    for differs too: orbax refuses to restore onto a tree without it."""
    want, have = _leaf_shapes(target), _leaf_shapes(meta)
    diffs = [f"{k} is not in the checkpoint" for k in want if k not in have]
    diffs += [f"{k} is {have[k]} there but {want[k]} now" for k in want if k in have and have[k] != want[k]]
    diffs += [f"{k} is in the checkpoint but not in the state now" for k in have if k not in want]
    if diffs:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise CheckpointError(f"{manager.directory}: checkpoint step {step} was written with another config "
                              f"(network, optimiser or stage): {diffs[0]}{more}; resume with the config it "
                              "was trained with, or use another workdir")


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Renames checkpoint directories `<step>` to `<step>.unreadable` (process 0) and, once it
    has (a barrier across processes: one that listed a set-aside step would refuse to save it
    later, while process 0 waited for it in orbax's save), reloads the manager's list of steps."""
    if jax.process_index() == 0:
        for step in steps:
            src = f"{str(manager.directory).rstrip('/')}/{step}"
            dst, n = src + ".unreadable", 1
            while paths.exists(dst):
                dst, n = f"{src}.unreadable{n}", n + 1
            paths.rename(src, dst)
            logging.warning("set aside unreadable checkpoint %d as %s", step, dst)
    if jax.process_count() > 1:  # no process may list the steps again before process 0 renamed them
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxdeca_set_aside_unreadable_checkpoints")
    manager.reload()


def _host_target(meta):
    """Checkpoint metadata tree -> the same tree of zero numpy arrays (restore onto the host)."""
    return jax.tree.map(lambda m: np.zeros(m.shape, getattr(m, "dtype", np.float32)) if hasattr(m, "shape") else m,
                        dict(meta) if hasattr(meta, "keys") else meta, is_leaf=lambda m: hasattr(m, "shape"))


def _with_unasked(abstract, meta):
    """`abstract` plus, as host zeros, the dict entries the checkpoint metadata `meta` holds
    beyond it (StandardRestore needs the checkpoint's exact tree); `_asked` drops them again."""
    if meta is None:
        return abstract
    if isinstance(abstract, dict) and hasattr(meta, "keys"):
        out = {k: _with_unasked(v, meta[k]) if k in meta else v for k, v in abstract.items()}
        out.update({k: _host_target(meta[k]) for k in meta.keys() if k not in abstract})
        return out
    if dataclasses.is_dataclass(abstract) and hasattr(meta, "keys"):
        return abstract.replace(**{f.name: _with_unasked(getattr(abstract, f.name), meta[f.name])
                                   for f in dataclasses.fields(abstract) if f.name in meta})
    return abstract


def _asked(restored, abstract):
    """`restored` cut back to the structure of `abstract` (inverse of `_with_unasked`)."""
    if isinstance(abstract, dict) and isinstance(restored, dict):
        return {k: _asked(restored[k], v) for k, v in abstract.items()}
    if dataclasses.is_dataclass(abstract) and dataclasses.is_dataclass(restored):
        return restored.replace(**{f.name: _asked(getattr(restored, f.name), getattr(abstract, f.name))
                                   for f in dataclasses.fields(abstract)})
    return restored
