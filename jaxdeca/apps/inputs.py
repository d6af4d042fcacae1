"""Reading the apps' inputs: an image, a folder of images, or a video.

`iter_frames(path)` yields `Frame(name, image, source)` for every readable image or video frame
(RGB uint8) and `Skipped(name, reason)` for every file that is not usable, so a folder with a
broken image or an undecodable video is still processed and the caller reports each problem
once (`report`). Every reason starts with the file's path. Raises `InputError` only when the
input as a whole cannot be used (missing path, empty folder, a lone video or image that cannot
be decoded).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from collections.abc import Iterator

import cv2
import numpy as np
from PIL import Image, ImageSequence

from jaxdeca import atomic_file
from jaxdeca.data import images

IMAGE_EXTS, VIDEO_EXTS = images.IMAGE_EXTS, images.VIDEO_EXTS


class InputError(ValueError):
    """The input path as a whole cannot be used."""


@dataclasses.dataclass(frozen=True)
class Frame:
    # file stem, or "<video stem>_<frame index>" (made unique in a folder: unique_names; a name
    # too long for its output files shortened: output_name)
    name: str
    image: np.ndarray  # [H, W, 3] uint8 RGB
    source: str = ""  # the file path, or "<video path> frame <index>"
    key: str = ""  # the name before output_name shortened it ("": not shortened); --landmarks use it


@dataclasses.dataclass(frozen=True)
class Skipped:
    name: str
    reason: str  # "<path>: <what is wrong>"


def no_face(frame: Frame) -> Skipped:
    """The Skipped record of a frame in which no face was found."""
    return Skipped(frame.name, f"{frame.source or frame.name}: no face detected")


def report(app: str, n_written: int, skipped, out_dir: str, what: str = "face(s)") -> None:
    """One summary line on stdout and one line per skipped input on stderr."""
    print(f"{app}: {n_written} {what} written to {out_dir}, {len(skipped)} skipped")
    report_skipped(app, skipped)


def report_skipped(app: str, skipped) -> None:
    """One line on stderr per skipped input (Skipped, or (name, reason))."""
    for s in skipped:
        reason = s.reason if isinstance(s, Skipped) else s[1]
        print(f"{app}: skipped {reason}", file=sys.stderr)


def read_image(path: str) -> np.ndarray:
    """Reads one image as [H, W, 3] uint8 RGB through training's decoder (`images.read_image`:
    grey, alpha, 16-bit and float images converted, a JPEG turned upright by its EXIF
    orientation, a truncated JPEG refused), at any size; raises InputError naming the file and
    the problem."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: {_not_a_file(path)}")
    try:
        return images.read_image(path, min_side=1)
    except images.BadImage as e:
        raise InputError(f"{path}: not a readable image: {e}") from None


def _not_a_file(path: str) -> str:
    """Why `path`, which is not a regular file, cannot be read as one."""
    if os.path.isdir(path):
        return "a folder, not an image file"
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as e:  # ELOOP: a link cycle; ENOENT: its target is gone
            return f"a symbolic link that cannot be followed ({e.strerror})"
    if os.path.exists(path):
        return "not a regular file"
    return "no such file"


def is_video(path: str) -> bool:
    """A video container (VIDEO_EXTS, an animated GIF among them) or an animated WebP."""
    return path.lower().endswith(VIDEO_EXTS) or _animated_webp(path)


def _animated_webp(path: str) -> bool:
    """Whether `path` is an animated WebP (read as a video; before, as its first frame alone, so
    an animated WebP driver gave animate one still frame). Read from the header, decoding
    nothing: RIFF....WEBP with a VP8X chunk whose flags have the animation bit (0x02). (Pillow's
    open refused a still WebP above its pixel limit with a DecompressionBombError, which ended
    the run; OpenCV reads those.)"""
    if not path.lower().endswith(".webp") or not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(21)
    except OSError:  # read_image names why
        return False
    return len(head) == 21 and head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and bool(head[20] & 0x02)


def _cv2_name(path: str):
    """`path` as OpenCV's video functions take it: the str, or its file-system bytes when it
    does not encode as UTF-8 (a Latin-1 name from a zip, decoded by Python with surrogate
    escapes), on which cv2.VideoCapture crashed the process (SIGSEGV)."""
    return path if images.is_utf8(path) else os.fsencode(path)


