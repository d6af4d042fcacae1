"""Numeric config fields checked against their ranges before anything is built.

A value out of range (a negative loss weight or learning rate, a zero batch, a negative seed)
is one `paths.ConfigError` naming the field, at the start of a run (`loop.train`) and, for
every stage, before the demo builds its dataset (`demo.check_config`). Before, a negative
weight switched its term off as 0 does, a negative learning rate trained by gradient ascent,
and a zero batch or image size ended in an IndexError or ZeroDivisionError after the networks
were built. Fields a config does not have (the toy task's) are not checked, nor the loss
weights of a task other than DECA's stages.
"""
from __future__ import annotations

import math

from jaxdeca.losses import defaults as loss_defaults
from jaxdeca.train import paths

DECA_TASKS = ("pretrain", "coarse", "detail")  # whose config.loss holds DECA's weights (losses.defaults)

# (section, field, least, least allowed itself, what the field is)
_RANGES = (
    ("", "seed", 0, True, "the run's seed"),
    ("optim", "learning_rate", 0.0, False, "Adam's step size"),
    ("optim", "clip_norm", 0.0, True, "0: no gradient clipping"),
    ("train", "batch_size", 1, True, "images per step"),
    ("train", "num_steps", 0, True, "steps to train"),
    ("data", "image_size", 1, True, "pixels"),
    ("data", "num_threads", 0, True, "loader threads"),
    ("data", "eval_batches", 0, True, "held-out batches"),
    ("data", "eval_seed", 0, True, "the held-out batches' seed"),
    ("data", "color_jitter", 0.0, True, "0: no colour jitter"),
    ("data", "scale_min", 0.0, False, "the training crop's least size over the landmark box"),
    ("data", "eval_scale", 0.0, False, "the held-out crops' size over the landmark box"),
    ("data", "trans_scale", 0.0, True, "the training crop's largest shift over the landmark box size"),
    ("model", "init_cam_scale", 0.0, True, "0 or None: DECA's init (a scale near 0)"),
)


def _field(config, section: str, name: str):
    """(present, value) of config.<section>.<name> (config.<name> when section is '')."""
    node = config.get(section) if section else config
    if node is None or name not in node:
        return False, None
    return True, node[name]


def _number(where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise paths.ConfigError(f"{where}={value!r} must be a finite number")
    return value


def check_ranges(config) -> None:
    """ConfigError naming the first numeric field of `config` out of its range (above)."""
    for section, name, least, inclusive, what in _RANGES:
        present, value = _field(config, section, name)
        if not present or value is None:
            continue
        where = f"config.{section + '.' if section else ''}{name}"
        value = _number(where, value)
        if value < least or (value == least and not inclusive):
            bound = f">= {least}" if inclusive else f"> {least}"
            raise paths.ConfigError(f"{where}={value!r} must be {bound} ({what})")
    present, hi = _field(config, "data", "scale_max")
    if present:
        lo = config.data.get("scale_min", 0.0)
        if _number("config.data.scale_max", hi) < lo:
            raise paths.ConfigError(f"config.data.scale_max={hi!r} must be >= config.data.scale_min={lo!r} "
                                    "(the training crop's size is drawn from [scale_min, scale_max])")
    if config.get("task") in DECA_TASKS and config.get("loss") is not None:  # other tasks' losses are their own
        try:
            loss_defaults.as_weights(config.loss)
        except ValueError as e:
            raise paths.ConfigError(f"config.loss: {e}") from None
