"""Offline preparation of an in-the-wild face folder: 68 landmarks, skin masks, identities.

    python -m jaxdeca.data.prepare --images DIR --out DIR [--layout vggface2|voxceleb2|bupt|celeba|folders]
                                   [--workers N] [--predictor PATH]

For every image under --images: decode it (grayscale/RGBA/16-bit converted; empty, text,
truncated, undecodable or < 64 px files skipped with a reason; so are video and HEIC files,
which prepare does not read: extract the frames / convert them first), take the landmarks from an
iBUG `.pts` file with the same stem if there is one, else detect the largest face with dlib's
HOG detector and fit the 68-point shape predictor (images over 1024 px are downscaled for
detection), draw the skin mask (`masks.skin_mask`) and write

    OUT/records/<relative path>.json   one result per image (ok or bad + reason); a re-run
                                       skips images that already have one (resumable), unless
                                       the file or its .pts changed since, or it was bad before
                                       its bytes were read (unreadable, no identity): it redoes those
    OUT/masks/<relative path>.png      the skin mask (uint8, 255 = skin); `p/a.jpg` -> `masks/p/a.jpg.png`
    OUT/index.jsonl                    all good records, sorted by identity then path
    OUT/summary.json                   counts, reasons, every bad file with its reason, and the
                                       subfolders that could not be listed (unreadable_folders)
    OUT/meta.json                      images root and layout (the tfds builders read it; a re-run
                                       with another --images or --layout is refused, unless the
                                       recorded folder is gone and --images holds all its images:
                                       it moved)

Identities come from the folder layout: vggface2 / folders = first directory under --images
(`n000002/0001_01.jpg`); voxceleb2 = the `idNNNNN` directory (`id00012/abc/00001.jpg`), else
the first directory; bupt = the image's own folder, for race/identity trees such as BUPT's
`race_per_7000/African/m.0c7mh2/0001.jpg` (identity `African/m.0c7mh2` when --images is
race_per_7000; with vggface2 / folders every race would be one identity); celeba =
`identity_CelebA.txt` (`000001.jpg 2880` lines) in --images or its parent. A record: path, identity, landmarks [68, 2] (pixels, pixel centre at integer
coordinates), mask, score (dlib detection score; null for .pts landmarks), source, width,
height, and for every file prepare read (bad ones too) sha256 (hex, of its bytes: the tfds build
refuses a file changed since) with file_size and file_mtime_ns (a re-run hashes a recorded file
again only when these differ), and the same three fields of the image's .pts file as pts_file
when it has one (a re-run redoes an image whose .pts file appeared, went or changed).
"""
import argparse
import collections
import errno
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import sys
import tempfile

import cv2
import numpy as np

from jaxdeca.argtypes import positive_int
from jaxdeca.atomic_file import is_temporary, open_replacing
from jaxdeca.data import detect, images, masks

IMAGE_EXTS = images.IMAGE_EXTS
# files listed (so counted in summary.json) but never read: the reason each is skipped
UNUSABLE_EXTS = {**dict.fromkeys(images.VIDEO_EXTS, "video file: extract its frames first"),
                 **dict.fromkeys(images.HEIC_EXTS, images.HEIC_REASON)}
LAYOUTS = ("vggface2", "voxceleb2", "bupt", "celeba", "folders")
NO_IDENTITY = "no identity for this file in the folder layout"
MIN_LANDMARK_SPAN = 8.0  # px, mean side of a .pts file's landmark box (the training crop's size)


def check_landmark_box(lmk: np.ndarray, path: str) -> None:
    """Refuses (ValueError naming `path`) landmarks [K, 2] in pixels that are not all finite or
    whose box's mean side is under MIN_LANDMARK_SPAN: the face crop is sized by that box.
    Shared by prepare's .pts reading and the fit app's --landmarks."""
    if not np.all(np.isfinite(lmk)):
        raise ValueError(f"{path}: landmarks are not all finite numbers")
    span = float(np.ptp(lmk, axis=0).mean())
    if span < MIN_LANDMARK_SPAN:
        raise ValueError(f"{path}: the landmarks span {span:.1f} px (need >= {MIN_LANDMARK_SPAN:g}: the face crop "
                         "is sized by them)")


