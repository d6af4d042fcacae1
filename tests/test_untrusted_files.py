"""Downloaded model and data files are untrusted: reading one runs no code from it, and a crafted
one cannot make a loader read outside its buffers or allocate far more than the file holds.

Each loader reads a file written in its official layout with one hostile entry: a pickled
callable (a payload that would write a marker file), a torch tensor reaching outside its
storage, a sparse matrix declaring a huge shape, a deflated torch storage, NaN values."""
import collections
import io as _io
import os
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

from flame_testing import random_flame
from jaxdeca import safe_pickle
from jaxdeca.convert import torch_io
from jaxdeca.evaluation import now_predict
from jaxdeca.evaluation.meshio import NowFileError
from jaxdeca.flame import io


class Payload:
    """Pickles as a call of exec() that writes `marker`: what a malicious file would hold."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _npy_object(path, obj_pickle: bytes):
    """An .npy file of a 0-d object array whose pickle is `obj_pickle` (as np.save writes one)."""
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (), }"
    header += " " * (63 - 10 - len(header)) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + obj_pickle)


def test_a_pickled_callable_is_refused_by_every_pickle_reader(tmp_path):
    """FLAME's model pickle, DECA's landmark embedding, VGGFace2's weights and NoW's boxes were
    read with pickle.load (np.load(allow_pickle=True)), which ran any callable they named."""
    marker = tmp_path / "code_ran"
    payload = Payload(marker)
    a = random_flame()
    model = io.write_generic_model_pkl(str(tmp_path / "generic_model.pkl"), a, chumpy=False)
    with open(model, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    with open(model, "wb") as f:
        pickle.dump(dict(d, shapedirs=payload), f, protocol=2)
    lmk = str(tmp_path / "landmark_embedding.npy")
    np.save(lmk, np.array({"static_lmk_faces_idx": payload}, dtype=object), allow_pickle=True)
    vgg = str(tmp_path / "resnet50_ft_weight.pkl")
    with open(vgg, "wb") as f:
        pickle.dump({"conv1.weight": payload}, f, protocol=2)
    box = str(tmp_path / "box.npy")
    np.save(box, np.array(payload, dtype=object), allow_pickle=True)
    for read, path, error in ((io.read_generic_model_pkl, model, io.FlameFileError),
                              (io.read_landmark_embedding, lmk, io.FlameFileError),
                              (torch_io.load_pickle_arrays, vgg, torch_io.ConversionError),
                              (now_predict.read_bbox, box, NowFileError)):
        with pytest.raises(error, match=f"{os.path.basename(path)}.*refusing to load builtins.exec"):
            read(path)
        assert not marker.exists(), path


def test_the_pickles_of_numpy_arrays_scalars_and_dicts_still_load(tmp_path):
    """What the official files hold (numpy arrays and scalars, dicts, sets, OrderedDicts) loads
    under every protocol, and Python 2 names (__builtin__, copy_reg, numpy.core) map."""
    obj = dict(a=np.arange(6, dtype=np.float32).reshape(2, 3), s=np.float64(2.5), i=np.int64(3),
               o=collections.OrderedDict(x=1), st={1, 2}, b=b"xy", t=(1.0, "z"))
    for protocol in range(6):
        got = safe_pickle.load(_io.BytesIO(pickle.dumps(obj, protocol=protocol)))
        assert got.keys() == obj.keys() and got["st"] == {1, 2} and got["b"] == b"xy", protocol
        np.testing.assert_array_equal(got["a"], obj["a"])
        assert got["s"] == 2.5 and got["i"] == 3 and type(got["o"]) is collections.OrderedDict
    assert safe_pickle.python3_name("__builtin__", "set") == ("builtins", "set")
    assert safe_pickle.python3_name("copy_reg", "_reconstructor") == ("copyreg", "_reconstructor")
    assert safe_pickle.python3_name("numpy.core.multiarray", "_reconstruct") == ("numpy._core.multiarray",
                                                                                "_reconstruct")
    box = str(tmp_path / "box.npy")
    now_predict.write_bbox(box, 1, 2, 3, 4)
    assert now_predict.read_bbox(box) == (1.0, 2.0, 3.0, 4.0)


def test_a_callable_inside_the_landmark_files_torch_stream_is_refused(tmp_path):
    """DECA's landmark embedding nests torch.save streams; their headers were read with plain
    pickle.load, past the model pickle's own checks."""
    torch = pytest.importorskip("torch")
    import torch.storage

    inner = pickle.dumps(Payload(tmp_path / "code_ran"), protocol=2)

    class Storage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (inner,)

    path = str(tmp_path / "landmark_embedding.npy")
    _npy_object(path, pickle.dumps({"static_lmk_faces_idx": Storage()}, protocol=2))
    with pytest.raises(io.FlameFileError, match="landmark_embedding.npy.*refusing to load builtins.exec"):
        io.read_landmark_embedding(path)
    assert not (tmp_path / "code_ran").exists()


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")  # torch's, for the forged storage below
@pytest.mark.parametrize("size,stride,offset", [((79, 17, 3), (51, 3, 1), 0), ((79, 17, 3), (10**9, 3, 1), 0),
                                                ((2,), (1,), 5), ((2,), (-1,), 1)])
