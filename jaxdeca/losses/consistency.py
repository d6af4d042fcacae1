"""DECA's shape / detail consistency: swap a code among the images of one identity.

A batch holds N identities x K images, identity-major (rows i*K .. i*K+K-1 are person i). DECA
draws ``new_order = concat_i(permutation(K) + i*K)``, appends the permuted code to the original
(``[code; code[new_order]]``) and tiles everything else (``[x; x]``), so the batch doubles and
every loss applies to the doubled batch: rendering person i's image with a shape (or detail)
code from another of their images must still explain the image.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxdeca.explicit_sharding import batch_sharding


def consistency_order(key, n_identities: int, k: int):
    """key: PRNG key -> new_order [N*K] int32, an independent permutation within each group."""
    keys = jax.random.split(key, n_identities)
    perms = jax.vmap(lambda kk: jax.random.permutation(kk, k))(keys)
    return (perms + jnp.arange(n_identities)[:, None] * k).reshape(-1).astype(jnp.int32)


def tile_batch(tree: Any):
    """Every array leaf [B, ...] -> [2B, ...] as [x; x] (images, landmarks, masks, codes)."""
    return jax.tree_util.tree_map(lambda x: jnp.concatenate([x, x], axis=0), tree)


def swap_codes(key, codes: Mapping[str, jnp.ndarray], permute: str, n_identities: int, k: int):
    """codes: {name: [N*K, ...]} -> {name: [2*N*K, ...]}.

    codes[permute] becomes [c; c[new_order]]; every other entry is tiled [x; x].
    permute='shape' is DECA's coarse shape consistency, 'detail' its detail consistency.
    """
    if permute not in codes:
        raise ValueError(f"swap_codes: code '{permute}' not in {sorted(codes)}")
    b = codes[permute].shape[0]
    if b != n_identities * k:
        raise ValueError(f"swap_codes: batch {b} != n_identities {n_identities} x k {k}")
    order = consistency_order(key, n_identities, k)
    out = {name: jnp.concatenate([c, c], axis=0) for name, c in codes.items() if name != permute}
    c = codes[permute]
    out[permute] = jnp.concatenate([c, c.at[order].get(out_sharding=batch_sharding(c))], axis=0)
    return out


def shape_consistency(key, codes, n_identities: int, k: int):
    """Coarse stage: permute 'shape' within identities, tile the rest."""
    return swap_codes(key, codes, "shape", n_identities, k)


def detail_consistency(key, codes, n_identities: int, k: int):
    """Detail stage: permute 'detail' within identities, tile the rest (shape included)."""
    return swap_codes(key, codes, "detail", n_identities, k)
