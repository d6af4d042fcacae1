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
    schedule = config.optim.get("schedule", "constant") or "constant"
    if schedule == "cosine":
        lr = optax.cosine_decay_schedule(lr, decay_steps=max(int(config.train.num_steps), 1), alpha=0.05)
    elif schedule != "constant":
        raise paths.ConfigError(f"config.optim.schedule={schedule!r} must be 'constant' or 'cosine'")
    opt = optax.adam(lr)
    clip = float(config.optim.get("clip_norm", 0.0) or 0.0)
    return optax.chain(optax.clip_by_global_norm(clip), opt) if clip > 0 else opt


def create(params, batch_stats, frozen, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    """A step-0 state; `frozen` may be an empty dict."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=optimizer.init(params), rng=jax.random.key_data(jax.random.key(seed)),
                      frozen=frozen)
