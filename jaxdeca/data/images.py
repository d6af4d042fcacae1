"""Reading real-world image files robustly: one clear reason per file that cannot be used.

In-the-wild face folders hold empty files, HTML pages saved as .jpg, truncated downloads,
grayscale, RGBA, palette and 16-bit images. `read_image` turns every usable file into an
[H, W, 3] uint8 RGB array and raises `BadImage(reason)` for the rest, so a preparation run can
count and list them instead of dying.
"""
import os

import cv2
import numpy as np

MIN_SIDE = 64


class BadImage(ValueError):
    """A file that cannot be used as a face image; str() is the reason."""


def _jpeg_truncated(data: bytes) -> bool:
    """JPEG files end with the EOI marker FF D9 (trailing padding allowed)."""
    return data[:2] == b"\xff\xd8" and data.rstrip(b"\x00\r\n \t")[-2:] != b"\xff\xd9"


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Encoded bytes -> [H, W, 3] uint8 RGB. Converts grayscale -> 3 channels, RGBA -> RGB
    (alpha dropped), 16-bit -> 8-bit (>> 8), float -> 8-bit. Raises BadImage naming `name`."""
    if len(data) == 0:
        raise BadImage("empty file")
    if _jpeg_truncated(data):
        raise BadImage("truncated JPEG (no end-of-image marker)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        head = data[:16]
        kind = "text, not an image" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "not a decodable image"
        raise BadImage(f"{kind} (OpenCV cannot decode it)")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * 255.0, 0, 255).astype(np.uint8)
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
    if min(img.shape[:2]) < MIN_SIDE:
        raise BadImage(f"too small ({img.shape[1]}x{img.shape[0]} px, need >= {MIN_SIDE})")
    return np.ascontiguousarray(img)


def read_image(path: str) -> np.ndarray:
    """File -> [H, W, 3] uint8 RGB, or BadImage with the reason."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadImage(f"unreadable ({e.strerror})") from None
    return decode_image(data, os.path.basename(path))


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
