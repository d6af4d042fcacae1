"""Official-layout FLAME files: written by the test, read without chumpy and without torch."""
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

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
    # Referenced exactly like the official Python-2 file: chumpy, NumPy 1 and old SciPy module names.
    assert b"cchumpy.ch\nCh\n" in raw and b"cscipy.sparse.csc\ncsc_matrix\n" in raw
    assert b"cnumpy.core.multiarray\n" in raw and b"numpy._core" not in raw
    assert "chumpy" not in sys.modules
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated-module warnings on the read path
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
    _read_without_torch(path, {k: arrays[k] for k in LANDMARKS}, tmp_path)


def _read_without_torch(path, expect, tmp_path):
    """Reads a landmark file in a subprocess where importing torch fails; compares to expect."""
    np.savez(tmp_path / "expect.npz", **expect)
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
        assert "torch" not in {{m.split(".")[0] for m, v in sys.modules.items() if v is not None}}
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


def test_landmark_embedding_zip_format_storages_read_without_torch(tmp_path, monkeypatch):
    """Storages pickled as zip-format torch.save streams (and a non-contiguous tensor view)."""
    torch = pytest.importorskip("torch")
    import torch.storage as ts

    def reduce_zip(self):
        b = __import__("io").BytesIO()
        torch.save(self, b, _use_new_zipfile_serialization=True)
        return (ts._load_from_bytes, (b.getvalue(),))

    monkeypatch.setattr(ts.TypedStorage, "__reduce__", reduce_zip)
    arrays = random_flame(seed=3)
    bary = torch.from_numpy(np.ascontiguousarray(arrays["dynamic_lmk_bary_coords"].transpose(1, 0, 2))).permute(1, 0, 2)
    d = dict(static_lmk_faces_idx=arrays["static_lmk_faces_idx"].astype(np.int64),
             static_lmk_bary_coords=arrays["static_lmk_bary_coords"],
             dynamic_lmk_faces_idx=torch.from_numpy(arrays["dynamic_lmk_faces_idx"].astype(np.int64)),
             dynamic_lmk_bary_coords=bary,  # strides (3, 79*3, 1): exercises _rebuild_tensor's strides
             full_lmk_faces_idx=arrays["full_lmk_faces_idx"].reshape(1, 68).astype(np.int64),
             full_lmk_bary_coords=arrays["full_lmk_bary_coords"].reshape(1, 68, 3))
    path = str(tmp_path / "landmark_embedding.npy")
    np.save(path, d, allow_pickle=True)
    assert b"data.pkl" in open(path, "rb").read()  # zip-format torch.save streams inside
    _read_without_torch(path, {k: arrays[k] for k in LANDMARKS}, tmp_path)


def test_chumpy_shim_takes_the_single_array_of_other_classes():
    shim = io._ChumpyShim()
    shim.__setstate__({"a": np.arange(6.0).reshape(2, 3), "_dirty_vars": set()})
    np.testing.assert_array_equal(shim.to_array("J", "m.pkl"), np.arange(6.0).reshape(2, 3))
    shim.__setstate__({"a": np.zeros(2), "b": np.ones(2)})
    with pytest.raises(io.FlameFileError, match="m.pkl: key 'J' is a chumpy expression"):
        shim.to_array("J", "m.pkl")


@pytest.mark.parametrize("fmt", ["BFM", "FLAME"])
def test_albedo_formats_roundtrip(tmp_path, fmt):
    a = random_flame()
    path = io.write_albedo_npz(str(tmp_path / "alb.npz"), a["albedo_mean"], a["albedo_basis"], fmt)
    got = io.read_albedo(path)
    np.testing.assert_allclose(got["albedo_mean"], a["albedo_mean"], atol=1e-5)
    np.testing.assert_allclose(got["albedo_basis"], a["albedo_basis"], atol=1e-5)