def list_images(folder: str, videos: bool = False, exclude=()) -> list[str]:
    """Image files (and with videos=True video files) in `folder` (not recursive), sorted by name;
    HEIC/HEIF photos too, which iter_frames names as skipped (and the temporary files a killed
    write leaves, `atomic_file.is_temporary`). Left out: the files `exclude` names (an app's own
    output written into its input folder: animate's video, which a re-run read as more driver
    frames). A folder that cannot be listed is an InputError naming it."""
    exts = IMAGE_EXTS + images.HEIC_EXTS + (VIDEO_EXTS if videos else ())
    try:
        listed = os.listdir(folder)
    except OSError as e:
        raise InputError(f"{folder}: cannot list the folder ({e.strerror})") from None
    excluded = {os.path.realpath(p) for p in exclude}
    names = sorted(f for f in listed if f.lower().endswith(exts)
                   and os.path.realpath(os.path.join(folder, f)) not in excluded)
    return [os.path.join(folder, f) for f in names]


def iter_video(path: str, every: int = 1) -> Iterator[Frame | Skipped]:
    """Frames of a video (or an animated WebP) as RGB uint8; raises InputError when nothing can
    be decoded.

    A frame whose read fails does not end the video while the file declares more frames:
    reading goes on, and when a later frame decodes, each one before it that did not is one
    Skipped ("<path> frame <k>: cannot be decoded"). An MP4 with 20 kB zeroed in its middle
    lost the last 148 of its 300 frames, silently, though 100 of them decode; animate keeps the
    driver's timing by repeating a frame for each one skipped. Limits: FFmpeg reports such
    failures for MP4/MOV; in MKV, WebM, AVI, WMV, FLV and MPEG it drops damaged frames without a
    failed read, so the frames after them are numbered from where they land in the stream (and
    an animation is shorter than its driver). Frames missing at the end are not reported: a
    truncated file cannot be told from a frame count the container only estimates (OpenCV
    declares 80 frames for a 2-frame WMV)."""
    if _animated_webp(path):
        yield from _iter_webp(path, every)
        return
    # FFmpeg's own log lines ("moov atom not found") would duplicate our one message per file;
    # quiet unless the user asked for a level (read when OpenCV first opens a video).
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cap = cv2.VideoCapture(_cv2_name(path))
    stem = _frame_stem(path)
    try:
        if not cap.isOpened():
            raise InputError(f"{path}: cannot open video (unsupported codec or corrupt file)")
        declared = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        declared = int(declared) if np.isfinite(declared) and declared > 0 else 0
        index = n_read = 0
        bad = []  # frames that failed to decode since the last good one
        while True:
            ok, frame = cap.read()
            if not ok:
                if index + len(bad) + 1 >= declared:  # the declared end (or none declared): done
                    break
                bad.append(index + len(bad))
                continue
            yield from (Skipped(f"{stem}_{k:05d}", f"{path} frame {k}: cannot be decoded")
                        for k in bad if k % every == 0)
            index += len(bad)
            bad = []
            if index % every == 0:
                n_read += 1
                yield _video_frame(path, stem, index, images.to_rgb_uint8(frame))
            index += 1
        if n_read == 0:
            raise InputError(f"{path}: video has no decodable frames")
    finally:
        cap.release()


def _iter_webp(path: str, every: int) -> Iterator[Frame]:
    """The frames of an animated WebP, decoded one at a time (Pillow; OpenCV's FFmpeg does not
    read it). A frame that cannot be decoded ends it, as in a video."""
    stem = _frame_stem(path)
    n_read, error = 0, None
    try:
        with Image.open(path) as im:
            for index, frame in enumerate(ImageSequence.Iterator(im)):
                if index % every == 0:
                    n_read += 1
                    yield _video_frame(path, stem, index, np.asarray(frame.convert("RGB")))
    except (OSError, ValueError, EOFError, Image.DecompressionBombError) as e:  # the frames before it are kept
        error = e
    if n_read == 0:
        raise InputError(f"{path}: animated WebP has no decodable frames ({error})")


def _webp_declared(path: str, prop: int) -> float:
    """cv2.CAP_PROP_FRAME_COUNT or CAP_PROP_FPS (frames over the frame durations' sum) of an
    animated WebP; 0 when it declares none."""
    with Image.open(path) as im:
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return float(im.n_frames)
        ms = []
        for f in ImageSequence.Iterator(im):
            f.load()  # Pillow sets a frame's duration when it decodes it
            ms.append(f.info.get("duration") or 0)
    return 1000.0 * len(ms) / sum(ms) if sum(ms) > 0 else 0.0


def video_fps(path: str) -> float | None:
    """The frame rate a video file declares, or None for anything else (an image, a folder, a
    video that cannot be opened or declares none)."""
    return _declared(path, cv2.CAP_PROP_FPS)


def video_frame_count(path: str) -> int | None:
    """The number of frames a video file declares, or None for anything else (as video_fps)."""
    n = _declared(path, cv2.CAP_PROP_FRAME_COUNT)
    return None if n is None else int(n)


