"""DECA's ID-MRF loss (``lossfunc.IDMRFLoss``), implicit-diversified Markov random field.

For one feature layer, per image (1x1 patches, so every spatial location is a patch):
  meanT  = mean of tar over CHANNELS at each location (keepdim) — a quirk of the original: the
           mean is per location, not over locations; kept.
  g, t   = L2-normalise (gen - meanT), (tar - meanT) over channels
  cos    = g_i . t_j  for every gen location i and tar location j          [HW_gen, HW_tar]
  d      = (1 - cos) / 2
  rel    = d / (min_j d + 1e-5)          (min over TAR patches for each gen location)
  w      = exp((1 - rel) / 0.5), normalised to sum 1 over tar patches
  cs_j   = max_i w_ij                    (best gen match of each tar patch)
  loss   = -log(mean_j cs_j)
and the layer loss is the SUM over the batch. The total is style (DECA's 'relu3_2' and
'relu4_2', weight 1 each) + content ('relu4_2', weight 1) — DECA's names count convs and ReLUs
together, so these are relu3_1 / relu4_1 in standard VGG naming (see jaxdeca.models.vgg19).

Implemented with one batched matmul per layer (HIGHEST precision: the relative distance divides
by the nearest-match distance, which TF32 would corrupt). Memory is HW x HW per image (4096^2
floats at relu3 for a 256 input); ``chunk`` runs images sequentially in groups to bound it.
Deviation for robustness: the channel norm is clamped at 1e-12 (torch divides by 0 -> NaN when
a location's features equal their channel mean, e.g. all-zero ReLU outputs).
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import jax
import jax.numpy as jnp

STYLE_LAYERS = {"relu3_2": 1.0, "relu4_2": 1.0}
CONTENT_LAYERS = {"relu4_2": 1.0}
BIAS = 1.0
NN_STRETCH_SIGMA = 0.5
LAMBDA_STYLE = 1.0
LAMBDA_CONTENT = 1.0


def _normalise(x, eps=1e-12):
    """x: [..., C] -> x / max(|x|, eps) over the last axis; 0 with a zero gradient where x = 0
    (a clamped norm alone gave a gradient of 1 / eps there: a dead ReLU location's 1e12)."""
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    ok = sq > 0
    return x * jnp.where(ok, jax.lax.rsqrt(jnp.maximum(jnp.where(ok, sq, 1.0), eps * eps)), 0.0)


def _mrf_single(gen, tar):
    """gen, tar: [HW, C] -> per-image -log(div_mrf) (scalar)."""
    mean_t = jnp.mean(tar, axis=-1, keepdims=True)
    g = _normalise(gen - mean_t)
    t = _normalise(tar - mean_t)
    cos = jnp.matmul(g, t.T, precision=jax.lax.Precision.HIGHEST)     # [HW_gen, HW_tar]
    d = (1.0 - cos) / 2.0
    rel = d / (jnp.min(d, axis=1, keepdims=True) + 1e-5)
    w = jnp.exp((BIAS - rel) / NN_STRETCH_SIGMA)
    w = w / jnp.sum(w, axis=1, keepdims=True)
    cs = jnp.max(w, axis=0)                                            # [HW_tar]
    return -jnp.log(jnp.mean(cs))


def mrf_loss(gen, tar, chunk: Optional[int] = None):
    """One layer's MRF term. gen, tar: [B, H, W, C] of the same shape -> scalar.

    The same H, W is required, as in DECA: the target's channel mean is subtracted from both at
    each location (``gen - mean(tar, dim=1)``), which pairs gen and tar location by location.

    chunk: None runs the whole batch at once (vmap); an int runs ``chunk`` images at a time
    (``lax.map``), bounding memory to chunk * HW_gen * HW_tar floats.
    """
    if gen.ndim != 4 or gen.shape != tar.shape:
        raise ValueError(f"mrf_loss: expected gen and tar [B, H, W, C] features of the same "
                         f"shape, got gen {gen.shape}, tar {tar.shape}")
    b, c = gen.shape[0], gen.shape[-1]
    dt = jnp.promote_types(jnp.promote_types(gen.dtype, tar.dtype), jnp.float32)  # bf16 -> f32
    g = gen.reshape(b, -1, c).astype(dt)
    t = tar.reshape(b, -1, c).astype(dt)
    if chunk is None or chunk >= b:
        per = jax.vmap(_mrf_single)(g, t)
    else:
        per = jax.lax.map(lambda gt: _mrf_single(*gt), (g, t), batch_size=chunk)
    return jnp.sum(per)


def idmrf_loss_from_features(gen_feats: Mapping[str, jnp.ndarray],
                             tar_feats: Mapping[str, jnp.ndarray],
                             style_layers: Mapping[str, float] = STYLE_LAYERS,
                             content_layers: Mapping[str, float] = CONTENT_LAYERS,
                             chunk: Optional[int] = None):
    """style + content ID-MRF from feature dicts {layer name: [B, h, w, C]} -> scalar.

    A layer used by both style and content is evaluated once and weighted by the sum.
    """
    total_w = {}
    for name, wgt in style_layers.items():
        total_w[name] = total_w.get(name, 0.0) + wgt * LAMBDA_STYLE
    for name, wgt in content_layers.items():
        total_w[name] = total_w.get(name, 0.0) + wgt * LAMBDA_CONTENT
    missing = [n for n in total_w if n not in gen_feats or n not in tar_feats]
    if missing:
        raise ValueError(f"idmrf: feature layers {missing} missing; got gen {sorted(gen_feats)}, "
                         f"tar {sorted(tar_feats)}")
    loss = 0.0
    for name, wgt in total_w.items():
        if wgt != 0:
            loss = loss + wgt * mrf_loss(gen_feats[name], tar_feats[name], chunk)
    return jnp.asarray(loss)


def idmrf_loss(gen, tar, features_fn: Callable, chunk: Optional[int] = None, **layers):
    """gen, tar: [B, H, W, 3] RGB in [0, 1]; features_fn: images -> {name: [B, h, w, C]}.

    Runs the feature network once on the concatenated 2B batch, then
    ``idmrf_loss_from_features`` (pass style_layers / content_layers to override).
    """
    b = gen.shape[0]
    feats = features_fn(jnp.concatenate([gen, tar], axis=0))
    g = {k: v[:b] for k, v in feats.items()}
    t = {k: v[b:] for k, v in feats.items()}
    return idmrf_loss_from_features(g, t, chunk=chunk, **layers)
