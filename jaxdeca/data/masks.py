"""Skin masks from 68 iBUG landmarks (DECA's photometric loss is taken only on skin).

The mask is the convex hull of the jaw line (0..16) and a forehead band (the brows 17..26
lifted along the face's up direction by `forehead` x the nose-bridge-to-chin distance), minus
the two eyes (36..41, 42..47, slightly dilated) and the inner mouth (60..67). It is a cheap,
deterministic stand-in for a face parser; hair and occluders over the hull stay in.
"""
import cv2
import numpy as np

JAW = np.arange(0, 17)
BROWS = np.arange(17, 27)
LEFT_EYE = np.arange(36, 42)
RIGHT_EYE = np.arange(42, 48)
INNER_MOUTH = np.arange(60, 68)


def forehead_points(landmarks, forehead: float = 0.45):
    """Brow points [10, 2] lifted along the chin -> nose-bridge direction."""
    lmk = np.asarray(landmarks, np.float64)
    up = lmk[27] - lmk[8]
    length = np.linalg.norm(up)
    if length < 1e-6:
        return lmk[BROWS]
    return lmk[BROWS] + up / length * forehead * length


def _dilate(poly, factor):
    c = poly.mean(0, keepdims=True)
    return c + (poly - c) * factor


def skin_mask(landmarks, height: int, width: int, forehead: float = 0.45, eye_dilate: float = 1.3):
    """landmarks [68, 2] pixels -> [height, width] uint8 mask (255 = skin)."""
    lmk = np.asarray(landmarks, np.float64)
    if lmk.shape != (68, 2):
        raise ValueError(f"skin_mask needs landmarks [68, 2], got {lmk.shape}")
    if not np.all(np.isfinite(lmk)):  # cast to int32 they would draw somewhere, with a warning only
        raise ValueError("skin_mask needs finite landmarks, got NaN or inf")
    mask = np.zeros((height, width), np.uint8)
    outline = np.concatenate([lmk[JAW], forehead_points(lmk, forehead)], 0)
    hull = cv2.convexHull(np.round(outline * 16).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_8, shift=4)
    holes = [_dilate(lmk[LEFT_EYE], eye_dilate), _dilate(lmk[RIGHT_EYE], eye_dilate), lmk[INNER_MOUTH]]
    for poly in holes:
        cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 0, lineType=cv2.LINE_8, shift=4)
    return mask
