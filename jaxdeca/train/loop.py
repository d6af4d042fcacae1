"""The training loop shared by every stage: init or resume, iterate, checkpoint, log, eval.

A *task* (see `jaxdeca.train.toy.ToyTask` for the smallest one) supplies the stage:
  init_variables(rng) -> (params, batch_stats, frozen)
  loss_fn(params, batch_stats, frozen, batch, rng) -> (loss, (terms, new_batch_stats))
  eval_fn(params, batch_stats, frozen, batch) -> dict of scalars (e.g. landmark error)
  make_loader(local_batch_size, process_index, process_count) -> loader with
      `next() -> dict of numpy [local_batch, ...]`, `position() -> JSON-able`, `restore(position)`
  eval_batches(local_batch_size, process_index, process_count) -> list of numpy batches
  images(state, batch) -> optional dict name -> [N, H, W, 3] image grid (may be None); the loop
      jits it (`steps.make_image_step`), so it must be traceable like loss_fn
and optionally
  checkpoint_info() -> JSON-able dict saved with every checkpoint
  check_resume(extra, where) -> raises ConfigError when the checkpoint `where` (its saved extra,
      checkpoint_info included) was trained with config values this run must not change
  frozen_from_config -> names of `frozen` entries that init_variables reads from fixed files
      (pretrained loss networks) and returns as read, not computed from its key or under
      tracing: checkpoints leave them out, recording a fingerprint of each, and a resume takes
      them from init_variables again, refusing ones whose fingerprint differs
  resume_variables(rng) -> init_variables' tree for a resume (traced by jax.eval_shape): the
      entries the checkpoint restores need only their shapes and dtypes, so it need not read the
      files init_variables starts them from (a previous stage's workdir, ImageNet weights), which
      may be gone by the time a run resumes; frozen_from_config entries it reads as
      init_variables does. Without it a resume traces init_variables.

The loop resumes from the newest readable checkpoint in `workdir/checkpoints` (state, RNG and
loader position), so a killed run restarted with the same config continues bit-for-bit. On
SIGTERM (`parallel.StopSignal`; every process of a multi-process run at the same step) it saves
the step it reached and exits with status 143; whatever ends it, an async checkpoint being
written is finished first. A run whose logged loss or checkpointed state is not finite stops
with TrainingDiverged before saving it, so the checkpoints before it are kept. A
resume restores onto the state's shapes, dtypes and shardings (`abstract_state`: init_variables
and the optimiser's init traced by jax.eval_shape), so it initialises and compiles nothing the
checkpoint overwrites (for DECA a network init is a compile of its forward pass). A
checkpoint saved by another stage (config.stage), one the task's check_resume refuses (DECA:
another config.model, image size or FLAME), one of another learning-rate schedule (config.optim.schedule:
another optimiser state), or one of a cosine schedule resumed with another config.train.num_steps
(`state.check_schedule_resume`: the rate would jump), is refused, in that order, before its state
is restored.
A second job started on a workdir in use is refused (`workdir_lock`).
"""
from __future__ import annotations

import os
import signal
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxdeca import xla_options
from jaxdeca.train import checkpoint, config_ranges, metrics, parallel, paths, state as state_lib, steps, workdir_lock


class TrainingDiverged(RuntimeError):
    """The logged loss or the state to be checkpointed is not finite (`train` stops before it
    is saved, so the checkpoints written before it stay)."""


def _all_finite(tree) -> jax.Array:
    """Whether every float value of a pytree is finite: a bool scalar (jitted by `train`)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _console(line: str) -> None:
    """The progress / eval line on stdout (process 0), whatever absl's log verbosity."""
    if jax.process_index() == 0:
        print(line, flush=True)


def _mean_eval(eval_step, state, batches, mesh) -> dict[str, float]:
    sums: dict[str, float] = {}
    for b in batches:
        for k, v in metrics.to_scalars(eval_step(state, parallel.shard_batch(b, mesh))).items():
            sums[k] = sums.get(k, 0.0) + v
    return {f"eval/{k}": v / max(len(batches), 1) for k, v in sums.items()}


def _add_terms(total, terms):
    """`total` + the step's `terms` (float32 sums of the loss terms since the last log; None:
    the first step of an interval)."""
    terms = {k: jnp.asarray(v, jnp.float32) for k, v in terms.items()}
    return terms if total is None else {k: total[k] + v for k, v in terms.items()}