# ----------------------------------------------------------------------------- identities

def list_images(root: str, unreadable: list | None = None, exclude: str | None = None) -> list[str]:
    """Relative paths of all image files under root, and of the files prepare lists as skipped
    without reading them (UNUSABLE_EXTS: videos, HEIC), sorted. Subfolders that cannot be listed
    are appended to `unreadable` as (relative path, reason) when it is given. The folder
    `exclude` (prepare's --out, when it lies inside the images folder) is not walked: its masks
    would come back as images of an identity named after it, more with every re-run.

    Symlinked subfolders are walked (their images listed under the link's path). Each real
    folder is walked once: a link back up the tree (a loop) or a second path to a folder met
    already adds nothing; at each level real subfolders are claimed before links, so a link
    to a sibling leaves the sibling's own paths.
    """
    out = []
    seen = {os.path.realpath(root)} | ({os.path.realpath(exclude)} if exclude else set())

    def onerror(e):
        if unreadable is not None:
            unreadable.append((os.path.relpath(e.filename, root), f"unreadable folder ({e.strerror})"))

    for d, dirs, files in os.walk(root, followlinks=True, onerror=onerror):
        keep = set()
        for x in sorted(dirs, key=lambda x: (os.path.islink(os.path.join(d, x)), x)):  # real ones first
            real = os.path.realpath(os.path.join(d, x))
            if real not in seen:
                seen.add(real)
                keep.add(x)
        dirs[:] = sorted(keep)
        for f in sorted(files):
            if f.lower().endswith(IMAGE_EXTS + tuple(UNUSABLE_EXTS)):
                out.append(os.path.relpath(os.path.join(d, f), root))
    return sorted(out)