def _declared(path: str, prop: int) -> float | None:
    """A positive, finite property `prop` (cv2.CAP_PROP_*) of the video file `path`, else None."""
    if not (os.path.isfile(path) and is_video(path)):
        return None
    if _animated_webp(path):
        try:
            value = _webp_declared(path, prop)
        except (OSError, ValueError, EOFError, Image.DecompressionBombError):
            value = 0.0
        return float(value) if value > 0 else None
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cap = cv2.VideoCapture(_cv2_name(path))
    try:
        value = cap.get(prop) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return float(value) if np.isfinite(value) and value > 0 else None


def iter_frames(path: str, video_every: int = 1, exclude=()) -> Iterator[Frame | Skipped]:
    """Frames of an image file, a folder of images or a video file (see module doc). In a
    folder every item's name is unique (`unique_names`), and files `exclude` names are left out
    (`list_images`): the outputs are written per name. Names too long for the output files
    built from them are shortened (`output_name`)."""
    if not os.path.exists(path):
        raise InputError(f"{path}: {_not_a_file(path) if os.path.islink(path) else 'no such file or directory'}")
    if os.path.isdir(path):
        files = list_images(path, videos=True, exclude=exclude)
        if not files:
            raise InputError(f"{path}: folder contains no images or videos ({', '.join(IMAGE_EXTS + VIDEO_EXTS)})")
        taken: set[str] = set()
        items = (item for f in files for item in unique_names(_file_items(f, video_every), _ext(f), taken))
    elif is_video(path):
        items = iter_video(path, every=video_every)
    else:
        items = iter([Frame(os.path.splitext(os.path.basename(path))[0], read_image(path), path)])
    for item in items:
        name = output_name(item.name)
        if name != item.name:
            item = dataclasses.replace(item, name=name, **({"key": item.key or item.name} if isinstance(item, Frame)
                                                           else {}))
        yield item


# bytes of a name the outputs keep whole: a file system's 255-byte limit less the longest suffix
# an app adds (`<name>_shape_detail_images.png`; temporary names are shortened by atomic_file)
NAME_BYTES = 255 - len("_shape_detail_images.png")


def output_name(name: str, limit: int = NAME_BYTES) -> str:
    """`name` if its UTF-8 form has at most `limit` bytes, else its first characters within that
    (less 9) then '_' and 8 hex digits of its sha256, so that different long names stay
    different. A 248-byte file name made '<name>_normals.png' longer than the file system's
    255-byte limit: the write failed and stopped the whole folder."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return name
    head = raw[:limit - 9].decode("utf-8", "ignore")  # no character cut in two
    return f"{head}_{hashlib.sha256(raw).hexdigest()[:8]}"


def _frame_stem(path: str) -> str:
    """A video's stem for its frames' names `<stem>_<index>`, shortened (`output_name`) so that
    the index is kept."""
    return output_name(os.path.splitext(os.path.basename(path))[0], NAME_BYTES - 8)


def _video_frame(path: str, stem: str, index: int, image: np.ndarray) -> Frame:
    """Frame `index` of the video `path`, named `<stem>_<index>` (stem: `_frame_stem`); its key is
    the name with the whole stem when that was shortened."""
    full = os.path.splitext(os.path.basename(path))[0]
    return Frame(f"{stem}_{index:05d}", image, f"{path} frame {index}", f"{full}_{index:05d}" if full != stem else "")


def _file_items(path: str, video_every: int) -> Iterator[Frame | Skipped]:
    """The frames of one file of a folder, or one Skipped when it cannot be read."""
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        if path.lower().endswith(images.HEIC_EXTS):
            raise InputError(f"{path}: {images.HEIC_REASON}")
        if atomic_file.is_temporary(os.path.basename(path)):  # an app's output left by a killed write
            raise InputError(f"{path}: named like the temporary file of an interrupted write (.<name>.tmp-<8 hex>); "
                             "not read: rename it to read it, or remove it")
        if is_video(path):
            yield from iter_video(path, every=video_every)
        else:
            yield Frame(name, read_image(path), path)
    except InputError as e:
        yield Skipped(name, str(e))


def _ext(path: str) -> str:
    return os.path.splitext(path)[1].lstrip(".").lower()


def unique_names(items, ext: str, taken: set) -> Iterator[Frame | Skipped]:
    """items (Frame or Skipped) of one file with ext, renamed where an earlier item of the folder
    has the name: face.jpg then face.png -> 'face', 'face_png'; clip.mp4's frame 0 then
    clip_00000.png -> 'clip_00000', 'clip_00000_png' (then '<name>_<ext>_2', ...). Names are
    added to `taken`. A folder without such collisions keeps the file and frame names."""
    for item in items:
        name = item.name
        if name in taken:
            base = name = f"{item.name}_{ext}"
            k = 2
            while name in taken:
                name, k = f"{base}_{k}", k + 1
        taken.add(name)
        yield item if name == item.name else dataclasses.replace(item, name=name)
