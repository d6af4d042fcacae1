"""`python -m jaxdeca.apps.fit --input IMG --out DIR [--checkpoint DIR] [--steps N]`

Test-time optimisation of DECA's codes (shape, expression, pose, camera, albedo, light) against
68 2D landmarks and the photometric loss, with optax Adam and a coarse-to-fine schedule:
  1. rigid: global pose + camera on the landmarks;
  2. + shape, expression, jaw with DECA's weighted landmark loss, eye and lip closure terms and
     code regularisers;
  3. + albedo and light with the photometric loss masked by the rendered coverage x the
     landmark-hull mask.
Starts from the regressor's codes with --checkpoint, else from the mean (zeros) with the
camera fitted to the landmark box. Works on the embedded demo head with no network at all.
Writes the same outputs as reconstruct.
"""
from __future__ import annotations

import argparse
import os
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdeca import render
from jaxdeca.apps import inputs, pipeline
from jaxdeca.losses import coarse

LANDMARK_GROUPS = ("pose", "cam")


def to_image_space(points_px, matrix) -> np.ndarray:
    """Original pixels [K, 2] -> DECA image space [-1, 1] of the crop given by matrix [2, 3]."""
    a = np.asarray(matrix, np.float64)
    crop = np.asarray(points_px, np.float64) @ a[:, :2].T + a[:, 2]
    return crop / pipeline.IMAGE_SIZE * 2.0 - 1.0


def landmark_crop(image: np.ndarray, landmarks_px) -> pipeline.Crop:
    """DECA's test crop from a landmark box ('kpt': size (w+h)/2 x 1.1 x 1.25)."""
    lo, hi = np.min(landmarks_px, 0), np.max(landmarks_px, 0)
    center, size = pipeline.deca_box(lo[0], lo[1], hi[0], hi[1], kind="kpt")
    a = pipeline.crop_transform(center, size)
    img = cv2.warpAffine(image, a, (pipeline.IMAGE_SIZE,) * 2, flags=cv2.INTER_LINEAR)
    return pipeline.Crop(image=img.astype(np.float32) / 255.0, matrix=a)


def hull_mask(landmarks_img, size: int = pipeline.IMAGE_SIZE) -> np.ndarray:
    """[size, size] float mask of the convex hull of landmarks [68, 2] (image space), a stand-in
    for a skin mask (brow points lifted by a third of the eye-brow to chin distance)."""
    px = (np.asarray(landmarks_img)[:, :2] + 1.0) * size / 2.0
    brow = px[17:27].copy()
    brow[:, 1] -= 0.3 * (px[8, 1] - brow[:, 1].mean())
    hull = cv2.convexHull(np.concatenate([px[:17], brow]).astype(np.float32)).astype(np.int32)
    m = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(m, hull, 1)
    return m.astype(np.float32)


def mean_codes(pipe: pipeline.Pipeline, target_img) -> dict:
    """Zero codes with the camera fitted to the landmark box. target_img: [68, 2] image space."""
    z = lambda n: jnp.zeros((1, n))  # noqa: E731
    codes = dict(shape=z(pipe.flame.n_shape), exp=z(pipe.flame.n_exp), pose=z(6), tex=z(50),
                 light=jnp.zeros((1, 9, 3)).at[:, 0, :].set(2.5), detail=z(128))
    lm = np.asarray(pipe.flame(codes["shape"], codes["exp"], codes["pose"])["landmarks2d"][0, :, :2])
    t = np.asarray(target_img)
    s = float(np.ptp(t, 0).mean() / np.ptp(lm, 0).mean())
    tc, mc = t.mean(0), lm.mean(0)
    codes["cam"] = jnp.array([[s, tc[0] / s - mc[0], -tc[1] / s - mc[1]]], jnp.float32)
    return codes


def _split(codes):
    """codes -> (params to optimise, fixed). The camera scale is optimised in log space."""
    p = {k: v for k, v in codes.items() if k != "detail"}
    p["cam"] = jnp.concatenate([jnp.log(codes["cam"][:, :1]), codes["cam"][:, 1:]], 1)
    return p


def _merge(p, detail):
    c = dict(p)
    c["cam"] = jnp.concatenate([jnp.exp(p["cam"][:, :1]), p["cam"][:, 1:]], 1)
    c["detail"] = detail
    return c


def fit_loss(p, detail, pipe, target, image, mask, stage, w):
    """Total loss of a stage (0 rigid, 1 + shape/exp, 2 + photometric). target: [1, 68, 2]."""
    c = _merge(p, detail)
    out = pipe.flame(c["shape"], c["exp"], c["pose"])
    lmk = render.orth_proj(out["landmarks2d"], c["cam"])[..., :2]
    loss = coarse.weighted_landmark_loss(lmk, target) * w["lmk"]
    if stage >= 1:
        loss += w["eye"] * coarse.eyed_loss(lmk, target) + w["lip"] * coarse.lipd_loss(lmk, target)
        loss += w["reg"] * (coarse.code_reg(c["shape"]) + coarse.code_reg(c["exp"]))
        loss += w["jaw"] * jnp.sum(c["pose"][:, 3:] ** 2)
    if stage >= 2:
        from jaxdeca import flame
        trans = render.orth_proj(out["vertices"], c["cam"])
        albedo = flame.texture.albedo_from_arrays(pipe.arrays, c["tex"], size=pipe.topo.uv_face_eye_mask.shape[0])
        r = render.render(out["vertices"], trans, albedo, c["light"], pipe.topo, (pipeline.IMAGE_SIZE,) * 2)
        m = (r["mask"] * mask)[..., None]
        loss += w["photo"] * jnp.sum(jnp.abs(r["images"] - image) * m) / (jnp.sum(m) * 3 + 1e-6)
        loss += w["reg"] * coarse.code_reg(c["tex"]) + w["light"] * coarse.light_reg(c["light"])
    return loss


