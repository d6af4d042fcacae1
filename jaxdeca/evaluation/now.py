"""The NoW benchmark (Sanyal et al., CVPR 2019): prediction export and the metric, without psbody-mesh.

Export. For each image of NoW's list (`imagepathsvalidation.txt` / `imagepathstest.txt`, one
relative path `<subject>/<challenge>/<image>.jpg` per line) a method writes its neutral mesh
(expression and pose zeroed) and 7 landmarks to
`<predictions>/<subject>/<challenge>/<image stem>.obj` and `.npy` ([7, 3]).
DECA's 7 landmarks are its static 3D landmarks [19, 22, 25, 28, 16, 31, 37] (`now_landmarks`).

Metric (official `scan2mesh_computations.compute_errors`), per image:
1. crop the scan to a ball around the face built from its 7 picked landmarks (`face_mask`);
2. align the prediction to the scan with the least-squares similarity from the 7 landmark pairs
   (scale absorbs the unit: FLAME metres -> scan millimetres);
3. refine scale + rotation + translation by minimising the squared scan-to-mesh distances of
   the cropped scan vertices (`refine_alignment`);
4. distances = each cropped scan vertex to the closest point on the aligned predicted surface.
The set's median / mean / std are taken over all distances of all images concatenated
(`cumulative_errors.py` uses `np.hstack` over images), in the scan's unit (mm).

Differences from the official code, all documented where they occur: the refinement is
Levenberg-Marquardt instead of chumpy's dogleg trust region, on the same residuals, parameters
and start, so both descend to a local minimum of the same sum of squared point-to-surface
distances; the landmark similarity excludes reflections (the official
`procrustes(reflection='best')` would allow one).

CLI (see `main`):
  python -m jaxdeca.evaluation.now export --images NOW_DIR --image-list FILE --out PRED [--checkpoint DIR] [--flame FLAME]
      (runs a model, or `fit` with no checkpoint, and writes the predictions: `now_predict`)
  python -m jaxdeca.evaluation.now evaluate --predictions PRED --scans DIR --image-list FILE --out DIR
"""
from __future__ import annotations

import argparse
import csv
import errno
import glob
import json
import os
import sys

import jax.numpy as jnp
import numpy as np

from jaxdeca import xla_options
from jaxdeca.apps.export import WriteError, output_file, writing
from jaxdeca.argtypes import positive_int
from jaxdeca.evaluation.geometry import point_to_triangle_distance, similarity_transform
from jaxdeca.evaluation.meshio import NowFileError, read_landmarks, read_mesh, read_obj, read_pp, write_obj

NOW_LANDMARK_INDICES = (19, 22, 25, 28, 16, 31, 37)
"""DECA's 7 NoW landmarks as indices into the 51 static landmarks (iBUG 17..67):
outer/inner right eye corner, inner/outer left eye corner, nose bottom, mouth corners."""

CHALLENGES = ("multiview_neutral", "multiview_expressions", "multiview_occlusions", "selfie")


# ----------------------------------------------------------------------------- export

def now_landmarks(static_landmarks3d):
    """static_landmarks3d: [B, 51, 3] (or [51, 3]) -> the 7 NoW landmarks [B, 7, 3] ([7, 3])."""
    if static_landmarks3d.shape[-2:] != (51, 3):
        raise ValueError(f"now_landmarks: expected [..., 51, 3] static landmarks, found {static_landmarks3d.shape}")
    return jnp.take(static_landmarks3d, jnp.asarray(NOW_LANDMARK_INDICES), axis=-2)


def read_image_list(path: str) -> list[str]:
    """NoW image list -> relative image paths (blank lines dropped; CRLF and a UTF-8 BOM read too)."""
    if not os.path.isfile(path):
        raise NowFileError(f"{path}: image list not found")
    with open(path, encoding="utf-8-sig") as fh:
        lines = [ln.strip() for ln in fh.read().splitlines() if ln.strip()]
    for ln in lines:
        if len(ln.replace("\\", "/").split("/")) < 3:
            raise NowFileError(f"{path}: line {ln!r} is not <subject>/<challenge>/<image>")
    return lines


