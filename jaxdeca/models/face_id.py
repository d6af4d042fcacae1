"""VGGFace2 ResNet-50 (Caffe variant) for DECA's identity loss.

The network is ``resnet.ResNet50(caffe=True)`` (stride in the bottleneck's first 1x1 conv,
stem max-pool with padding 0 and ceil mode, BN eps 1e-5), named so the keys of the official
``resnet50_ft_weight.pkl`` map by name; it returns the 2048-d pooled feature DECA compares
with cosine similarity. Its input is Caffe-style: BGR, 0..255, mean-subtracted — see
``vggface2_preprocess``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jaxdeca.models.resnet import ResNet50

VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)


def vggface2_preprocess(images):
    """images: [B, H, W, 3] RGB in [0, 1] -> [B, H, W, 3] BGR * 255 minus the VGGFace2 mean."""
    return images[..., ::-1] * 255.0 - jnp.asarray(VGGFACE2_MEAN_BGR, images.dtype)


def vggface2_resnet50(dtype: Any = jnp.float32) -> ResNet50:
    """[B, 224, 224, 3] preprocessed BGR -> [B, 2048] identity features."""
    return ResNet50(caffe=True, dtype=dtype)
