"""Landmark files the apps take instead of dlib's (--landmarks): an iBUG .pts, a text file of
x y rows, or a folder of them named like the input's frames."""
from __future__ import annotations

import os

import numpy as np

from jaxdeca.apps import inputs
from jaxdeca.data import detect
from jaxdeca.data.prepare import check_landmark_box


def check_arg(landmarks: str | None, input_path: str) -> bool:
    """InputError when --landmarks cannot be used with --input: a path that is not there, or a
    file for a folder or video input (which needs a folder). Returns whether input_path is a
    single image."""
    single = os.path.isfile(input_path) and not inputs.is_video(input_path)
    if landmarks is not None and not os.path.exists(landmarks):
        raise inputs.InputError(f"{landmarks}: landmark file or folder not found")
    if landmarks is not None and not single and not os.path.isdir(landmarks):
        raise inputs.InputError(f"{landmarks}: --landmarks must be a folder of <stem>.pts or <stem>.txt files "
                                "when --input is a folder or video")
    return single


def for_frame(frame: inputs.Frame, landmarks: str | None, single: bool):
    """`landmarks_for`, with an unreadable file as an InputError for a single image (the input
    as a whole) and as a Skipped for a frame of a folder or video."""
    try:
        return landmarks_for(frame, landmarks, single)
    except (OSError, ValueError) as e:
        if single:
            raise inputs.InputError(str(e)) from None
        return inputs.Skipped(frame.name, str(e))


def landmarks_for(frame: inputs.Frame, landmarks: str | None, single: bool):
    """68 landmarks [68, 2] for a frame from --landmarks, or None (dlib detects them).
    landmarks: a .pts/.txt file (single-image input) or a folder of `<name>.pts` / `<name>.txt`
    named like the frames (`inputs.Frame.name`: the file stem, whole where the outputs' name was
    shortened, `inputs.Frame.key`; a frame without one falls back to dlib). Raises ValueError
    naming the file when unreadable."""
    if landmarks is None:
        return None
    if not os.path.isdir(landmarks):
        if not single:
            raise ValueError(f"{landmarks}: --landmarks must be a folder of <stem>.pts when --input is a folder or video")
        return read_pts(landmarks)
    for ext in (".pts", ".txt"):
        f = os.path.join(landmarks, (frame.key or frame.name) + ext)
        if os.path.isfile(f):
            return read_pts(f)
    return None


def read_pts(path: str) -> np.ndarray:
    """68 landmarks [68, 2] in 0-based original pixels (pixel column j is x = j) from an iBUG
    .pts file (read by `jaxdeca.data.detect.read_pts`, which subtracts 1 from its 1-based
    coordinates, as menpo does) or a plain text file of x y rows (0-based, like the apps'
    *_kpt2d.txt). Landmarks that are not finite or whose box is under prepare's
    MIN_LANDMARK_SPAN px (`prepare.check_landmark_box`; all points on one pixel give no face
    box to crop) are refused. Raises ValueError (or OSError) naming the file."""
    try:
        with open(path) as f:
            text = f.read()
    except UnicodeDecodeError:  # a ValueError whose message would not name the file
        raise ValueError(f"{path}: not a landmark file (not text)") from None
    if "{" in text:
        pts = detect.read_pts(path)
    else:
        try:
            pts = np.array([[float(t) for t in line.split()[:2]] for line in text.strip().splitlines()
                            if line.strip() and not line.startswith("#")])
        except ValueError as e:
            raise ValueError(f"{path}: not a landmark file ({e})") from None
    if pts.shape != (68, 2):
        raise ValueError(f"{path}: expected 68 landmarks of (x, y), found shape {pts.shape}")
    check_landmark_box(pts, path)  # the crop and the starting camera are sized by the landmark box
    return pts