def split_image_path(image_path: str) -> tuple[str, str, str]:
    """'FaMoS_180424_03335_TA/multiview_neutral/IMG_0101.jpg' -> (subject, challenge, 'IMG_0101').

    Like the official script: the last three path components, the extension dropped.
    """
    parts = image_path.replace("\\", "/").split("/")
    if len(parts) < 3:
        raise ValueError(f"NoW image path {image_path!r} is not <subject>/<challenge>/<image>")
    return parts[-3], parts[-2], os.path.splitext(parts[-1])[0]


def prediction_paths(predictions_dir: str, image_path: str) -> tuple[str, str]:
    """Where the official script looks for an image's mesh and landmarks: (.obj, .npy) paths."""
    subject, challenge, stem = split_image_path(image_path)
    base = os.path.join(predictions_dir, subject, challenge, stem)
    return base + ".obj", base + ".npy"


def export_prediction(predictions_dir: str, image_path: str, vertices, faces, landmarks7) -> tuple[str, str]:
    """Write one image's neutral mesh and 7 landmarks in the official layout.

    vertices: [V, 3], faces: [F, 3] (0-based), landmarks7: [7, 3], same frame and unit as the
    vertices (the metric's similarity alignment absorbs the unit). Returns (obj path, npy path);
    a file that cannot be written: `apps.export.WriteError` naming it, nothing left under its
    name (`replacing`).
    """
    landmarks7 = np.asarray(landmarks7, np.float32)
    if landmarks7.shape != (7, 3):
        raise ValueError(f"export_prediction({image_path}): landmarks must be [7, 3], found {landmarks7.shape}")
    obj_path, npy_path = prediction_paths(predictions_dir, image_path)
    with writing(obj_path):
        write_obj(obj_path, np.asarray(vertices), np.asarray(faces))
    with output_file(npy_path, "wb") as fh:
        np.save(fh, landmarks7)
    return obj_path, npy_path


# ----------------------------------------------------------------------------- metric

def face_mask(scan_lmks7):
    """Official `compute_mask`: ball around the face from the scan's 7 landmarks.

    scan_lmks7: [7, 3] -> (centre [3], radius []). centre = nose bottom + 0.3 (nose bridge -
    nose bottom), bridge = mean of inner eye corners; radius = 1.4 * (outer-eye distance +
    nose length) / 2.
    """
    xp = jnp if isinstance(scan_lmks7, jnp.ndarray) else np
    nose_bottom = scan_lmks7[4]
    nose_bridge = (scan_lmks7[1] + scan_lmks7[2]) / 2
    centre = nose_bottom + 0.3 * (nose_bridge - nose_bottom)
    outer_eye = xp.linalg.norm(scan_lmks7[0] - scan_lmks7[3])
    nose = xp.linalg.norm(nose_bridge - nose_bottom)
    return centre, 1.4 * (outer_eye + nose) / 2


def crop_scan(scan_vertices: np.ndarray, scan_lmks7: np.ndarray) -> np.ndarray:
    """Indices of the scan vertices inside `face_mask` (distance <= radius, as the official crop)."""
    centre, radius = face_mask(np.asarray(scan_lmks7, np.float64))
    return np.nonzero(np.linalg.norm(scan_vertices - centre, axis=1) <= radius)[0]


def _apply(s, R, t, x):
    return s * x @ np.asarray(R).T + t


def _rotvec_matrix(w: np.ndarray) -> np.ndarray:
    """Rodrigues: axis-angle [3] -> rotation [3, 3]."""
    theta = float(np.linalg.norm(w))
    if theta < 1e-12:
        return np.eye(3)
    k = w / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * K @ K


