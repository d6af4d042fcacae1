"""Pictures for the apps: landmark drawing, labelled tiles and grids. NumPy in, NumPy out."""
from __future__ import annotations

import cv2
import numpy as np

from jaxdeca.data import crop as crop_lib


def to_uint8(image) -> np.ndarray:
    """[H, W, 3] float in [0, 1] (or uint8) -> uint8; values outside [0, 1] are clipped, NaN is 0."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return (np.clip(np.nan_to_num(image, nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def draw_landmarks(image, points, color=(255, 60, 60), radius: int = 2) -> np.ndarray:
    """Dots at points [K, >=2] (pixels, x right y down) on a copy of image [H, W, 3]. Points
    that are not finite or whose dot lies wholly outside the image are left out."""
    out = to_uint8(image).copy()
    h, w = out.shape[:2]
    for x, y in np.asarray(points)[:, :2]:
        if -radius - 1 <= x <= w + radius and -radius - 1 <= y <= h + radius:  # False for NaN
            cv2.circle(out, (int(round(x)), int(round(y))), radius, color, -1, lineType=cv2.LINE_AA)
    return out


def label(image, text: str) -> np.ndarray:
    """The tile with `text` written in its top-left corner."""
    out = to_uint8(image).copy()
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
    return out


def grid(tiles, cols: int) -> np.ndarray:
    """Equal-size tiles [H, W, 3] in rows of `cols` -> one uint8 image (missing tiles black)."""
    tiles = [to_uint8(t) for t in tiles]
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    out = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    return out


def image_to_pixels(points, size: int, convention: str = "jaxdeca") -> np.ndarray:
    """[-1, 1] image space (y down) [..., >=2] -> pixels [..., 2] with pixel k's centre at k
    (OpenCV drawing), the inverse of `jaxdeca.data.crop.normalise_points` (convention 'deca':
    DECA's released model's landmarks, (p + 1) * size / 2)."""
    return crop_lib.denormalise_points(np.asarray(points)[..., :2], size, convention)


def overlay(image, render, mask, alpha: float = 0.7) -> np.ndarray:
    """render [H, W, 3] blended over image [H, W, 3] where mask [H, W] (0..1) covers it -> uint8."""
    a = np.clip(np.asarray(mask, np.float32), 0, 1)[..., None] * alpha
    out = to_uint8(image).astype(np.float32) * (1 - a) + to_uint8(render).astype(np.float32) * a
    return (out + 0.5).astype(np.uint8)