class _LossSums:
    """The loss terms summed over the steps since the last log; a log is their mean (clu's
    convention), not the one step it falls on.

    After a resume between two logs, the sums of the steps before it since the last log come
    with the checkpoint (`carried` over `count` steps; a checkpoint saves `sums()` and `count`):
    the next log is the mean over all of them, as the uninterrupted run's (a checkpoint written
    before they were saved carries none). They are dropped when the steps' terms differ from
    theirs (other loss weights). This run's sums stay on the device between logs: adding a
    step's terms is one dispatch, no wait for the step to finish (jitted here, not at import:
    xla_options.jit picks its options from the backend, which must not start before
    jax.distributed.initialize).
    """

    def __init__(self, carried: dict | None = None, count: int = 0):
        self._add = xla_options.jit(_add_terms)
        self._device = None  # this run's sums since the last log; None: no step yet
        self._carried, self._n_carried = dict(carried or {}), int(count)
        self.count = self._n_carried  # the steps the sums span

    def add(self, terms) -> None:
        self._device, self.count = self._add(self._device, terms), self.count + 1
        if self._carried and set(self._carried) != set(terms):
            self._carried, self.count, self._n_carried = {}, self.count - self._n_carried, 0

    def sums(self) -> dict[str, float]:
        """{term: sum} as python floats, the carried ones included."""
        if self._device is None:
            return dict(self._carried)
        return {k: v + self._carried.get(k, 0.0) for k, v in metrics.to_scalars(self._device).items()}

    def pop_means(self) -> dict[str, float]:
        """{term: mean over the steps since the last log}; the next interval starts empty."""
        means = {k: v / self.count for k, v in self.sums().items()}
        self._device, self.count, self._carried, self._n_carried = None, 0, {}, 0
        return means


def cadence(tc, name: str) -> int:
    """`config.train.<name>` (a step interval) as an int >= 0; 0 = no periodic action."""
    every = int(tc[name])
    if every < 0:
        raise paths.ConfigError(f"config.train.{name}={every} must be >= 0 (0: only at the last step, "
                                "or never for eval_every / image_every)")
    return every


def due(step: int, every: int, last: int) -> bool:
    """Whether a periodic action with interval `every` (0 = none) falls on `step`; the last
    step always counts."""
    return (every > 0 and step % every == 0) or step == last


def host_images(images: dict) -> dict:
    """Image grids -> numpy on this process: {name: [N, H, W, 3]}.

    A grid computed from the sharded batch is a global jax.Array; in a multi-process run its
    rows lie on other processes too, so it is gathered (a collective: every process calls this,
    process 0 writes). Host arrays and fully addressable ones are read as they are.
    """
    from jax.experimental import multihost_utils

    def gather(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return {k: gather(v) for k, v in images.items()}


def fingerprint(tree) -> list[float]:
    """[number of values, sum of |values|] of a pytree of arrays (float64 on the host): tells
    two files of pretrained weights apart without storing them."""
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(tree))]
    return [float(sum(x.size for x in leaves)), float(sum(np.abs(x).sum() for x in leaves))]


def fresh_state(task, optimizer, seed: int, init_variables=None):
    """The step-0 TrainState of `task` (init_variables, by default the task's, with
    jax.random.key(seed)), and {name: value} of its frozen entries read from config
    (task.frozen_from_config present in frozen)."""
    params, batch_stats, frozen = (init_variables or task.init_variables)(jax.random.key(seed))
    from_config = {k: frozen[k] for k in sorted(getattr(task, "frozen_from_config", ())) if k in frozen}
    return state_lib.create(params, batch_stats, frozen, optimizer, seed), from_config


def abstract_state(task, optimizer, seed: int, mesh):
    """(fresh_state's state as jax.ShapeDtypeStruct leaves replicated over `mesh`, nothing
    initialised or compiled; {name: value} of its frozen_from_config entries, as init_variables
    returns them): what a resume restores the checkpoint onto and fills the entries it leaves
    out from. The task's resume_variables stands in for init_variables where it has one. An
    entry init_variables computes under the trace (from its key) is a TypeError."""
    from_config = {}

    def build():
        state, entries = fresh_state(task, optimizer, seed, getattr(task, "resume_variables", None))
        from_config.update(entries)
        return state

    shapes = jax.eval_shape(build)
    for k, v in from_config.items():
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(v)):
            fn = "resume_variables" if hasattr(task, "resume_variables") else "init_variables"
            raise TypeError(f"{type(task).__name__}.{fn} computes its frozen_from_config entry {k!r} "
                            "(from its key, or with jax operations); it must return the values read from config "
                            f"as they are: a resume traces {fn} with jax.eval_shape and takes them from it")
    sharding = parallel.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes), from_config


