"""Writing reconstruction results: OBJ meshes with UVs and textures, dense detail meshes,
landmark text files, code archives and images. NumPy in, files out; nothing here is
differentiated. Each file is written whole or not at all (`atomic_file.replacing`): a write
that fails leaves no partial file under the file's name.
"""
from __future__ import annotations

import contextlib
import os
import sys

import cv2
import numpy as np

from jaxdeca import wavefront
from jaxdeca.atomic_file import open_replacing


class WriteError(OSError):
    """An output file that could not be written (a full disk, a folder that became unwritable):
    `filename` is the file, `strerror` the OS error. The apps' command lines report it as one
    line (`pipeline.CLI_ERRORS`), with how many outputs were written before it (`done`, set by
    `pipeline.stop_on_write_error`)."""

    def __init__(self, path: str, reason: str, code: int | None = None):
        super().__init__(code, reason, path)
        self.done: str | None = None  # e.g. "2 face(s) written to out before it"

    def __str__(self) -> str:
        return f"{self.filename}: cannot write: {self.strerror}" + (f"; {self.done}" if self.done else "")


@contextlib.contextmanager
def writing(path: str):
    """Turns an OSError raised while `path` is written into a WriteError naming the file (the
    OSError's own file name when it has one, e.g. a folder that could not be made; a write on a
    full disk has none). A WriteError from a nested `writing` passes unchanged. Wrap writes
    only: an input that cannot be read is not a write failure."""
    try:
        yield path
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(e.filename or path, e.strerror or str(e), e.errno) from e


@contextlib.contextmanager
def output_file(path: str, mode: str = "w", **open_kwargs):
    """An output file opened to be written whole or not at all (`atomic_file.open_replacing`);
    an OSError while it is made, written or moved to `path` is a WriteError naming it (`writing`)."""
    with writing(path), open_replacing(path, mode, **open_kwargs) as f:
        yield f


def _write_bytes(f, data) -> None:  # save_image's write, apart: tests make it fail as a full disk does
    f.write(data)


