"""Test-time preprocessing shared with the apps: DECA's inference crop and its inverse.

DECA's TestData (decalib/datasets/datasets.py) crops around the face with its landmark box
('kpt': size = (w + h) / 2 x 1.1) or a face detector box ('bbox': size = (w + h) / 2, centre
moved down by 0.12 of it), times scale 1.25, and warps to 224 with a similarity that maps the
square's corners to (0, 0), (0, 223), (223, 0). Results predicted on the crop (landmarks in
[-1, 1], rendered images) map back to the original photo through the returned [3, 3] matrix.
DECA's demos find the landmarks with FAN (face_alignment; its first face, a 'kpt68' box) and,
with no face found, crop the whole image (its box written with h and w swapped); here dlib's
68 landmarks of the largest face, and no face is a NoFaceError (the apps skip that image).

    crop, tform = crop_for_inference(image_uint8)           # dlib landmarks -> 'kpt' box
    crop, tform = crop_for_inference(image_uint8, landmarks=lmk68)
    crop, tform = crop_for_inference(image_uint8, bbox=(l, t, r, b))
    lmk_px = to_original(lmk_pred[:, :2], tform)            # [-1, 1] crop -> original pixels
"""
import cv2
import numpy as np

from jaxdeca.data import crop as _crop

INPUT_SIZE = 224
_DETECTOR = {}


class NoFaceError(ValueError):
    """Raised when detection finds no face in an image."""


def detect_landmarks(image_uint8, predictor_path: str | None = None, bbox=None):
    """dlib 68 landmarks [68, 2] pixels of the largest face in [H, W, 3] uint8 RGB; NoFaceError if none.
    bbox: (left, top, right, bottom) pixels of a face found by another detector (e.g. NoW's
    detected_face boxes): the landmark model runs inside it and dlib's detector is not used
    (ValueError for a box with NaN or right < left or bottom < top)."""
    from jaxdeca.data import detect
    if predictor_path not in _DETECTOR:
        _DETECTOR[predictor_path] = detect.Detector(predictor_path)
    if bbox is not None:
        _crop.box_square(*bbox)  # the same check as the crops from a box
        return _DETECTOR[predictor_path].landmarks(np.ascontiguousarray(image_uint8), bbox)
    found = _DETECTOR[predictor_path](np.ascontiguousarray(image_uint8))
    if found is None:
        raise NoFaceError("no face found")
    return found[0]


def as_rgb_uint8(image) -> np.ndarray:
    """An uint8 image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] -> [H, W, 3] RGB, as DECA's
    TestData reads one (grey repeated to three channels, alpha dropped). ValueError for any
    other dtype (a float image's scale is unknown) or shape."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)) \
            or 0 in image.shape[:2]:
        raise ValueError(f"need an [H, W, 3] uint8 RGB image (grey [H, W] or RGBA [H, W, 4] are converted), "
                         f"got {image.shape} {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[..., :3]


def crop_for_inference(image_uint8, landmarks=None, bbox=None, size: int = INPUT_SIZE, scale: float = _crop.TEST_SCALE,
                       predictor_path: str | None = None):
    """DECA's test crop. image_uint8: [H, W, 3] uint8 RGB (grey and RGBA: `as_rgb_uint8`);
    landmarks: [N, 2] pixels or None; bbox: (left, top, right, bottom) or None; neither = detect
    with dlib. Returns (crop [size, size, 3] float32 0..1, tform [3, 3] original pixels -> crop
    pixels). A face near or beyond the border is cropped all the same; outside the photo is 0."""
    try:
        image = as_rgb_uint8(image_uint8)
    except ValueError as e:
        raise ValueError(f"crop_for_inference: {e}") from None
    if landmarks is None and bbox is None:
        landmarks = detect_landmarks(image, predictor_path)
    t = _crop.test_transform(landmarks=landmarks, bbox=bbox if landmarks is None else None, out_size=size, scale=scale)
    out = _crop.crop_image(image, t, size)
    return out, t


def to_original(points, tform, size: int = INPUT_SIZE, normalized: bool = True, convention: str = "jaxdeca"):
    """Crop points [..., 2] -> original-image pixels [..., 2]. normalized=True: points in
    [-1, 1] crop space (pixel = (p + 1) * size / 2 - 0.5, or - 0 for convention='deca', see
    crop.normalise_points); False: crop pixels."""
    p = np.asarray(points, np.float64)
    if normalized:
        p = _crop.denormalise_points(p, size, convention)
    return _crop.apply_points(_crop.invert(tform), p)


def to_crop(points, tform, size: int = INPUT_SIZE, normalized: bool = True, convention: str = "jaxdeca"):
    """Original pixels [..., 2] -> crop points ([-1, 1] in `convention` if normalized, else crop pixels)."""
    p = _crop.apply_points(tform, points)
    return _crop.normalise_points(p, size, convention) if normalized else p


def paste_to_original(crop_image, tform, height: int, width: int):
    """Warp a crop-space image [S, S, C] back into the original frame [height, width, C]
    (outside the crop: 0), e.g. to overlay a rendered face on the photo."""
    inv = _crop.invert(tform)
    out = cv2.warpAffine(np.asarray(crop_image), inv[:2], (width, height), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.reshape(height, width, -1) if np.ndim(crop_image) == 3 else out
