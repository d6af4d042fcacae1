"""`python -m jaxdeca.apps.fit --input IMG|DIR|VIDEO --out DIR [--checkpoint DIR] [--flame FLAME] [--steps N] [--batch N]`

Test-time optimisation of DECA's codes (shape, expression, pose, camera, albedo, light) against
68 2D landmarks and the photometric loss, with optax Adam and a coarse-to-fine schedule:
  1. rigid: pose (the global rotation and, as in the reference photometric fitting whose rigid
     stage optimises the whole 6-value pose, the jaw) + camera on the landmarks;
  2. + shape and expression, with the eye and lip closure terms, the code regularisers and a
     jaw regulariser added to DECA's weighted landmark loss;
  3. albedo and light with the photometric loss masked by the rendered coverage x the
     landmark-hull mask, at 10x the learning rate (LEARNING_RATES), the geometry held: on
     demo-head renders whose albedo the model represents exactly, letting pose, camera, shape
     and expression move too made the vertex error 4x larger (0.54 -> 2.17 mm) for a 6% lower
     photometric loss.
Starts from the regressor's codes with --checkpoint, else from the mean (zeros) with the
camera fitted to the landmark box. Works on the embedded demo head with no network at all.
Faces are fitted --batch at a time (a folder's images, a video's frames), each on its own: the
loss is the sum of the faces' losses and Adam works per element. The batch is split over all
local devices like the other apps' batches.
Landmarks are in the renderer's pixel-centre convention throughout (targets, hull mask and the
written `*_kpt2d.txt`), whatever the checkpoint: the landmark and photometric terms must agree
on where a pixel is. A converted DECA model's regressed landmarks are read DECA's way by
reconstruct (`Pipeline.lmk_convention`), but fit's results are fitted, not regressed; starting
from that model only starts half a crop pixel off.
Writes the same outputs as reconstruct, per face. Bad inputs are handled like reconstruct's:
one message per unusable file or face-less image naming it, the rest of a folder still fitted;
exit status 0 (something written), 1 (nothing written), 2 (input unusable as a whole, or an
output file that cannot be written: one line naming it and how many faces were written before).
"""
from __future__ import annotations

import argparse
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdeca import render, xla_options
from jaxdeca.apps import inputs, landmark_files, pipeline
from jaxdeca.argtypes import positive_int
from jaxdeca.data import preprocess
from jaxdeca.losses import coarse


def to_image_space(points_px, tform) -> np.ndarray:
    """Original pixels [K, 2] -> DECA image space [-1, 1] of the crop given by tform [3, 3]."""
    return preprocess.to_crop(points_px, tform, pipeline.IMAGE_SIZE)


def landmark_crop(image: np.ndarray, landmarks_px) -> pipeline.Crop:
    """DECA's test crop from a landmark box ('kpt': size (w+h)/2 x 1.1 x 1.25). The crop does not
    hold the photo (a batch of them would keep every full-size photo; fit draws no grid on it)."""
    return pipeline.crop_face(image, "detect", landmarks=landmarks_px, keep_original=False)


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


# FLAME's landmarks as one program: op by op it was ~180 small compiles (about 5 s on 2 cores),
# each too quick for the persistent cache to keep, so every fit without networks paid them again
_flame_landmarks = xla_options.jit(lambda model, *codes: model(*codes)["landmarks2d"])


def mean_codes(pipe: pipeline.Pipeline, target_img) -> dict:
    """Zero codes with each camera fitted to its landmark box. target_img: [B, 68, 2] image space."""
    t = np.asarray(target_img)
    B = t.shape[0]
    z = lambda n: jnp.zeros((B, n))  # noqa: E731
    codes = dict(shape=z(pipe.flame.n_shape), exp=z(pipe.flame.n_exp), pose=z(6), tex=z(50),
                 light=jnp.zeros((B, 9, 3)).at[:, 0, :].set(2.5), detail=z(128))
    lm = np.asarray(_flame_landmarks(pipe.flame, codes["shape"][:1], codes["exp"][:1], codes["pose"][:1])[0, :, :2])
    spread = np.ptp(t, 1).mean(-1)  # [B]
    if not np.all(spread > 0):  # NaN included: fit would optimise log(0)
        raise ValueError(f"mean_codes: target landmarks of batch item(s) {np.flatnonzero(~(spread > 0)).tolist()} "
                         "have no spread (all points equal or not finite): no camera scale fits them")
    s = spread / np.ptp(lm, 0).mean()  # [B]
    tc, mc = t.mean(1), lm.mean(0)
    codes["cam"] = jnp.asarray(np.stack([s, tc[:, 0] / s - mc[0], -tc[:, 1] / s - mc[1]], 1), jnp.float32)
    return codes


