"""Reading and writing FLAME files: the official layouts and jaxdeca's plain npz.

Official files, read with neither chumpy nor torch installed:
  generic_model.pkl           FLAME 2020/2023, a Python-2 pickle of chumpy `Ch` objects and a
                              scipy sparse J_regressor. chumpy classes are mapped to a shim that
                              keeps the pickled array (chumpy breaks on Python >= 3.11/NumPy 2).
  landmark_embedding.npy      DECA's landmark file: a pickled dict whose dynamic entries are
                              torch tensors; torch's storage bytes are parsed here.
  FLAME_albedo_from_BFM.npz   MU (R*R*3), PC (R*R*3, 199), values 0..1.
  FLAME_texture.npz           mean (R,R,3), tex_dir (R,R,3,200), values 0..255.
  head_template.obj           v / vt / f with v/vt indices: the UV layout.
  uv_face_eye_mask.png, uv_face_mask.png, fixed_displacement_256.npy (DECA's data folder).

The plain format (`load_npz` / `save_npz`) is one npz with the keys listed in
CONTRIBUTING.md; `validate` refuses a wrong layout naming the file, key and shapes.
Writers for every official layout exist so that tests (and the demo head) can produce files
exactly as the official ones are laid out.
"""
from __future__ import annotations

import io as _io
import os
import pickle
import sys
import types

import numpy as np

from jaxdeca import safe_pickle, wavefront

# ----------------------------------------------------------------------------- plain npz

REQUIRED = {
    "v_template": ("V", 3), "shapedirs": ("V", 3, None), "exprdirs": ("V", 3, None), "posedirs": ("V", 3, 36),
    "J_regressor": (5, "V"), "parents": (5,), "lbs_weights": ("V", 5), "faces": ("F", 3),
    "uv_coords": ("T", 2), "uv_faces": ("F", 3),
    "static_lmk_faces_idx": (51,), "static_lmk_bary_coords": (51, 3),
    "dynamic_lmk_faces_idx": (79, 17), "dynamic_lmk_bary_coords": (79, 17, 3),
    "full_lmk_faces_idx": (68,), "full_lmk_bary_coords": (68, 3),
}
OPTIONAL = {
    "albedo_mean": ("R", "R", 3), "albedo_basis": ("R", "R", 3, None),
    "uv_face_eye_mask": (256, 256), "uv_face_mask": (256, 256), "fixed_displacement": (256, 256),
}


class FlameFileError(ValueError):
    """A FLAME-related file is missing, unreadable or has the wrong layout."""


def _check_shapes(arrays: dict, specs: dict, where: str, sizes: dict, required: bool) -> None:
    for key, spec in specs.items():
        if key not in arrays:
            if required:
                raise FlameFileError(f"{where}: missing key '{key}' (expected shape {_fmt(spec, sizes)})")
            continue
        shape = tuple(np.shape(arrays[key]))
        ok = len(shape) == len(spec)
        if ok:
            for dim, want in zip(shape, spec):
                if isinstance(want, str):
                    ok &= sizes.setdefault(want, dim) == dim
                elif want is not None:
                    ok &= dim == want
        if not ok:
            raise FlameFileError(f"{where}: key '{key}' has shape {shape}, expected {_fmt(spec, sizes)}")


def _fmt(spec, sizes):
    return "(" + ", ".join(f"{w}={sizes[w]}" if isinstance(w, str) and w in sizes else
                           ("any" if w is None else str(w)) for w in spec) + ")"


def validate(arrays: dict, where: str = "FLAME model") -> None:
    """Checks a FLAME npz dict against the schema; raises FlameFileError on the first problem."""
    for key in (*REQUIRED, *OPTIONAL):
        if key in arrays:
            problem = _dtype_problem(np.asarray(arrays[key]), key in INDEX_KEYS)
            if problem:
                raise FlameFileError(f"{where}: key '{key}' holds {np.asarray(arrays[key]).dtype} values, {problem}")
    sizes: dict[str, int] = {}
    _check_shapes(arrays, REQUIRED, where, sizes, required=True)
    _check_shapes(arrays, OPTIONAL, where, sizes, required=False)
    if ("albedo_mean" in arrays) != ("albedo_basis" in arrays):
        raise FlameFileError(f"{where}: 'albedo_mean' and 'albedo_basis' must be given together")
    check_parents(arrays["parents"], where)
    F, V, T = arrays["faces"].shape[0], arrays["v_template"].shape[0], arrays["uv_coords"].shape[0]
    check_indices(arrays, {"faces": V, "uv_faces": T}, where)
    check_indices(arrays, dict.fromkeys(LANDMARK_FACE_KEYS, F), where)


