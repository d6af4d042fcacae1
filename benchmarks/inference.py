"""Inference speed: faces/s of the jitted encode+decode (no visualisation or file writing) at
batch 1 and a large batch, of the whole reconstruct app per image (detect, crop, encode+
decode, write every output), warm (compiled, in-process: what `reconstruct.main` runs after
its first batch) and optionally cold (the real CLI process: start-up, model init, compile), and
of the fit app's optimisation (`fit.fit`, the app's default schedule) at batch 1 and --fit-batch.

    python benchmarks/inference.py [--big-batch 256] [--repeats 3] [--app-images 8] [--cold] [--fit-batch 8]

CPU: 256 takes minutes and ~10+ GB; pass a smaller --big-batch there. Random-weight networks
(speed does not depend on the weights); the demo head's topology. Batches are split over all
local devices, as the apps run them. Ratios are against batch 1 measured in the same run.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from jaxdeca.apps import export, pipeline, reconstruct
from jaxdeca.data import detect


def time_run(pipe, batch, repeats):
    """faces/s of pipe.run (encode + decode incl. renders) on random [batch, 224, 224, 3] images."""
    imgs = np.random.default_rng(0).uniform(size=(batch, 224, 224, 3)).astype(np.float32)
    jax.block_until_ready(pipe.run(imgs))  # compile
    t = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(pipe.run(imgs))
    return batch * repeats / (time.perf_counter() - t)


def time_fit(pipe, batch, steps):
    """faces/s of fit.fit (warm) on `batch` demo-head renders of random shapes and expressions."""
    import jax.numpy as jnp
    from jaxdeca.apps import fit
    rng = np.random.default_rng(0)
    codes = dict(shape=rng.normal(size=(batch, 100)) * 0.5, exp=rng.normal(size=(batch, 50)) * 0.5,
                 pose=rng.normal(size=(batch, 6)) * 0.05, tex=np.zeros((batch, 50)), detail=np.zeros((batch, 128)),
                 cam=np.tile([[7.0, 0.0, 0.0]], (batch, 1)), light=np.zeros((batch, 9, 3)))
    codes["light"][:, 0] = 2.6  # ambient band only
    out = pipe.decode(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), codes))
    target = np.asarray(out["landmarks2d"][..., :2])
    args = (fit.mean_codes(pipe, target), target, np.asarray(out["images"]),
            np.stack([fit.hull_mask(t) for t in target]), steps)
    jax.block_until_ready(fit.fit(pipe, *args))  # compile
    t = time.perf_counter()
    jax.block_until_ready(fit.fit(pipe, *args))
    return batch / (time.perf_counter() - t)


def demo_folder(pipe, folder, n):
    """n rendered demo-head photos (320 x 288, the face detected by dlib) in folder."""
    from jaxdeca.apps.teaser import demo_codes
    out = pipe.decode(demo_codes())
    img = np.asarray(out["images"][0]) + (1 - np.asarray(out["mask"][0]))[..., None] * 0.3
    big = np.pad(np.clip(img, 0, 1), ((24, 40), (36, 60), (0, 0)), mode="edge")
    for i in range(n):
        export.save_image(os.path.join(folder, f"f{i}.png"), np.roll(big, i, axis=1))


def time_app(pipe, a, rate1, d):
    """Prints faces/s of the reconstruct app on a.app_images demo-head photos in folder d, warm
    (in-process, after one compiling pass) and, with a.cold, as a fresh CLI process."""
    src = os.path.join(d, "in")
    demo_folder(pipe, src, a.app_images)
    reconstruct.reconstruct(src, os.path.join(d, "warm"), batch=a.app_batch, pipe=pipe)  # compile
    t = time.perf_counter()
    res = reconstruct.reconstruct(src, os.path.join(d, "out"), batch=a.app_batch, pipe=pipe)
    dt = (time.perf_counter() - t) / a.app_images
    assert len(res["written"]) == a.app_images, res["skipped"]
    print(f"reconstruct app, warm (detect, crop, encode+decode, write all outputs), batch {a.app_batch}: "
          f"{1 / dt:.2f} faces/s ({dt:.3f} s/image), x{(1 / dt) / rate1:.2f} of bare batch-1 encode+decode")
    if a.cold:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jaxdeca.apps.reconstruct", "--input", src, "--out",
                        os.path.join(d, "cold"), "--random-weights", "0", "--batch", str(a.app_batch)],
                       check=True, stdout=subprocess.DEVNULL)
        dt = (time.perf_counter() - t) / a.app_images
        print(f"reconstruct CLI, cold process ({a.app_images} images incl. start-up, init, compile): "
              f"{1 / dt:.2f} faces/s ({dt:.2f} s/image)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big-batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--app-images", type=int, default=8)
    ap.add_argument("--app-batch", type=int, default=8, help="reconstruct --batch (its default is 8)")
    ap.add_argument("--cold", action="store_true", help="also time the CLI as a fresh process")
    ap.add_argument("--fit-batch", type=int, default=8, help="fit --batch (its default is 8)")
    ap.add_argument("--fit-steps", type=int, default=400, help="fit --steps (its default is 400)")
    a = ap.parse_args()
    pipe = pipeline.load_pipeline(random_seed=0)
    print(f"device: {jax.devices()[0].platform} x{jax.device_count()} ({jax.devices()[0].device_kind})")
    rates = {}
    for b in dict.fromkeys((1, a.big_batch)):
        rates[b] = time_run(pipe, b, a.repeats)
        print(f"encode+decode batch {b}: {rates[b]:.2f} faces/s ({1000 / rates[b] * b:.1f} ms/batch)"
              + (f", x{rates[b] / rates[1]:.1f} batch 1" if b != 1 else ""))
    with tempfile.TemporaryDirectory() as d:
        try:
            time_app(pipe, a, rates[1], d)
        except detect.DetectorUnavailable as e:  # no dlib: the app cannot find the faces
            print(f"reconstruct app: not timed ({e})")
    steps = (a.fit_steps // 4, a.fit_steps, a.fit_steps // 10)
    fit_rates = {b: time_fit(pipe, b, steps) for b in dict.fromkeys((1, a.fit_batch))}
    for b, r in fit_rates.items():
        print(f"fit, warm, steps {steps}, batch {b}: {r:.2f} faces/s ({1 / r:.2f} s/face)"
              + (f", x{r / fit_rates[1]:.1f} batch 1" if b != 1 else ""))


if __name__ == "__main__":
    main()