STAGE_GROUPS = ({"pose", "cam"}, {"pose", "cam", "shape", "exp"}, {"pose", "cam", "shape", "exp", "tex", "light"})
WEIGHTS = dict(lmk=1.0, eye=1.0, lip=0.5, reg=1e-4, jaw=1e-2, photo=2.0, light=1.0)


def fit(pipe: pipeline.Pipeline, codes: dict, target_img, image, mask, steps=(100, 400, 40), lr: float = 0.01,
        weights: dict = WEIGHTS) -> dict:
    """Optimise codes (batch 1) through the three stages; returns the fitted codes.
    target_img: [68, 2] image space; image: [224, 224, 3]; mask: [224, 224]."""
    target = jnp.asarray(target_img, jnp.float32)[None]
    image = jnp.asarray(image, jnp.float32)[None]
    mask = jnp.asarray(mask, jnp.float32)[None]
    p = _split(codes)
    detail = codes["detail"]
    for stage, n in enumerate(steps):
        if n <= 0:
            continue
        groups = STAGE_GROUPS[stage]
        labels = {k: ("on" if k in groups else "off") for k in p}
        sched = optax.cosine_decay_schedule(lr, n, alpha=0.05)  # settle at the end of each stage
        opt = optax.multi_transform({"on": optax.adam(sched), "off": optax.set_to_zero()}, labels)
        grad = jax.grad(fit_loss)

        @jax.jit
        def run(p, _stage=stage, _opt=opt, _n=n):
            def body(_, carry):
                p, s = carry
                g = grad(p, detail, pipe, target, image, mask, _stage, weights)
                u, s = _opt.update(g, s, p)
                return optax.apply_updates(p, u), s
            return jax.lax.fori_loop(0, _n, body, (p, _opt.init(p)))[0]
        p = run(p)
    return _merge(p, detail)


def fit_image(pipe, image: np.ndarray, landmarks_px=None, steps=(100, 400, 40)):
    """Fit one RGB uint8 image. landmarks_px: [68, 2] original pixels (None: dlib detects them).
    Returns (codes, decoded, crop) or None when no face is found."""
    if landmarks_px is None:
        landmarks_px = pipeline.detect_landmarks(image)
        if landmarks_px is None:
            return None
    crop = landmark_crop(image, landmarks_px)
    target = to_image_space(landmarks_px, crop.matrix)
    if pipe.variables is not None:
        codes = pipe.encode(crop.image[None])
    else:
        codes = mean_codes(pipe, target)
    codes = fit(pipe, codes, target, crop.image, hull_mask(target), steps)
    return codes, pipe.decode(codes, crop.image[None]), crop


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--flame", default=None)
    p.add_argument("--landmarks", default=None, help="68-point .pts/.txt in original pixels (default: dlib)")
    p.add_argument("--steps", type=int, default=400, help="shape/expression steps (rigid = steps/4, photo = steps/10)")
    a = p.parse_args(argv)
    try:
        pipe = pipeline.load_pipeline(a.checkpoint, a.flame)
        image = inputs.read_image(a.input)
    except (inputs.InputError, pipeline.CheckpointError, OSError, ValueError) as e:
        print(f"fit: {e}", file=sys.stderr)
        return 2
    lmk = read_pts(a.landmarks) if a.landmarks else None
    res = fit_image(pipe, image, lmk, (a.steps // 4, a.steps, a.steps // 10))
    if res is None:
        print(f"fit: {a.input}: no face detected", file=sys.stderr)
        return 1
    codes, out, crop = res
    name = os.path.splitext(os.path.basename(a.input))[0]
    pipeline.write_outputs(a.out, name, out, 0, crop, codes, pipe.arrays)
    print(f"fit: wrote {os.path.join(a.out, name)}")
    return 0


def read_pts(path: str) -> np.ndarray:
    """68 landmarks [68, 2] from an iBUG .pts file or a plain text file of x y rows."""
    with open(path) as f:
        text = f.read()
    if "{" in text:
        text = text[text.index("{") + 1:text.index("}")]
    pts = np.array([[float(t) for t in line.split()[:2]] for line in text.strip().splitlines()
                    if line.strip() and not line.startswith("#")])
    if pts.shape != (68, 2):
        raise ValueError(f"{path}: expected 68 landmarks of (x, y), found shape {pts.shape}")
    return pts


if __name__ == "__main__":
    sys.exit(main())
