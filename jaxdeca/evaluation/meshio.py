"""File formats of the NoW benchmark: OBJ meshes, MeshLab picked points (.pp), landmark .npy/.txt.

- Scans are OBJ files (`scans/<subject>/*.obj`, millimetres); polygons are fan-triangulated,
  texture/normal indices are ignored.
- Scan landmarks are MeshLab `.pp` XML files (`scans_lmks_onlypp/<subject>/*.pp`) with 7
  `<point x= y= z= .../>` records in the order of NoW's `landmarks_7_annotated.png`
  (right eye outer, right eye inner, left eye inner, left eye outer, nose bottom, mouth right,
  mouth left). The official `load_pp` reads the 7 lines after the 8 header lines; we parse the
  XML and take the first 7 `point` elements, which is the same for the official files.
- Predicted landmarks are `<image>.npy` ([7, 3]) or `<image>.txt` (7 rows of 3 numbers).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np


class NowFileError(ValueError):
    """A NoW input file is missing or malformed (the message names the file)."""


def read_obj(path: str) -> tuple[np.ndarray, np.ndarray]:
    """OBJ -> (vertices [V, 3] float64, faces [F, 3] int64, 0-based; polygons fan-triangulated)."""
    if not os.path.isfile(path):
        raise NowFileError(f"{path}: OBJ file not found")
    v, f = [], []
    with open(path, "r", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            p = line.split()
            if not p:
                continue
            try:
                if p[0] == "v":
                    v.append([float(x) for x in p[1:4]])
                elif p[0] == "f":
                    idx = [int(c.split("/")[0]) for c in p[1:]]
                    idx = [i - 1 if i > 0 else len(v) + i for i in idx]
                    if len(idx) < 3:
                        raise ValueError
                    f.extend([idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1))
            except (ValueError, IndexError):
                raise NowFileError(f"{path}: line {n} is not a valid OBJ record: {line.strip()[:80]}") from None
    if not v:
        raise NowFileError(f"{path}: no vertices found")
    vertices, faces = np.asarray(v, np.float64).reshape(-1, 3), np.asarray(f, np.int64).reshape(-1, 3)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise NowFileError(f"{path}: face index out of range for {len(vertices)} vertices")
    return vertices, faces


def write_obj(path: str, vertices: np.ndarray, faces: np.ndarray) -> str:
    """vertices [V, 3], faces [F, 3] (0-based) -> plain OBJ (`v`, `f` 1-based). Returns path."""
    vertices, faces = np.asarray(vertices), np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"{path}: vertices must be [V, 3], found {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"{path}: faces must be [F, 3], found {faces.shape}")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        fh.write("".join(f"v {x:.8g} {y:.8g} {z:.8g}\n" for x, y, z in vertices))
        fh.write("".join(f"f {a + 1} {b + 1} {c + 1}\n" for a, b, c in faces))
    return path


def read_pp(path: str, n_points: int = 7) -> np.ndarray:
    """MeshLab picked-points file -> [n_points, 3] float64 (the first n_points `point` records)."""
    if not os.path.isfile(path):
        raise NowFileError(f"{path}: picked-points (.pp) file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise NowFileError(f"{path}: not a MeshLab picked-points XML file ({e})") from None
    pts = []
    for el in root.iter("point"):
        try:
            pts.append([float(el.attrib[k]) for k in ("x", "y", "z")])
        except (KeyError, ValueError):
            raise NowFileError(f"{path}: <point> record without numeric x, y, z: {el.attrib}") from None
    if len(pts) < n_points:
        raise NowFileError(f"{path}: found {len(pts)} <point> records, expected {n_points}")
    return np.asarray(pts[:n_points], np.float64)


def write_pp(path: str, points: np.ndarray, data_file: str = "scan.obj") -> str:
    """[N, 3] -> MeshLab picked-points file in the layout MeshLab (and the NoW scans) use."""
    points = np.asarray(points, np.float64)
    lines = ["<!DOCTYPE PickedPoints>", "<PickedPoints>", " <DocumentData>",
             '  <DateTime date="2019-01-01" time="00:00:00"/>', '  <User name="jaxdeca"/>',
             f'  <DataFileName name="{data_file}"/>', '  <templateName name=""/>', " </DocumentData>"]
    lines += [f' <point x="{x:.9g}" y="{y:.9g}" z="{z:.9g}" active="1" name="{i}"/>'
              for i, (x, y, z) in enumerate(points)]
    lines.append("</PickedPoints>")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def read_landmarks(path: str, n_points: int = 7) -> np.ndarray:
    """Predicted landmarks, `.npy` or whitespace-separated `.txt` -> [n_points, 3] float64."""
    if not os.path.isfile(path):
        raise NowFileError(f"{path}: landmark file not found")
    try:
        lmk = np.load(path) if path.endswith(".npy") else np.loadtxt(path, ndmin=2)
    except ValueError as e:
        raise NowFileError(f"{path}: cannot parse landmarks ({e})") from None
    lmk = np.asarray(lmk, np.float64)
    if lmk.shape != (n_points, 3):
        raise NowFileError(f"{path}: landmarks have shape {lmk.shape}, expected ({n_points}, 3)")
    return lmk
