"""Config paths (FLAME, weights, data, previous-stage checkpoint) checked up front with one clear
error, and the path operations the training job does on folders that may be in a bucket.

A workdir, data dir or checkpoint may be a local path or a URL such as gs://bucket/run (what a
TPU pod writes to). `resolve`, `exists` and `makedirs` handle both: local paths with os.path,
URLs with etils.epath (orbax's own path library), never turning a URL into a local folder.
"""
from __future__ import annotations

import os

from etils import epath


def is_url(path: str) -> bool:
    """Whether `path` names a remote file system (gs://..., s3://...) rather than a local path."""
    return "://" in str(path)


def resolve(path: str) -> str:
    """A local path made absolute; a URL as given."""
    return str(path) if is_url(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    return epath.Path(path).exists() if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return epath.Path(path).is_dir() if is_url(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
    """Creates the folder and its parents (nothing when it exists)."""
    if is_url(path):
        epath.Path(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def rename(src: str, dst: str) -> None:
    if is_url(src):
        epath.Path(src).rename(dst)
    else:
        os.rename(src, dst)


class ConfigError(ValueError):
    """A config field holds a value the job cannot use; the message names the field."""


class ConfigPathError(ConfigError):
    """A path field of the config is unset or names nothing on disk."""


def require_set(config, field: str, why: str) -> str:
    """Returns `config.<field>` (a dotted name) if it is set, without looking at the disk;
    ConfigPathError naming the field and what it is for when it is not."""
    value = config
    for part in field.split("."):
        value = value.get(part) if hasattr(value, "get") else None
        if value is None:
            break
    if not value:
        raise ConfigPathError(f"config.{field} is not set; it must name {why} (set --config.{field}=PATH)")
    return value


def require_path(config, field: str, why: str) -> str:
    """Returns `config.<field>` (a dotted name) if it names an existing file or directory.

    Raises ConfigPathError naming the field, its value and what it is for (for the string
    'None', what `--config.<field>=None` gives a str field, how to leave it unset instead), e.g.
    `require_path(config, 'init.coarse_checkpoint', 'the frozen coarse encoder')`.
    """
    value = require_set(config, field, why)
    if not exists(value):
        # ml_collections parses --config.X=None for a placeholder(str) field as the string 'None'
        hint = (f" (--config.{field}=None sets the string 'None'; to leave the field unset, leave the flag out "
                f"or give it no value: --config.{field}=)") if value == "None" else ""
        raise ConfigPathError(f"config.{field}={value!r} does not exist; it must name {why}{hint}")
    return str(value)
