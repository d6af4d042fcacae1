"""Inference speed: faces/s of the jitted encode+decode (no visualisation or file writing) at
batch 1 and a large batch, and seconds per image of the whole reconstruct app (crop, run,
write every output). CPU: pass a smaller --big-batch (256 needs tens of GB and minutes).

    python benchmarks/inference.py [--big-batch 256] [--repeats 3]
Random-weight networks (speed does not depend on the weights); the demo head's topology.
"""
import argparse
import os
import tempfile
import time

import jax
import numpy as np

from jaxdeca.apps import export, pipeline, reconstruct


def time_run(pipe, batch, repeats):
    imgs = np.random.default_rng(0).uniform(size=(batch, 224, 224, 3)).astype(np.float32)
    jax.block_until_ready(pipe.run(imgs))  # compile
    t = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(pipe.run(imgs))
    return batch * repeats / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big-batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--app-images", type=int, default=4)
    a = ap.parse_args()
    pipe = pipeline.load_pipeline(random_seed=0)
    print(f"device: {jax.devices()[0].platform} x{jax.device_count()}")
    for b in (1, a.big_batch):
        print(f"encode+decode batch {b}: {time_run(pipe, b, a.repeats):.2f} faces/s")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in")
        from jaxdeca.apps.teaser import demo_codes
        out = pipe.decode(demo_codes())
        img = np.asarray(out["images"][0]) + (1 - np.asarray(out["mask"][0]))[..., None] * 0.3
        for i in range(a.app_images):
            export.save_image(os.path.join(src, f"f{i}.png"), img)
        reconstruct.reconstruct(src, os.path.join(d, "warm"), batch=1, pipe=pipe)  # compile
        t = time.perf_counter()
        reconstruct.reconstruct(src, os.path.join(d, "out"), batch=1, pipe=pipe)
        print(f"reconstruct app (detect, crop, run, write all outputs), batch 1: "
              f"{(time.perf_counter() - t) / a.app_images:.2f} s/image")


if __name__ == "__main__":
    main()