def read_celeba_identities(root: str) -> dict[str, str]:
    """identity_CelebA.txt ('000001.jpg 2880' per line) in root or its parent -> {file: id}."""
    for d in (root, os.path.dirname(os.path.abspath(root))):
        p = os.path.join(d, "identity_CelebA.txt")
        if os.path.isfile(p):
            ids = {}
            with open(p, "rb") as f:
                for k, raw in enumerate(f, 1):
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise ValueError(f"{p}:{k}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None
                    parts = line.split()
                    if not parts:
                        continue
                    if len(parts) != 2:
                        raise ValueError(f"{p}:{k}: expected '<file> <identity>', got {line.strip()!r}")
                    ids[parts[0]] = parts[1]
            return ids
    raise FileNotFoundError(f"celeba layout needs identity_CelebA.txt in {root} or its parent")


def identity_of(rel: str, layout: str, celeba_ids: dict | None = None) -> str | None:
    """Identity name of a relative image path under `layout` (None = unknown)."""
    parts = rel.replace(os.sep, "/").split("/")
    if layout == "celeba":  # the file's name; else its stem as a .jpg (CelebA's PNG release, same list)
        ids = celeba_ids or {}
        return ids.get(parts[-1], ids.get(os.path.splitext(parts[-1])[0] + ".jpg"))
    if layout == "bupt":
        return "/".join(parts[:-1]) or None
    if layout == "voxceleb2":
        for p in parts[:-1]:
            if re.fullmatch(r"id\d+", p):
                return p
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    return parts[0] if len(parts) > 1 else None


# ----------------------------------------------------------------------------- one image

_DETECTOR = None
_CONFIG = {}


class OutputError(RuntimeError):
    """An output file (a mask, a record) could not be written for a reason of the output folder's,
    not the image's (a full disk, a quota, a read-only or unwritable folder): the run stops with
    one error naming the file, and the image gets no record, so a re-run prepares it."""


def _write_output(path: str, write, mode: str = "w") -> None:
    """Writes `path` whole (`write(f)`); OutputError naming it for an OSError other than a name too
    long for the file system (that one is the image's: its name is the output's)."""
    try:
        with open_replacing(path, mode) as f:
            write(f)
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise
        raise OutputError(f"{path}: cannot be written ({e.strerror or e}); the images prepared so far are kept: "
                          "make room (or fix the --out folder) and run again to prepare the rest") from None


def _init_worker(predictor_path, max_side):
    global _DETECTOR
    cv2.setNumThreads(1)
    _CONFIG.update(predictor=predictor_path, max_side=max_side)
    _DETECTOR = None


def _detector():
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = detect.Detector(_CONFIG.get("predictor"), max_side=_CONFIG.get("max_side", 1024))
    return _DETECTOR


def process_image(images_root: str, out_dir: str, rel: str, identity: str | None) -> dict:
    """Prepare one image; returns its record (status 'ok' or 'bad' + reason). Never raises
    for a bad file; raises detect.DetectorUnavailable (and writes no record) when the image
    needs dlib and detection cannot run, and OutputError (no record either) when its mask or
    record cannot be written for a reason of the output folder's (a full disk). Writes the mask
    and the per-image record file."""
    path = os.path.join(images_root, rel)
    rec = dict(path=rel, identity=identity)
    try:
        unusable = UNUSABLE_EXTS.get(os.path.splitext(rel)[1].lower())
        if unusable:
            raise images.BadImage(unusable)
        if identity is None:
            raise images.BadImage(NO_IDENTITY)
        for what, text in (("identity", identity), ("file name", rel)):
            if not images.is_utf8(text):  # the dataset stores both as text: the build stopped on it, hours in
                raise images.BadImage(f"its {what} is not valid UTF-8 (e.g. a Latin-1 name from a zip "
                                      "archive): rename it")
        data, st = images.read_bytes(path)
        rec.update(fingerprint(data, st))
        pts = pts_path(path)
        has_pts, pts_error = os.path.isfile(pts), None
        if has_pts:  # fingerprinted before decoding: a record of an undecodable image names it too
            try:
                pts_data, pts_stat = images.read_bytes(pts)
                rec.update(pts_file=fingerprint(pts_data, pts_stat))
            except images.BadImage as e:  # unreadable: reported after the image's own problems
                pts_error = images.BadImage(f"{pts}: {e}")
        img = images.decode_image(data)
        h, w = img.shape[:2]
        if has_pts:
            if pts_error is not None:
                raise pts_error
            lmk, score, source = _pts_landmarks(pts, pts_data, w, h), None, "pts"  # the bytes fingerprinted
        else:
            found = _detector()(img)
            if found is None:
                raise images.BadImage("no face found")
            lmk, score = found
            source = "dlib"
        mask = masks.skin_mask(lmk, h, w)
        mask_rel = os.path.join("masks", rel + ".png")  # the full name: a.jpg and a.png differ
        png = images.encode_png(mask)
        _write_output(os.path.join(out_dir, mask_rel), lambda f: f.write(png), "wb")  # whole, under a name of its own
        rec.update(status="ok", landmarks=np.round(lmk, 3).tolist(), mask=mask_rel, score=score, source=source,
                   width=w, height=h)
    except images.BadImage as e:
        rec.update(status="bad", reason=str(e))
    except (detect.DetectorUnavailable, OutputError):
        raise  # not this file's fault: stop the run, and record nothing that a re-run would skip
    except Exception as e:  # the run never dies on one file
        rec.update(status="bad", reason=f"{type(e).__name__}: {e}")
    rec_path = record_path(out_dir, rel)
    try:
        # a temporary name of its own: with a fixed `<record>.tmp`, two prepare runs on one --out
        # moved each other's files away, and counted good images as bad ("cannot be written")
        _write_output(rec_path, lambda f: json.dump(rec, f))
    except OSError as e:  # e.g. a record name (<image name>.json) too long for the file system: the file is
        # bad, counted and named (the run stopped here, on every re-run), and tried again next run
        return dict(path=rel, identity=identity, status="bad", unsaved=True,
                    reason=f"its record {rec_path} cannot be written ({e.strerror or e})")
    return rec


def _pts_landmarks(pts: str, data: bytes, w: int, h: int) -> np.ndarray:
    """The 68 landmarks [68, 2] of the .pts file `pts` (its bytes `data`) for a w x h image; BadImage
    naming the file when they are unreadable, not 68, not a face's box (`check_landmark_box`), or
    mostly outside the image (another image's file, or another frame's)."""
    try:
        lmk = detect.read_pts(pts, data)
    except ValueError as e:
        raise images.BadImage(str(e)) from None
    if lmk.shape != (68, 2):
        raise images.BadImage(f"{pts}: need 68 points, found {lmk.shape[0]}")
    try:
        check_landmark_box(lmk, pts)
    except ValueError as e:
        raise images.BadImage(str(e)) from None
    x, y = lmk[:, 0], lmk[:, 1]
    outside = int(np.sum((x < -0.5) | (x > w - 0.5) | (y < -0.5) | (y > h - 0.5)))
    if outside > 34:  # most of the face off the image
        raise images.BadImage(f"{pts}: {outside} of 68 landmarks lie outside the {w} x {h} image")
    return lmk


def record_path(out_dir: str, rel: str) -> str:
    return os.path.join(out_dir, "records", rel + ".json")


def fingerprint(data: bytes, st: os.stat_result) -> dict:
    """A record's fields naming the file content prepare read: sha256 (hex) of its bytes, and the
    size and modification time of the file they came from (a re-run's cheap first look)."""
    return dict(sha256=hashlib.sha256(data).hexdigest(), file_size=st.st_size, file_mtime_ns=st.st_mtime_ns)


def pts_path(path: str) -> str:
    """The iBUG .pts file whose landmarks prepare takes for the image `path` when it exists."""
    return os.path.splitext(path)[0] + ".pts"


def record_state(images_root: str, out_dir: str, rel: str) -> str:
    """What a re-run does with rel: 'missing' (no record: prepare it), 'current' (its record
    still describes its file and .pts file: skip it), 'changed' (prepare it again) or 'retry'
    (it was recorded bad before its bytes were read, e.g. unreadable or with no identity in the
    layout, which leave no fingerprint to compare: try it again, in case that was fixed).

    A record with a sha256 is current when the image is the one fingerprinted (`same_file`) and
    its .pts file too: one that appeared, went or changed since (the record's landmarks came from
    it or from dlib) makes it changed. Without a sha256, an ok record (written before
    fingerprints) and one of a file type prepare does not read (UNUSABLE_EXTS) are current. A
    record that cannot be read as JSON is changed."""
    p = record_path(out_dir, rel)
    if not os.path.isfile(p):
        return "missing"
    try:
        with open(p) as f:
            rec = json.load(f)
    except (OSError, ValueError):  # a record cut short or garbled (a crash, a full disk): redo it
        return "changed"
    if not isinstance(rec, dict):
        return "changed"
    if "sha256" not in rec:
        if rec.get("status") == "ok" or os.path.splitext(rel)[1].lower() in UNUSABLE_EXTS:
            return "current"
        return "retry"
    path = os.path.join(images_root, rel)
    if not same_file(path, rec):
        return "changed"
    pts = pts_path(path)
    if not os.path.isfile(pts):
        return "current" if "pts_file" not in rec else "changed"
    return "current" if "pts_file" in rec and same_file(pts, rec["pts_file"]) else "changed"


def same_file(path: str, fp: dict) -> bool:
    """Whether `path` holds the bytes of `fingerprint` fp: a file whose size and modification
    time match fp's is trusted without reading it; otherwise it is hashed again (a folder copied
    with new times keeps its records). An unreadable file is not (redone, which records why)."""
    try:
        st = os.stat(path)
        if (st.st_size, st.st_mtime_ns) == (fp.get("file_size"), fp.get("file_mtime_ns")):
            return True
        data, _ = images.read_bytes(path)
    except (OSError, images.BadImage):
        return False
    return hashlib.sha256(data).hexdigest() == fp["sha256"]


def _task(args):
    return process_image(*args)


# ----------------------------------------------------------------------------- the run

def prepare(images_root: str, out_dir: str, layout: str = "folders", workers: int = 1,
            predictor: str | None = None, max_side: int = 1024, progress: bool = True) -> dict:
    """Prepare a folder (see the module docstring). Returns the summary dict."""
    _check_arguments(images_root, out_dir, layout, predictor, max_side)
    celeba = read_celeba_identities(images_root) if layout == "celeba" else None
    unreadable = []
    rels = list_images(images_root, unreadable, exclude=out_dir)
    if unreadable and unreadable[0][0] == os.curdir:  # the images folder itself
        raise ValueError(f"{images_root}: {unreadable[0][1]}")
    if not any(r.lower().endswith(IMAGE_EXTS) for r in rels):
        videos = sum(UNUSABLE_EXTS.get(os.path.splitext(r)[1].lower(), "").startswith("video") for r in rels)
        raise FileNotFoundError(f"{images_root}: no image files found (looked for {', '.join(IMAGE_EXTS)}, "
                                "any case, in all subfolders)" +
                                (f"; {videos} video file(s): extract their frames first" if videos else ""))
    _claim_output(images_root, out_dir, layout, rels)
    for d, why in unreadable:
        print(f"{images.shown_name(os.path.join(images_root, d))}: {why}: its images are not prepared", file=sys.stderr)
    todo = _to_prepare(images_root, out_dir, rels)
    identities = {r: identity_of(r, layout, celeba) for r in rels}
    tasks = [(images_root, out_dir, r, identities[r]) for r in todo]
    unsaved = []  # records process_image could not write (a file name too long for one): bad, in memory
    from tqdm import tqdm
    bar = tqdm(total=len(tasks), desc="prepare", unit="img", disable=not progress, file=sys.stderr)
    try:
        if workers <= 1 or len(tasks) <= 1:
            _init_worker(predictor, max_side)
            for t in tasks:
                _report(_task(t), bar, unsaved)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers, initializer=_init_worker, initargs=(predictor, max_side)) as pool:
                for rec in pool.imap_unordered(_task, tasks, chunksize=4):
                    _report(rec, bar, unsaved)
    finally:
        bar.close()
    return finalise(images_root, out_dir, layout, rels, identities, skipped=len(rels) - len(todo),
                    unreadable=unreadable, unsaved=unsaved)


