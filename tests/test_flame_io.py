"""Official-layout FLAME files: written by the test, read without chumpy and without torch."""
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from flame_testing import random_flame
from jaxdeca.flame import convert, io, texture

GEOMETRY = ("v_template", "posedirs", "J_regressor", "lbs_weights", "faces")
LANDMARKS = ("static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords",
             "full_lmk_faces_idx", "full_lmk_bary_coords")


def test_chumpy_pickle_read_without_chumpy(tmp_path):
    arrays = random_flame()
    path = io.write_generic_model_pkl(str(tmp_path / "generic_model.pkl"), arrays, chumpy=True)
    raw = open(path, "rb").read()
    assert b"chumpy.ch" in raw and b"scipy.sparse" in raw  # referenced exactly like the official file
    assert "chumpy" not in sys.modules
    got = io.read_generic_model_pkl(path)
    for k in GEOMETRY:
        np.testing.assert_allclose(got[k], arrays[k], atol=1e-7, err_msg=k)
    assert got["shapedirs"].shape == (120, 3, 300) and got["exprdirs"].shape == (120, 3, 100)
    np.testing.assert_allclose(got["shapedirs"][:, :, :100], arrays["shapedirs"], atol=1e-7)
    np.testing.assert_allclose(got["exprdirs"][:, :, :50], arrays["exprdirs"], atol=1e-7)
    np.testing.assert_array_equal(got["parents"], [-1, 0, 1, 1, 1])


def test_landmark_embedding_with_torch_tensors_read_without_torch(tmp_path):
    pytest.importorskip("torch")
    arrays = random_flame()
    path = io.write_landmark_embedding(str(tmp_path / "landmark_embedding.npy"), arrays, torch_tensors=True)
    assert b"torch._utils" in open(path, "rb").read()
    np.savez(tmp_path / "expect.npz", **{k: arrays[k] for k in LANDMARKS})
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        import numpy as np
        from jaxdeca.flame import io
        got = io.read_landmark_embedding({path!r})
        exp = np.load({str(tmp_path / "expect.npz")!r})
        for k in exp.files:
            np.testing.assert_allclose(got[k], exp[k], atol=1e-6, err_msg=k)
            assert got[k].shape == exp[k].shape, (k, got[k].shape)
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("fmt", ["BFM", "FLAME"])
def test_albedo_formats_roundtrip(tmp_path, fmt):
    a = random_flame()
    path = io.write_albedo_npz(str(tmp_path / "alb.npz"), a["albedo_mean"], a["albedo_basis"], fmt)
    got = io.read_albedo(path)
    np.testing.assert_allclose(got["albedo_mean"], a["albedo_mean"], atol=1e-5)
    np.testing.assert_allclose(got["albedo_basis"], a["albedo_basis"], atol=1e-5)


def test_albedo_nearest_downsample_and_channel_reversal():
    R = 4
    mean = np.zeros((R, R, 3), np.float32)
    mean[..., 0] = np.arange(R)[None, :]  # channel 0 (B in the official BGR order) = column index
    mean[..., 2] = 10 * np.arange(R)[:, None]  # channel 2 (R) = 10 * row index
    basis = np.zeros((R, R, 3, 2), np.float32)
    basis[..., 1, 0] = 1.0
    tex = np.asarray(texture.albedo(mean, basis, np.array([[0.5, 7.0]], np.float32), size=2))
    assert tex.shape == (1, 2, 2, 3)
    # nearest: destination i reads source floor(i * 4 / 2) = 0, 2; channels reversed -> RGB.
    np.testing.assert_allclose(tex[0, :, :, 0], [[0, 0], [20, 20]])
    np.testing.assert_allclose(tex[0, :, :, 1], 0.5)
    np.testing.assert_allclose(tex[0, :, :, 2], [[0, 2], [0, 2]])


def test_obj_roundtrip(tmp_path):
    a = random_flame()
    path = io.write_obj_template(str(tmp_path / "head_template.obj"), a["v_template"], a["faces"], a["uv_coords"], a["uv_faces"])
    got = io.read_obj(path)
    np.testing.assert_allclose(got["vertices"], a["v_template"], atol=1e-6)
    np.testing.assert_array_equal(got["faces"], a["faces"])
    np.testing.assert_allclose(got["uv_coords"], a["uv_coords"], atol=1e-6)
    np.testing.assert_array_equal(got["uv_faces"], a["uv_faces"])


def test_convert_cli_roundtrip(tmp_path):
    a = random_flame()
    a["uv_face_eye_mask"] = (np.random.default_rng(0).random((256, 256)) > 0.5).astype(np.float32)
    a["fixed_displacement"] = np.random.default_rng(1).normal(size=(256, 256)).astype(np.float32) * 1e-3
    p = io.write_official(str(tmp_path / "official"), a, chumpy=True)
    out = str(tmp_path / "flame.npz")
    rc = convert.main(["--flame", p["model_pkl"], "--landmarks", p["landmarks"], "--obj", p["obj"], "--albedo", p["albedo"],
                       "--uv-face-eye-mask", p["uv_face_eye_mask"], "--fixed-displacement", p["fixed_displacement"],
                       "--out", out])
    assert rc == 0
    got = io.load_npz(out)
    for k in GEOMETRY + LANDMARKS + ("uv_coords", "uv_faces", "albedo_mean", "albedo_basis", "uv_face_eye_mask",
                                     "fixed_displacement"):
        np.testing.assert_allclose(got[k], a[k], atol=1e-5, err_msg=k)


def test_wrong_layouts_refused_with_key_and_shapes(tmp_path):
    a = random_flame()
    bad = dict(a, shapedirs=a["shapedirs"][:, :2])
    with pytest.raises(io.FlameFileError, match=r"m.npz: key 'shapedirs' has shape \(120, 2, 100\), expected \(V=120, 3, any\)"):
        io.validate(bad, "m.npz")
    with pytest.raises(io.FlameFileError, match="missing key 'faces'"):
        io.validate({k: v for k, v in a.items() if k != "faces"}, "m.npz")
    with pytest.raises(io.FlameFileError, match="'dynamic_lmk_faces_idx' has shape \\(78, 17\\), expected \\(79, 17\\)"):
        io.validate(dict(a, dynamic_lmk_faces_idx=a["dynamic_lmk_faces_idx"][:78]), "m.npz")
    # An official pickle whose basis is too small.
    path = str(tmp_path / "generic_model.pkl")
    io.write_generic_model_pkl(path, a, chumpy=False)
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    d["shapedirs"] = d["shapedirs"][:, :, :10]
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    with pytest.raises(io.FlameFileError, match=r"generic_model.pkl: key 'shapedirs' has shape \(120, 3, 10\), expected \(V, 3, 400\)"):
        io.read_generic_model_pkl(path)
    # A truncated official pickle, a text file posing as .npy, a missing file.
    io.write_generic_model_pkl(path, a, chumpy=True)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])
    with pytest.raises(io.FlameFileError, match="generic_model.pkl: cannot read FLAME model pickle"):
        io.read_generic_model_pkl(path)
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(io.FlameFileError, match="text.npy: cannot read landmark embedding"):
        io.read_landmark_embedding(str(tmp_path / "text.npy"))
    with pytest.raises(io.FlameFileError, match="not found"):
        io.load_npz(str(tmp_path / "missing.npz"))
