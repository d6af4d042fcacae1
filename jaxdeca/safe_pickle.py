"""Unpickling user-supplied data files without running code from them.

FLAME's `generic_model.pkl`, DECA's `landmark_embedding.npy`, VGGFace2's
`resnet50_ft_weight.pkl` and NoW's detected-face boxes are pickles downloaded from the
internet. `pickle.load` calls whatever callable a pickle names (`os.system` included), so these
files are read with `Unpickler`, which resolves only the globals that pickled numpy arrays,
scalars, dicts and sets need (`SAFE_GLOBALS`; Python 2 names such as `__builtin__` and
`copy_reg` are mapped first) and refuses every other one with an UnpicklingError naming it.
Readers of other objects (jaxdeca.flame.io's chumpy, scipy and torch stand-ins) subclass it and
answer their own names before calling `find_class` here.
"""
import _compat_pickle
import pickle

SAFE_GLOBALS = frozenset({
    *(("builtins", n) for n in ("set", "frozenset", "object", "slice", "complex", "bytearray")),
    ("copyreg", "_reconstructor"), ("_codecs", "encode"), ("collections", "OrderedDict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
})


def python3_name(module: str, name: str) -> tuple[str, str]:
    """A global as Python 3 and NumPy 2 name it: `__builtin__.set` -> `builtins.set`,
    `numpy.core.multiarray` (NumPy 1) -> `numpy._core.multiarray`."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module),
                                                                    name))
    if module == "numpy.core" or module.startswith("numpy.core."):
        module = "numpy._core" + module[len("numpy.core"):]
    return module, name


class Unpickler(pickle.Unpickler):
    """pickle.Unpickler resolving SAFE_GLOBALS only; any other global is an UnpicklingError."""

    def find_class(self, module, name):
        module, name = python3_name(module, name)
        if (module, name) not in SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a data file holds arrays, "
                                         "not code or other objects")
        return super().find_class(module, name)


def load(f, unpickler=Unpickler):
    """One pickled object from the binary file object `f` (Python 2 strings read as latin-1,
    as NumPy and DECA's loaders read them)."""
    return unpickler(f, encoding="latin1").load()


def skip_npy_header(f) -> None:
    """Reads the header of an `.npy` file holding a pickled object array (np.save of a dict), so
    that `load(f)` reads the object next; UnpicklingError for another file."""
    if f.read(6) != b"\x93NUMPY":
        raise pickle.UnpicklingError("not an .npy file")
    major = f.read(2)[0]
    header = f.read(int.from_bytes(f.read(2 if major == 1 else 4), "little")).decode("latin1")
    if "'O'" not in header and '"O"' not in header and "|O" not in header:
        raise pickle.UnpicklingError(f"expected a pickled object array, header {header.strip()}")