def _check_fingerprints(saved, now, ckpt_dir, step):
    """Refuses a resume whose frozen_from_config weights are not the ones the run started with."""
    for k, fp in (saved if isinstance(saved, dict) else {}).items():
        if k in now and not np.allclose(fp, now[k], rtol=1e-6, atol=0):
            raise paths.ConfigError(f"{ckpt_dir}: checkpoint step {step} was trained with frozen {k!r} weights "
                             f"{fp} ([values, sum |values|]) but the ones loaded now (config.weights) are "
                             f"{now[k]}; resume with the same files or start a new workdir")


def _check_stage(extra: dict, config, where: str) -> None:
    """ConfigError when the checkpoint `where` was saved by another stage (config.stage)."""
    saved_stage, stage = str(extra.get("stage") or ""), str(config.get("stage", "") or "")
    if saved_stage and saved_stage != stage:
        raise paths.ConfigError(f"{where} is of stage {saved_stage!r} but config.stage={stage!r}; use another "
                                "--workdir for this stage (a later stage starts from an earlier one through "
                                "config.init.*)")


def _check_seed(extra: dict, seed: int, where: str) -> None:
    """ConfigError when the checkpoint `where` was trained with another config.seed: the data
    stream (and the synthetic data) is a function of the seed, so it cannot go on from there.
    The seed is in the checkpoints' extra; older ones hold it in a tfds loader's position only,
    whose restore raised a bare ValueError with a traceback."""
    saved = extra.get("seed", (extra.get("loader") or {}).get("seed"))
    if saved is not None and int(saved) != seed:
        raise paths.ConfigError(f"{where} was trained with config.seed={int(saved)} but config.seed={seed} now (another "
                                f"data stream); resume with --config.seed={int(saved)}, or use another workdir")


def train(config, workdir: str, task) -> dict[str, Any]:
    """Runs `config.train.num_steps` steps of `task`; returns {'state', 'eval_history', 'losses'}.

    eval_history ([(step, {name: value})]) spans the whole run, resumes included (checkpoints
    carry it); losses are this call's logged training losses, [(step, loss)]. Each log (losses,
    the train/* scalars, the console line) holds the mean of the steps since the previous log
    (clu's convention), not the one step it falls on; after a resume between two logs, the
    steps before it count too (their sums come with the checkpoint). A run resumed from a checkpoint
    at or past num_steps trains nothing; it evaluates that state (eval_every > 0) unless the
    history holds it.

    Config fields used (config.train): num_steps, batch_size (global), checkpoint_every,
    keep_checkpoints (>= 1), log_every, eval_every, image_every; config.seed; config.optim.*.
    The intervals are steps >= 0: log_every / checkpoint_every 0 = only the last step;
    eval_every / image_every 0 = never (eval_every > 0 also evaluates the starting state).
    """
    with workdir_lock.hold(workdir, take=jax.process_index() == 0):  # one job at a time in workdir
        return _train(config, workdir, task)


def _intervals(tc) -> tuple[int, int, int, int, int]:
    """(log_every, checkpoint_every, eval_every, image_every, keep_checkpoints) of config.train,
    checked."""
    every = tuple(cadence(tc, n) for n in ("log_every", "checkpoint_every", "eval_every", "image_every"))
    keep = int(tc.keep_checkpoints)
    if keep < 1:  # orbax's max_to_keep=0 deletes every checkpoint, the last one too
        raise paths.ConfigError(f"config.train.keep_checkpoints={keep} must be >= 1 (the number of latest "
                                "checkpoints kept)")
    return (*every, keep)


def _local_batch_size(tc, mesh) -> int:
    try:
        return parallel.local_batch_size(int(tc.batch_size), mesh)
    except ValueError as e:
        raise paths.ConfigError(f"config.train.batch_size={int(tc.batch_size)} (the global batch) must be a "
                                f"multiple of the number of devices: {e}") from None


