"""Offline face detection and 68 iBUG landmarks with dlib, plus the iBUG .pts format.

dlib's HOG frontal face detector and its 68-point shape predictor need no network: the
`dlib-bin` wheel has the code, the `face-recognition-models` wheel (or Debian's
`libdlib-data`) has `shape_predictor_68_face_landmarks.dat`. Images larger than `max_side`
are downscaled for detection only; landmarks come back in original pixels.
"""
import importlib.util
import io
import os

import cv2
import numpy as np

PREDICTOR_NAME = "shape_predictor_68_face_landmarks.dat"
DEBIAN_PREDICTOR = "/usr/share/dlib/" + PREDICTOR_NAME


def default_predictor_path() -> str:
    """The 68-point model from face_recognition_models (without importing its __init__, which
    needs pkg_resources) or Debian's libdlib-data. Raises FileNotFoundError naming both."""
    tried = []
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.submodule_search_locations:
        p = os.path.join(list(spec.submodule_search_locations)[0], "models", PREDICTOR_NAME)
        tried.append(p)
        if os.path.isfile(p):
            return p
    tried.append(DEBIAN_PREDICTOR)
    if os.path.isfile(DEBIAN_PREDICTOR):
        return DEBIAN_PREDICTOR
    raise FileNotFoundError(f"{PREDICTOR_NAME} not found (tried {', '.join(tried)}); install "
                            "face-recognition-models or libdlib-data, or pass --predictor PATH")


class DetectorUnavailable(RuntimeError):
    """Face detection cannot run at all (dlib or its landmark model is missing), as opposed to
    an image in which no face is found: callers stop with this message instead of skipping or
    recording every image."""


class Detector:
    """Largest-face detection + 68 landmarks. Call with an [H, W, 3] uint8 RGB image;
    returns (landmarks [68, 2] float32 pixels, score float) or None when no face is found.
    Raises DetectorUnavailable when dlib is not installed or the landmark model is missing or
    unreadable."""

    def __init__(self, predictor_path: str | None = None, max_side: int = 1024, upsample: int = 1):
        try:
            import dlib
        except ImportError as e:
            raise DetectorUnavailable(
                f"face detection needs dlib, which cannot be imported ({e}); install jaxdeca's data "
                "extra (dlib-bin, face-recognition-models): pip install -e '.[data]' in the repository") from None
        try:
            path = predictor_path or default_predictor_path()
        except FileNotFoundError as e:
            raise DetectorUnavailable(str(e)) from None
        if not os.path.isfile(path):
            raise DetectorUnavailable(f"{path}: landmark model file not found")
        self.detector = dlib.get_frontal_face_detector()
        try:
            self.predictor = dlib.shape_predictor(path)
        except RuntimeError as e:  # not a dlib model: every image would fail alike
            raise DetectorUnavailable(f"{path}: cannot be read as a dlib 68-point landmark model ({e})") from None
        self.max_side = max_side
        self.upsample = upsample
        self._dlib = dlib

    def detect(self, image):
        """[(left, top, right, bottom, score)] in original pixels (dlib's inclusive pixel
        indices), largest first. A box found in the downscaled image maps back per axis by
        cv2.resize's area sampling: small pixel k covers original pixels k s .. (k + 1) s - 1,
        s = w / w_small, so the box keeps its centre and extent."""
        h, w = image.shape[:2]
        f = min(1.0, self.max_side / max(h, w))
        if f == 1.0:
            small = image
        else:
            small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        sx, sy = w / small.shape[1], h / small.shape[0]
        up = self.upsample if max(small.shape[:2]) <= 640 else 0
        rects, scores, _ = self.detector.run(np.ascontiguousarray(small), up, 0.0)
        boxes = [(r.left() * sx, r.top() * sy, (r.right() + 1) * sx - 1, (r.bottom() + 1) * sy - 1, float(s))
                 for r, s in zip(rects, scores)]
        return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))

    def landmarks(self, image, box):
        """68 landmarks [68, 2] float32 (pixels) inside box (l, t, r, b)."""
        rect = self._dlib.rectangle(*[int(round(v)) for v in box[:4]])
        shape = self.predictor(np.ascontiguousarray(image), rect)
        return np.array([[p.x, p.y] for p in shape.parts()], np.float32)

    def __call__(self, image):
        boxes = self.detect(image)
        if not boxes:
            return None
        return self.landmarks(image, boxes[0]), boxes[0][4]


def read_pts(path: str, data: bytes | None = None) -> np.ndarray:
    """iBUG .pts -> [N, 2] float64. The format: 'version: 1', 'n_points: N', '{', N lines
    'x y', '}'. iBUG coordinates are 1-based (Matlab): we subtract 1 so pixel column j is x = j.
    data: the file's bytes when the caller has read them (read as the file would be)."""
    try:
        with (open(path) if data is None else io.TextIOWrapper(io.BytesIO(data))) as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable .pts file ({e})") from None
    try:
        n = int(next(ln for ln in lines if ln.startswith("n_points")).split(":")[1])
        start = lines.index("{") + 1
        end = lines.index("}", start)
        pts = np.array([[float(v) for v in ln.split()[:2]] for ln in lines[start:end]], np.float64).reshape(-1, 2)
    except (StopIteration, ValueError, IndexError):
        raise ValueError(f"{path}: not an iBUG .pts file (need 'n_points: N', '{{', N 'x y' lines, '}}')") from None
    if pts.shape != (n, 2):
        raise ValueError(f"{path}: expected {n} points, found {pts.shape[0]}")
    return pts - 1.0


def write_pts(path: str, points) -> None:
    """[N, 2] (0-based pixels) -> iBUG .pts (1-based)."""
    pts = np.asarray(points, np.float64) + 1.0
    with open(path, "w") as f:
        f.write(f"version: 1\nn_points: {len(pts)}\n{{\n")
        for x, y in pts:
            f.write(f"{x:.3f} {y:.3f}\n")
        f.write("}\n")
