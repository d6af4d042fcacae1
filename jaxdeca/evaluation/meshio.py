"""File formats of the NoW benchmark: OBJ meshes, MeshLab picked points (.pp), landmark .npy/.txt.

- Scans are OBJ files (`scans/<subject>/*.obj`, millimetres); polygons are fan-triangulated,
  texture/normal indices are ignored.
- Scan landmarks are MeshLab `.pp` XML files (`scans_lmks_onlypp/<subject>/*.pp`) with 7
  `<point x= y= z= .../>` records in the order of NoW's `landmarks_7_annotated.png`
  (right eye outer, right eye inner, left eye inner, left eye outer, nose bottom, mouth right,
  mouth left). The official `load_pp` reads the 7 lines after the 8 header lines; we parse the
  XML and take the first 7 `point` elements, which is the same for the official files.
- Predicted meshes are `<image>.obj` or, as the official script falls back to, `<image>.ply`
  (ASCII or binary, read with plyfile; polygons fan-triangulated).
- Predicted landmarks are `<image>.npy` ([7, 3]) or `<image>.txt` (7 rows of 3 numbers).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

import numpy as np

from jaxdeca import wavefront
from jaxdeca.atomic_file import open_replacing


class NowFileError(ValueError):
    """A NoW input file is missing or malformed (the message names the file)."""


def read_obj(path: str) -> tuple[np.ndarray, np.ndarray]:
    """OBJ -> (vertices [V, 3] float64, faces [F, 3] int64, 0-based; polygons fan-triangulated)."""
    m = wavefront.read(path, NowFileError)
    return m["vertices"], m["faces"]


def read_ply(path: str) -> tuple[np.ndarray, np.ndarray]:
    """PLY (ASCII or binary) -> (vertices [V, 3] float64, faces [F, 3] int64, 0-based; polygons
    fan-triangulated); NowFileError naming the file when it is no mesh of that kind."""
    from plyfile import PlyData, PlyParseError
    try:
        ply = PlyData.read(path)
        v = ply["vertex"]
        verts = np.stack([np.asarray(v[k], np.float64) for k in ("x", "y", "z")], 1)
        face = ply["face"]
        key = next(k for k in ("vertex_indices", "vertex_index") if k in face.data.dtype.names)
        polys = face[key]
    except (OSError, ValueError, KeyError, StopIteration, TypeError, PlyParseError) as e:
        raise NowFileError(f"{path}: not a PLY mesh with vertex x, y, z and face vertex_indices "
                           f"({type(e).__name__}: {e})") from None
    tris = [[p[0], p[k], p[k + 1]] for p in polys for k in range(1, len(p) - 1)]
    faces = np.asarray(tris, np.int64).reshape(-1, 3)
    if not len(faces):
        raise NowFileError(f"{path}: no faces found")
    if faces.min() < 0 or faces.max() >= len(verts):
        raise NowFileError(f"{path}: face vertex indices outside 0..{len(verts) - 1}")
    return verts, faces


def read_mesh(path: str) -> tuple[np.ndarray, np.ndarray]:
    """read_ply for a .ply file, read_obj for any other."""
    return read_ply(path) if path.lower().endswith(".ply") else read_obj(path)


def write_obj(path: str, vertices: np.ndarray, faces: np.ndarray) -> str:
    """vertices [V, 3], faces [F, 3] (0-based) -> plain OBJ (`v`, `f` 1-based). Returns path."""
    return wavefront.write(path, vertices, faces)


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
             f'  <DataFileName name={quoteattr(data_file)}/>', '  <templateName name=""/>', " </DocumentData>"]
    lines += [f' <point x="{x:.9g}" y="{y:.9g}" z="{z:.9g}" active="1" name="{i}"/>'
              for i, (x, y, z) in enumerate(points)]
    lines.append("</PickedPoints>")
    with open_replacing(path) as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def read_landmarks(path: str, n_points: int = 7) -> np.ndarray:
    """Predicted landmarks, `.npy` or whitespace-separated `.txt` -> [n_points, 3] float64."""
    if not os.path.isfile(path):
        raise NowFileError(f"{path}: landmark file not found")
    try:
        lmk = np.load(path) if path.endswith(".npy") else np.loadtxt(path, ndmin=2, encoding="utf-8-sig")
    except (ValueError, EOFError) as e:  # EOFError: an empty .npy
        raise NowFileError(f"{path}: cannot parse landmarks ({e or type(e).__name__})") from None
    lmk = np.asarray(lmk, np.float64)
    if lmk.shape != (n_points, 3):
        raise NowFileError(f"{path}: landmarks have shape {lmk.shape}, expected ({n_points}, 3)")
    return lmk