LANDMARK_FACE_KEYS = ("static_lmk_faces_idx", "dynamic_lmk_faces_idx", "full_lmk_faces_idx")
INDEX_KEYS = ("faces", "uv_faces", "parents", *LANDMARK_FACE_KEYS)


def _dtype_problem(a: np.ndarray, integer: bool) -> str | None:
    """What is wrong with the values of a schema array, or None: it must be numeric (bool, int,
    float; not strings, objects or complex numbers), and an `integer` one (indices) may be
    float only with integral values (the loader casts them; 57.7 would become 57). NaN and inf
    are refused (one NaN in shapedirs made every vertex NaN, far from the file)."""
    if a.dtype.kind not in "biuf":
        return "expected a numeric array"
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return f"expected finite numbers, found {np.count_nonzero(~np.isfinite(a))} NaN or inf"
    if integer and a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
        return "expected integer indices"
    return None


def check_indices(arrays: dict, bounds: dict, where: str) -> None:
    """Each arrays[key] for key, n in bounds holds indices in [0, n); FlameFileError naming
    `where` and the key otherwise."""
    for key, hi in bounds.items():
        a = np.asarray(arrays[key])
        if a.size and (a.min() < 0 or a.max() >= hi):
            raise FlameFileError(f"{where}: key '{key}' has indices in [{a.min()}, {a.max()}], expected [0, {hi - 1}]")


# FLAME's kinematic tree: global (root), neck, jaw, left eye, right eye; `lbs` poses this one
FLAME_PARENTS = (-1, 0, 1, 1, 1)


def check_parents(parents, where: str) -> None:
    """parents [J] must be FLAME_PARENTS, the tree the model poses (a file's own tree was checked
    and then not used); FlameFileError naming `where` otherwise."""
    p = [int(x) for x in np.asarray(parents).reshape(-1)]
    if tuple(p) != FLAME_PARENTS:
        raise FlameFileError(f"{where}: key 'parents' is {p}; expected FLAME's kinematic tree {list(FLAME_PARENTS)} "
                             "(global, neck, jaw, left eye, right eye)")


