"""DECA's detail decoder (``decalib/models/decoders.py: Generator``) in Flax.

latent [B, 181] -> displacement [B, 256, 256, 1]; the latent is DECA's
``cat([pose[:, 3:], exp, detail])`` (jaw pose 3 + expression 50 + detail code 128), built by
``detail_latent``.

Layout, matching the PyTorch ``nn.Sequential`` indices so weights map by name:
``l1_0`` Dense 181 -> 8192, viewed as [B, 128, 8, 8] in CHW order then moved to NHWC;
``conv_blocks_0`` BN(128); then five (bilinear x2 upsample, 3x3 conv, BN(eps=0.8),
LeakyReLU 0.2) with convs at indices 2, 6, 10, 14, 18 (channels 128, 64, 64, 32, 16) and BNs at
3, 7, 11, 15, 19; ``conv_blocks_21`` 3x3 conv to 1 channel; tanh; times ``out_scale``
(DECA's ``max_z`` = 0.01). ``eps=0.8`` is the original's quirk (``nn.BatchNorm2d(c, 0.8)`` passes
0.8 positionally as eps) and is kept for weight parity. DECA builds the Generator with
``sample_mode='bilinear'``; torch's default ``align_corners=False`` equals half-pixel
``jax.image.resize``. Fresh weights and biases are drawn as nn.Linear's and nn.Conv2d's
(`torch_init`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdeca.models import torch_init

DETAIL_LATENT_SIZE = 181
CHANNELS = (128, 64, 64, 32, 16)


def upsample_bilinear_x2(x):
    """x: [B, H, W, C] -> [B, 2H, 2W, C]; torch ``Upsample(2, 'bilinear', align_corners=False)``."""
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear", antialias=False)


def detail_latent(pose, exp, detail):
    """DECA's D_detail input, ``cat([jaw pose, exp, detail])``.

    pose: [B, 6], exp: [B, 50], detail: [B, 128] -> [B, 181].
    """
    return jnp.concatenate([pose[..., 3:], exp, detail], axis=-1)


class Generator(nn.Module):
    """latent: [B, 181] -> displacement [B, 256, 256, 1] float32 in [-out_scale, out_scale]."""

    out_channels: int = 1
    out_scale: float = 0.01
    init_size: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, latent, train: bool = False):
        def conv(features, name, x):  # nn.Conv2d(c_in, features, 3, padding=1) and its init
            return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=torch_init.linear_kernel,
                           bias_init=torch_init.linear_bias(x.shape[-1] * 9), dtype=self.dtype,
                           param_dtype=jnp.float32, name=name)(x)

        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 dtype=self.dtype, param_dtype=jnp.float32)
        s = self.init_size
        x = nn.Dense(128 * s * s, kernel_init=torch_init.linear_kernel,
                     bias_init=torch_init.linear_bias(latent.shape[-1]), dtype=self.dtype,
                     param_dtype=jnp.float32, name="l1_0")(latent.astype(self.dtype))
        x = x.reshape(x.shape[0], 128, s, s).transpose(0, 2, 3, 1)  # CHW view -> NHWC
        x = norm(epsilon=1e-5, name="conv_blocks_0")(x)
        idx = 1
        for ch in CHANNELS:
            x = upsample_bilinear_x2(x)
            x = conv(ch, f"conv_blocks_{idx + 1}", x)
            x = norm(epsilon=0.8, name=f"conv_blocks_{idx + 2}")(x)
            x = nn.leaky_relu(x, 0.2)
            idx += 4
        x = conv(self.out_channels, f"conv_blocks_{idx}", x)  # idx == 21
        return (jnp.tanh(x) * self.out_scale).astype(jnp.float32)


def detail_decoder(dtype: Any = jnp.float32, uv_size: int = 256) -> Generator:
    """DECA's D_detail: [B, 181] -> [B, uv_size, uv_size, 1] (max_z = 0.01).

    uv_size 256 is DECA's (8 x 8 start, five x2 upsamplings); smaller multiples of 32 start from
    uv_size / 32 (test and demo configs)."""
    if uv_size < 32 or uv_size % 32:
        raise ValueError(f"detail_decoder: uv_size must be a positive multiple of 32, got {uv_size}")
    return Generator(out_channels=1, out_scale=0.01, init_size=uv_size // 32, dtype=dtype)