def save_image(path: str, image: np.ndarray) -> str:
    """Writes an RGB (or gray) image given as float in [0, 1] (clipped; NaN as 0) or uint8; returns
    the path. WriteError naming the file when it cannot be written (`writing`; nothing is left under
    its name: `replacing`)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:  # NaN cast to uint8 is undefined (0 on x86, with a RuntimeWarning)
        image = (np.nan_to_num(np.clip(image, 0.0, 1.0)) * 255.0 + 0.5).astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(os.path.splitext(path)[1], image)  # then written here: the OS error is kept
    if not ok:
        raise WriteError(path, "cv2 could not encode the image")
    with output_file(path, "wb") as f:
        _write_bytes(f, data)
    return path


def material_stem(obj_path: str) -> str:
    """The base name of an OBJ's .mtl and texture files: its own, whitespace and '#' replaced
    by '_'. OBJ's `mtllib` takes a list of whitespace-separated names and MTL readers take a
    map's name as the last token after its options, so a name with spaces would not resolve;
    '#' starts a comment, which readers that allow one at the end of a line drop ('mtllib
    take#2.mtl' names 'take'), and starts the fragment of a URL, as web viewers resolve the
    names (take#2.png loads 'take')."""
    return "_".join(os.path.splitext(os.path.basename(obj_path))[0].replace("#", "_").split())


def write_obj(path: str, vertices: np.ndarray, faces: np.ndarray, *, uv_coords: np.ndarray | None = None,
              uv_faces: np.ndarray | None = None, texture: np.ndarray | None = None,
              normal_map: np.ndarray | None = None, colors: np.ndarray | None = None) -> str:
    """Writes a Wavefront OBJ (and, with a texture, its .mtl and PNG maps) like DECA's write_obj.

    Args:
      vertices: [V, 3]. faces: [F, 3] int, 0-based.
      uv_coords: [T, 2] in [0, 1] (v up); uv_faces: [F, 3] into uv_coords.
      texture: [R, R, 3] RGB in [0, 1] -> `<stem>.png`, referenced by `<stem>.mtl` (in these
        three names, `material_stem`: whitespace and '#' in the OBJ's name become '_').
      normal_map: [R, R, 3] tangent-free UV normal map with components in [-1, 1] ->
        `<stem>_normals.png` (stored as (n + 1) / 2), referenced by the material's `disp` entry, as
        DECA's util.write_obj writes it.
      colors: [V, 3] per-vertex RGB in [0, 1], written as `v x y z r g b`.
    Returns:
      The OBJ path. WriteError naming the file that cannot be written (`writing`); the files
      written before it are kept, nothing is left under its name (`replacing`).
    """
    has_uv = uv_coords is not None and uv_faces is not None
    mtllib = None
    if texture is not None and has_uv:
        name = material_stem(path)
        stem = os.path.join(os.path.dirname(path), name)
        mtllib = name + ".mtl"
        save_image(stem + ".png", texture)
        if normal_map is not None:
            save_image(stem + "_normals.png", (np.asarray(normal_map) + 1.0) * 0.5)
        # surrogateescape: a file name that is not valid UTF-8 (Latin-1, from a zip) is written as
        # its own bytes, so the MTL names the files beside it (before: UnicodeEncodeError)
        with output_file(stem + ".mtl", encoding="utf-8", errors="surrogateescape") as f:
            f.write(f"newmtl FaceTexture\nmap_Kd {name}.png\n")
            if normal_map is not None:
                f.write(f"disp {name}_normals.png\n")
    with writing(path):
        return wavefront.write(path, vertices, faces, uv_coords=uv_coords if has_uv else None,
                               uv_faces=uv_faces if has_uv else None, colors=colors, mtllib=mtllib,
                               usemtl="FaceTexture" if mtllib else None)


def grid_mesh(valid: np.ndarray) -> np.ndarray:
    """Triangles of an H x W pixel grid whose three corners are all valid.

    Args:
      valid: [H, W] bool.
    Returns:
      faces: [F, 3] int indices into the row-major flattened grid (i * W + j), two triangles
      per cell, (i,j),(i+1,j),(i,j+1) and (i,j+1),(i+1,j),(i+1,j+1).
    """
    h, w = valid.shape
    idx = np.arange(h * w).reshape(h, w)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[:-1, 1:], idx[1:, 1:]
    va, vb, vc, vd = valid[:-1, :-1], valid[1:, :-1], valid[:-1, 1:], valid[1:, 1:]
    t1 = np.stack([a, b, c], -1)[va & vb & vc]
    t2 = np.stack([c, b, d], -1)[vc & vb & vd]
    return np.concatenate([t1, t2], 0)


def dense_detail_mesh(uv_positions: np.ndarray, uv_normals: np.ndarray, valid: np.ndarray,
                      uv_colors: np.ndarray | None = None):
    """The detailed dense mesh: one vertex per valid UV texel, the grid's triangles.

    Args:
      uv_positions: [H, W, 3] displaced surface points in UV space (DECA's
        uv_detail_vertices). uv_normals: [H, W, 3] the detail normals there, used only to
        orient the triangles outward. valid: [H, W] texels that hold a surface point (as in
        DECA's dense template: every texel inside a UV triangle). uv_colors: optional
        [H, W, 3] texture.
    Returns:
      (vertices [N, 3], faces [F, 3], colors [N, 3] or None) with unused texels dropped.
    """
    valid = np.asarray(valid) > 0.5
    faces = grid_mesh(valid)
    pos = np.asarray(uv_positions, np.float64).reshape(-1, 3)
    nrm = np.asarray(uv_normals, np.float64).reshape(-1, 3)
    if len(faces):
        v0, v1, v2 = pos[faces[:, 0]], pos[faces[:, 1]], pos[faces[:, 2]]
        fn = np.cross(v1 - v0, v2 - v0)
        agree = np.einsum("fc,fc->f", fn, nrm[faces].sum(1))
        if np.sum(agree < 0) > np.sum(agree > 0):
            faces = faces[:, [0, 2, 1]]
    used = np.unique(faces)
    remap = np.full(pos.shape[0], -1, np.int64)
    remap[used] = np.arange(used.size)
    colors = None if uv_colors is None else np.asarray(uv_colors).reshape(-1, 3)[used]
    return pos[used], remap[faces], colors


def write_detail_obj(path: str, uv_positions: np.ndarray, uv_normals: np.ndarray, valid: np.ndarray,
                     uv_colors: np.ndarray | None = None) -> str | None:
    """Writes `dense_detail_mesh` as an OBJ with per-vertex colours; returns the path.

    When the mesh has no faces (no grid triangle has its three texels valid: no UV
    coverage, e.g. a NaN decode, or a too sparse `valid`) it would also have no
    vertices, an OBJ that `wavefront.read` refuses: nothing is written, a file of that name
    left by an earlier run is removed, one line on stderr says why, and None is returned.
    """
    vertices, faces, colors = dense_detail_mesh(uv_positions, uv_normals, valid, uv_colors)
    if not len(faces):
        if os.path.isfile(path):
            with writing(path):
                os.remove(path)
        print(f"warning: {path}: not written: the detailed mesh has no faces (no three neighbouring UV "
              "texels hold a surface point: no UV coverage, e.g. a NaN decode)", file=sys.stderr)
        return None
    return write_obj(path, vertices, faces, colors=colors)


def save_landmarks(path: str, points: np.ndarray, header: str = "") -> str:
    """Landmarks [N, K] as a text file, one landmark per row (WriteError: `writing`)."""
    with output_file(path, "wb") as f:  # as np.savetxt writes a file it opens itself (latin-1 bytes)
        np.savetxt(f, np.asarray(points, np.float64), fmt="%.6f", header=header)
    return path


def save_npz(path: str, arrays: dict) -> str:
    """Arrays {name: array} as an uncompressed .npz at `path`, whatever its extension (np.savez
    would add '.npz' to a bare name); returns the path (WriteError: `writing`)."""
    with output_file(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return path
