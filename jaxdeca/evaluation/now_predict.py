"""NoW predictions from a model: run a converted/trained DECA checkpoint (or `fit` when there is
none) over a NoW image list and write, per image, the neutral mesh and the 7 landmarks in the
layout the official NoW scripts read (`now.export_prediction`).

What DECA does (decalib/trainer.py `evaluate`, decalib/datasets/now.py), and we follow:
- crop: NoW's detected face box `detected_face/<subject>/<challenge>/<image>.npy` (a pickled
  dict left/top/right/bottom), square of side int((w + h) / 2 x 1.6) at the box centre (1.6 =
  the mean of the training crop scales 1.4..1.8; DECA truncates the side with int(), and so
  do we), warped to 224. With no box file: DECA's test-time crop from dlib's landmarks
  (`jaxdeca.data.preprocess`).
- images are read upright by their EXIF orientation (`apps.inputs.read_image`, as everywhere
  in the package), which is what DECA's reader did: skimage.io.imread through its default
  imageio plugin, whose JPEG reader applied the EXIF rotation (exifrotate=True) in the imageio
  releases DECA was run with (imageio 2.28 and later no longer rotate, so a rerun of DECA with
  today's packages reads a rotated phone photo sideways). The boxes are taken in that upright
  layout; a NoW image without an orientation tag reads the same either way.
- codes = E_flame(crop); expression and pose set to zero; the FLAME vertices are the neutral
  mesh; the 7 landmarks are the static 3D landmarks [19, 22, 25, 28, 16, 31, 37], i.e. the
  fixed 68-point embedding's points 17.. of the neutral mesh (`now.now_landmarks`).
- with no checkpoint: `jaxdeca.apps.fit` fits the codes to the image's 68 landmarks, and the
  fitted shape gives the neutral mesh the same way. The landmarks are dlib's 68-point model run
  inside NoW's box (no detection, so a face dlib's detector misses, e.g. behind an occluder,
  is fitted all the same); with no box file, dlib's detector finds the face first.

    python -m jaxdeca.evaluation.now export --images NoW_Dataset/final_release_version \
        --image-list imagepathsvalidation.txt --out predictions [--checkpoint DIR] [--flame FLAME]
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxdeca import safe_pickle, xla_options
from jaxdeca.atomic_file import open_replacing
from jaxdeca.data import crop as crop_lib
from jaxdeca.evaluation import now
from jaxdeca.evaluation.meshio import NowFileError

NOW_CROP_SCALE = 1.6


def neutral_prediction(flame_model, shape):
    """shape: [B, n_shape] -> (neutral vertices [B, V, 3], NoW landmarks [B, 7, 3]); expression and
    pose are zero, so only identity remains (FLAME units, metres)."""
    B = shape.shape[0]
    out = flame_model(shape, jnp.zeros((B, flame_model.n_exp), shape.dtype), jnp.zeros((B, 6), shape.dtype))
    return out["vertices"], now.now_landmarks(out["landmarks3d"][:, 17:])


def read_bbox(path: str):
    """NoW's detected-face file (np.save of a dict) -> (left, top, right, bottom) floats. Read by
    safe_pickle: numbers only, no code from the file runs."""
    try:
        with open(path, "rb") as f:
            safe_pickle.skip_npy_header(f)
            d = safe_pickle.load(f)
        d = d.item() if isinstance(d, np.ndarray) else d
        return tuple(float(d[k]) for k in ("left", "top", "right", "bottom"))
    except Exception as e:  # noqa: BLE001 - any malformed file gets the same message
        raise NowFileError(f"{path}: not a NoW detected-face box file ({e})") from None


def write_bbox(path: str, left, top, right, bottom) -> str:
    """The inverse of `read_bbox` (tests, and boxes from another detector)."""
    with open_replacing(path, "wb") as fh:
        np.save(fh, dict(left=left, top=top, right=right, bottom=bottom), allow_pickle=True)
    return path


def now_crop(image_uint8, bbox, scale: float = NOW_CROP_SCALE, size: int = 224):
    """DECA's NoW crop: image [H, W, 3] uint8, bbox (l, t, r, b) -> (crop [size, size, 3] float32
    0..1, tform [3, 3] original -> crop pixels)."""
    center, old = crop_lib.box_square(*bbox, kind="kpt")  # box centre, (w + h) / 2, no shift
    t = crop_lib.square_transform(center, int(old * scale), size)
    return crop_lib.crop_image(image_uint8, t, size), t


def resolve_image_dirs(images: str, bboxes: str | None = None) -> tuple[str, str | None]:
    """NoW's `final_release_version` (or the dataset root above it) or the `iphone_pictures`
    folder itself -> (image folder, detected-face folder or None when there is none)."""
    for sub in ("final_release_version", ""):
        root = os.path.join(images, sub) if sub else images
        if os.path.isdir(os.path.join(root, "iphone_pictures")):
            img_dir = os.path.join(root, "iphone_pictures")
            break
    else:
        img_dir, root = images, os.path.dirname(os.path.abspath(images))
    if not os.path.isdir(img_dir):
        raise NowFileError(f"{images}: image folder not found (expected NoW's iphone_pictures/)")
    if bboxes is None and os.path.isdir(os.path.join(root, "detected_face")):
        bboxes = os.path.join(root, "detected_face")
    elif bboxes is not None and not os.path.isdir(bboxes):
        raise NowFileError(f"{bboxes}: detected-face folder not found")
    return img_dir, bboxes


def _read_entries(img_dir: str, box_dir: str | None, entries: list, skipped: list):
    """(entry, path, image [H, W, 3] uint8 upright by its EXIF orientation (the layout of
    DECA's reader, see the module docstring), NoW box or None) of each listed image that reads;
    an unreadable image or box file is appended to `skipped` as (entry, reason)."""
    from jaxdeca.apps import inputs
    for entry in tqdm(entries, desc="NoW export", unit="img", disable=None):
        path = os.path.join(img_dir, entry)
        try:
            image = inputs.read_image(path)
            box_file = os.path.join(box_dir, os.path.splitext(entry)[0] + ".npy") if box_dir else None
            box = read_bbox(box_file) if box_file and os.path.isfile(box_file) else None
        except (inputs.InputError, NowFileError) as e:
            skipped.append((entry, str(e)))
            continue
        yield entry, path, image, box


def _crops(items, skipped: list):
    """(entry, crop [224, 224, 3] float32) of `_read_entries` items: NoW's box crop, or DECA's
    test-time crop from dlib's landmarks where there is no box (skipped when no face is found)."""
    from jaxdeca.apps import pipeline
    for entry, path, image, box in items:
        if box is not None:
            try:
                crop = now_crop(image, box)[0]
            except ValueError as e:  # NaN, inverted or sub-pixel box (crop_lib's message says which)
                skipped.append((entry, f"{path}: cannot crop with its detected-face box {box}: {e}"))
                continue
            yield entry, crop
            continue
        c = pipeline.crop_face(image)
        if c is None:
            skipped.append((entry, f"{path}: no face detected (and no detected_face box)"))
            continue
        yield entry, c.image


def export_model(images: str, image_list: str, out_dir: str, checkpoint: str | None = None,
                 flame_path: str | None = None, bboxes: str | None = None, batch: int = 8,
                 fit_steps=(100, 400, 0), pipe=None) -> dict:
    """Predict and write every listed image's neutral mesh + 7 landmarks under out_dir.

    images: see `resolve_image_dirs`; image_list: NoW list of `<subject>/<challenge>/<image>`.
    Uses `checkpoint`'s coarse encoder on batches of `batch` crops, or `fit` on batches of
    `batch` images when there is no network. Images that are missing, unreadable or without a
    detectable face are skipped with one message naming the file. A prediction file that cannot
    be written stops the run (`pipeline.stop_on_write_error`: export.WriteError naming it and
    how many predictions were written before). Returns {'written': [list entries], 'skipped':
    [(entry, reason)]}.
    """
    from jaxdeca.apps import inputs, pipeline
    img_dir, box_dir = resolve_image_dirs(images, bboxes)
    entries = now.read_image_list(image_list)
    if pipe is None:
        pipe = pipeline.load_pipeline(checkpoint, flame_path)
    faces = np.asarray(pipe.arrays["faces"])
    predict = xla_options.jit(lambda shape: neutral_prediction(pipe.flame, shape))
    written, skipped = [], []

    def write(names, shape):  # shape padded to `batch` rows: predict compiles once
        v, l7 = jax.device_get(predict(jnp.asarray(pipeline.pad_rows(shape, batch), jnp.float32)))
        for k, e in enumerate(names):
            now.export_prediction(out_dir, e, v[k], faces, l7[k])
            written.append(e)

    items = _read_entries(img_dir, box_dir, entries, skipped)
    with pipeline.stop_on_write_error("now export", written, skipped, out_dir, "prediction(s)"):
        _predict(pipe, items, skipped, batch, fit_steps, write)
    inputs.report("now export", len(written), [inputs.Skipped(e, r) for e, r in skipped], out_dir, "prediction(s)")
    return {"written": written, "skipped": skipped}


def _predict(pipe, items, skipped: list, batch: int, fit_steps, write) -> None:
    """export_model's loop: the shape codes of `_read_entries` items, `batch` at a time, from
    the network or `fit`, each batch handed to write(entries, shape)."""
    from jaxdeca.apps import fit, pipeline
    if pipe.variables is None:  # fit the codes to dlib's landmarks, `batch` images at a time
        def prepared():
            for entry, path, image, box in items:
                if box is None:
                    prep = fit.prepare(image)
                else:  # dlib's landmark model inside NoW's box: no detection, as the crops above
                    try:
                        prep = fit.prepare(image, pipeline.detect_landmarks(image, box))
                    except ValueError as e:  # NaN or inverted box
                        skipped.append((entry, f"{path}: cannot use its detected-face box {box}: {e}"))
                        continue
                if prep is None:
                    skipped.append((entry, f"{path}: no face detected (and no detected_face box)"))
                    continue
                yield entry, prep

        for chunk in pipeline.chunks(prepared(), batch):
            # a short last chunk repeats its last face up to `batch`, as fit's folders do: the fit
            # is compiled once, not again for the last chunk's size
            padded = chunk + chunk[-1:] * (batch - len(chunk))
            codes = fit.fit_crops(pipe, [c for _, (c, _) in padded], [t for _, (_, t) in padded], fit_steps)
            write([e for e, _ in chunk], np.asarray(codes["shape"])[:len(chunk)])
    else:
        for chunk in pipeline.chunks(_crops(items, skipped), batch):
            shape = pipe.encode(pipeline.padded_batch([c for _, c in chunk], batch))["shape"][:len(chunk)]
            write([e for e, _ in chunk], shape)
