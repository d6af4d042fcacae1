"""Reading the official weight files into ``{name: numpy array}`` with one clear error each.

``.tar`` / ``.pth`` files are ``torch.save`` archives and need PyTorch (the optional extra
``pip install jaxdeca[torch]``; imported lazily). The VGGFace2 ``.pkl`` is a plain pickle of
numpy arrays and needs no torch.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from jaxdeca import safe_pickle


class ConversionError(ValueError):
    """A weight file is missing, unreadable, or does not match the network it should fill."""


def _check_exists(path):
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")


def load_torch_file(path) -> Any:
    """Load a ``torch.save`` file on CPU (tensors only, no code execution)."""
    _check_exists(path)
    try:
        import torch
    except ImportError as e:
        raise ConversionError(f"{path}: reading PyTorch files needs torch; "
                              "pip install jaxdeca[torch]") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zipfile / pickle / torch errors: report one line, not their stack
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint (truncated or wrong "
                              f"file?): {type(e).__name__}: {e}") from None


def load_pickle_arrays(path) -> dict:
    """Load a pickled ``{name: numpy array}`` (VGGFace2 ``resnet50_ft_weight.pkl``, py2-latin1)."""
    _check_exists(path)
    try:
        with open(path, "rb") as f:
            obj = safe_pickle.load(f)  # numpy arrays only: no code from the file runs
    except Exception as e:
        raise ConversionError(f"{path}: not a readable pickle (truncated or wrong file?): "
                              f"{type(e).__name__}: {e}") from None
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a dict of arrays, found {type(obj).__name__}")
    return {str(k): np.asarray(v) for k, v in obj.items()}


def state_dict_to_numpy(state, path, what) -> dict:
    """Torch state dict (``{name: tensor}``) -> ``{name: float32/int numpy array}``.

    Floating tensors are widened to float32 in torch first: numpy has no bfloat16, so a state
    dict saved after ``model.bfloat16()`` could not leave torch otherwise."""
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path}: {what} should be a state dict, "
                              f"found {type(state).__name__}")
    out = {}
    for k, v in state.items():
        if hasattr(v, "detach"):
            v = v.detach().cpu()
            if v.is_floating_point():
                v = v.float()
            v = v.numpy()
        out[str(k)] = np.asarray(v)
    return out
