"""DECA's image encoders (``decalib/models/encoders.py: ResnetEncoder``) in Flax.

ResNet-50 v1.5 features -> Dense 1024 -> ReLU -> Dense ``out_size`` with no final activation
(DECA's E_flame and E_detail both use ``last_op=None``). Input is RGB in [0, 1] without any
mean/std normalisation, exactly as DECA feeds it. Coarse encoder: ``out_size=236`` split by
``decompose_code``; detail encoder: ``out_size=128``. A fresh encoder starts as DECA's: an
untrained torchvision ResNet-50 and nn.Linear's initialisation (`torch_init`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdeca.models import torch_init
from jaxdeca.models.resnet import ResNet50

# DECA's param_dict order and sizes (cfg.model.n_shape, n_tex, n_exp, n_pose, n_cam, n_light).
CODE_SIZES = (("shape", 100), ("tex", 50), ("exp", 50), ("pose", 6), ("cam", 3), ("light", 27))
COARSE_CODE_SIZE = sum(n for _, n in CODE_SIZES)  # 236
DETAIL_CODE_SIZE = 128


class ResnetEncoder(nn.Module):
    """images: [B, H, W, 3] RGB in [0, 1] (224 in DECA) -> code [B, out_size] float32."""

    out_size: int
    dtype: Any = jnp.float32
    width: float = 1.0          # ResNet channel multiplier (1.0 = DECA); see ResNet50
    blocks: tuple = (3, 4, 6, 3)
    hidden: int = 1024          # width of the MLP head (1024 = DECA)

    @nn.compact
    def __call__(self, images, train: bool = False):
        features = ResNet50(caffe=False, dtype=self.dtype, width=self.width, blocks=tuple(self.blocks),
                            name="encoder")(images, train)
        dense = functools.partial(nn.Dense, kernel_init=torch_init.linear_kernel, dtype=self.dtype,
                                  param_dtype=jnp.float32)  # DECA's nn.Linear init
        x = dense(self.hidden, bias_init=torch_init.linear_bias(features.shape[-1]), name="layers_0")(features)
        x = dense(self.out_size, bias_init=torch_init.linear_bias(x.shape[-1]), name="layers_2")(nn.relu(x))
        return x.astype(jnp.float32)


def coarse_encoder(dtype: Any = jnp.float32, **arch) -> ResnetEncoder:
    """DECA's E_flame: [B, 224, 224, 3] -> [B, 236]. ``arch``: width/blocks/hidden overrides."""
    return ResnetEncoder(COARSE_CODE_SIZE, dtype=dtype, **arch)


def detail_encoder(dtype: Any = jnp.float32, **arch) -> ResnetEncoder:
    """DECA's E_detail: [B, 224, 224, 3] -> [B, 128]. ``arch``: width/blocks/hidden overrides."""
    return ResnetEncoder(DETAIL_CODE_SIZE, dtype=dtype, **arch)


def decompose_code(code):
    """Split the coarse code like DECA's ``decompose_code``.

    code: [B, 236] -> dict(shape [B,100], tex [B,50], exp [B,50], pose [B,6], cam [B,3],
    light [B,9,3]).
    """
    if code.shape[-1] != COARSE_CODE_SIZE:
        raise ValueError(f"decompose_code: expected last dim {COARSE_CODE_SIZE}, got {code.shape}")
    out, start = {}, 0
    for name, n in CODE_SIZES:
        out[name] = code[..., start:start + n]
        start += n
    out["light"] = out["light"].reshape(code.shape[:-1] + (9, 3))
    return out
