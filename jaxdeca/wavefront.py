"""Wavefront OBJ text: the one reader and writer behind every OBJ the package reads or writes.

Its users add their own checks and error class: the FLAME template (`flame/io.py`, needs a
UV layout), NoW scans and predictions (`evaluation/meshio.py`) and reconstruction exports
(`apps/export.py`, adds the .mtl and texture PNGs). NumPy in, files out.

Read: `v` (x y z, optional r g b ignored), `vt` (u v), `f` with `v`, `v/vt`, `v//vn` or
`v/vt/vn` corners, 1-based or negative (relative) indices; polygons are fan-triangulated;
every other record (vn, o, g, s, usemtl, mtllib, comments) is ignored.
Write: `v` (with per-vertex colours when given), `vt`, `f v` or `f v/vt`, 1-based, numbers
as %.9g (float32 values round-trip exactly).
"""
from __future__ import annotations

import os

import numpy as np

from jaxdeca.atomic_file import open_replacing


def read(path: str, error: type[Exception] = ValueError) -> dict:
    """OBJ -> dict(vertices [V, 3] f64, faces [F, 3] i64, uv_coords [T, 2] f64,
    uv_faces [F, 3] i64 or None when any corner lacks a vt index), all 0-based.

    Raises `error` naming the file (and the line) for a missing file, a malformed record, no
    vertices, or an index out of range.
    """
    if not os.path.isfile(path):
        raise error(f"{path}: OBJ file not found")
    v, vt, f, ft = [], [], [], []
    all_uv = True
    with open(path, "r", encoding="utf-8-sig", errors="replace") as fh:  # -sig: drops a byte-order mark
        for n, line in enumerate(fh, 1):
            p = line.split()
            if not p:
                continue
            try:
                if p[0] == "v":
                    v.append([float(x) for x in p[1:4]])
                    if len(v[-1]) != 3:
                        raise ValueError
                elif p[0] == "vt":
                    vt.append([float(x) for x in p[1:3]])
                    if len(vt[-1]) != 2:
                        raise ValueError
                elif p[0] == "f":
                    corners = [c.split("/") for c in p[1:]]
                    if len(corners) < 3:
                        raise ValueError
                    idx = [_index(c[0], len(v)) for c in corners]
                    f.extend([idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1))
                    if all_uv and all(len(c) > 1 and c[1] for c in corners):
                        t = [_index(c[1], len(vt)) for c in corners]
                        ft.extend([t[0], t[k], t[k + 1]] for k in range(1, len(t) - 1))
                    else:
                        all_uv = False
            except (ValueError, IndexError):
                raise error(f"{path}: line {n} is not a valid OBJ record: {line.strip()[:80]}") from None
    if not v:
        raise error(f"{path}: no vertices found")
    vertices = np.asarray(v, np.float64).reshape(-1, 3)
    faces = np.asarray(f, np.int64).reshape(-1, 3)
    uv_coords = np.asarray(vt, np.float64).reshape(-1, 2)
    uv_faces = np.asarray(ft, np.int64).reshape(-1, 3) if all_uv and f else None
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise error(f"{path}: face index out of range for {len(vertices)} vertices")
    if uv_faces is not None and uv_faces.size and (uv_faces.min() < 0 or uv_faces.max() >= len(uv_coords)):
        raise error(f"{path}: texture index out of range for {len(uv_coords)} texture coordinates")
    return dict(vertices=vertices, faces=faces, uv_coords=uv_coords, uv_faces=uv_faces)


def _index(s: str, count: int) -> int:
    """An OBJ index (1-based, or negative: relative to the `count` items read so far) -> 0-based."""
    i = int(s)
    if i == 0:
        raise ValueError
    return i - 1 if i > 0 else count + i