def _check_arguments(images_root, out_dir, layout, predictor, max_side) -> None:
    """prepare's arguments, before anything is read or written: one error naming the one it cannot use."""
    if not os.path.isdir(images_root):
        raise FileNotFoundError(f"{images_root}: images folder not found")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    if predictor is not None and not os.path.isfile(predictor):
        raise FileNotFoundError(f"{predictor}: landmark model file not found")
    if int(max_side) < 1:
        raise ValueError(f"max_side={max_side}: must be a positive number of pixels")
    if os.path.realpath(out_dir) == os.path.realpath(images_root):
        raise ValueError(f"{out_dir}: --out is the images folder itself; its masks and records would be read as "
                         "images: use a folder beside it (or one inside it, which is left out)")


def _to_prepare(images_root, out_dir, rels) -> list[str]:
    """The images of `rels` whose record is not current (`record_state`): new ones, changed ones
    (said, and out_dir's index.jsonl removed) and ones recorded bad before they could be read (said)."""
    state = {r: record_state(images_root, out_dir, r) for r in rels}
    todo = [r for r in rels if state[r] != "current"]
    changed = [r for r in todo if state[r] == "changed"]
    if changed:
        print(f"{out_dir}: {len(changed)} image(s) changed since their records "
              f"(e.g. {images.shown_name(changed[0])}): preparing them again", file=sys.stderr)
        # their masks are rewritten in place: an index.jsonl left from before would pair its old
        # landmarks with new masks if this run stopped early; finalise writes it again
        index = os.path.join(out_dir, "index.jsonl")
        if os.path.isfile(index):
            os.remove(index)
    retry = [r for r in todo if state[r] == "retry"]
    if retry:
        print(f"{out_dir}: {len(retry)} image(s) recorded bad before they could be read "
              f"(e.g. {images.shown_name(retry[0])}): trying them again", file=sys.stderr)
    return todo


