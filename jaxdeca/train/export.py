"""Reading a trained stage back: the variables a later stage or the apps need.

A stage's workdir holds `checkpoints/<step>/{state,extra}` written by `jaxdeca.train.loop`.
`load_stage(path)` restores the newest readable checkpoint without knowing the train state's
structure (orbax rebuilds it from the checkpoint's own metadata) and returns plain nested
dicts of numpy arrays:

    {'step': int, 'stage': str, 'extra': dict, 'params': ..., 'batch_stats': ..., 'frozen': ...}

'extra' holds the loader position and what the stage saved to rebuild its networks: 'model'
(width, blocks, hidden, uv_size, dtype), 'image_size', 'flame_path'. 'frozen' holds the detail
stage's coarse encoder; the loss networks (VGGFace2, VGG19) are not saved ('extra' names them,
with a fingerprint, under 'frozen_from_config'; checkpoints written before that hold them).

`inference_variables(path)` turns a coarse or detail stage into the Flax variables of each
network, keyed like a converted official DECA model (`jaxdeca.convert.convert_deca`):
{'E_flame': {'params', 'batch_stats'}, 'E_detail': ..., 'D_detail': ...} (detail networks only
for a detail stage).
"""
from __future__ import annotations

import os

from jaxdeca.train import checkpoint, paths


def checkpoint_dir(path: str) -> str:
    """A stage workdir or its checkpoints/ folder -> the checkpoints folder (absolute, or the
    URL of one in a bucket)."""
    path = paths.resolve(path)
    sub = os.path.join(path, "checkpoints")
    return sub if paths.isdir(sub) else path


def load_stage(path: str) -> dict:
    """The newest readable checkpoint under `path` (a stage workdir); see the module docstring.

    Raises FileNotFoundError when `path` holds no checkpoint, CheckpointError when none reads.
    """
    ckpt = checkpoint_dir(path)
    if not paths.isdir(ckpt):
        raise FileNotFoundError(f"{path}: no such directory (expected a training workdir with checkpoints/)")
    restored = checkpoint.restore_latest(checkpoint.open_for_reading(ckpt))
    if restored is None:
        raise FileNotFoundError(f"{ckpt}: no checkpoint found (expected numbered step folders written "
                                "by python -m jaxdeca.main)")
    step, state, extra = restored
    return {"step": int(step), "stage": str(extra.get("stage", "")), "extra": extra,
            "params": _get(state, "params"), "batch_stats": _get(state, "batch_stats"),
            "frozen": _get(state, "frozen")}


def _get(state, key):
    value = state.get(key) if hasattr(state, "get") else getattr(state, key, None)
    return value if value is not None else {}


def inference_variables(path: str) -> dict:
    """Network variables of a trained coarse or detail stage (see the module docstring)."""
    return load_inference(path)[0]


def load_inference(path: str) -> tuple[dict, dict]:
    """(network variables, info) of a trained stage; info = {'stage', 'step', 'model' (the
    architecture fields of config.model, DECA's defaults when the checkpoint predates them;
    'model_recorded': the names of those it recorded),
    'image_size', 'flame_path', 'flame_fingerprint' (None when the checkpoint predates it)}: what
    `jaxdeca.apps` needs to rebuild and run the networks, and a later stage checks."""
    s = load_stage(path)
    from jaxdeca.train.deca_common import DEFAULT_MODEL
    extra = s["extra"]
    model = dict(DEFAULT_MODEL, **(extra.get("model") or {}))
    model["blocks"] = tuple(int(b) for b in model["blocks"])
    info = {"stage": s["stage"], "step": s["step"], "model": model, "model_recorded": sorted(extra.get("model") or {}),
            "image_size": int(extra.get("image_size", 224)), "flame_path": extra.get("flame_path"),
            "flame_fingerprint": extra.get("flame_fingerprint")}
    return _networks(path, s), info


def _networks(path: str, s: dict) -> dict:
    out = {}
    if "E_flame" in s["params"]:  # a coarse / pretrain stage trains the coarse encoder
        out["E_flame"] = {"params": s["params"]["E_flame"], "batch_stats": s["batch_stats"].get("E_flame", {})}
    elif "E_flame" in s["frozen"]:
        out["E_flame"] = s["frozen"]["E_flame"]
    for name in ("E_detail", "D_detail"):
        if name in s["params"]:
            out[name] = {"params": s["params"][name], "batch_stats": s["batch_stats"].get(name, {})}
    if "E_flame" not in out:
        raise ValueError(f"{path}: checkpoint step {s['step']} holds no coarse encoder (E_flame); "
                         f"found params {sorted(s['params'])}")
    return out