def write(path: str, vertices: np.ndarray, faces: np.ndarray, *, uv_coords: np.ndarray | None = None,
          uv_faces: np.ndarray | None = None, colors: np.ndarray | None = None, mtllib: str | None = None,
          usemtl: str | None = None) -> str:
    """Writes an OBJ whole or not at all (`atomic_file.replacing`); returns the path (its
    folder is created).

    vertices: [V, 3]; faces: [F, 3] int, 0-based; uv_coords: [T, 2] with uv_faces: [F, 3]
    (both or neither); colors: [V, 3] per-vertex RGB, written as `v x y z r g b`;
    mtllib / usemtl: material library file and material name lines.
    Refuses wrong shapes, indices out of range and an empty vertex list (an OBJ `read` refuses)
    with a ValueError naming the file. Vertices without faces (a point cloud) are written.
    """
    vertices, faces = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    _check(path, "vertices", vertices, 3)
    if not len(vertices):
        raise ValueError(f"{path}: no vertices to write (an OBJ without vertices cannot be read back)")
    _check(path, "faces", faces, 3)
    _check_indices(path, "faces", faces, len(vertices), "vertices")
    if (uv_coords is None) != (uv_faces is None):
        raise ValueError(f"{path}: uv_coords and uv_faces go together; got only one of them")
    lines = [f"mtllib {mtllib}"] if mtllib else []
    if colors is not None:
        colors = np.asarray(colors, np.float64)
        _check(path, "colors", colors, 3)
        if len(colors) != len(vertices):
            raise ValueError(f"{path}: {len(colors)} colours for {len(vertices)} vertices")
        lines.append(_rows("v %.9g %.9g %.9g %.9g %.9g %.9g", np.concatenate([vertices, colors], 1)))
    else:
        lines.append(_rows("v %.9g %.9g %.9g", vertices))
    if uv_coords is not None:
        uv_coords, uv_faces = np.asarray(uv_coords, np.float64), np.asarray(uv_faces, np.int64)
        _check(path, "uv_coords", uv_coords, 2)
        _check(path, "uv_faces", uv_faces, 3)
        _check_indices(path, "uv_faces", uv_faces, len(uv_coords), "texture coordinates")
        if len(uv_faces) != len(faces):
            raise ValueError(f"{path}: {len(uv_faces)} uv_faces for {len(faces)} faces")
        lines.append(_rows("vt %.9g %.9g", uv_coords))
    if usemtl:
        lines.append(f"usemtl {usemtl}")
    if uv_coords is not None:  # f a/ta b/tb c/tc
        lines.append(_rows("f %d/%d %d/%d %d/%d", np.stack([faces + 1, uv_faces + 1], -1).reshape(-1, 6)))
    else:
        lines.append(_rows("f %d %d %d", faces + 1))
    lines = [x for x in lines if x]  # sections without rows (no faces, no texture coordinates)
    with open_replacing(path, encoding="utf-8", errors="surrogateescape") as fh:  # mtllib: a file name's bytes
        fh.write("\n".join(lines) + "\n")
    return path


def _rows(fmt: str, a: np.ndarray) -> str:
    """Rows of a [N, C] array formatted with `fmt` (C fields), joined by newlines ('' for N = 0):
    one %-format of a repeated template, 2-4x as fast as formatting row by row (the demo head's
    dense detail mesh: 17k vertices, 33k faces), and the same text."""
    return ((fmt + "\n") * len(a) % tuple(a.reshape(-1).tolist()))[:-1]


def _check(path: str, name: str, a: np.ndarray, cols: int) -> None:
    if a.ndim != 2 or a.shape[1] != cols:
        raise ValueError(f"{path}: {name} must be [N, {cols}], found {a.shape}")


def _check_indices(path: str, name: str, idx: np.ndarray, count: int, what: str) -> None:
    """Refuses 0-based indices outside [0, count) (they would write an OBJ no reader accepts)."""
    bad = idx[(idx < 0) | (idx >= count)]
    if bad.size:
        raise ValueError(f"{path}: {name} index {bad[0]} out of range for {count} {what} (0-based indices expected)")