def test_a_tensor_reaching_outside_its_storage_is_refused(tmp_path, size, stride, offset):
    """as_strided over a 1-element storage read whatever memory followed it (different values
    each read, written into flame.npz) or crashed the process (stride 10^9)."""
    torch = pytest.importorskip("torch")

    class Forged:
        def __reduce__(self):
            storage = torch.zeros(1).storage()
            return torch._utils._rebuild_tensor_v2, (storage, offset, size, stride, False, collections.OrderedDict())

    path = io.write_landmark_embedding(str(tmp_path / "landmark_embedding.npy"), random_flame())
    d = np.load(path, allow_pickle=True).item()
    d["dynamic_lmk_bary_coords"] = Forged()
    np.save(path, d, allow_pickle=True)
    with pytest.raises(io.FlameFileError, match=r"landmark_embedding.npy.*outside its storage of 1 elements"):
        io.read_landmark_embedding(path)


def test_a_deflated_or_oversized_torch_storage_is_refused_before_it_is_inflated(tmp_path):
    """torch.save stores each storage uncompressed; a 1 MB file whose deflated member inflates to
    1 GB took 2.2 GB before any check. The member's kind and size are checked first."""
    pytest.importorskip("torch")
    import torch.storage

    storage = object()

    class P(pickle.Pickler):
        def persistent_id(self, obj):  # one float32 storage of 1 element, key '0'
            return ("storage", torch.FloatStorage, "0", "cpu", 1) if obj is storage else None

    root = _io.BytesIO()
    P(root, protocol=2).dump(storage)
    for compression, member in ((zipfile.ZIP_DEFLATED, bytes(4)), (zipfile.ZIP_STORED, bytes(400))):
        stream = _io.BytesIO()
        with zipfile.ZipFile(stream, "w", compression) as z:
            z.writestr("archive/data.pkl", root.getvalue())
            z.writestr("archive/data/0", member)

        class Storage:
            def __reduce__(self, data=stream.getvalue()):
                return torch.storage._load_from_bytes, (data,)

        path = str(tmp_path / "landmark_embedding.npy")
        _npy_object(path, pickle.dumps({"static_lmk_faces_idx": Storage()}, protocol=2))
        with pytest.raises(io.FlameFileError, match=r"storage archive/data/0 holds \d+ bytes .* expected 4 stored"):
            io.read_landmark_embedding(path)


def test_a_sparse_j_regressor_declaring_another_shape_is_refused_before_it_is_made_dense(tmp_path):
    """A small generic_model.pkl declaring a COO J_regressor of shape (5, 10^7) was made dense
    (400 MB; 10^9 columns would take 40 GB) before its shape was checked against V."""
    a = random_flame()
    V = a["v_template"].shape[0]
    path = io.write_generic_model_pkl(str(tmp_path / "generic_model.pkl"), a, chumpy=False)
    with open(path, "rb") as f:
        d = pickle.load(f)
    d["J_regressor"] = sp.coo_matrix(([1.0], ([0], [0])), shape=(5, 10**7))
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=4)
    tracemalloc.start()
    try:
        with pytest.raises(io.FlameFileError, match=rf"key 'J_regressor' has shape \(5, 10000000\), expected \(5, {V}\)"):
            io.read_generic_model_pkl(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, peak


def test_nan_or_inf_values_in_a_flame_file_are_refused_naming_the_key(tmp_path):
    """One NaN in shapedirs passed the checks and made every vertex NaN, far from the file."""
    a = random_flame()
    for key, value in (("shapedirs", np.nan), ("lbs_weights", np.inf), ("static_lmk_bary_coords", -np.inf)):
        bad = dict(a, **{key: a[key].copy()})
        bad[key].reshape(-1)[0] = value
        path = str(tmp_path / f"{key}.npz")
        np.savez(path, **bad)  # io.save_npz refuses it too
        with pytest.raises(io.FlameFileError, match=f"{key}.npz: key '{key}' .*expected finite numbers, found 1 NaN or inf"):
            io.load_npz(path)
    path = io.write_generic_model_pkl(str(tmp_path / "generic_model.pkl"), a, chumpy=False)
    with open(path, "rb") as f:
        d = pickle.load(f)
    d["v_template"] = d["v_template"].copy()
    d["v_template"][3, 1] = np.nan
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    with pytest.raises(io.FlameFileError, match="generic_model.pkl: key 'v_template' .*found 1 NaN or inf"):
        io.read_generic_model_pkl(path)