def _split(codes):
    """codes -> the optimised codes (all but detail), the camera scale in log space."""
    p = {k: v for k, v in codes.items() if k != "detail"}
    p["cam"] = jnp.concatenate([jnp.log(codes["cam"][:, :1]), codes["cam"][:, 1:]], 1)
    return p


def _merge(p, detail):
    c = dict(p)
    c["cam"] = jnp.concatenate([jnp.exp(p["cam"][:, :1]), p["cam"][:, 1:]], 1)
    c["detail"] = detail
    return c


def _per_image(loss, *args):
    """A loss over a batch applied to each image alone: args [B, ...] -> [B]."""
    return jax.vmap(lambda *a: loss(*(x[None] for x in a)))(*args)


def fit_losses(p, detail, pipe, target, image, mask, stage, w):
    """Each image's total loss of a stage (0 rigid, 1 + shape/exp, 2 + photometric): [B].
    target: [B, 68, 2]; image: [B, 224, 224, 3]; mask: [B, 224, 224]."""
    c = _merge(p, detail)
    out = pipe.flame(c["shape"], c["exp"], c["pose"])
    lmk = render.orth_proj(out["landmarks2d"], c["cam"])[..., :2]
    loss = w["lmk"] * _per_image(coarse.weighted_landmark_loss, lmk, target)
    if stage >= 1:
        loss += w["eye"] * _per_image(coarse.eyed_loss, lmk, target) + w["lip"] * _per_image(coarse.lipd_loss, lmk, target)
        loss += w["reg"] * (_per_image(coarse.code_reg, c["shape"]) + _per_image(coarse.code_reg, c["exp"]))
        loss += w["jaw"] * jnp.sum(c["pose"][:, 3:] ** 2, 1)
    if stage >= 2:
        from jaxdeca import flame
        trans = render.orth_proj(out["vertices"], c["cam"])
        frags, _, grid, normal_images = render.image_geometry(  # sigma 0: the soft coverage is not used
            out["vertices"], trans, pipe.topo, (pipeline.IMAGE_SIZE,) * 2, sigma=0.0)
        albedo = flame.texture.albedo_from_arrays(pipe.arrays, c["tex"], size=pipe.topo.uv_face_eye_mask.shape[0])
        images = render.shade_image(render.grid_sample(albedo, grid), c["light"], normal_images, frags.mask)
        m = (frags.mask * mask)[..., None]
        loss += w["photo"] * jnp.sum(jnp.abs(images - image) * m, (1, 2, 3)) / (jnp.sum(m, (1, 2, 3)) * 3 + 1e-6)
        loss += w["reg"] * _per_image(coarse.code_reg, c["tex"]) + w["light"] * _per_image(coarse.light_reg, c["light"])
    return loss


def fit_loss(p, detail, pipe, target, image, mask, stage, w):
    """The sum of the images' losses (`fit_losses`). Its gradient for an image's codes is that of
    the image's own loss, and Adam works per element, so a batch is fitted as independently as
    one image at a time."""
    return jnp.sum(fit_losses(p, detail, pipe, target, image, mask, stage, w))


# codes each stage moves ('pose' is global rotation and jaw: the rigid stage moves the jaw too)
STAGE_GROUPS = ({"pose", "cam"}, {"pose", "cam", "shape", "exp"}, {"tex", "light"})
WEIGHTS = dict(lmk=1.0, eye=1.0, lip=0.5, reg=1e-4, jaw=1e-2, photo=2.0, light=1.0)
# Adam's peak learning rate per stage (cosine-decayed over the stage). The photometric stage's
# 0.1: after 40 steps on four demo-head renders, photometric L1 0.032 where 0.01 left 0.236
# (0.470 before the stage); on a photo 0.084 where 0.01 left 0.094 (0.135 before).
LEARNING_RATES = (0.01, 0.01, 0.1)


def _cosine_decay(lr, n, count, alpha: float = 0.05):
    """`optax.cosine_decay_schedule(lr, n, alpha)(count)` for an n that may be traced (optax's
    needs a Python int): lr at count 0, decayed along a half cosine to alpha x lr at count n."""
    count = jnp.minimum(count, jnp.asarray(n, jnp.float32))
    return lr * ((1 - alpha) * (0.5 * (1 + jnp.cos(jnp.pi * count / jnp.asarray(n, jnp.float32)))) + alpha)