def test_albedo_official_layouts_written_by_hand(tmp_path):
    """The two official files as their authors wrote them, not through write_albedo_npz:
    FLAME_albedo_from_BFM.npz holds MU (1, R*R*3) and PC (R*R*3, K) in 0..1; FLAME_texture.npz
    holds mean (R, R, 3) and tex_dir (R, R, 3, K) in 0..255. Both read as 0..1 [R, R, 3(, K)]."""
    rng = np.random.default_rng(0)
    mean, basis = rng.random((4, 4, 3)).astype(np.float32), rng.random((4, 4, 3, 5)).astype(np.float32)
    np.savez(tmp_path / "bfm.npz", MU=mean.reshape(1, 48), PC=basis.reshape(48, 5))
    np.savez(tmp_path / "tex.npz", mean=mean * 255, tex_dir=basis * 255)
    for name in ("bfm.npz", "tex.npz"):
        got = io.read_albedo(str(tmp_path / name))
        np.testing.assert_allclose(got["albedo_mean"], mean, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(got["albedo_basis"], basis, rtol=1e-6, err_msg=name)


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


def test_load_model_from_official_folder_and_pkl(tmp_path):
    from jaxdeca import flame

    a = random_flame()
    p = io.write_official(str(tmp_path / "data"), a, chumpy=True)
    for path in (str(tmp_path / "data"), p["model_pkl"]):
        got = flame.load_arrays(path)
        for k in GEOMETRY + LANDMARKS + ("uv_coords", "albedo_mean"):
            np.testing.assert_allclose(got[k], a[k], atol=1e-5, err_msg=k)
    m = flame.load_model(str(tmp_path / "data"), n_shape=300, n_exp=100)  # official sizes after padding
    assert m.basis.shape == (120, 3, 400)
    os.remove(p["obj"])
    with pytest.raises(io.FlameFileError, match="missing head_template.obj"):
        flame.load_arrays(str(tmp_path / "data"))
    # a folder without the model pickle said "missing ... next to generic_model.pkl", as if it were there
    os.remove(p["model_pkl"])
    with pytest.raises(io.FlameFileError, match=r"data: missing generic_model.pkl, head_template.obj \("):
        flame.load_arrays(str(tmp_path / "data"))


def test_albedo_jit_vmap_grad():
    import jax
    import jax.numpy as jnp

    a = random_flame()
    mean, basis = jnp.asarray(a["albedo_mean"]), jnp.asarray(a["albedo_basis"])
    code = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    out = jax.jit(texture.albedo, static_argnums=3)(mean, basis, code, 4)
    per = jax.vmap(lambda c: texture.albedo(mean, basis, c[None], 4)[0])(code)
    np.testing.assert_allclose(per, out, atol=1e-6)
    g = jax.grad(lambda c: texture.albedo(mean, basis, c, 4).sum())(code)
    # d sum / d code_k = sum of the nearest-sampled, channel-summed basis k (same for every batch row).
    idx = np.arange(4) * 2
    expect = np.asarray(basis)[idx][:, idx, :, :4].sum((0, 1, 2))
    np.testing.assert_allclose(g, np.broadcast_to(expect, (3, 4)), rtol=1e-5, atol=1e-5)


def test_albedo_of_numpy_arrays_keeps_only_the_used_part_in_jit():
    """A jitted caller of the npz dict (numpy arrays, constants of the program) holds the
    texels and components it uses, not the whole basis (626 MB at the official size): here a
    128 px, 40-component basis read at 32 px with 5 components, equal to the jax-array path."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    arrays = dict(albedo_mean=rng.random((128, 128, 3), np.float32),
                  albedo_basis=rng.random((128, 128, 3, 40), np.float32))
    code = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)
    fn = jax.jit(lambda c: texture.albedo_from_arrays(arrays, c, size=32))
    hlo = fn.lower(code).as_text()
    basis_bytes = arrays["albedo_basis"].nbytes  # 7.9 MB; its texels at 32 px, 5 components: 61 kB
    assert len(hlo) < basis_bytes / 8, len(hlo)
    ref = texture.albedo(jnp.asarray(arrays["albedo_mean"]), jnp.asarray(arrays["albedo_basis"]), code, 32)
    np.testing.assert_allclose(fn(code), ref, rtol=1e-6, atol=1e-6)


def test_convert_cli_reports_bad_file(tmp_path, capsys):
    a = random_flame()
    p = io.write_official(str(tmp_path / "official"), a, chumpy=True)
    rc = convert.main(["--flame", p["model_pkl"], "--landmarks", str(tmp_path / "nope.npy"), "--obj", p["obj"],
                       "--out", str(tmp_path / "flame.npz")])
    assert rc == 1 and "nope.npy: landmark embedding not found" in capsys.readouterr().err
    assert not (tmp_path / "flame.npz").exists()


def _bad_fixed_displacement(path, kind):
    """Writes a broken fixed_displacement_256.npy of the given kind at path."""
    good = np.zeros((256, 256), np.float32)
    if kind == "html":  # the GitHub 'blob' page fetched instead of the raw file
        open(path, "wb").write(b"<!DOCTYPE html>\n<html><body>GitHub blob page</body></html>\n")
    elif kind in ("truncated header", "truncated data"):
        np.save(path, good)
        raw = open(path, "rb").read()
        open(path, "wb").write(raw[:100] if kind == "truncated header" else raw[: len(raw) // 2])
    elif kind == "npz":
        with open(path, "wb") as f:
            np.savez(f, disp=good)
    elif kind == "pickled":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "wrong shape":
        np.save(path, np.zeros((128, 128), np.float32))


@pytest.mark.parametrize("kind, message", [
    ("html", r"cannot read fixed displacement \(ValueError: not an \.npy file \(starts with b'<!DOCT'\)\)"),
    ("truncated header", r"cannot read fixed displacement \(ValueError: EOF"),
    ("truncated data", r"cannot read fixed displacement"),
    ("npz", r"cannot read fixed displacement \(ValueError: not an \.npy file \(starts with b'PK"),
    ("pickled", r"cannot read fixed displacement"),
    ("wrong shape", r"fixed displacement has shape \(128, 128\), expected \(256, 256\)"),
])
def test_bad_fixed_displacement_refused_naming_the_file(tmp_path, capsys, kind, message):
    from jaxdeca import flame

    a = dict(random_flame(), fixed_displacement=np.zeros((256, 256), np.float32))
    p = io.write_official(str(tmp_path / "data"), a)
    _bad_fixed_displacement(p["fixed_displacement"], kind)
    with pytest.raises(io.FlameFileError, match=r"fixed_displacement_256\.npy: " + message):
        io.read_fixed_displacement(p["fixed_displacement"])
    with pytest.raises(io.FlameFileError, match=r"fixed_displacement_256\.npy: " + message):
        flame.load_arrays(str(tmp_path / "data"))
    rc = convert.main(["--flame", p["model_pkl"], "--landmarks", p["landmarks"], "--obj", p["obj"],
                       "--fixed-displacement", p["fixed_displacement"], "--out", str(tmp_path / "flame.npz")])
    assert rc == 1 and "fixed_displacement_256.npy: " in capsys.readouterr().err
    assert not (tmp_path / "flame.npz").exists()


def test_uv_mask_resized_like_deca(tmp_path):
    """DECA reads a UV mask PNG as channel 0 / 255 and resizes it with F.interpolate's default
    'nearest' (decalib/deca.py); a 512 px RGB mask with soft (non-binary) edges, as the
    official one has, must give the same 256 px mask, not a bilinear blend of it."""
    torch = pytest.importorskip("torch")
    import cv2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    grey = np.where((yy - 256) ** 2 + (xx - 256) ** 2 < 180 ** 2, 255, 0).astype(np.uint8)
    grey[rng.random((512, 512)) < 0.05] = 128  # non-binary texels scattered over the mask
    path = str(tmp_path / "uv_face_eye_mask.png")
    cv2.imwrite(path, np.repeat(grey[:, :, None], 3, 2))
    ref = torch.nn.functional.interpolate(torch.from_numpy(grey.astype(np.float32) / 255.0)[None, None],
                                          [256, 256])[0, 0].numpy()
    np.testing.assert_array_equal(io.read_uv_mask(path), ref)


def test_albedo_with_fewer_components_than_the_code_is_refused_clearly():
    """An albedo model with K < n_tex components (here 6 for DECA's 50) is refused with the
    two counts, not with an einsum error from inside jit."""
    a = random_flame(K=6)
    with pytest.raises(ValueError, match=r"albedo: texcode has 50 components, the albedo basis only 6"):
        texture.albedo_from_arrays(a, np.zeros((2, 50), np.float32))
    assert texture.albedo_from_arrays(a, np.zeros((2, 6), np.float32), size=4).shape == (2, 4, 4, 3)


@pytest.mark.parametrize("fmt", ["csc", "csr", "coo"])
def test_sparse_j_regressor_of_todays_scipy_read(tmp_path, fmt):
    """A generic_model.pkl re-saved with today's SciPy (plain arrays, J_regressor in any of
    the sparse formats the shim claims): COO now pickles its indices as 'coords', not row/col."""
    import scipy.sparse as sp

    a = random_flame()
    path = io.write_generic_model_pkl(str(tmp_path / "generic_model.pkl"), a, chumpy=False)
    with open(path, "rb") as f:
        d = pickle.load(f)
    d["J_regressor"] = getattr(sp, f"{fmt}_matrix")(np.asarray(a["J_regressor"], np.float64))
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=4)
    np.testing.assert_allclose(io.read_generic_model_pkl(path)["J_regressor"], a["J_regressor"], atol=1e-7)


def test_convert_cli_writes_the_out_path_it_names(tmp_path, capsys):
    """--out without the .npz suffix: the file is written at exactly that path (numpy's savez
    would append '.npz' while the CLI reports the path given), and it loads from there."""
    from jaxdeca import flame

    p = io.write_official(str(tmp_path / "official"), random_flame(), chumpy=True)
    out = str(tmp_path / "my_flame")
    assert convert.main(["--flame", p["model_pkl"], "--landmarks", p["landmarks"], "--obj", p["obj"],
                         "--out", out]) == 0
    assert f"wrote {out}:" in capsys.readouterr().out
    assert os.path.isfile(out) and not os.path.exists(out + ".npz")
    assert flame.load_model(out).basis.shape == (120, 3, 150)


def test_load_npz_decompresses_each_member_once(tmp_path, monkeypatch):
    """Each npz member is inflated once (the official 629 MB albedo npz took seconds per extra
    read); the arrays are those np.load gives, float16 widened to float32."""
    import zipfile

    arrays = random_flame()
    arrays["albedo_mean"] = arrays["albedo_mean"].astype(np.float16)
    path = io.save_npz(str(tmp_path / "flame.npz"), arrays)
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open",
                        lambda self, name, *a, **k: opened.append(getattr(name, "filename", name))
                        or real_open(self, name, *a, **k))
    got = io.load_npz(path)
    monkeypatch.undo()
    assert sorted(opened) == sorted(f"{k}.npy" for k in arrays)  # each member once
    with np.load(path) as ref:
        assert sorted(got) == sorted(ref.files)
        for k in ref.files:
            want = ref[k].astype(np.float32) if ref[k].dtype == np.float16 else ref[k]
            assert got[k].dtype == want.dtype, k
            np.testing.assert_array_equal(got[k], want, err_msg=k)
    assert got["albedo_mean"].dtype == np.float32


@pytest.mark.parametrize("fmt", ["BFM", "FLAME"])
def test_transposed_albedo_basis_is_refused(tmp_path, fmt):
    """The components are the basis's last axis (BFM PC (R*R*3, K), FLAME tex_dir (R, R, 3, K),
    as DECA's FLAMETex reshapes them); a basis with the components first is refused with both
    layouts, not reshaped into a scrambled albedo."""
    a = random_flame(R=8, K=6)
    path = str(tmp_path / "alb.npz")
    if fmt == "BFM":
        np.savez(path, MU=a["albedo_mean"].reshape(-1), PC=a["albedo_basis"].reshape(-1, 6).T)
        found = r"\(6, 192\)"
    else:
        np.savez(path, mean=a["albedo_mean"] * 255, tex_dir=np.moveaxis(a["albedo_basis"], -1, 0) * 255)
        found = r"\(6, 8, 8, 3\)"
    with pytest.raises(io.FlameFileError, match=rf"alb.npz: albedo basis has shape {found}, expected "
                                                r"\(192, K\) or \(8, 8, 3, K\) \(components last\)"):
        io.read_albedo(path)


def test_obj_with_other_faces_or_vertices_than_the_model_is_refused(tmp_path):
    """The UV faces of head_template.obj are paired with the model's faces one by one, so its
    faces must be the model's in the same order (the official files' are), not only as many;
    its vertices must be as many as the model's. A reordered or rewound face list, or another
    mesh, is refused naming the OBJ and the first differing face."""
    a = random_flame()
    p = io.write_official(str(tmp_path / "data"), a, chumpy=False)
    args = (p["model_pkl"], p["landmarks"])
    faces = a["faces"].copy()
    faces[[3, 7]] = faces[[7, 3]]
    obj = io.write_obj_template(str(tmp_path / "swapped.obj"), a["v_template"], faces, a["uv_coords"], a["uv_faces"])
    with pytest.raises(io.FlameFileError, match=r"swapped.obj: face 3 is \(.*\), the FLAME model's face 3 is \(.*\); "
                                                r"the OBJ's faces must be the model's, in its order"):
        io.assemble(*args, obj)
    rewound = a["faces"][:, [1, 2, 0]]
    obj = io.write_obj_template(str(tmp_path / "rewound.obj"), a["v_template"], rewound, a["uv_coords"], a["uv_faces"])
    with pytest.raises(io.FlameFileError, match=r"rewound.obj: face 0 is"):
        io.assemble(*args, obj)
    extra = np.concatenate([a["v_template"], np.zeros((2, 3), np.float32)])
    obj = io.write_obj_template(str(tmp_path / "more.obj"), extra, a["faces"], a["uv_coords"], a["uv_faces"])
    with pytest.raises(io.FlameFileError, match=r"more.obj: has 122 vertices, the FLAME model 120"):
        io.assemble(*args, obj)
    assert io.assemble(*args, p["obj"])["uv_faces"].shape == (200, 3)


def test_uv_mask_is_the_red_channel_as_deca_reads_it(tmp_path):
    """DECA reads a UV mask as skimage's imread(...)[:, :, 0], the red channel, not a grey
    conversion: a mask whose channels differ (here red = the mask, green and blue = noise,
    plus an alpha channel) is read as its red channel / 255; a single-channel PNG is its grey."""
    import cv2

    rng = np.random.default_rng(0)
    red = np.where(rng.random((256, 256)) < 0.5, 255, 0).astype(np.uint8)
    noise = rng.integers(0, 256, (256, 256, 2), dtype=np.uint8)
    bgra = np.dstack([noise[..., 0], noise[..., 1], red, np.full_like(red, 255)])
    for name, img in (("rgb.png", bgra[..., :3]), ("rgba.png", bgra), ("grey.png", red)):
        path = str(tmp_path / name)
        cv2.imwrite(path, img)
        np.testing.assert_array_equal(io.read_uv_mask(path), red / np.float32(255.0), err_msg=name)


@pytest.mark.parametrize("key, value, message", [
    ("kintree_table", np.array(3), r"key 'kintree_table' has shape \(\), expected \(2, 5\)"),
    ("kintree_table", np.arange(5), r"key 'kintree_table' has shape \(5,\), expected \(2, 5\)"),
    ("kintree_table", np.array([[4294967295, 0, 1, 9, 1], [0, 1, 2, 3, 4]]),
     r"key 'parents' is \[-1, 0, 1, 9, 1\]; expected FLAME's kinematic tree \[-1, 0, 1, 1, 1\] \(global, neck, jaw, "
     r"left eye, right eye\)"),
    ("v_template", "hello", r"key 'v_template' holds str, expected a numeric array"),
    ("v_template", {"a": 1}, r"key 'v_template' holds dict, expected a numeric array"),
    ("J_regressor", "x", r"key 'J_regressor' holds str, expected a numeric array"),
    ("f", np.full((200, 3), 0.5), r"key 'f' holds float64 values, expected integer indices"),
])
def test_malformed_model_pickle_entries_are_named(tmp_path, key, value, message):
    """Entries of generic_model.pkl that are no array of the right kind (contrived, e.g. a
    hand-edited or foreign pickle) are one FlameFileError naming the file and the key, not an
    IndexError/TypeError/ValueError from numpy, nor float faces silently truncated."""
    a = random_flame()
    path = io.write_generic_model_pkl(str(tmp_path / "generic_model.pkl"), a, chumpy=False)
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    d[key] = value
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    with pytest.raises(io.FlameFileError, match=r"generic_model.pkl: " + message):
        io.read_generic_model_pkl(path)


@pytest.mark.parametrize("key, value, message", [
    ("static_lmk_bary_coords", np.zeros((50, 2)), r"key 'static_lmk_bary_coords' has shape \(50, 2\), expected \(51, 3\)"),
    ("static_lmk_bary_coords", np.zeros((51, 2)), r"key 'static_lmk_bary_coords' has shape \(51, 2\), expected \(51, 3\)"),
    ("static_lmk_bary_coords", np.zeros((3, 51)), r"key 'static_lmk_bary_coords' has shape \(3, 51\), expected \(51, 3\)"),
    ("full_lmk_bary_coords", np.zeros((1, 68, 4)), r"key 'full_lmk_bary_coords' has shape \(1, 68, 4\), expected \(68, 3\)"),
    ("full_lmk_faces_idx", "abc", r"key 'full_lmk_faces_idx' holds str, expected a numeric array"),
    ("dynamic_lmk_faces_idx", None, r"key 'dynamic_lmk_faces_idx' holds NoneType, expected a numeric array"),
])
def test_malformed_landmark_entries_are_named(tmp_path, key, value, message):
    """The same for landmark_embedding.npy: a wrong shape is reported as the file holds it, not
    after a reshape (or a bare 'cannot reshape' ValueError)."""
    a = random_flame()
    path = io.write_landmark_embedding(str(tmp_path / "landmark_embedding.npy"), a, torch_tensors=False)
    d = np.load(path, allow_pickle=True).item()
    d[key] = value
    np.save(path, d, allow_pickle=True)
    with pytest.raises(io.FlameFileError, match=r"landmark_embedding.npy: " + message):
        io.read_landmark_embedding(path)
    # the official layouts: (51,) and (51, 3) static, (1, 68) and (1, 68, 3) full
    got = io.read_landmark_embedding(io.write_landmark_embedding(str(tmp_path / "ok.npy"), a, torch_tensors=False))
    assert got["full_lmk_bary_coords"].shape == (68, 3) and got["static_lmk_faces_idx"].shape == (51,)


def test_malformed_albedo_entries_and_npz_parents_are_named(tmp_path):
    a = random_flame()
    path = str(tmp_path / "alb.npz")
    np.savez(path, MU=np.array(["x"] * 192), PC=np.zeros((192, 6)))
    with pytest.raises(io.FlameFileError, match=r"alb.npz: key 'MU' holds <U1 values, expected a numeric array"):
        io.read_albedo(path)
    with pytest.raises(io.FlameFileError, match=r"m.npz: key 'parents' is \[-1, 0, 1, 1, 4\]"):
        io.validate(dict(a, parents=np.array([-1, 0, 1, 1, 4], np.int32)), "m.npz")


def test_convert_cli_out_that_cannot_be_written_is_one_line(tmp_path, capsys):
    """An --out that cannot be written (a folder in its place; a disk that fills up) was an
    OSError traceback after the whole conversion; it is one 'error:' line naming it, and no
    partial file or temporary file is left (`atomic_file.replacing`)."""
    p = io.write_official(str(tmp_path / "official"), random_flame(), chumpy=True)
    out = tmp_path / "out" / "flame.npz"
    out.mkdir(parents=True)
    rc = convert.main(["--flame", p["model_pkl"], "--landmarks", p["landmarks"], "--obj", p["obj"], "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith(f"error: {out}: cannot write: ") and "Traceback" not in err, err
    assert os.listdir(tmp_path / "out") == ["flame.npz"] and os.listdir(out) == []


def test_index_errors_name_the_file_they_are_in(tmp_path):
    """A landmark embedding with a face index past the model's faces was reported against
    generic_model.pkl (checked only once everything was merged); the pickle's own faces out of
    range were reported against head_template.obj (its faces then differed)."""
    a = random_flame()
    bad_lmk = dict(a, dynamic_lmk_faces_idx=a["dynamic_lmk_faces_idx"].copy())
    bad_lmk["dynamic_lmk_faces_idx"][3, 4] = len(a["faces"]) + 7
    p = io.write_official(str(tmp_path / "lmk"), bad_lmk, chumpy=True)
    with pytest.raises(io.FlameFileError, match=rf"{p['landmarks']}: key 'dynamic_lmk_faces_idx' has indices in "
                                                rf"\[0, {len(a['faces']) + 7}\], expected \[0, {len(a['faces']) - 1}\]"):
        io.read_official(str(tmp_path / "lmk"))
    bad_f = dict(a, faces=a["faces"].copy())
    bad_f["faces"][5, 1] = len(a["v_template"])
    pkl = io.write_generic_model_pkl(str(tmp_path / "generic_model.pkl"), bad_f, chumpy=True)
    with pytest.raises(io.FlameFileError, match=rf"{pkl}: key 'f' has indices in .*expected \[0, "
                                                rf"{len(a['v_template']) - 1}\]"):
        io.read_generic_model_pkl(pkl)


def test_a_kinematic_tree_other_than_flames_is_refused(tmp_path):
    """A valid tree that is not FLAME's (every joint on the root) was accepted, and then posed
    with FLAME's tree anyway."""
    path = str(tmp_path / "m.npz")
    np.savez(path, **dict(random_flame(), parents=np.array([-1, 0, 0, 0, 0], np.int32)))
    with pytest.raises(io.FlameFileError, match=r"m.npz: key 'parents' is \[-1, 0, 0, 0, 0\]; expected FLAME's"):
        io.load_npz(path)