def _checkpointed(state, from_config: dict):
    """The part of a TrainState a checkpoint holds: its frozen_from_config entries left out."""
    return state.replace(frozen={k: v for k, v in state.frozen.items() if k not in from_config})


def _initial_state(config, task, optimizer, mesh, manager, ckpt_dir: str):
    """Where the run starts: (step, TrainState replicated over `mesh`, {name: value} of its
    frozen_from_config entries, the checkpoint's extra or None for a fresh start).

    The newest readable checkpoint in `manager` (unreadable ones are set aside), refused before its
    state is restored when saved by another stage, by the task's check_resume, for another
    learning-rate schedule or another seed; its frozen_from_config entries come from
    `abstract_state`, as init_variables reads them, so nothing the checkpoint overwrites is
    initialised. With none, step 0's fresh state."""
    seed = int(config.seed)
    if manager.all_steps():
        template, from_config = abstract_state(task, optimizer, seed, mesh)

        def check_extra(step, extra):
            """Before restoring: the stage and the task's model fields first (a changed network
            was refused for another num_steps of its cosine schedule, or as a mismatch of the
            state's shapes, not for its cause), then the schedule (its optimiser state differs
            too) and the seed."""
            where = f"{ckpt_dir}: checkpoint step {step}"
            _check_stage(extra, config, where)
            if hasattr(task, "check_resume"):
                task.check_resume(extra, where)
            state_lib.check_schedule_resume(extra.get("lr_schedule"), config, step, where)
            _check_seed(extra, seed, where)
        restored = checkpoint.restore_latest(manager, _checkpointed(template, from_config),
                                             set_aside_unreadable=True, check_extra=check_extra)
        if restored is not None:
            start, state, extra = restored
            state = parallel.replicate(state, mesh)
            state = state.replace(frozen={**state.frozen, **parallel.replicate(from_config, mesh)})
            return start, state, from_config, extra
    state, from_config = fresh_state(task, optimizer, seed)
    return 0, parallel.replicate(state, mesh), from_config, None


