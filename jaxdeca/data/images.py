"""Reading real-world image files robustly: one clear reason per file that cannot be used.

In-the-wild face folders hold empty files, HTML pages saved as .jpg, truncated downloads,
grayscale, RGBA, palette and 16-bit images. `read_image` turns every usable file into an
[H, W, 3] uint8 RGB array and raises `BadImage(reason)` for the rest, so a preparation run can
count and list them instead of dying.
"""
import os
import re

import cv2
import numpy as np

MIN_SIDE = 64

# file types by extension (lower case), shared by prepare and the apps
IMAGE_EXTS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".ppm", ".pgm", ".pbm", ".pnm", ".bmp", ".webp", ".tif",
              ".tiff", ".jp2", ".avif")
# the containers OpenCV's FFmpeg backend reads (opencv-python-headless ships FFmpeg); an animated
# GIF among them (read as one image it was its first frame alone; teaser and animate write GIFs)
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts",
              ".mts", ".m2ts", ".ogv", ".gif")
HEIC_EXTS = (".heic", ".heif")  # phone photos OpenCV cannot decode: listed, to be named as skipped
HEIC_REASON = "HEIC/HEIF image (OpenCV cannot read it): convert it to JPEG first"


def is_utf8(name: str) -> bool:
    """Whether a file name (decoded by Python from the file system, undecodable bytes as
    surrogate escapes, e.g. a Latin-1 name from a zip) is valid UTF-8."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def shown_name(name: str) -> str:
    """A name as printed: bytes that are not UTF-8 as \\xNN escapes (printing the surrogate
    escapes Python decodes them to raised UnicodeEncodeError on a UTF-8 stdout)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class BadImage(ValueError):
    """A file that cannot be used as a face image; str() is the reason."""


# a marker: FF then anything but a stuffed zero, a restart marker (they sit inside scan data) or
# another FF (fill bytes before a marker)
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg_truncated(data: bytes) -> bool:
    """Whether a JPEG ends before its end-of-image marker (FF D9).

    Walks the file's segments from the start-of-image marker (header segments by their length,
    scan data up to the next marker) until the end-of-image marker. Bytes after it (phone
    trailers, the video of a motion photo) do not count. False for data that is not a JPEG or
    whose segments cannot be followed (OpenCV then judges it)."""
    if data[:2] != b"\xff\xd8":
        return False
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            return False
        if i + 1 >= n:
            return True
        m = data[i + 1]
        if m == 0xD9:
            return False
        if m == 0xFF:  # fill byte
            i += 1
        elif 0xD0 <= m <= 0xD7 or m == 0x01:  # markers without a length
            i += 2
        else:
            if i + 4 > n:
                return True
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
            if m == 0xDA:  # start of scan: entropy-coded data runs to the next marker
                nxt = _MARKER.search(data, min(i, n))
                if nxt is None:
                    return True
                i = nxt.start()
    return True


def _unscaled_pnm_maxval(buf: np.ndarray) -> int | None:
    """The largest sample value a greymap/pixmap header declares when OpenCV returns its levels
    unscaled and they are not 8- or 16-bit full range, else None: binary ones (P5, P6) of any
    maxval but 255 and 65535, and ASCII ones (P2, P3) above 255 (OpenCV scales those below to
    0..255 itself); None for other data (a bitmap, P1/P4, has none). buf: the file's bytes."""
    head = buf[:512].tobytes()
    if len(head) < 2 or head[:1] != b"P" or head[1:2] not in b"2356":
        return None
    fields = re.sub(rb"#[^\n\r]*", b" ", head[2:]).split()  # width, height, maxval, pixels...
    maxval = int(fields[2]) if len(fields) >= 3 and fields[2].isdigit() else None
    if not maxval or maxval in (255, 65535) or (head[1:2] in b"23" and maxval < 256):
        return None
    return maxval


