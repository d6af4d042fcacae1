"""VGG19 convolutional features (torchvision ``vgg19().features``) for DECA's ID-MRF loss.

Conv modules are named ``features_<N>`` after their index in torchvision's ``features``
Sequential, so ``features.N.weight`` maps by name. Input is RGB in [0, 1]; ImageNet mean/std
normalisation happens inside, as in DECA's ``VGG19FeatLayer``.

Layer names follow DECA's counting, NOT the standard one: within block c, every conv AND every
ReLU advances the counter, so the layers are conv{c}_1, relu{c}_2, conv{c}_3, relu{c}_4, ... and
pools are pool_{c}. Hence DECA's ``relu3_2`` / ``relu4_2`` (the ID-MRF layers) are the ReLUs after
the FIRST conv of blocks 3 and 4 — ``relu3_1`` / ``relu4_1`` in standard naming.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision cfg 'E': channels per conv, 'M' = max-pool.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
             512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def deca_layer_names():
    """[(torch features index, DECA name, kind)] for every layer of vgg19.features."""
    out, idx, c, r = [], 0, 1, 0
    for v in VGG19_CFG:
        if v == "M":
            out.append((idx, f"pool_{c}", "pool"))
            idx, c, r = idx + 1, c + 1, 0
        else:
            out.append((idx, f"conv{c}_{r + 1}", "conv"))
            out.append((idx + 1, f"relu{c}_{r + 2}", "relu"))
            idx, r = idx + 2, r + 2
    return out


class VGG19Features(nn.Module):
    """images: [B, H, W, 3] RGB in [0, 1] -> {DECA layer name: [B, h, w, C] float32}.

    Runs only as deep as the deepest requested layer.
    """

    layers: Sequence[str] = ("relu3_2", "relu4_2")
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        names = deca_layer_names()
        known = {n for _, n, _ in names}
        bad = [l for l in self.layers if l not in known]
        if bad:
            raise ValueError(f"VGG19Features: unknown layers {bad}; known: {sorted(known)}")
        x = (images - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
        x = x.astype(self.dtype)
        out, wanted = {}, set(self.layers)
        cfg = iter(v for v in VGG19_CFG if v != "M")
        for idx, name, kind in names:
            if not wanted - out.keys():
                break
            if kind == "conv":
                x = nn.Conv(next(cfg), (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                            param_dtype=jnp.float32, name=f"features_{idx}")(x)
            elif kind == "relu":
                x = nn.relu(x)
            else:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            if name in wanted:
                out[name] = x.astype(jnp.float32)
        return out