@pytest.mark.parametrize("key, kind, message", [
    ("faces", "fractional", r"key 'faces' holds float64 values, expected integer indices"),
    ("full_lmk_faces_idx", "fractional", r"key 'full_lmk_faces_idx' holds float64 values, expected integer indices"),
    ("uv_faces", "strings", r"key 'uv_faces' holds <U\d+ values, expected a numeric array"),
    ("v_template", "strings", r"key 'v_template' holds <U\d+ values, expected a numeric array"),
    ("static_lmk_bary_coords", "complex", r"key 'static_lmk_bary_coords' holds complex\d+ values, expected a numeric"),
])
def test_npz_values_of_the_wrong_kind_are_refused_naming_the_key(tmp_path, key, kind, message):
    """The official pickles' values were checked (`_numeric`), a FLAME npz's were not: float face
    indices 57.7 became face 57 silently, string indices were a numpy UFuncTypeError naming no file,
    string vertices were parsed into numbers and complex coordinates lost their imaginary part
    with a warning. Integral float indices still load (as the pickles' do)."""
    a = random_flame()
    v = np.asarray(a[key])
    bad = {"fractional": v + 0.7, "strings": v.astype(str), "complex": v + 1j}[kind]
    path = str(tmp_path / "m.npz")
    np.savez(path, **dict(a, **{key: bad}))
    with pytest.raises(io.FlameFileError, match=r"m.npz: " + message):
        io.load_npz(path)
    np.savez(path, **dict(a, faces=a["faces"].astype(np.float64)))
    np.testing.assert_array_equal(io.load_npz(path)["faces"], a["faces"])


@pytest.mark.parametrize("key, value, message", [
    ("weights", "transposed", r"key 'weights' has shape \(5, 120\), expected \(V=120, 5\)"),
    ("f", "4 columns", r"key 'f' has shape \(200, 4\), expected \(F=200, 3\)"),
])
def test_model_pickle_shape_errors_name_the_pickles_keys(tmp_path, key, value, message):
    """generic_model.pkl's shape errors named the npz schema's keys ('lbs_weights', 'faces'),
    which that file does not have."""
    a = random_flame()
    path = io.write_generic_model_pkl(str(tmp_path / "generic_model.pkl"), a, chumpy=False)
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    d[key] = np.asarray(d[key]).T if value == "transposed" else np.concatenate([d[key], d[key][:, :1]], 1)
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    with pytest.raises(io.FlameFileError, match=r"generic_model.pkl: " + message):
        io.read_generic_model_pkl(path)
