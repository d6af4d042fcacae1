"""DECA's loss weights and switches, in one place (``decalib/utils/config.py`` + the training
configs). Configs import ``default_loss_config()`` and override fields.

A weight of 0 switches its term off at trace time: the term is not computed at all and is absent
from the returned dict of ``coarse_losses`` / ``detail_losses``.

``shape_consistency`` switches the coarse stage's code swap, ``detail_consistency`` the detail
stage's. DECA's trainer runs its swap in either stage when EITHER flag is set; at the release
configs that differs only in the pretrain stage, where DECA duplicates its K=1 batch, which
configs/pretrain.py reproduces with doubled regulariser weights.
"""

from __future__ import annotations

import math
import numbers

import jax
import ml_collections
import numpy as np

from jaxdeca import render


def default_loss_config() -> ml_collections.ConfigDict:
    """ConfigDict with DECA's default loss weights (coarse and detail stages)."""
    c = ml_collections.ConfigDict()
    # coarse stage
    c.lmk = 1.0          # weighted 68-point L1 in [-1, 1] image coordinates
    c.use_wlmk = True    # DECA's useWlmk: per-landmark weights (else plain L1)
    c.eyed = 1.0         # eye-closure distances
    c.lipd = 0.5         # inner-lip distances
    c.photo = 2.0        # masked L1 of the SH-shaded render (DECA's released decode: unshaded; coarse.py)
    c.use_seg = True     # DECA's useSeg: photometric mask = skin segmentation (see coarse.py)
    c.id = 0.2           # VGGFace2 cosine identity loss
    c.reg_shape = 1e-4   # sum(shape^2) / 2 over the batch
    c.reg_exp = 1e-4
    c.reg_tex = 1e-4
    c.reg_light = 1.0    # light towards white
    # SoftRas sigma (pixel^2) of a soft coverage through which the photometric term also moves
    # the mesh's outline (see deca_coarse.py); 0 (DECA): the hard mask alone, no soft pass is run
    c.render_sigma = 0.0
    c.shape_consistency = True
    # detail stage
    c.photo_D = 2.0      # UV photometric
    c.mrf = 0.05         # ID-MRF, multiplied by photo_D (0.1 effective)
    c.reg_sym = 0.005    # soft symmetry of displacements outside the visible region
    c.reg_z = 0.005      # displacement L1
    c.reg_diff = 0.005   # shading smoothness
    c.detail_consistency = True
    return c


def as_weights(weights) -> dict:
    """ConfigDict / dict / None -> plain dict with every default filled in. ValueError for an
    unknown key, a weight that is not a finite number >= 0 (a negative one switched its term off
    as 0 does) or a switch that is not a bool."""
    out = default_loss_config().to_dict()
    if weights is None:
        return out
    given = weights.to_dict() if isinstance(weights, ml_collections.ConfigDict) else dict(weights)
    unknown = sorted(set(given) - set(out))
    if unknown:
        raise ValueError(f"loss weights: unknown keys {unknown}; known: {sorted(out)} (a new term's weight is "
                         "declared in default_loss_config, jaxdeca/losses/defaults.py)")
    for k, v in given.items():
        v = _plain(v)
        if isinstance(out[k], bool):
            if not (isinstance(v, (bool, np.bool_, numbers.Integral)) and v in (0, 1)):
                raise ValueError(f"loss weights: {k}={v!r} must be True or False (or 1 or 0)")
            out[k] = bool(v)
        elif k == "render_sigma" and (isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real)
                                      or not render.sharpness_ok(v, zero_ok=True)):
            raise ValueError(f"loss weights: render_sigma={v!r} must be 0 (DECA's hard mask) or a finite sigma "
                             f">= {render.SMALLEST_SHARPNESS!r} (float32's smallest normal; below it 1 / sigma "
                             "overflows)")
        elif isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not 0 <= v < math.inf:
            raise ValueError(f"loss weights: {k}={v!r} must be a finite number >= 0 (0 switches the term off)")
        else:
            out[k] = v
    return out


def _plain(v):
    """A 0-d numpy or jax array as its Python number (weights decide at trace time which terms
    are computed, so they must be concrete); anything else as it is."""
    if getattr(v, "shape", None) == () and hasattr(v, "item"):
        try:
            return v.item()
        except jax.errors.ConcretizationTypeError:  # a traced weight: refused below as not a number
            return v
    return v