def _recorded_paths(out_dir) -> list[str]:
    """Relative image paths of the per-image records in out_dir/records."""
    top = os.path.join(out_dir, "records")
    out = []
    for d, _, files in os.walk(top):
        out += [os.path.relpath(os.path.join(d, f), top)[:-len(".json")] for f in files
                if f.endswith(".json") and not is_temporary(f)]  # a killed write's leftover
    return out


def _claim_output(images_root, out_dir, layout, rels=()):
    """Create out_dir and its meta.json, or check that an existing one was made from the same
    images folder and layout: a re-run reuses the per-image records by path, so another folder
    or layout would silently keep their old identities and landmarks. A folder that moved (its
    recorded path is gone, and every recorded image is under the new one, `rels`) is taken as
    the same; finalise records its new path."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir}: --out is a file, not a folder")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "meta.json")
    root = os.path.abspath(images_root)
    if os.path.isfile(path):
        meta = read_meta(path, "it names the images folder and layout this output was prepared from: restore it, "
                               "or use a new --out")
        old_root, old_layout = meta.get("images_root"), meta.get("layout")
        if old_layout != layout:
            raise ValueError(f"{out_dir}: prepared with layout {old_layout!r}, now --layout {layout}; "
                             "its records keep the old identities: use a new --out")
        if old_root is None or os.path.realpath(old_root) != os.path.realpath(root):
            if old_root is not None and not os.path.exists(old_root):  # moved?
                missing = sorted(set(_recorded_paths(out_dir)) - set(rels))
                if not missing:
                    print(f"{out_dir}: prepared from {old_root}, which is gone; taking --images {root} as that "
                          "folder moved", file=sys.stderr)
                    return
                raise ValueError(f"{out_dir}: prepared from {old_root} (gone), now --images {root}, which lacks "
                                 f"{len(missing)} of its images (e.g. {missing[0]}): use a new --out")
            raise ValueError(f"{out_dir}: prepared from {old_root}, now --images {root}; its records "
                             "belong to those images: use a new --out")
        return
    _write_meta(out_dir, root, layout)


def read_meta(path: str, advice: str) -> dict:
    """A prepared folder's meta.json (images_root, layout) as a dict; ValueError naming it, then
    `advice`, when it is not a JSON object (cut short by a crash, overwritten)."""
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot be read as JSON ({e}); {advice}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object with images_root and layout, found {type(meta).__name__}; "
                         f"{advice}")
    return meta


def _write_meta(out_dir, root, layout):
    with open_replacing(os.path.join(out_dir, "meta.json")) as f:
        json.dump(dict(images_root=root, layout=layout), f, indent=1)


def _report(rec, bar, unsaved):
    """Prints a bad record; one process_image could not write ('unsaved') goes to `unsaved`."""
    if rec["status"] != "ok":
        bar.write(f"skip {images.shown_name(rec['path'])}: {rec['reason']}")
    if rec.pop("unsaved", False):
        unsaved.append(rec)
    bar.update(1)


def iter_records(out_dir: str, rels):
    """The per-image records (dicts) of `rels` that have a record file, one at a time."""
    for r in rels:
        p = record_path(out_dir, r)
        if os.path.isfile(p):
            with open(p) as f:
                yield json.load(f)


def finalise(images_root, out_dir, layout, rels, identities, skipped=0, unreadable=(), unsaved=()) -> dict:
    """Write index.jsonl, summary.json and meta.json from the per-image records (each whole or
    not at all); `unreadable`: (folder, reason) of subfolders that could not be listed.
    `identities` {rel: identity or None}: the layout's identities now, which replace the
    records' (celeba's identity_CelebA.txt may have been corrected since; a file it no longer
    lists is bad). `unsaved`: bad records that could not be written as files.

    One record at a time: each good one's index line goes to a scratch file as it is read, and
    only its (identity, path, place in that file) stays in memory, a bad one's (path, reason);
    index.jsonl is then the scratch lines in (identity, path) order. Holding the records (68
    landmarks each, as lists) took 13.5 KB an image, 42 GB for VGGFace2's 3.1M."""
    good, bad = [], []  # (identity, path, offset, length) of the scratch line; (path, reason)
    sources = collections.Counter()
    with tempfile.TemporaryFile(dir=out_dir) as scratch:
        for r in itertools.chain(iter_records(out_dir, rels), unsaved):
            now = identities.get(r["path"])
            if r["status"] == "ok" and now is None:
                r.update(status="bad", reason=NO_IDENTITY)
            if r["status"] != "ok":
                bad.append((r["path"], r["reason"]))
                continue
            r["identity"] = now
            line = (json.dumps({k: v for k, v in r.items() if k != "status"}) + "\n").encode()
            good.append((now, r["path"], scratch.tell(), len(line)))
            scratch.write(line)
            sources[r["source"]] += 1
        good.sort()
        bad.sort()
        with open_replacing(os.path.join(out_dir, "index.jsonl"), "wb") as f:
            for _, _, offset, length in good:
                scratch.seek(offset)
                f.write(scratch.read(length))
    reasons = collections.Counter(reason for _, reason in bad)
    summary = dict(images=len(rels), ok=len(good), bad=len(bad), already_done=skipped,
                   identities=len({identity for identity, *_ in good}), sources=dict(sources),
                   reasons=dict(reasons), bad_files=[dict(path=p, reason=reason) for p, reason in bad],
                   unreadable_folders=[dict(path=d, reason=why) for d, why in unreadable])
    with open_replacing(os.path.join(out_dir, "summary.json")) as f:
        json.dump(summary, f, indent=1)
    _write_meta(out_dir, os.path.abspath(images_root), layout)
    return summary


