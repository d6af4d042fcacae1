"""FLAME forward: jaxdeca (jit, CPU) vs smplx's PyTorch FLAME (CPU), same model, same inputs.

    .venv/bin/python benchmarks/flame.py [--batches 1 64] [--repeats 30] [--rounds 3]

Prints the median ms per batch for each implementation and the ratio (smplx / ours); the two are
timed alternately, --rounds times, and each figure is the median over the rounds
(`timing.interleaved_ms`). The model is the embedded demo head, written in the official pickle
layout for smplx. Needs the test extras (torch, smplx).
"""
from __future__ import annotations

import argparse
import os
import pickle
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from timing import interleaved_ms


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3, help="rounds of ours and smplx alternately (median over them)")
    a = p.parse_args()

    import smplx
    import torch

    from jaxdeca import flame, xla_options
    from jaxdeca.flame import io

    if not hasattr(np, "bool"):
        np.bool = bool
    torch.set_num_threads(os.cpu_count() or 1)
    arrays = flame.load_arrays()
    model = flame.from_arrays(arrays)
    fwd = xla_options.jit(lambda s, e, p: model(s, e, p))  # vertices and both landmark sets
    with tempfile.TemporaryDirectory() as tmp:  # smplx reads the model files it was made from
        os.makedirs(os.path.join(tmp, "flame"))
        io.write_generic_model_pkl(os.path.join(tmp, "flame", "FLAME_NEUTRAL.pkl"), arrays, chumpy=False)
        with open(os.path.join(tmp, "flame", "flame_static_embedding.pkl"), "wb") as f:
            pickle.dump(dict(lmk_face_idx=arrays["full_lmk_faces_idx"].astype(np.int64),
                             lmk_b_coords=arrays["full_lmk_bary_coords"].astype(np.float64)), f)

        print(f"FLAME forward, V={arrays['v_template'].shape[0]}, CPU ({os.cpu_count()} cores), "
              f"jax {jax.__version__}, torch {torch.__version__}")
        print(f"{'batch':>6} {'jaxdeca ms':>11} {'smplx ms':>10} {'smplx/jaxdeca':>14}")
        rng = np.random.default_rng(0)
        for B in a.batches:
            shape, exp = rng.normal(size=(B, 100)).astype(np.float32), rng.normal(size=(B, 50)).astype(np.float32)
            pose = (rng.normal(size=(B, 6)) * 0.2).astype(np.float32)
            js, je, jp = map(jnp.asarray, (shape, exp, pose))
            ref = smplx.create(tmp, model_type="flame", num_betas=100, num_expression_coeffs=50, batch_size=B,
                               use_face_contour=False, ext="pkl")
            ts, te, tp = map(torch.from_numpy, (shape, exp, pose))

            def run_ref():
                with torch.no_grad():
                    ref(betas=ts, expression=te, global_orient=tp[:, :3], jaw_pose=tp[:, 3:])

            ms = interleaved_ms({"ours": [lambda: jax.block_until_ready(fwd(js, je, jp))], "smplx": [run_ref]},
                                a.repeats, a.rounds)
            ours, theirs = ms["ours"][0], ms["smplx"][0]
            print(f"{B:>6} {ours:>11.2f} {theirs:>10.2f} {theirs / ours:>13.1f}x")


if __name__ == "__main__":
    main()