def load_npz(path: str) -> dict:
    """Reads a FLAME npz into a dict of numpy arrays (validated)."""
    if not os.path.isfile(path):
        raise FlameFileError(f"{path}: FLAME model file not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}  # f[k] inflates the member each time: once per key
        arrays = {k: a.astype(np.float32) if a.dtype == np.float16 else a for k, a in arrays.items()}
    except Exception as e:  # noqa: BLE001 -- any unreadable file gets one message
        raise FlameFileError(f"{path}: not a readable npz file ({type(e).__name__}: {e})") from None
    validate(arrays, path)
    return arrays


def save_npz(path: str, arrays: dict) -> str:
    """Validates and writes a FLAME npz (compressed) at exactly `path` (no '.npz' appended),
    whole or not at all (`atomic_file.replacing`). A file that cannot be written:
    `apps.export.WriteError` naming it."""
    from jaxdeca.apps.export import output_file  # numpy + cv2 only
    validate(arrays, path)
    with output_file(path, "wb") as f:  # a file object: no '.npz' appended
        np.savez_compressed(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


# ----------------------------------------------------------------------------- pickles without chumpy / torch

class _ChumpyShim:
    """Stands in for any chumpy class while unpickling; keeps the pickled state."""

    def __init__(self, *args, **kwargs):
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def to_array(self, key: str, where: str) -> np.ndarray:
        state = self.state if isinstance(self.state, dict) else {}
        if "x" in state:  # chumpy.ch.Ch: the value itself
            return np.asarray(state["x"])
        # Other chumpy classes: accept the one array they hold, refuse real expressions.
        found = [v for v in state.values() if isinstance(v, np.ndarray) and v.dtype != object]
        if len(found) == 1:
            return found[0]
        raise FlameFileError(f"{where}: key '{key}' is a chumpy expression ({sorted(state)[:6]}...), "
                             "not a plain chumpy array; re-export the model with plain arrays")


class _SparseShim:
    """Stands in for scipy sparse classes of any scipy version (old pickles reference
    `scipy.sparse.csc`, removed in SciPy 2); rebuilt from the pickled CSC/CSR/COO arrays."""

    fmt = "csc"

    def __init__(self, *args, **kwargs):
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def shape(self) -> tuple:
        """The shape the pickle declares (checked before `toarray` builds it)."""
        return tuple(int(n) for n in self.state.get("_shape", self.state.get("shape")))

    def toarray(self) -> np.ndarray:
        import scipy.sparse as sp

        st = self.state
        shape = self.shape()
        if self.fmt == "coo":  # newer SciPy pickles the indices as 'coords', older as row/col
            row, col = st["coords"] if "coords" in st else (st["row"], st["col"])
            return sp.coo_matrix((st["data"], (row, col)), shape=shape).toarray()
        cls = sp.csc_matrix if self.fmt == "csc" else sp.csr_matrix
        return cls((st["data"], st["indices"], st["indptr"]), shape=shape).toarray()


_SPARSE_SHIMS = {fmt: type(f"_{fmt.capitalize()}Shim", (_SparseShim,), {"fmt": fmt}) for fmt in ("csc", "csr", "coo")}


_TORCH_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _Storage:
    def __init__(self, dtype):
        self.dtype = dtype
        self.data = None


def _storage_unpickler(f, load_record):
    """Unpickler for the inner stream of a torch.save: storages come through persistent ids
    ('storage', storage_type, key, location, numel[, view_metadata]); load_record(key, dtype,
    numel) returns the flat numpy storage (or a placeholder filled later)."""

    class U(_OfficialUnpickler):
        def find_class(self, module, name):
            if module.startswith("torch") and name in _TORCH_DTYPES:
                return _TORCH_DTYPES[name]
            if module.startswith("torch") and name == "UntypedStorage":
                return np.uint8
            return super().find_class(module, name)

        def persistent_load(self, pid):
            if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
                raise pickle.UnpicklingError(f"unsupported torch persistent id {pid!r:.80}")
            dtype = pid[1] if not isinstance(pid[1], str) else np.uint8
            st = load_record(str(pid[2]), np.dtype(dtype), int(pid[4]))
            view = pid[5] if len(pid) > 5 else None
            if view is not None:  # old torch: (view_key, offset, size) of a shared storage
                _, off, n = view
                return _View(st, int(off), int(n))
            return st

    return U(f, encoding="latin1")


class _View:
    def __init__(self, base, offset, n):
        self.base, self.offset, self.n = base, offset, n

    @property
    def data(self):
        return _flat(self.base)[self.offset:self.offset + self.n]


def _flat(storage) -> np.ndarray:
    if isinstance(storage, np.ndarray):
        return storage
    return storage.data


def _torch_legacy_storage(data: bytes) -> np.ndarray:
    """Parses the torch.save stream that `torch.storage._load_from_bytes` receives.

    Every torch version writes the legacy format here (magic, protocol, sys info, pickled
    root, storage keys, then per storage an int64 element count and the raw little-endian
    bytes); a zip-format stream (torch.save's default since 1.6) is accepted too.
    """
    if data[:2] == b"PK":
        return _torch_zip_storage(data)
    f = _io.BytesIO(data)
    for _ in range(3):  # magic number, protocol version, system info
        safe_pickle.load(f)
    storages: dict[str, _Storage] = {}
    root = _storage_unpickler(f, lambda key, dt, numel: storages.setdefault(key, _Storage(dt))).load()
    keys = safe_pickle.load(f)
    for key in keys:
        n = int(np.frombuffer(f.read(8), "<i8")[0])
        st = storages[str(key)]
        st.data = np.frombuffer(f.read(n * st.dtype.itemsize), st.dtype)
    return _flat(root)


def _torch_zip_storage(data: bytes):
    """The zip torch.save format: <archive>/data.pkl plus one raw file per storage key."""
    import zipfile

    z = zipfile.ZipFile(_io.BytesIO(data))
    names = z.namelist()
    pkl = next(n for n in names if n.endswith("/data.pkl") or n == "data.pkl")
    prefix = pkl[: -len("data.pkl")]
    order = "<"
    if prefix + "byteorder" in names and z.read(prefix + "byteorder").strip() == b"big":
        order = ">"

    def load_record(key, dt, numel):
        # torch.save stores each storage uncompressed and whole; checked before reading, so that a
        # crafted member cannot inflate to more than the file holds
        info = z.getinfo(f"{prefix}data/{key}")
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != numel * dt.itemsize:
            raise pickle.UnpicklingError(f"storage {info.filename} holds {info.file_size} bytes "
                                         f"{'compressed' if info.compress_type else 'stored'}, expected "
                                         f"{numel * dt.itemsize} stored ({numel} x {dt})")
        return np.frombuffer(z.read(info), dt.newbyteorder(order)).astype(dt)

    root = _storage_unpickler(_io.BytesIO(z.read(pkl)), load_record).load()
    return root if isinstance(root, np.ndarray) or not hasattr(root, "data") else _flat(root)


def _rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor(_v2) -> a numpy array (copy) with torch's strides; a size,
    stride or offset reaching outside the storage is an UnpicklingError (as_strided would read
    other memory, or crash)."""
    flat = _flat(storage)
    size, stride, offset = tuple(int(n) for n in size), tuple(int(n) for n in stride), int(offset)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))  # the last element's index
    if len(size) != len(stride) or offset < 0 or min((*size, *stride), default=0) < 0 or (
            0 not in size and last >= flat.size):
        raise pickle.UnpicklingError(f"tensor of size {size}, stride {stride}, offset {offset} reaches outside "
                                     f"its storage of {flat.size} elements")
    if len(size) == 0:
        return flat[offset].copy()
    item = flat.dtype.itemsize
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)).copy()


class _TensorType:
    """Placeholder for torch.Tensor referenced by `_rebuild_from_type_v2`."""


class _OfficialUnpickler(safe_pickle.Unpickler):
    """Maps chumpy classes to a shim and torch tensors to numpy, without importing either; other
    globals are safe_pickle's (numpy arrays, dicts; no code runs)."""

    def find_class(self, module, name):
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyShim
        if module.startswith("scipy.sparse") and name in ("csc_matrix", "csr_matrix", "coo_matrix"):
            return _SPARSE_SHIMS[name[:3]]
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch.storage" and name == "_load_from_bytes":
            return _torch_legacy_storage
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks, *a: data
        if module == "torch._tensor" and name == "_rebuild_from_type_v2":
            return lambda func, new_type, args, state: func(*args)
        if module in ("torch", "torch._tensor") and name == "Tensor":
            return _TensorType
        if module.startswith("torch"):
            raise pickle.UnpicklingError(f"unsupported torch object {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: str, what: str):
    if not os.path.isfile(path):
        raise FlameFileError(f"{path}: {what} not found")
    try:
        with open(path, "rb") as f:
            if path.endswith(".npy"):
                safe_pickle.skip_npy_header(f)
            obj = safe_pickle.load(f, _OfficialUnpickler)
    except FlameFileError:
        raise
    except Exception as e:  # noqa: BLE001 -- truncated/corrupt/wrong file: one clear message
        raise FlameFileError(f"{path}: cannot read {what} ({type(e).__name__}: {e})") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise FlameFileError(f"{path}: {what} should hold a dict, found {type(obj).__name__}")
    return obj


def _array(d: dict, key: str, where: str, sparse_shape: tuple | None = None) -> np.ndarray:
    """d[key] as a numpy array (chumpy and scipy-sparse stand-ins converted); a sparse matrix
    declaring another shape than `sparse_shape` is refused before it is made dense (a small file
    declaring (5, 10^9) took gigabytes)."""
    if key not in d:
        raise FlameFileError(f"{where}: missing key '{key}'")
    v = d[key]
    if isinstance(v, _ChumpyShim):
        return v.to_array(key, where)
    if hasattr(v, "toarray"):  # scipy sparse (or its shim)
        try:
            declared = v.shape() if isinstance(v, _SparseShim) else None
            if sparse_shape is None or declared in (None, sparse_shape):
                return np.asarray(v.toarray())
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise FlameFileError(f"{where}: key '{key}' is a malformed sparse matrix ({e})") from None
        raise FlameFileError(f"{where}: key '{key}' has shape {declared}, expected {sparse_shape}")
    return np.asarray(v)


def _numeric(d: dict, key: str, where: str, dtype, sparse_shape: tuple | None = None) -> np.ndarray:
    """`_array` cast to `dtype`; a value that is no numeric array (a string, a dict, None...) or,
    for an integer dtype, holds non-integral floats is a FlameFileError naming the key."""
    a = _array(d, key, where, sparse_shape)
    problem = _dtype_problem(a, np.issubdtype(dtype, np.integer))
    if problem:
        raw = d[key]
        numeric = a.dtype.kind in "biuf" or isinstance(raw, (np.ndarray, _ChumpyShim))
        raise FlameFileError(f"{where}: key '{key}' holds {f'{a.dtype} values' if numeric else type(raw).__name__}, "
                             f"{problem}")
    return a.astype(dtype)


def _landmark(d: dict, key: str, where: str, dtype) -> np.ndarray:
    """A landmark entry in the schema's shape (REQUIRED[key]) once its size-1 axes are dropped
    (the official full_* entries are (1, 68) and (1, 68, 3)); any other shape is refused as the
    file holds it, not reshaped."""
    a = _numeric(d, key, where, dtype)
    want = REQUIRED[key]
    squeezed = a.reshape(tuple(n for n in a.shape if n != 1))
    if squeezed.shape != want:
        raise FlameFileError(f"{where}: key '{key}' has shape {a.shape}, expected {want}")
    return squeezed


_PKL_NAMES = {"lbs_weights": "weights", "faces": "f"}  # npz schema key -> generic_model.pkl's


def read_generic_model_pkl(path: str) -> dict:
    """Official FLAME `generic_model.pkl` -> the geometry keys of the npz schema."""
    d = _unpickle(path, "FLAME model pickle")
    shapedirs = _numeric(d, "shapedirs", path, np.float32)
    if shapedirs.ndim != 3 or shapedirs.shape[1] != 3 or shapedirs.shape[2] < 301:
        raise FlameFileError(f"{path}: key 'shapedirs' has shape {shapedirs.shape}, expected (V, 3, 400) "
                             "(300 identity + 100 expression components)")
    kintree, J = _numeric(d, "kintree_table", path, np.int64), REQUIRED["parents"][0]
    if kintree.shape != (2, J):
        raise FlameFileError(f"{path}: key 'kintree_table' has shape {kintree.shape}, expected (2, {J})")
    parents = kintree[0].copy()
    parents[0] = -1
    check_parents(parents, path)
    v_template = _numeric(d, "v_template", path, np.float32)
    out = dict(
        v_template=v_template,
        shapedirs=np.ascontiguousarray(shapedirs[:, :, :300]),
        exprdirs=np.ascontiguousarray(shapedirs[:, :, 300:]),
        posedirs=_numeric(d, "posedirs", path, np.float32),
        J_regressor=_numeric(d, "J_regressor", path, np.float32, (J, len(v_template)) if v_template.ndim else None),
        parents=parents.astype(np.int32),
        lbs_weights=_numeric(d, "weights", path, np.float32),
        faces=_numeric(d, "f", path, np.int32),
    )
    # shapes and indices checked under the pickle's names for them (weights, f), not the npz's
    named = {_PKL_NAMES.get(k, k): v for k, v in out.items()}
    _check_shapes(named, {_PKL_NAMES.get(k, k): v for k, v in REQUIRED.items() if k in out}, path, {}, required=True)
    check_indices(named, {"f": out["v_template"].shape[0]}, path)
    return out


def read_landmark_embedding(path: str) -> dict:
    """DECA's `landmark_embedding.npy` -> the six landmark keys of the npz schema (`_landmark`)."""
    d = _unpickle(path, "landmark embedding")
    return {k: _landmark(d, k, path, np.int32 if k.endswith("_idx") else np.float32)
           for k in ("static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx",
                     "dynamic_lmk_bary_coords", "full_lmk_faces_idx", "full_lmk_bary_coords")}


def read_albedo(path: str) -> dict:
    """FLAME_albedo_from_BFM.npz (MU, PC) or FLAME_texture.npz (mean, tex_dir, 0..255).

    Returns albedo_mean [R, R, 3] and albedo_basis [R, R, 3, K] in the file's channel order,
    values 0..1 (DECA's FLAMETex reshapes the flat BFM arrays to (R, R, 3)). The components are
    the basis's last axis (PC (R*R*3, K), tex_dir (R, R, 3, K)); any other layout, e.g. a
    transposed PC (K, R*R*3), is refused rather than reshaped into a scrambled albedo.
    """
    if not os.path.isfile(path):
        raise FlameFileError(f"{path}: albedo file not found")
    try:
        f = dict(np.load(path, allow_pickle=False))
    except Exception as e:  # noqa: BLE001
        raise FlameFileError(f"{path}: not a readable npz file ({type(e).__name__}: {e})") from None
    if "MU" in f and "PC" in f:
        mean, basis = _numeric(f, "MU", path, np.float32).reshape(-1), _numeric(f, "PC", path, np.float32)
    elif "mean" in f and "tex_dir" in f:
        mean = _numeric(f, "mean", path, np.float32).reshape(-1) / 255.0
        basis = _numeric(f, "tex_dir", path, np.float32) / 255.0
    else:
        raise FlameFileError(f"{path}: expected keys ('MU', 'PC') or ('mean', 'tex_dir'), found {sorted(f)}")
    R = int(round(np.sqrt(mean.size / 3)))
    if R < 1 or R * R * 3 != mean.size:
        raise FlameFileError(f"{path}: albedo mean has {mean.size} values, expected R*R*3 for a square R x R texture")
    if basis.ndim < 2 or int(np.prod(basis.shape[:-1])) != mean.size:  # e.g. a transposed PC (K, R*R*3)
        raise FlameFileError(f"{path}: albedo basis has shape {basis.shape}, expected ({mean.size}, K) or "
                             f"({R}, {R}, 3, K) (components last)")
    return dict(albedo_mean=mean.reshape(R, R, 3), albedo_basis=basis.reshape(R, R, 3, basis.shape[-1]))


def read_obj(path: str) -> dict:
    """`head_template.obj` -> vertices [V,3], faces [F,3], uv_coords [T,2], uv_faces [F,3] (0-based)."""
    m = wavefront.read(path, FlameFileError)
    if not len(m["faces"]):
        raise FlameFileError(f"{path}: no faces found")
    if m["uv_faces"] is None or not len(m["uv_coords"]):
        raise FlameFileError(f"{path}: faces have no texture (vt) indices; a UV layout is required")
    return dict(vertices=m["vertices"].astype(np.float32), faces=m["faces"].astype(np.int32),
                uv_coords=m["uv_coords"].astype(np.float32), uv_faces=m["uv_faces"].astype(np.int32))


def read_uv_mask(path: str, size: int = 256) -> np.ndarray:
    """A DECA UV mask PNG -> [size, size] float32 (red channel / 255), resized as DECA does with
    F.interpolate's default 'nearest' (source texel floor(dst * R / size)), not blended.

    DECA reads the mask as skimage's imread(path)[:, :, 0], the red channel (not a grey
    conversion, which differs where the channels do); a single-channel PNG is its grey, alpha
    is ignored."""
    import cv2  # local: only this reader needs OpenCV

    img = cv2.imread(path, cv2.IMREAD_COLOR) if os.path.isfile(path) else None  # 8-bit BGR
    if img is None:
        raise FlameFileError(f"{path}: not a readable mask image")
    img = img[:, :, 2]
    rows, cols = (np.minimum(np.floor(np.arange(size, dtype=np.float32) * np.float32(n / size)), n - 1).astype(np.int64)
                  for n in img.shape[:2])
    return img[rows[:, None], cols[None, :]].astype(np.float32) / 255.0


def _read_numeric_npy(path: str, what: str) -> np.ndarray:
    """A plain numeric `.npy` -> its array; an HTML page, a .npz, a pickle or a truncated file
    saved under that name -> one FlameFileError naming the file."""
    if not os.path.isfile(path):
        raise FlameFileError(f"{path}: {what} file not found")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            if magic != b"\x93NUMPY":
                raise ValueError(f"not an .npy file (starts with {magic!r})")
            f.seek(0)
            a = np.load(f, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 -- truncated/corrupt/wrong file: one clear message
        raise FlameFileError(f"{path}: cannot read {what} ({type(e).__name__}: {e})") from None
    if a.dtype.kind not in "biuf":
        raise FlameFileError(f"{path}: {what} has dtype {a.dtype}, expected numbers")
    return a


def read_fixed_displacement(path: str) -> np.ndarray:
    """DECA's `fixed_displacement_256.npy` -> [256, 256] float32 UV displacement."""
    a = _read_numeric_npy(path, "fixed displacement")
    if a.shape != (256, 256):
        raise FlameFileError(f"{path}: fixed displacement has shape {a.shape}, expected (256, 256)")
    return a.astype(np.float32)


def check_same_mesh(mesh: dict, arrays: dict, obj: str) -> None:
    """The OBJ's uv_faces are paired with the model's faces row by row, so its vertices must be
    as many as the model's (V) and its faces [F, 3] the model's, in the same order and corner
    order (the official head_template.obj's are); FlameFileError naming `obj` and the first
    differing face otherwise."""
    V, F = arrays["v_template"].shape[0], arrays["faces"].shape[0]
    if mesh["vertices"].shape[0] != V:
        raise FlameFileError(f"{obj}: has {mesh['vertices'].shape[0]} vertices, the FLAME model {V}")
    if mesh["faces"].shape[0] != F:
        raise FlameFileError(f"{obj}: has {mesh['faces'].shape[0]} faces, the FLAME model {F}")
    differ = np.flatnonzero(np.any(mesh["faces"] != arrays["faces"], axis=1))
    if differ.size:
        i = int(differ[0])
        raise FlameFileError(f"{obj}: face {i} is {tuple(map(int, mesh['faces'][i]))}, the FLAME model's face {i} is "
                             f"{tuple(map(int, arrays['faces'][i]))} ({differ.size} faces differ); the OBJ's faces must "
                             "be the model's, in its order, for its UV faces to pair with them")


def assemble(model_pkl: str, landmarks: str, obj: str, albedo: str | None = None, uv_face_eye_mask: str | None = None,
             uv_face_mask: str | None = None, fixed_displacement: str | None = None) -> dict:
    """Reads the official files into one validated FLAME npz dict."""
    arrays = read_generic_model_pkl(model_pkl)
    arrays.update(read_landmark_embedding(landmarks))
    check_indices(arrays, dict.fromkeys(LANDMARK_FACE_KEYS, arrays["faces"].shape[0]), landmarks)
    mesh = read_obj(obj)
    check_same_mesh(mesh, arrays, obj)
    arrays.update(uv_coords=mesh["uv_coords"], uv_faces=mesh["uv_faces"])
    if albedo:
        arrays.update(read_albedo(albedo))
    if uv_face_eye_mask:
        arrays["uv_face_eye_mask"] = read_uv_mask(uv_face_eye_mask)
    if uv_face_mask:
        arrays["uv_face_mask"] = read_uv_mask(uv_face_mask)
    if fixed_displacement:
        arrays["fixed_displacement"] = read_fixed_displacement(fixed_displacement)
    validate(arrays, model_pkl)
    return arrays


OFFICIAL_NAMES = dict(landmarks="landmark_embedding.npy", obj="head_template.obj",
                      albedo=("FLAME_albedo_from_BFM.npz", "FLAME_texture.npz"),
                      uv_face_eye_mask="uv_face_eye_mask.png", uv_face_mask="uv_face_mask.png",
                      fixed_displacement="fixed_displacement_256.npy")


def read_official(path: str) -> dict:
    """A folder laid out like DECA's `data/` (or the generic_model.pkl inside one) -> npz dict.

    Needs generic_model.pkl (or the given .pkl), landmark_embedding.npy and head_template.obj;
    the albedo (FLAME_albedo_from_BFM.npz, else FLAME_texture.npz), the UV masks and
    fixed_displacement_256.npy are picked up when present.
    """
    directory, model_pkl = (path, os.path.join(path, "generic_model.pkl")) if os.path.isdir(path) else \
        (os.path.dirname(os.path.abspath(path)), path)
    found = {}
    for role, names in OFFICIAL_NAMES.items():
        for name in (names,) if isinstance(names, str) else names:
            if os.path.isfile(os.path.join(directory, name)):
                found[role] = os.path.join(directory, name)
                break
    missing = ([os.path.basename(model_pkl)] if not os.path.isfile(model_pkl) else []) + \
        [OFFICIAL_NAMES[role] for role in ("landmarks", "obj") if role not in found]
    if missing:  # every file the folder lacks, the model pickle first
        raise FlameFileError(f"{directory}: missing {', '.join(missing)} (the FLAME files DECA's data/ folder holds)")
    return assemble(model_pkl, found["landmarks"], found["obj"], found.get("albedo"), found.get("uv_face_eye_mask"),
                    found.get("uv_face_mask"), found.get("fixed_displacement"))


# ----------------------------------------------------------------------------- writers of the official layouts

def _fake_chumpy():
    """A throwaway `chumpy.ch.Ch` class so pickles reference chumpy exactly like official files."""
    ch_mod = types.ModuleType("chumpy.ch")
    pkg = types.ModuleType("chumpy")

    class Ch:  # noqa: D401 -- mirrors chumpy's class name
        def __init__(self, x):
            self.x = np.asarray(x, np.float64)

        def __getstate__(self):
            return {"x": self.x, "_dirty_vars": set(), "_itr": None}

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    ch_mod.Ch = Ch
    pkg.ch = ch_mod
    return pkg, ch_mod, Ch


def write_generic_model_pkl(path: str, arrays: dict, chumpy: bool = True) -> str:
    """Writes the geometry of a FLAME npz dict as an official `generic_model.pkl`.

    Identity and expression bases are padded with zero columns to 300 + 100 (the official
    (V, 3, 400) shapedirs). chumpy=True pickles v_template/shapedirs/posedirs/weights as
    chumpy `Ch` objects (as the official file does; chumpy itself is not needed);
    chumpy=False writes plain numpy arrays, which smplx can read without chumpy. With
    chumpy=True the pickle also names `numpy.core.multiarray` and `scipy.sparse.csc` like
    the official Python-2 file (the reader maps both to today's modules).
    """
    import scipy.sparse as sp

    V = arrays["v_template"].shape[0]
    shp = np.zeros((V, 3, 300), np.float64)
    exp = np.zeros((V, 3, 100), np.float64)
    shp[:, :, :arrays["shapedirs"].shape[2]] = arrays["shapedirs"][:, :, :300]
    exp[:, :, :arrays["exprdirs"].shape[2]] = arrays["exprdirs"][:, :, :100]
    parents = np.asarray(arrays["parents"], np.int64)
    kintree = np.stack([np.where(parents < 0, 4294967295, parents), np.arange(len(parents))]).astype(np.int64)
    d = dict(
        v_template=np.asarray(arrays["v_template"], np.float64), shapedirs=np.concatenate([shp, exp], 2),
        posedirs=np.asarray(arrays["posedirs"], np.float64), weights=np.asarray(arrays["lbs_weights"], np.float64),
        J_regressor=sp.csc_matrix(np.asarray(arrays["J_regressor"], np.float64)), kintree_table=kintree,
        f=np.asarray(arrays["faces"], np.uint32), bs_style="lbs", bs_type="lrotmin",
    )
    d["J"] = np.asarray(arrays["J_regressor"], np.float64) @ d["v_template"]
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    try:
        if chumpy:
            pkg, ch_mod, Ch = _fake_chumpy()
            sys.modules["chumpy"], sys.modules["chumpy.ch"] = pkg, ch_mod
            for k in ("v_template", "shapedirs", "posedirs", "weights", "J"):
                d[k] = Ch(d[k])
        raw = pickle.dumps(d, protocol=2)
        if chumpy:  # the official file was pickled by Python 2 with NumPy 1 and an old SciPy
            raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
            raw = raw.replace(b"cscipy.sparse._csc\n", b"cscipy.sparse.csc\n")
        with open(path, "wb") as f:
            f.write(raw)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return path


def write_landmark_embedding(path: str, arrays: dict, torch_tensors: bool = True) -> str:
    """Writes DECA's `landmark_embedding.npy`; the dynamic entries are torch tensors when
    torch is importable and `torch_tensors` (as in the official file)."""
    dyn_idx = np.asarray(arrays["dynamic_lmk_faces_idx"], np.int64)
    dyn_bary = np.asarray(arrays["dynamic_lmk_bary_coords"], np.float32)
    if torch_tensors:
        import torch

        dyn_idx, dyn_bary = torch.from_numpy(dyn_idx), torch.from_numpy(dyn_bary)
    d = dict(
        static_lmk_faces_idx=np.asarray(arrays["static_lmk_faces_idx"], np.int64),
        static_lmk_bary_coords=np.asarray(arrays["static_lmk_bary_coords"], np.float64),
        dynamic_lmk_faces_idx=dyn_idx, dynamic_lmk_bary_coords=dyn_bary,
        full_lmk_faces_idx=np.asarray(arrays["full_lmk_faces_idx"], np.int64).reshape(1, 68),
        full_lmk_bary_coords=np.asarray(arrays["full_lmk_bary_coords"], np.float64).reshape(1, 68, 3),
    )
    np.save(path, d, allow_pickle=True)
    return path


def write_albedo_npz(path: str, mean: np.ndarray, basis: np.ndarray, fmt: str = "BFM") -> str:
    """Writes an albedo model in the official layout: fmt 'BFM' (MU (1, R*R*3), PC (R*R*3, K),
    0..1) or 'FLAME' (mean (R,R,3), tex_dir (R,R,3,K), 0..255)."""
    mean, basis = np.asarray(mean, np.float32), np.asarray(basis, np.float32)
    if fmt == "BFM":
        np.savez(path, MU=mean.reshape(1, -1), PC=basis.reshape(mean.size, -1))
    elif fmt == "FLAME":
        np.savez(path, mean=mean * 255.0, tex_dir=basis * 255.0)
    else:
        raise ValueError(f"fmt must be 'BFM' or 'FLAME', got {fmt!r}")
    return path


def write_obj_template(path: str, vertices: np.ndarray, faces: np.ndarray, uv_coords: np.ndarray,
                       uv_faces: np.ndarray) -> str:
    """Writes a `head_template.obj`-style OBJ (v, vt, f v/vt, 1-based)."""
    return wavefront.write(path, vertices, faces, uv_coords=uv_coords, uv_faces=uv_faces)


def write_official(directory: str, arrays: dict, chumpy: bool = True) -> dict:
    """Writes a FLAME npz dict as the set of official files; returns their paths by role."""
    os.makedirs(directory, exist_ok=True)
    import cv2

    paths = dict(
        model_pkl=write_generic_model_pkl(os.path.join(directory, "generic_model.pkl"), arrays, chumpy=chumpy),
        landmarks=write_landmark_embedding(os.path.join(directory, "landmark_embedding.npy"), arrays,
                                           torch_tensors=_torch_available()),
        obj=write_obj_template(os.path.join(directory, "head_template.obj"), arrays["v_template"], arrays["faces"],
                               arrays["uv_coords"], arrays["uv_faces"]),
    )
    if "albedo_mean" in arrays:
        paths["albedo"] = write_albedo_npz(os.path.join(directory, "FLAME_albedo_from_BFM.npz"),
                                           arrays["albedo_mean"], arrays["albedo_basis"], "BFM")
    for key, name in (("uv_face_eye_mask", "uv_face_eye_mask.png"), ("uv_face_mask", "uv_face_mask.png")):
        if key in arrays:
            p = os.path.join(directory, name)
            cv2.imwrite(p, (np.clip(arrays[key], 0, 1) * 255 + 0.5).astype(np.uint8))
            paths[key] = p
    if "fixed_displacement" in arrays:
        p = os.path.join(directory, "fixed_displacement_256.npy")
        np.save(p, np.asarray(arrays["fixed_displacement"], np.float32))
        paths["fixed_displacement"] = p
    return paths


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