def _stage_runner(pipe: pipeline.Pipeline, stage: int, weights: dict):
    """The jitted optimisation of one stage, compiled once per pipeline, stage, weights and batch
    size, not per step count or learning rate (arguments): (params, detail, target [B, 68, 2],
    image [B, 224, 224, 3], mask [B, 224, 224], n (int32 scalar), lr (float32 scalar)) -> params
    after n Adam steps at a peak learning rate lr, cosine-decayed over the n steps.
    Traced like the pipeline's own functions (`Pipeline.jit`), so a batch split over several
    devices is rendered by each device for its own images."""
    cache = pipe.__dict__.setdefault("_fit_runners", {})
    key = (stage, tuple(sorted(weights.items())))
    if key in cache:
        return cache[key]
    groups = STAGE_GROUPS[stage]

    def stage_loss(on, off, detail, target, image, mask):
        return fit_loss({**off, **on}, detail, pipe, target, image, mask, stage, weights)

    # differentiated with respect to the stage's codes only: the photometric stage (albedo and
    # light) then skips the rasterizer's backward pass
    grad = jax.grad(stage_loss)

    def run(p, detail, target, image, mask, n, lr):
        opt = optax.adam(lambda count: _cosine_decay(lr, n, count))  # settle at the end of each stage
        on = {k: v for k, v in p.items() if k in groups}
        off = {k: v for k, v in p.items() if k not in groups}

        def body(_, carry):
            on, s = carry
            u, s = opt.update(grad(on, off, detail, target, image, mask), s, on)
            return optax.apply_updates(on, u), s
        return {**off, **jax.lax.fori_loop(0, n, body, (on, opt.init(on)))[0]}

    cache[key] = pipe.jit(run)
    return cache[key]


def fit(pipe: pipeline.Pipeline, codes: dict, target_img, image, mask, steps=(100, 400, 40), lr=LEARNING_RATES,
        weights: dict = WEIGHTS) -> dict:
    """Optimise a batch of codes through the three stages; returns the fitted codes. Each image is
    fitted on its own (`fit_loss`); the batch is split over the pipeline's devices.
    codes: [B, ...] each; target_img: [B, 68, 2] image space; image: [B, 224, 224, 3]; mask: [B, 224, 224].
    lr: Adam's peak learning rate per stage, or one for all three. Codes without 'detail' (a
    coarse-stage checkpoint's regressor has no detail encoder) get a zero detail code."""
    lrs = (float(lr),) * 3 if np.isscalar(lr) else tuple(float(x) for x in lr)
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    p = jax.tree.map(f32, _split(codes))
    detail = codes.get("detail", np.zeros((len(codes["shape"]), 128)))
    (p, detail, target, image, mask), B = pipe.split_batch(
        (p, f32(detail), f32(target_img), f32(image), f32(mask)))
    for stage, n in enumerate(steps):
        if n > 0:
            p = _stage_runner(pipe, stage, weights)(p, detail, target, image, mask, np.int32(n), np.float32(lrs[stage]))
    return pipe.cut_batch(_merge(p, detail), B)


def prepare(image: np.ndarray, landmarks_px=None):
    """(crop, target [68, 2] in the crop's image space) of one RGB uint8 image, or None when no
    face is found. landmarks_px: [68, 2] original pixels (None: dlib detects them)."""
    if landmarks_px is None:
        landmarks_px = pipeline.detect_landmarks(image)
        if landmarks_px is None:
            return None
    crop = landmark_crop(image, landmarks_px)
    return crop, to_image_space(landmarks_px, crop.tform)


def fit_crops(pipe, crops: list, targets: list, steps=(100, 400, 40)) -> dict:
    """Fit a batch of prepared faces (`prepare`: crops and their targets) together. Starts from
    the regressor's codes when the pipeline has networks, else from the mean. A face whose
    regressed camera scale is not positive (fit optimises its logarithm; a landmark-only pretrain
    can land in the mirror solution, see `deca_common.camera_codes`) starts from the landmark-box
    camera with zero global rotation. Returns the codes [B]."""
    images = np.stack([c.image for c in crops])
    targets = np.stack(targets)
    if pipe.variables is None:
        codes = mean_codes(pipe, targets)
    else:
        codes = dict(pipe.encode(images))
        bad = ~(np.asarray(codes["cam"][:, 0]) > 0)  # NaN included
        if bad.any():
            box = mean_codes(pipe, targets)["cam"]
            codes["cam"] = jnp.where(bad[:, None], box, codes["cam"])
            codes["pose"] = jnp.where(bad[:, None], codes["pose"].at[:, :3].set(0.0), codes["pose"])
    return fit(pipe, codes, targets, images, np.stack([hull_mask(t) for t in targets]), steps)