def _train(config, workdir: str, task) -> dict[str, Any]:
    config_ranges.check_ranges(config)
    tc = config.train
    num_steps = int(tc.num_steps)
    log_every, ckpt_every, eval_every, image_every, keep = _intervals(tc)
    mesh = parallel.make_mesh()
    local_bs = _local_batch_size(tc, mesh)
    optimizer = state_lib.make_optimizer(config)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    manager = checkpoint.make_manager(ckpt_dir, max_to_keep=keep,
                                      async_save=bool(tc.get("async_checkpoints", True)))
    start, state, from_config, extra = _initial_state(config, task, optimizer, mesh, manager, ckpt_dir)
    fingerprints = {k: fingerprint(v) for k, v in from_config.items()}
    loader = task.make_loader(local_bs, jax.process_index(), jax.process_count())
    eval_batches = task.eval_batches(local_bs, jax.process_index(), jax.process_count())
    eval_history = []
    if extra is not None:
        _check_fingerprints(extra.get("frozen_from_config"), fingerprints, ckpt_dir, start)
        loader.restore(extra["loader"])
        eval_history = [(int(st), dict(ev)) for st, ev in extra.get("eval_history", []) if int(st) <= start]
        logging.info("resumed from step %d in %s", start, ckpt_dir)
    saved = extra or {}  # a fresh start has no saved log sums
    loss_sums = _LossSums(saved.get("log_sums"), saved.get("log_count", 0))

    train_step = steps.make_train_step(task.loss_fn, optimizer, mesh)
    eval_step = steps.make_eval_step(task.eval_fn, mesh)
    image_step = steps.make_image_step(task.images, mesh) if image_every else None
    writer = metrics.make_writer(workdir)
    losses = []

    def do_eval(step):
        ev = _mean_eval(eval_step, state, eval_batches, mesh)
        writer.write_scalars(step, ev)
        eval_history.append((step, ev))
        logging.info("eval at step %d: %s", step, ev)
        _console(f"eval at step {step}: " + ", ".join(f"{k} {v:.5f}" for k, v in sorted(ev.items())))

    if start == 0 and eval_batches and eval_every:
        do_eval(0)
    if start >= num_steps:
        _console(f"checkpoint step {start} in {ckpt_dir} has reached num_steps {num_steps}: nothing to train")
        if eval_batches and eval_every and not any(st == start for st, _ in eval_history):
            do_eval(start)
    progress = metrics.Progress(num_steps, int(tc.batch_size), start)
    all_finite = xla_options.jit(_all_finite)

    def diverged(step, what):
        checkpoint.wait(manager)  # the checkpoint being written counts as kept
        kept = sorted(manager.all_steps())
        return TrainingDiverged(
            f"training diverged: {what} at step {step} is not finite (NaN or inf), so it was not saved; "
            + (f"the latest checkpoint, step {kept[-1]} in {ckpt_dir}, is kept: lower config.optim.learning_rate "
               "and run again to resume from it" if kept else
               f"no checkpoint was written before it in {ckpt_dir}: lower config.optim.learning_rate"))

    def save(step):
        # a diverged state would push the good checkpoints out (keep_checkpoints) and be resumed
        if not bool(all_finite((state.params, state.batch_stats, state.opt_state))):
            raise diverged(step, "the state to be checkpointed (params, batch_stats or optimiser state)")
        info = task.checkpoint_info() if hasattr(task, "checkpoint_info") else {}
        saved_extra = {"loader": loader.position(), "seed": int(config.seed), "stage": config.get("stage", ""),
                       "frozen_from_config": fingerprints, "lr_schedule": state_lib.schedule_info(config),
                       "eval_history": list(eval_history), "log_sums": loss_sums.sums(),
                       "log_count": loss_sums.count, **info}
        if not checkpoint.save(manager, step, _checkpointed(state, from_config), saved_extra):
            logging.warning("checkpoint step %d was not saved in %s (orbax declined it)", step, ckpt_dir)

    def log(step):
        scalars = {f"train/{k}": v for k, v in loss_sums.pop_means().items()}
        losses.append((step, scalars["train/loss"]))
        rates, line = progress.report(step)
        writer.write_scalars(step, {**scalars, **rates})
        logging.info("%s loss %.5f", line, scalars["train/loss"])
        _console(f"{line} loss {scalars['train/loss']:.5f}")
        if not np.isfinite(scalars["train/loss"]):
            raise diverged(step, "the logged train/loss (the mean since the previous log)")

    def write_images(step, batch):
        imgs = image_step(state, batch)
        if imgs:
            imgs = host_images(imgs)
            if jax.process_index() == 0:
                writer.write_images(step, imgs)

    stopped, step = None, start
    # SIGTERM stays a stop request until the last write is finished: with its handler removed
    # before the finally below, a SIGTERM while it waited (a second scancel, a time limit during
    # the last checkpoint) killed the run and lost the checkpoint being written. One that came
    # during the wait stops the job after it (the demo's next stage would start otherwise).
    with parallel.StopSignal() as stop:
        try:  # whatever ends the loop, a checkpoint being written is finished first
            for step in range(start + 1, num_steps + 1):
                batch = parallel.shard_batch(loader.next(), mesh)
                state, terms = train_step(state, batch)
                loss_sums.add(terms)
                if step == start + 1:  # XLA compiles the step in its first call: timed apart from steps/s
                    jax.block_until_ready(terms)
                    first = progress.first_step_done(step)
                    writer.write_scalars(step, {"first_step_sec": first})
                    logging.info("first step %d took %.1f s (XLA compile included)", step, first)
                if due(step, log_every, num_steps):
                    log(step)
                if image_every and step % image_every == 0:
                    write_images(step, batch)
                if eval_batches and eval_every and due(step, eval_every, num_steps):
                    do_eval(step)
                stopping = stop.requested(step)
                if stopping or due(step, ckpt_every, num_steps):
                    save(step)
                if stopping:
                    stopped = step
                    break
        finally:
            try:
                checkpoint.wait(manager)
            finally:
                manager.close()
                writer.flush()
    if stopped is None and stop.flag:  # a SIGTERM while the last checkpoint was written
        stopped = step
    if stopped is not None:
        _console(f"stopped by SIGTERM after step {stopped}: checkpoint {stopped} saved in {ckpt_dir}; "
                 "run the same command again to resume")
        raise SystemExit(128 + signal.SIGTERM)
    return {"state": state, "eval_history": eval_history, "losses": losses}
