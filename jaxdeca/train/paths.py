"""Config paths (FLAME, weights, data, previous-stage checkpoint) checked up front with one clear error."""
from __future__ import annotations

import os


class ConfigPathError(ValueError):
    """A path field of the config is unset or names nothing on disk."""


def require_path(config, field: str, why: str) -> str:
    """Returns `config.<field>` (a dotted name) if it names an existing file or directory.

    Raises ConfigPathError naming the field, its value and what it is for, e.g.
    `require_path(config, 'detail.coarse_checkpoint', 'the frozen coarse encoder')`.
    """
    value = config
    for part in field.split("."):
        value = value.get(part) if hasattr(value, "get") else None
        if value is None:
            break
    if not value:
        raise ConfigPathError(f"config.{field} is not set; it must name {why} (set --config.{field}=PATH)")
    if not os.path.exists(value):
        raise ConfigPathError(f"config.{field}={value!r} does not exist; it must name {why}")
    return str(value)
