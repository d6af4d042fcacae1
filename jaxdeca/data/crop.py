"""DECA's square face crops as 3x3 similarity matrices, and the warps that apply them.

DECA (decalib/datasets/vggface.py and datasets.py) crops a square around the face, maps three
of its corners onto the output corners (0, 0), (0, S-1), (S-1, 0) with skimage's
`estimate_transform('similarity', ...)`, warps the image with it, maps the landmarks with it
and normalises them as `lmk / S * 2 - 1`. Pixel coordinates here follow that convention
(OpenCV / skimage / dlib / iBUG: the centre of pixel column j is x = j).

    train:  centre of the landmark box, size = int((w + h) / 2 * U[1.4, 1.8])   (trans_scale 0)
    test:   landmark box ('kpt'): size = int((w + h) / 2 * 1.1 * 1.25)
            detector box ('bbox'): size = int((w + h) / 2 * 1.25), centre moved down 0.12 (w + h) / 2

All matrices are [3, 3] float64 mapping original pixels to crop pixels: crop = T @ [x, y, 1].
"""
import cv2
import numpy as np

TRAIN_SCALE = (1.4, 1.8)
TEST_SCALE = 1.25


def _landmarks(landmarks):
    """landmarks as float64 [N, >=2], N >= 1, finite; ValueError naming the problem otherwise."""
    lmk = np.asarray(landmarks, np.float64)
    if lmk.ndim != 2 or lmk.shape[0] < 1 or lmk.shape[1] < 2:
        raise ValueError(f"landmarks must be [N, 2] pixels (N >= 1), got shape {lmk.shape}")
    if not np.all(np.isfinite(lmk[:, :2])):
        raise ValueError("landmarks are not all finite numbers")
    return lmk


def landmark_box(landmarks):
    """(left, top, right, bottom) of landmarks [N, 2] (or [N, >2]: x, y first) in pixels."""
    lmk = _landmarks(landmarks)
    return lmk[:, 0].min(), lmk[:, 1].min(), lmk[:, 0].max(), lmk[:, 1].max()


def box_square(left, top, right, bottom, kind="kpt"):
    """DECA's (centre [2], old_size) of a box; kind 'kpt' (landmark box, training and test) or
    'bbox' (face detector box at test time: centre shifted down by 0.12 old_size)."""
    if kind not in ("kpt", "bbox"):
        raise ValueError(f"box kind must be 'kpt' or 'bbox', got {kind!r}")
    box = np.array([left, top, right, bottom], np.float64)
    if not np.all(np.isfinite(box)) or right < left or bottom < top:
        raise ValueError(f"box (left, top, right, bottom) = {tuple(box.tolist())} needs finite numbers with "
                         "right >= left and bottom >= top")
    old = (right - left + bottom - top) / 2.0
    center = np.array([right - (right - left) / 2.0, bottom - (bottom - top) / 2.0], np.float64)
    if kind == "bbox":
        center[1] += old * 0.12
    return center, old


def _crop_size(old, scale):
    """DECA's int(old_size x scale), with a clear error for a face too small to crop."""
    size = int(old * scale)
    if size < 1:
        raise ValueError(f"face box too small to crop: (w + h) / 2 = {old:.3g} px x scale {scale:.3g} "
                         f"gives a {size} px square")
    return size


def square_transform(center, size, out_size):
    """[3, 3] similarity taking the square (centre, size) to an out_size crop, DECA's way:
    corners (c - s/2, c - s/2), (c - s/2, c + s/2), (c + s/2, c - s/2) go to (0, 0), (0, S-1),
    (S-1, 0). That is a pure scale (S-1)/size plus a translation."""
    cx, cy = float(center[0]), float(center[1])
    size = float(size)
    if not size > 0:
        raise ValueError(f"crop size must be positive, got {size}")
    s = (out_size - 1) / size
    return np.array([[s, 0.0, -s * (cx - size / 2)], [0.0, s, -s * (cy - size / 2)], [0.0, 0.0, 1.0]])


def train_transform(landmarks, out_size, rng, scale=TRAIN_SCALE, trans_scale=0.0):
    """DECA's training crop of landmarks [68, 2] (pixels) with a numpy Generator `rng`.
    Draws the centre shift then the scale in DECA's order. Returns [3, 3]. A face too small to
    crop at the smallest scale is refused whatever the draw (ValueError), so that the loader's
    skipping a record does not depend on which draw met it first."""
    center, old = box_square(*landmark_box(landmarks), kind="kpt")
    _crop_size(old, min(scale))
    shift = (rng.random(2) * 2 - 1) * trans_scale
    center = center + shift * old
    s = rng.random() * (scale[1] - scale[0]) + scale[0]
    return square_transform(center, _crop_size(old, s), out_size)


