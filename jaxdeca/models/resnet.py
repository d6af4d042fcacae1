"""ResNet-50 backbones in Flax linen (NHWC), laid out so PyTorch state dicts map onto them by name.

Two variants share one module:

* ``caffe=False`` — torchvision / DECA ResNet-50 v1.5: the stride of a bottleneck sits on its
  3x3 conv, and the stem max-pool is ``MaxPool2d(3, 2, padding=1)``. DECA's encoders use this.
* ``caffe=True`` — the Caffe ResNet-50 of VGGFace2 (``resnet50_ft_weight.pkl``): the stride
  sits on the first 1x1 conv and the stem max-pool is ``MaxPool2d(3, 2, padding=0,
  ceil_mode=True)``.

Submodule names mirror the PyTorch keys with ``.<index>`` folded into ``_<index>``
(``layer1.0.downsample.1`` -> ``layer1_0/downsample_1``); ``jaxdeca.convert`` relies on it.
BatchNorm keeps running statistics in the ``batch_stats`` collection with momentum 0.9
(PyTorch's 0.1) and eps 1e-5. Params are float32; ``dtype`` sets the compute precision.
Inference (``train=False``) matches PyTorch's eval mode exactly; in training the running
variance is updated with the biased batch variance (Flax) where PyTorch uses the unbiased one,
a factor n/(n-1) that is negligible at DECA's batch sizes. Fresh convolution kernels are drawn
as torchvision's (N(0, 2 / fan_out), `torch_init`), the untrained network DECA's encoders copy.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdeca.models import torch_init

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (planes, blocks, stride)


def max_pool_3x3_s2(x, ceil_mode: bool):
    """Stem max-pool. x: [B, H, W, C] -> [B, ~H/2, ~W/2, C].

    ``ceil_mode=False``: PyTorch ``MaxPool2d(3, 2, padding=1)``. ``ceil_mode=True``:
    ``MaxPool2d(3, 2, padding=0, ceil_mode=True)`` — extra -inf padding on the bottom/right
    only, as many rows as the ceil'd output needs.
    """
    if not ceil_mode:
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    pads = []
    for size in x.shape[1:3]:
        out = -(-(size - 3) // 2) + 1
        pads.append((0, max((out - 1) * 2 + 3 - size, 0)))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=tuple(pads))


class Bottleneck(nn.Module):
    """Bottleneck block (1x1 -> 3x3 -> 1x1, expansion 4). x: [B, H, W, Cin] -> [B, H/s, W/s, 4p]."""

    planes: int
    stride: int = 1
    caffe: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = functools.partial(nn.Conv, use_bias=False, kernel_init=torch_init.resnet_conv_kernel,
                                 dtype=self.dtype, param_dtype=jnp.float32)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32)
        s1, s3 = (self.stride, 1) if self.caffe else (1, self.stride)
        y = conv(self.planes, (1, 1), strides=(s1, s1), padding="VALID", name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.planes, (3, 3), strides=(s3, s3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = conv(self.planes * 4, (1, 1), padding="VALID", name="conv3")(y)
        y = norm(name="bn3")(y)
        if x.shape[-1] != self.planes * 4 or self.stride != 1:
            x = conv(self.planes * 4, (1, 1), strides=(self.stride, self.stride), padding="VALID",
                     name="downsample_0")(x)
            x = norm(name="downsample_1")(x)
        return nn.relu(y + x)


class ResNet50(nn.Module):
    """ResNet-50 trunk with global average pooling and no classifier.

    images: [B, H, W, 3] (preprocessing is the caller's: DECA feeds raw RGB in [0, 1]; VGGFace2
    wants ``face_id.vggface2_preprocess``) -> features [B, 2048] float32.
    Any H, W >= 32 works; 224 is what the weights were trained at.

    ``width`` scales every stage's channels (1.0 = ResNet-50; features are 2048 * width) and
    ``blocks`` sets the bottlenecks per stage ((3, 4, 6, 3) = ResNet-50). Other values give the
    narrow, shallow nets of the test and demo configs; parameter names are unchanged, so only the
    defaults load official weights.
    """

    caffe: bool = False
    dtype: Any = jnp.float32
    width: float = 1.0
    blocks: tuple = (3, 4, 6, 3)

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = images.astype(self.dtype)
        stem = max(int(round(64 * self.width)), 1)
        x = nn.Conv(stem, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                    kernel_init=torch_init.resnet_conv_kernel, dtype=self.dtype, param_dtype=jnp.float32,
                    name="conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=self.dtype, param_dtype=jnp.float32, name="bn1")(x)
        x = max_pool_3x3_s2(nn.relu(x), ceil_mode=self.caffe)
        if len(self.blocks) != len(STAGES):
            raise ValueError(f"ResNet50.blocks: expected {len(STAGES)} stages, got {self.blocks}")
        for stage, ((planes, _, stride), blocks) in enumerate(zip(STAGES, self.blocks), start=1):
            planes = max(int(round(planes * self.width)), 1)
            for i in range(blocks):
                x = Bottleneck(planes, stride if i == 0 else 1, self.caffe, self.dtype,
                               name=f"layer{stage}_{i}")(x, train)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
