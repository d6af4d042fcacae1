"""Train state and optimiser for every DECA stage.

`TrainState` is a flax.struct dataclass (a pytree) holding what a checkpoint must carry:
  step          int32 scalar
  params        trainable parameters (the encoders/decoder the stage trains)
  batch_stats   BatchNorm running statistics of the trainable nets
  opt_state     optax state for `params`
  rng           raw uint32 key data (checkpointable; wrap with `jax.random.wrap_key_data`)
  frozen        variables that are used but never updated (the detail stage's coarse encoder,
                the loss networks); kept apart so gradients and the optimiser never see them.
                Entries a task names in `frozen_from_config` (the loss networks) are read
                from their files at every start and left out of checkpoints (`loop.train`).
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from jaxdeca import xla_options
from jaxdeca.train import paths


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    frozen: Any


def make_optimizer(config) -> optax.GradientTransformation:
    """Adam as DECA (lr 1e-4, no weight decay); optional global-norm clipping.

    Reads `config.optim.learning_rate`, `config.optim.clip_norm` (0 = no clipping) and
    `config.optim.schedule`: 'constant' (DECA) or 'cosine' (decay to 5% over train.num_steps;
    the short demo runs use it to settle).
    """
    lr = float(config.optim.learning_rate)
    schedule = _schedule_name(config)
    if schedule == "cosine":
        lr = _cosine(lr, int(config.train.num_steps))
    elif schedule != "constant":
        raise paths.ConfigError(f"config.optim.schedule={schedule!r} must be 'constant' or 'cosine'")
    opt = optax.adam(lr)
    clip = float(config.optim.get("clip_norm", 0.0) or 0.0)
    return optax.chain(optax.clip_by_global_norm(clip), opt) if clip > 0 else opt


def _schedule_name(config) -> str:
    return config.optim.get("schedule", "constant") or "constant"


def _cosine(lr: float, num_steps: int):
    """The 'cosine' schedule: step -> learning rate, lr decaying to 5% of it over num_steps."""
    return optax.cosine_decay_schedule(lr, decay_steps=max(num_steps, 1), alpha=0.05)


def schedule_info(config) -> dict:
    """What fixes each step's learning rate beyond config.optim.learning_rate, saved with every
    checkpoint (loop.train): {'schedule': 'constant'} or {'schedule': 'cosine', 'num_steps': N}
    (the cosine decays over train.num_steps)."""
    schedule = _schedule_name(config)
    return {"schedule": schedule, "num_steps": int(config.train.num_steps)} if schedule == "cosine" \
        else {"schedule": schedule}


def check_schedule_resume(saved: dict | None, config, step: int, where: str) -> None:
    """Refuses (ConfigError) to resume, at `step`, the checkpoint `where` (saved: its
    schedule_info; None when the checkpoint predates it: not checked) with another
    config.optim.schedule, or one of a cosine schedule with another config.train.num_steps.

    The schedules keep different optimiser states (the cosine counts steps in its own entry), so
    a checkpoint of one cannot be restored onto the other's state; the loop checks this before
    restoring (`checkpoint.restore_latest`'s check_extra), as orbax would report the mismatch as
    an unreadable checkpoint. The cosine is a function of step / num_steps, so a changed
    num_steps does not extend or shorten the curve the run was following: the learning rate
    jumps at once (a longer run back up toward the starting rate, a warm restart; a shorter one
    down) and the rest follows another curve. A constant schedule resumes with any num_steps."""
    if not saved:
        return
    was, now = str(saved.get("schedule") or "constant"), _schedule_name(config)
    if was != now:
        over = f" over config.train.num_steps={int(saved['num_steps'])}" if "num_steps" in saved else ""
        raise paths.ConfigError(
            f"{where} was written with another optimiser configuration: it was trained with "
            f"config.optim.schedule={was!r}{over} but config.optim.schedule={now!r} now (another learning-rate "
            f"curve and optimiser state); resume with config.optim.schedule={was!r}, or use another workdir")
    if was != "cosine":
        return
    old, new = int(saved["num_steps"]), int(config.train.num_steps)
    if old != new:
        lr = float(config.optim.learning_rate)
        a, b = float(_cosine(lr, old)(step)), float(_cosine(lr, new)(step))
        raise paths.ConfigError(
            f"{where} was trained with config.optim.schedule='cosine' over config.train.num_steps={old}; "
            f"config.train.num_steps={new} would not extend or shorten that schedule but replace it: the learning "
            f"rate would jump from {a:.3g} to {b:.3g} at step {step}; resume with config.train.num_steps={old}, "
            "or use another workdir")


def create(params, batch_stats, frozen, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    """A step-0 state; `frozen` may be an empty dict."""
    # the new leaves in one setup program (run op by op, the optimiser's zeros and the key made
    # one small compile per shape, about 10 per stage); inlined under a caller's transformation
    def fresh(params):
        return jnp.zeros((), jnp.int32), optimizer.init(params), jax.random.key_data(jax.random.key(seed))

    step, opt_state, rng = xla_options.setup_jit(fresh)(params)
    return TrainState(step=step, params=params, batch_stats=batch_stats, opt_state=opt_state, rng=rng,
                      frozen=frozen)
