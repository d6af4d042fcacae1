"""Images/s of DECA's network inference path: coarse encode + detail encode + detail decode.

    python benchmarks/networks.py                    # batch 1 and 64, f32 and bf16
    python benchmarks/networks.py --batches 1 8      # smaller batches for a slow CPU
    python benchmarks/networks.py --torch            # also time the PyTorch reference (CPU)

Random weights (speed does not depend on them); the same random images for both. Prints one
table row per (dtype, batch): the median of --reps calls after a warm-up (which compiles), and
for torch rows the ratio torch ms / our float32 ms at that batch (> 1: ours faster). With
--torch, our float32 and torch's figures at each batch are timed alternately, --rounds times,
and each is the median over the rounds (`timing.interleaved_ms`); the torch row follows ours.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxdeca import xla_options
from jaxdeca.models import (coarse_encoder, decompose_code, detail_decoder, detail_encoder,
                            detail_latent)
from timing import interleaved_ms, median_ms


def make_step(dtype):
    e_flame, e_detail = coarse_encoder(dtype), detail_encoder(dtype)
    d_detail = detail_decoder(dtype)
    x = jnp.zeros((1, 224, 224, 3))
    variables = xla_options.jit(lambda k: (e_flame.init(k, x), e_detail.init(k, x),
                                           d_detail.init(k, jnp.zeros((1, 181)))))(jax.random.PRNGKey(0))

    @xla_options.jit
    def step(variables, images):
        vf, vd, vg = variables
        code = decompose_code(e_flame.apply(vf, images))
        detail = e_detail.apply(vd, images)
        latent = detail_latent(code["pose"], code["exp"], detail)
        return d_detail.apply(vg, latent)

    return step, variables


def random_images(batch):
    """[batch, 224, 224, 3] float32 uniform in [0, 1), the same for ours and torch."""
    return np.random.default_rng(0).uniform(0, 1, (batch, 224, 224, 3)).astype(np.float32)


def torch_step(batch):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    import torch
    from torch_refs import Generator, ResnetEncoder, randomize

    nets = (randomize(ResnetEncoder(236)), randomize(ResnetEncoder(128)), randomize(Generator()))
    images = torch.from_numpy(random_images(batch)).permute(0, 3, 1, 2).contiguous()

    def run():
        with torch.no_grad():
            code = nets[0](images)
            latent = torch.cat([code[:, 203:206], code[:, 150:200], nets[1](images)], 1)
            return nets[2](latent)

    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="with --torch: rounds of ours and torch alternately")
    p.add_argument("--torch", action="store_true", help="also time the PyTorch reference")
    args = p.parse_args()
    if args.torch and "float32" not in args.dtypes:
        p.error("--torch is compared with our float32 figures: include float32 in --dtypes")
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"{os.cpu_count()} cpu cores visible")
    print(f"{'impl':<8}{'dtype':<10}{'batch':>6}{'ms/batch':>12}{'images/s':>12}")
    for dtype in args.dtypes:
        step, variables = make_step(jnp.dtype(dtype))
        for b in args.batches:
            images = jnp.asarray(random_images(b))
            call = lambda: step(variables, images).block_until_ready()  # noqa: E731
            if args.torch and dtype == "float32":
                both = interleaved_ms({"jax": [call], "torch": [torch_step(b)]}, args.reps, args.rounds)
                ms, theirs = both["jax"][0], both["torch"][0]
            else:
                ms, theirs = median_ms(call, args.reps), None
            print(f"{'jax':<8}{dtype:<10}{b:>6}{ms:>12.1f}{b / ms * 1e3:>12.1f}", flush=True)
            if theirs is not None:
                import torch
                print(f"{'torch':<8}{'float32':<10}{b:>6}{theirs:>12.1f}{b / theirs * 1e3:>12.1f}"
                      f"  x {theirs / ms:.2f}  ({torch.get_num_threads()} threads)", flush=True)


if __name__ == "__main__":
    main()
