"""Official ``deca_model.tar`` -> Flax variables for E_flame, E_detail and D_detail.

The file is a ``torch.save`` dict ``{'E_flame': state_dict, 'E_detail': state_dict,
'D_detail': state_dict, 'opt': ..., 'global_step': ..., 'batch_size': ...}`` (what DECA's
``decalib/trainer.py`` saves); ``opt``, ``global_step`` and ``batch_size`` are ignored on
purpose. Result: ``{'E_flame': {'params', 'batch_stats'}, 'E_detail': {...}, 'D_detail': {...}}``
ready for ``coarse_encoder()``, ``detail_encoder()``, ``detail_decoder()``.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxdeca.convert.core import init_template, torch_to_flax
from jaxdeca.convert.torch_io import ConversionError, load_torch_file, state_dict_to_numpy
from jaxdeca.models.decoders import DETAIL_LATENT_SIZE, detail_decoder
from jaxdeca.models.encoders import coarse_encoder, detail_encoder

DECA_PARTS = ("E_flame", "E_detail", "D_detail")
DECA_IGNORED = ("opt", "global_step", "batch_size")  # trainer bookkeeping, no weights


def deca_templates():
    """Flax variable shapes of the three DECA networks."""
    img = jnp.zeros((1, 64, 64, 3))
    return {"E_flame": init_template(coarse_encoder(), img),
            "E_detail": init_template(detail_encoder(), img),
            "D_detail": init_template(detail_decoder(), jnp.zeros((1, DETAIL_LATENT_SIZE)))}


def convert_deca(src: str) -> dict:
    """deca_model.tar -> {'E_flame': vars, 'E_detail': vars, 'D_detail': vars}."""
    ckpt = load_torch_file(src)
    if not hasattr(ckpt, "keys"):
        raise ConversionError(f"{src}: expected a dict with {DECA_PARTS}, "
                              f"found {type(ckpt).__name__}")
    extra = sorted(set(map(str, ckpt.keys())) - set(DECA_PARTS) - set(DECA_IGNORED))
    missing = [p for p in DECA_PARTS if p not in ckpt]
    if missing or extra:
        raise ConversionError(f"{src}: not a DECA checkpoint; missing parts {missing}, "
                              f"unexpected entries {extra}")
    templates = deca_templates()
    # DECA's ResNet never defines fc, but tolerate a leftover ``encoder.fc`` explicitly.
    ignore = {"E_flame": ("encoder.fc.",), "E_detail": ("encoder.fc.",), "D_detail": ()}
    return {part: torch_to_flax(state_dict_to_numpy(ckpt[part], src, part), templates[part],
                                f"{src} [{part}]", ignore[part])
            for part in DECA_PARTS}