def test_transform(landmarks=None, bbox=None, out_size=224, scale=TEST_SCALE):
    """DECA's test crop from landmarks [N, 2] ('kpt': x1.1) or a detector box (l, t, r, b).
    ValueError for landmarks that are not [N, 2] finite numbers, an inverted box, or a box whose
    crop would be under one pixel."""
    if landmarks is not None:
        center, old = box_square(*landmark_box(landmarks), kind="kpt")
        old = old * 1.1
    elif bbox is not None:
        center, old = box_square(*bbox, kind="bbox")
    else:
        raise ValueError("test_transform needs landmarks or a bbox")
    return square_transform(center, _crop_size(old, scale), out_size)


def apply_points(tform, points):
    """Map points [..., 2] with a [3, 3] similarity."""
    p = np.asarray(points, np.float64)
    t = np.asarray(tform, np.float64)
    return p @ t[:2, :2].T + t[:2, 2]


def invert(tform):
    """Inverse of a [3, 3] similarity."""
    return np.linalg.inv(np.asarray(tform, np.float64))


def warp_image(image, tform, out_size, interpolation=cv2.INTER_LINEAR):
    """Warp image [H, W, C] (any dtype cv2 takes) into [S, S, C] with the [3, 3] transform;
    outside the source is 0 (DECA's skimage warp does the same)."""
    out = cv2.warpAffine(image, np.asarray(tform, np.float64)[:2], (out_size, out_size), flags=interpolation,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if out.ndim == 2 and image.ndim == 3:
        out = out[..., None]
    return out


def crop_image(image_uint8, tform, out_size):
    """DECA's image crop: image [H, W, C] uint8 -> [S, S, C] float32 in [0, 1], the bilinear warp
    of image / 255 in floating point, as DECA's datasets, TestData and NoWDataset warp
    imread(...) / 255. with skimage (clip=True). Warping the uint8 image instead would round
    every crop pixel to a grey level, up to 0.5 / 255 off."""
    unit = np.asarray(image_uint8).astype(np.float32) / np.float32(255.0)
    return np.clip(warp_image(unit, tform, out_size), 0.0, 1.0)


# Landmark conventions: where [-1, 1] image space puts crop pixel k's centre, as (2 (k + c)) / S - 1.
# 'jaxdeca' (c = 0.5): where the renderer (DECA's too) samples pixel k; jaxdeca's data and training
# use it. 'deca' (c = 0): DECA's datasets normalise landmarks as p / S * 2 - 1 and its decode maps
# them back with (v + 1) * S / 2 (tensor_cropper.transform_points), so the released DECA model
# regresses landmarks in that convention, half a pixel off its own renderer.
LANDMARK_CONVENTIONS = {"jaxdeca": 0.5, "deca": 0.0}


def pixel_centre(convention):
    """The c of a landmark convention name (LANDMARK_CONVENTIONS); ValueError for another name."""
    if convention not in LANDMARK_CONVENTIONS:
        raise ValueError(f"landmark convention must be one of {sorted(LANDMARK_CONVENTIONS)}, got {convention!r}")
    return LANDMARK_CONVENTIONS[convention]


def normalise_points(points, out_size, convention="jaxdeca"):
    """Crop pixels (pixel k's centre at k, OpenCV / dlib) -> [-1, 1] image space: by default
    where the renderer puts pixel k's centre, (2k + 1) / S - 1: (p + 0.5) / S * 2 - 1.

    DECA writes p / S * 2 - 1 (convention='deca'), half a pixel off its own renderer (0.0045 at
    224 px, but 0.016 at the demo's 64 px, where it measurably pulled the photometric and landmark
    terms apart); its released model's landmarks are read back that way."""
    return (np.asarray(points, np.float64) + pixel_centre(convention)) / out_size * 2.0 - 1.0


def denormalise_points(points, out_size, convention="jaxdeca"):
    """[-1, 1] image space -> crop pixels (centre of pixel k at k): (p + 1) * S / 2 - 0.5
    (convention='deca': (p + 1) * S / 2)."""
    return (np.asarray(points, np.float64) + 1.0) * out_size / 2.0 - pixel_centre(convention)