def fit_image(pipe, image: np.ndarray, landmarks_px=None, steps=(100, 400, 40)):
    """Fit one RGB uint8 image. landmarks_px: [68, 2] original pixels (None: dlib detects them).
    Returns (codes, decoded, crop) or None when no face is found."""
    prep = prepare(image, landmarks_px)
    if prep is None:
        return None
    crop, target = prep
    codes = fit_crops(pipe, [crop], [target], steps)
    return codes, pipe.decode(codes, crop.image[None]), crop


# fit's names of before (the helpers moved to landmark_files, which reconstruct uses too)
read_pts, landmarks_for = landmark_files.read_pts, landmark_files.landmarks_for


def fit_inputs(input_path: str, out_dir: str, pipe: pipeline.Pipeline, landmarks: str | None = None,
               steps=(100, 400, 40), batch: int = 8) -> dict:
    """fit every face of an image, folder or video, `batch` faces at a time (`fit_crops`; fewer
    than `batch` faces in all are fitted as one smaller batch), and write reconstruct's outputs
    per face. Unusable files and faces are skipped with one message
    naming the file (see inputs.report). Returns {'written': [names], 'skipped': [(name, reason)]}."""
    single = landmark_files.check_arg(landmarks, input_path)
    written, skipped = [], []

    def find(frame):
        lmk = landmark_files.for_frame(frame, landmarks, single)
        return lmk if isinstance(lmk, inputs.Skipped) else prepare(frame.image, lmk)

    with pipeline.stop_on_write_error("fit", written, skipped, out_dir):
        _fit_chunks(pipeline.found_faces(input_path, find, skipped, "fit", quiet=single), out_dir, pipe, steps,
                    batch, written)
    inputs.report("fit", len(written), skipped, out_dir)
    return {"written": written, "skipped": [(s.name, s.reason) for s in skipped]}


def _fit_chunks(faces, out_dir: str, pipe: pipeline.Pipeline, steps, batch: int, written: list) -> None:
    """fit_inputs' loop: fit (name, (crop, target)) faces `batch` at a time and write each one's
    outputs, appending its name to `written`."""
    size = None
    for chunk in pipeline.chunks(faces, batch):
        # a short last chunk repeats its last face up to the first chunk's size: the fit is then
        # compiled once (on 2 CPU cores, 400 steps: compiling a batch of 1 again took 9 s, while
        # fitting 8 faces instead of 1 took 2.3 s more)
        size = size or len(chunk)
        padded = chunk + chunk[-1:] * (size - len(chunk))
        crops = [crop for _, (crop, _) in padded]
        codes = fit_crops(pipe, crops, [target for _, (_, target) in padded], steps)
        out = pipe.decode(codes, np.stack([c.image for c in crops]))
        for k, (name, (crop, _)) in enumerate(chunk):
            pipeline.write_outputs(out_dir, name, out, k, crop, codes, pipe.arrays)
            written.append(name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxdeca.apps.fit", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--input", required=True, help="an image, a folder of images/videos, or a video")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--flame", default=None)
    p.add_argument("--landmarks", default=None,
                   help="68 points in original pixels: an iBUG .pts (1-based) or a .txt of x y rows "
                        "(0-based, like *_kpt2d.txt), or a folder of <stem>.pts/.txt (default: dlib)")
    p.add_argument("--steps", type=positive_int, default=400,
                   help="shape/expression steps (rigid = steps/4, photo = steps/10)")
    p.add_argument("--batch", type=positive_int, default=8, help="faces fitted together (each on its own)")
    a = p.parse_args(argv)
    xla_options.use_compilation_cache()
    try:
        pipeline.check_out_dir(a.out)
        pipe = pipeline.load_pipeline(a.checkpoint, a.flame)
        res = fit_inputs(a.input, a.out, pipe, a.landmarks, (a.steps // 4, a.steps, a.steps // 10), a.batch)
    except pipeline.CLI_ERRORS as e:
        print(f"fit: {e}", file=sys.stderr)
        return 2
    return 0 if res["written"] else 1


if __name__ == "__main__":
    sys.exit(main())