def refine_alignment(scan_points: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                     max_iters: int = 50, tol: float = 1e-10):
    """Scale + rotation + translation of the mesh minimising sum_i dist(scan_i, s R mesh + t)^2.

    scan_points: [N, 3], vertices: [V, 3] (already landmark-aligned), faces: [F, 3]
    -> (s, R [3, 3], t [3]) with the refined mesh = s * vertices @ R.T + t.

    The official code minimises the same objective (the unsigned scan-to-mesh distances as the
    residual vector) over the same parameters (s, Rodrigues r, t; identity start; a penalty
    keeps s > 0) with chumpy's dogleg trust-region solver. Here: Levenberg-Marquardt on those
    residuals. With c_i the closest surface point and n_i = (p_i - c_i) / d_i, an incremental
    similarity X -> (1 + a) exp([w]x) (X - mu) + mu + b has Jacobian
    d d_i / d(a, w, b) = -(n_i . (c_i - mu), (c_i - mu) x n_i, n_i); a step is accepted only if
    the mean squared distance decreases (else the damping grows). Stops when the relative
    decrease is below `tol`, the damping explodes, or after `max_iters` accepted steps.
    """
    mu = scan_points.mean(0)
    s, R, t = 1.0, np.eye(3), np.zeros(3)

    def residuals(s, R, t):
        d, c = point_to_triangle_distance(scan_points, _apply(s, R, t, vertices)[faces])
        return d, c

    d, c = residuals(s, R, t)
    energy, lam = float(np.mean(d ** 2)), 1e-3
    for _ in range(max_iters):
        ok = d > 1e-12
        if not ok.any():
            break
        n = (scan_points[ok] - c[ok]) / d[ok, None]
        x = c[ok] - mu
        J = -np.concatenate([(n * x).sum(1, keepdims=True), np.cross(x, n), n], axis=1)  # [K, 7]
        JtJ, g = J.T @ J, J.T @ d[ok]
        improved = False
        while lam < 1e12:
            step = np.linalg.solve(JtJ + lam * np.diag(np.diag(JtJ) + 1e-12), -g)
            a, E = max(step[0], -0.5), _rotvec_matrix(step[1:4])
            s_new, R_new = s * (1 + a), E @ R
            t_new = (1 + a) * E @ (t - mu) + mu + step[4:]
            d_new, c_new = residuals(s_new, R_new, t_new)
            e_new = float(np.mean(d_new ** 2))
            if e_new < energy:
                improved = True
                break
            lam *= 10
        if not improved:
            break
        rel = (energy - e_new) / max(energy, 1e-300)
        s, R, t, d, c, energy, lam = s_new, R_new, t_new, d_new, c_new, e_new, max(lam / 10, 1e-9)
        if rel < tol:
            break
    return s, R, t


def align_prediction(scan_points, scan_lmks7, pred_vertices, pred_faces, pred_lmks7, refine: bool = True):
    """Landmark similarity, then (optionally) `refine_alignment`; returns aligned vertices [V, 3]."""
    s, R, t = similarity_transform(np.asarray(pred_lmks7, np.float64), np.asarray(scan_lmks7, np.float64))
    aligned = _apply(float(s), np.asarray(R), np.asarray(t), np.asarray(pred_vertices, np.float64))
    if refine:
        s, R, t = refine_alignment(scan_points, aligned, pred_faces)
        aligned = _apply(s, R, t, aligned)
    return aligned