def format_summary(summary: dict) -> str:
    """A small text table of the summary."""
    rows = [("images", summary["images"]), ("ok", summary["ok"]), ("bad", summary["bad"]),
            ("already done", summary["already_done"]), ("identities", summary["identities"])]
    rows += [(f"  {k}", v) for k, v in summary["sources"].items()]
    lines = [f"{k:<40} {v:>8}" for k, v in rows]
    if summary.get("unreadable_folders"):
        lines.append(f"{'unreadable folders (not prepared)':<40} {len(summary['unreadable_folders']):>8}")
    if summary["reasons"]:
        lines.append("bad files by reason:")
        lines += [f"  {k[:60]:<60} {v:>6}" for k, v in sorted(summary["reasons"].items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m jaxdeca.data.prepare", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--images", required=True, help="folder of face images")
    p.add_argument("--out", required=True, help="output folder (records, masks, index.jsonl)")
    p.add_argument("--layout", default="folders", choices=LAYOUTS)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    p.add_argument("--predictor", default=None, help="shape_predictor_68_face_landmarks.dat path")
    p.add_argument("--max-side", type=positive_int, default=1024, help="downscale larger images for detection")
    a = p.parse_args(argv)
    try:
        summary = prepare(a.images, a.out, a.layout, a.workers, a.predictor, a.max_side)
    except (OSError, ValueError, detect.DetectorUnavailable, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
