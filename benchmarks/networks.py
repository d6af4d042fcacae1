"""Images/s of DECA's network inference path: coarse encode + detail encode + detail decode.

    python benchmarks/networks.py                    # batch 1 and 64, f32 and bf16
    python benchmarks/networks.py --batches 1 8      # smaller batches for a slow CPU
    python benchmarks/networks.py --torch            # also time the PyTorch reference (CPU)

Random weights (speed does not depend on them). Prints one table row per (dtype, batch).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdeca import xla_options
from jaxdeca.models import (coarse_encoder, decompose_code, detail_decoder, detail_encoder,
                            detail_latent)


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


def time_it(fn, reps):
    fn()  # compile / warm up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def torch_step(batch):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    import torch
    from test_convert_torch_refs import Generator, ResnetEncoder, randomize

    nets = (randomize(ResnetEncoder(236)), randomize(ResnetEncoder(128)), randomize(Generator()))
    images = torch.zeros(batch, 3, 224, 224)

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
    p.add_argument("--torch", action="store_true", help="also time the PyTorch reference")
    args = p.parse_args()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"{os.cpu_count()} cpu cores visible")
    print(f"{'impl':<8}{'dtype':<10}{'batch':>6}{'ms/batch':>12}{'images/s':>12}")
    for dtype in args.dtypes:
        step, variables = make_step(jnp.dtype(dtype))
        for b in args.batches:
            images = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (b, 224, 224, 3)),
                                 jnp.float32)
            sec = time_it(lambda: step(variables, images).block_until_ready(), args.reps)
            print(f"{'jax':<8}{dtype:<10}{b:>6}{sec * 1e3:>12.1f}{b / sec:>12.1f}", flush=True)
    if args.torch:
        import torch
        for b in args.batches:
            sec = time_it(torch_step(b), args.reps)
            print(f"{'torch':<8}{'float32':<10}{b:>6}{sec * 1e3:>12.1f}{b / sec:>12.1f}  "
                  f"({torch.get_num_threads()} threads)", flush=True)


if __name__ == "__main__":
    main()