def compute_errors(scan_vertices, scan_lmks7, pred_vertices, pred_faces, pred_lmks7, refine: bool = True):
    """NoW distances for one image, in the scan's unit.

    scan_vertices: [S, 3], scan_lmks7: [7, 3] (scan frame), pred_vertices: [V, 3],
    pred_faces: [F, 3], pred_lmks7: [7, 3] (prediction frame) -> distances [N] for the N scan
    vertices inside the face crop. Raises ValueError for NaN/inf landmarks or vertices, a
    prediction without faces, coincident landmarks or an empty crop.
    """
    scan_vertices = np.asarray(scan_vertices, np.float64)
    pred_faces = np.asarray(pred_faces, np.int64)
    for name, a, shape in (("scan_lmks7", scan_lmks7, (7, 3)), ("pred_lmks7", pred_lmks7, (7, 3))):
        if np.shape(a) != shape:
            raise ValueError(f"compute_errors: {name} must be {shape}, found {np.shape(a)}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"compute_errors: {name} contain NaN or inf values")
        if not np.any(np.asarray(a) - np.mean(a, axis=0)):
            raise ValueError(f"compute_errors: the 7 landmarks of {name} coincide")
    if not np.all(np.isfinite(pred_vertices)):
        raise ValueError("compute_errors: pred_vertices contain NaN or inf values")
    if pred_faces.size == 0:  # an OBJ of `v` lines only: the reader accepts point clouds (scans are used as points)
        raise ValueError("compute_errors: pred_faces is empty: the prediction has no faces (only vertices); a NoW "
                         "prediction must be a triangle mesh")
    if pred_faces.ndim != 2 or pred_faces.shape[1] != 3:
        raise ValueError(f"compute_errors: pred_faces must be [F, 3], found {pred_faces.shape}")
    points = scan_vertices[crop_scan(scan_vertices, scan_lmks7)]
    if len(points) == 0:
        raise ValueError("compute_errors: no scan vertex lies inside the face crop; check the scan landmarks")
    aligned = align_prediction(points, scan_lmks7, pred_vertices, pred_faces, pred_lmks7, refine)
    return point_to_triangle_distance(points, aligned[pred_faces])[0]


def summarise(all_distances) -> dict:
    """Official aggregation: median / mean / std over all images' distances concatenated.

    all_distances: list of [N_i] (or one array) -> dict(median, mean, std, n_points).
    """
    if isinstance(all_distances, (list, tuple)):
        d = np.hstack([np.ravel(x) for x in all_distances]) if all_distances else np.zeros(0)
    else:
        d = np.ravel(all_distances)
    if d.size == 0:
        raise ValueError("summarise: no distances")
    return dict(median=float(np.median(d)), mean=float(np.mean(d)), std=float(np.std(d)), n_points=int(d.size))


# ----------------------------------------------------------------------------- evaluation job

def _scan_files(scans_dir: str, lmks_dir: str, subject: str) -> tuple[str, str]:
    objs = sorted(glob.glob(os.path.join(glob.escape(os.path.join(scans_dir, subject)), "*.obj")))
    pps = sorted(glob.glob(os.path.join(glob.escape(os.path.join(lmks_dir, subject)), "*.pp")))
    if not objs:
        raise NowFileError(f"{os.path.join(scans_dir, subject)}: no scan .obj for subject {subject}")
    if not pps:
        raise NowFileError(f"{os.path.join(lmks_dir, subject)}: no landmark .pp for subject {subject}")
    return objs[0], pps[0]


def resolve_scan_dirs(scans: str, scan_landmarks: str | None = None) -> tuple[str, str]:
    """Accept the NoW dataset root (with `scans/` and `scans_lmks_onlypp/`) or the scans folder itself."""
    if os.path.isdir(os.path.join(scans, "scans")):
        root = scans
        scans = os.path.join(root, "scans")
    else:
        root = os.path.dirname(os.path.abspath(scans))
    lmks = scan_landmarks or os.path.join(root, "scans_lmks_onlypp")
    for d in (scans, lmks):
        if not os.path.isdir(d):
            raise NowFileError(f"{d}: folder not found (expected NoW's scans/ and scans_lmks_onlypp/)")
    return scans, lmks


def evaluate(predictions_dir: str, scans: str, image_list: str, out_dir: str, challenge: str = "",
             scan_landmarks: str | None = None, method: str = "jaxdeca", refine: bool = True) -> dict:
    """Run the metric over an image list; write per-image CSV, summary JSON, official distances .npy.

    Outputs in out_dir: `<method>_per_image[_<challenge>].csv` (image, subject, challenge,
    n_points, median, mean, std), `<method>_summary[_<challenge>].json` (overall and per
    challenge, num_missing_files) and `<method>_computed_distances[_<challenge>].npy` in the
    official dict format (readable by `cumulative_errors.py`); the suffix, as in the official
    file name, keeps a one-challenge run from overwriting the full run's outputs. Missing
    predictions are counted and skipped, as officially; an image whose files cannot be
    evaluated stops the run with a NowFileError naming them. An output folder that cannot be
    made or written is refused before any scan is read, and a file that cannot be written is
    `apps.export.WriteError` naming it (nothing left under its name).
    """
    if challenge and challenge not in CHALLENGES:
        raise ValueError(f"challenge {challenge!r} is not one of {CHALLENGES}")
    if not os.path.isdir(predictions_dir):
        raise NowFileError(f"{predictions_dir}: predictions folder not found")
    scans_dir, lmks_dir = resolve_scan_dirs(scans, scan_landmarks)
    with writing(out_dir):
        os.makedirs(out_dir, exist_ok=True)
        if not os.access(out_dir, os.W_OK):  # found now, not after every image is scored
            raise PermissionError(errno.EACCES, "folder is not writable", out_dir)
    rows, distances, per_challenge, missing = [], [], {}, 0
    cache = {}
    for image in read_image_list(image_list):
        subject, chal, stem = split_image_path(image)
        if challenge and chal != challenge:
            continue
        found = _prediction_files(predictions_dir, image)
        if found is None:
            missing += 1
            continue
        obj, lmk = found
        if subject not in cache:
            scan_obj, scan_pp = _scan_files(scans_dir, lmks_dir, subject)
            cache = {subject: (read_obj(scan_obj)[0], read_pp(scan_pp), f"scan {scan_obj}, {scan_pp}")}
        scan_v, scan_l, scan_files = cache[subject]
        pv, pf = read_mesh(obj)
        pl = read_landmarks(lmk)
        try:
            d = compute_errors(scan_v, scan_l, pv, pf, pl, refine=refine)
        except ValueError as e:  # name the image and its files (the message alone names none)
            raise NowFileError(f"{image}: {e} (prediction {obj}, {lmk}; {scan_files})") from None
        distances.append(d)
        per_challenge.setdefault(chal, []).append(d)
        st = summarise([d])
        rows.append(dict(image=image, subject=subject, challenge=chal, n_points=st["n_points"],
                         median=st["median"], mean=st["mean"], std=st["std"]))
    summary = dict(num_images=len(rows), num_missing_files=missing,
                   overall=summarise(distances) if distances else None,
                   per_challenge={c: summarise(v) for c, v in sorted(per_challenge.items())})
    _write_results(os.path.join(out_dir, method), f"_{challenge}" if challenge else "", rows, summary, distances)
    return summary


def _prediction_files(predictions_dir: str, image: str) -> tuple[str, str] | None:
    """(mesh, landmarks) files of `image`'s prediction, None when either is missing: the .obj, else
    a .ply (the official script's fallback too), and the landmarks' .npy, else a .txt."""
    obj, npy = prediction_paths(predictions_dir, image)
    if not os.path.isfile(obj) and os.path.isfile(obj[:-4] + ".ply"):
        obj = obj[:-4] + ".ply"
    txt = npy[:-4] + ".txt"
    if not os.path.isfile(obj) or not (os.path.isfile(npy) or os.path.isfile(txt)):
        return None
    return obj, npy if os.path.isfile(npy) else txt


def _write_results(prefix: str, suffix: str, rows: list[dict], summary: dict, distances: list) -> None:
    """evaluate's three files, `<prefix>_per_image<suffix>.csv`, `_summary<suffix>.json` and
    `_computed_distances<suffix>.npy` (the official dict format)."""
    with output_file(f"{prefix}_per_image{suffix}.csv", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "subject", "challenge", "n_points", "median", "mean", "std"])
        w.writeheader()
        w.writerows(rows)
    with output_file(f"{prefix}_summary{suffix}.json") as fh:
        json.dump(summary, fh, indent=2)
    with output_file(f"{prefix}_computed_distances{suffix}.npy", "wb") as fh:
        np.save(fh, {"computed_distances": distances, "num_missing_files": summary["num_missing_files"]},
                allow_pickle=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxdeca.evaluation.now", description=(__doc__ or "").split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("evaluate", help="NoW scan-to-mesh errors of exported predictions")
    e.add_argument("--predictions", required=True, help="<predictions>/<subject>/<challenge>/<image>.obj/.npy")
    e.add_argument("--scans", required=True, help="NoW dataset root (scans/, scans_lmks_onlypp/) or its scans/ folder")
    e.add_argument("--scan-landmarks", default=None, help="folder of <subject>/*.pp (default: beside scans/)")
    e.add_argument("--image-list", required=True, help="imagepathsvalidation.txt or imagepathstest.txt")
    e.add_argument("--out", required=True, help="output folder for CSV/JSON/NPY")
    e.add_argument("--challenge", default="", choices=("",) + CHALLENGES)
    e.add_argument("--method", default="jaxdeca", help="prefix of the output files")
    e.add_argument("--no-refine", action="store_true", help="landmark alignment only (no surface refinement)")
    x = sub.add_parser("export", help="run a model (or fit) over a NoW image list and write the predictions")
    x.add_argument("--images", required=True,
                   help="NoW's final_release_version (iphone_pictures/, detected_face/) or an image folder")
    x.add_argument("--image-list", required=True, help="imagepathsvalidation.txt or imagepathstest.txt")
    x.add_argument("--out", required=True, help="predictions folder: <subject>/<challenge>/<image>.obj/.npy")
    x.add_argument("--checkpoint", default=None, help="converted or trained DECA model dir (default: fit)")
    x.add_argument("--flame", default=None, help="FLAME npz/pkl or DECA's data/ folder (needed with a converted "
                   "--checkpoint; default: the one a training workdir records, else the embedded demo head)")
    x.add_argument("--bboxes", default=None, help="detected_face folder (default: beside iphone_pictures/)")
    x.add_argument("--batch", type=positive_int, default=8)
    x.add_argument("--fit-steps", type=positive_int, default=400,
                   help="fit only: shape/expression steps (rigid = 1/4)")
    a = p.parse_args(argv)
    xla_options.use_compilation_cache()
    if a.cmd == "export":
        return _export_main(a)
    try:
        s = evaluate(a.predictions, a.scans, a.image_list, a.out, a.challenge, a.scan_landmarks, a.method,
                     refine=not a.no_refine)
    except (NowFileError, ValueError, WriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    o = s["overall"]
    if o is None:
        print(f"no predictions evaluated ({s['num_missing_files']} missing)")
        return 1  # nothing found to score (e.g. --predictions one folder off): a failed run
    else:
        print(f"{s['num_images']} images, {s['num_missing_files']} missing: median {o['median']:.4f}, "
              f"mean {o['mean']:.4f}, std {o['std']:.4f}")
    return 0


def _export_main(a) -> int:
    from jaxdeca.apps import pipeline
    from jaxdeca.evaluation import now_predict
    try:
        pipeline.check_out_dir(a.out)  # before the model loads and the first batch runs, as the apps do
        res = now_predict.export_model(a.images, a.image_list, a.out, a.checkpoint, a.flame, a.bboxes, a.batch,
                                       (a.fit_steps // 4, a.fit_steps, 0))
    except (NowFileError,) + pipeline.CLI_ERRORS as err:  # the apps' one-line errors (FLAME file, dlib, ...)
        print(f"now export: {err}", file=sys.stderr)
        return 2
    return 0 if res["written"] else 1


if __name__ == "__main__":
    sys.exit(main())