def _pillow_bgr(buf: np.ndarray, alpha: str) -> np.ndarray | None:
    """Pillow's decode of `buf` turned upright by its orientation, as 8-bit BGR, when it has
    the mode `alpha` names ("RGB" takes any), else None; None also when Pillow cannot decode it."""
    import io

    from PIL import Image, ImageOps
    try:
        with Image.open(io.BytesIO(buf.tobytes())) as im:
            if alpha != "RGB" and im.mode != alpha:
                return None
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))[..., ::-1].copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def imdecode(data) -> np.ndarray | None:
    """cv2.imdecode keeping bit depth, channels and alpha; a JPEG is turned upright by its EXIF
    orientation, as image viewers and phones show it (8-bit BGR; JPEGs have no alpha).
    Where OpenCV's pixels are not the file's, another decode is taken:
    - AVIF: Pillow, upright by its rotation box, as 8-bit BGR. OpenCV gave a 10- or 12-bit
      AVIF's levels (0..1023, 0..4095) as uint16, read as x / 65535: a nearly black photo.
    - a PNM whose maxval is not 255 or 65535: its levels / maxval as float32 (OpenCV returns the
      raw levels of binary ones, and of ASCII ones above 255; a 12-bit PGM came out nearly black).
    - an 8-bit RGBA TIFF: Pillow's stored colours as BGR (OpenCV's libtiff path multiplies the
      colours by the alpha, so transparent pixels came out black; a PNG keeps them).
    data: bytes or a uint8 array. Returns None when the file cannot be decoded."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else np.asarray(data, np.uint8)
    head = buf[:12].tobytes()
    if head[:2] == b"\xff\xd8":
        return cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        img = _pillow_bgr(buf, "RGB")
        return img if img is not None else cv2.imdecode(buf, cv2.IMREAD_COLOR)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    maxval = _unscaled_pnm_maxval(buf)
    if maxval and img.dtype in (np.uint8, np.uint16):
        return img.astype(np.float32) * np.float32(1.0 / maxval)
    if head[:4] in (b"II*\x00", b"MM\x00*") and img.ndim == 3 and img.shape[2] == 4 and img.dtype == np.uint8:
        stored = _pillow_bgr(buf, "RGBA")
        return stored if stored is not None else img
    return img


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """An OpenCV-decoded image (`imdecode`, a video frame: grey [H, W] or [H, W, 1], BGR, BGRA;
    uint8, uint16 or float in [0, 1]) -> [H, W, 3] uint8 RGB. 16-bit -> 8-bit is x / 257 rounded,
    float x * 255 rounded (NaN as 0); alpha is dropped. BadImage for another pixel type or
    channel count."""
    if img.dtype == np.uint16:  # intensity x / 65535 (skimage's img_as_float) to the nearest 8-bit level,
        # with no float copy of the image ((img / 257).round() made two float64 ones: 5.6 GB at
        # 12000 x 9000); equal to that rounding for all 65536 values
        img = cv2.convertScaleAbs(img, alpha=1.0 / 257.0)  # [H, W, 1] comes back [H, W]
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(np.nan_to_num(img) * 255.0, 0, 255).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        raise BadImage(f"unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 1:
        img = cv2.cvtColor(img[..., 0], cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise BadImage(f"unsupported channel count {img.shape[2]}")
    return np.ascontiguousarray(img)


def decode_image(data: bytes, min_side: int = MIN_SIDE) -> np.ndarray:
    """Encoded bytes -> [H, W, 3] uint8 RGB: the one image decoder of training data and the apps.
    Converts grayscale -> 3 channels, RGBA -> RGB (alpha dropped), 16-bit -> 8-bit (x / 257
    rounded), float -> 8-bit (`to_rgb_uint8`); JPEGs are turned upright by their EXIF orientation
    (`imdecode`). Raises BadImage with the reason (callers add the file): empty, a truncated
    JPEG, not decodable, or a side below min_side pixels (training's MIN_SIDE; the apps pass 1)."""
    if len(data) == 0:
        raise BadImage("empty file")
    if _jpeg_truncated(data):
        raise BadImage("truncated JPEG (no end-of-image marker)")
    img = imdecode(data)
    if img is None:
        head = data[:16]
        kind = "text, not an image" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "not a decodable image"
        raise BadImage(f"{kind} (OpenCV cannot decode it)")
    img = to_rgb_uint8(img)
    if min(img.shape[:2]) < min_side:
        raise BadImage(f"too small ({img.shape[1]}x{img.shape[0]} px, need >= {min_side})")
    return img


def read_bytes(path: str) -> tuple[bytes, os.stat_result]:
    """File -> (its bytes, its stat taken before reading them: a change while reading leaves a
    newer modification time), or BadImage("unreadable (...)")."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return f.read(), st
    except OSError as e:
        raise BadImage(f"unreadable ({e.strerror})") from None


def read_image(path: str, min_side: int = MIN_SIDE) -> np.ndarray:
    """File -> [H, W, 3] uint8 RGB (`decode_image`), or BadImage with the reason."""
    return decode_image(read_bytes(path)[0], min_side)


def encode_png(image: np.ndarray) -> bytes:
    """[H, W] or [H, W, 3] uint8 (RGB) -> PNG bytes."""
    img = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """[H, W, 3] uint8 RGB -> JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_mask(data: bytes) -> np.ndarray:
    """PNG bytes -> [H, W] uint8 mask."""
    m = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise BadImage("mask is not a decodable PNG")
    return m
