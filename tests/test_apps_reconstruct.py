"""reconstruct app: a folder with a rendered demo-head face, a broken file and a no-face
image, run with a random-weight model saved in the converted-checkpoint layout."""

import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeca import flame, render, wavefront
from jaxdeca.apps import export, pipeline, reconstruct
from jaxdeca.convert.core import save_variables
from jaxdeca.data import crop, preprocess


def render_head(p, cam=(7.0, 0.0, 0.0), jaw=0.0):
    codes = dict(shape=jnp.zeros((1, 100)), exp=jnp.zeros((1, 50)), pose=jnp.zeros((1, 6)).at[0, 3].set(jaw),
                 tex=jnp.zeros((1, 50)), cam=jnp.array([cam], jnp.float32),
                 light=jnp.zeros((1, 9, 3)).at[:, 0, :].set(2.6).at[:, 3, :].set(1.0))
    out = p.decode(codes)
    img = np.asarray(out["images"][0]) + (1 - np.asarray(out["mask"][0]))[..., None] * 0.3
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    v = pipeline.random_variables(0)
    for n in pipeline.NETS:
        save_variables(v[n], str(d / "model" / n))
    return str(d / "model")


def test_crop_face_is_the_shared_test_time_crop():
    """pipeline.crop_face = data.preprocess.crop_for_inference; landmarks go back to the original."""
    rng = np.random.default_rng(0)
    img = (rng.random((300, 260, 3)) * 255).astype(np.uint8)
    lmk = rng.uniform([80, 90], [180, 220], (68, 2))
    c = pipeline.crop_face(img, landmarks=lmk)
    want, t = preprocess.crop_for_inference(img, landmarks=lmk)
    np.testing.assert_array_equal(c.image, want)
    np.testing.assert_array_equal(c.tform, t)
    np.testing.assert_allclose(pipeline.landmarks_original(preprocess.to_crop(lmk, t), c.tform), lmk, atol=1e-9)
    assert pipeline.crop_face(np.full((90, 90, 3), 127, np.uint8)) is None  # no face


def test_crop_none_passes_a_224_crop_through():
    img = (np.random.default_rng(1).random((224, 224, 3)) * 255).astype(np.uint8)
    c = pipeline.crop_face(img, "none")
    np.testing.assert_allclose(c.tform, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(c.image, img / 255.0, atol=1e-6)


def test_crop_none_takes_grey_rgba_and_one_pixel_images():
    grey = (np.random.default_rng(2).random((50, 70)) * 255).astype(np.uint8)
    want = pipeline.crop_face(np.repeat(grey[..., None], 3, 2), "none")
    for img in (grey, np.dstack([grey] * 3 + [grey])):
        c = pipeline.crop_face(img, "none")
        np.testing.assert_array_equal(c.image, want.image)
        np.testing.assert_array_equal(c.tform, want.tform)
    assert pipeline.crop_face(np.full((1, 1, 3), 200, np.uint8), "none").image.shape == (224, 224, 3)
    with pytest.raises(ValueError, match=r"crop_face: need an \[H, W, 3\] uint8"):
        pipeline.crop_face(grey / 255.0, "none")


def test_checkpoint_errors(tmp_path):
    with pytest.raises(pipeline.CheckpointError, match="no such checkpoint"):
        pipeline.load_checkpoint(str(tmp_path / "missing"))
    # the release file itself, not converted: "no such checkpoint directory" though it exists
    tar = tmp_path / "deca_model.tar"
    tar.write_bytes(b"PK")
    with pytest.raises(pipeline.CheckpointError, match=rf"{tar}: a file, not a model directory.*python -m "
                       rf"jaxdeca.convert deca --src {tar} --out DIR"):
        pipeline.load_checkpoint(str(tar))


def zero_variables(model: dict) -> dict:
    """Zero variables of the three networks of config.model `model` (shapes only, nothing compiled)."""
    templates = pipeline.network_templates(dict(pipeline.DEFAULT_MODEL, **model))
    return {n: jax.tree.map(lambda t: np.zeros(t.shape, t.dtype), t) for n, t in templates.items()}


def test_a_model_saved_as_one_tree_loads_as_the_converted_layout_does(tmp_path):
    """load_checkpoint's second layout (no test read it before): one `save_variables` tree whose top
    level holds the three networks gives the variables the converted layout (a folder per network)
    gives. Such a tree lacking a network, or holding no dict, and a folder holding no checkpoint
    are one CheckpointError naming the path."""
    leaves, tree = jax.tree.flatten(zero_variables(dict(width=0.125, blocks=(1, 1, 1, 1), hidden=32, uv_size=32)))
    v = jax.tree.unflatten(tree, [np.full(x.shape, k, x.dtype) for k, x in enumerate(leaves)])  # each its own value
    save_variables(v, str(tmp_path / "one"))
    for n in pipeline.NETS:
        save_variables(v[n], str(tmp_path / "split" / n))
    one, split = (pipeline.load_checkpoint(str(tmp_path / d)) for d in ("one", "split"))
    assert sorted(one) == sorted(pipeline.NETS)
    assert jax.tree.structure(one) == jax.tree.structure(split) == jax.tree.structure(v)
    for a, b, c in zip(jax.tree.leaves(one), jax.tree.leaves(split), jax.tree.leaves(v)):
        np.testing.assert_array_equal(np.asarray(a), c)
        np.testing.assert_array_equal(np.asarray(b), c)

    save_variables({"E_flame": v["E_flame"]}, str(tmp_path / "part"))
    with pytest.raises(pipeline.CheckpointError, match=rf"{tmp_path / 'part'}: checkpoint lacks "
                       r"\['E_detail', 'D_detail'\]; expected keys \['E_flame', 'E_detail', 'D_detail'\]"):
        pipeline.load_checkpoint(str(tmp_path / "part"))
    save_variables([np.zeros(3)], str(tmp_path / "list"))
    with pytest.raises(pipeline.CheckpointError, match=rf"{tmp_path / 'list'}: not a DECA model directory "
                       r"\(it holds a list\)"):
        pipeline.load_checkpoint(str(tmp_path / "list"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(pipeline.CheckpointError, match=rf"{tmp_path / 'empty'}: not a DECA model directory "
                       r"\(.*not a readable orbax checkpoint"):
        pipeline.load_checkpoint(str(tmp_path / "empty"))


def test_checkpoint_of_other_networks_is_refused_before_any_image(tmp_path, capsys):
    """A converted-layout model of another architecture (here width 1/8, hidden 32: what a tiny
    training run's networks would give), or one with an extra layer, is one CheckpointError
    naming the path, the network, the variable and its expected shape when it is loaded; it
    used to load, and the first encode ended in Flax's ScopeParamShapeError (extra variables
    were ignored). A converted model with a part missing names the missing part."""
    tiny = zero_variables(dict(width=0.125, blocks=(1, 1, 1, 1), hidden=32, uv_size=32))
    for n in pipeline.NETS:
        save_variables(tiny[n], str(tmp_path / "tiny" / n))
    want = (rf"{tmp_path / 'tiny'} \(E_flame\): variable \['batch_stats'\]\['encoder'\]\['bn1'\]\['mean'\] has shape "
            r"\(8,\), expected \(64,\) \(not DECA's networks")
    with pytest.raises(pipeline.CheckpointError, match=want):
        pipeline.load_pipeline(str(tmp_path / "tiny"))
    # the app stops with that one line before reading its input
    rc = reconstruct.main(["--input", str(tmp_path / "no_such_input"), "--out", str(tmp_path / "out"),
                           "--checkpoint", str(tmp_path / "tiny")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "expected (64,)" in err, err
    assert not (tmp_path / "out").exists()

    # checked_variables (shared by converted and trained models): extra and missing variables
    small = dict(width=0.125, blocks=(1, 1, 1, 1), hidden=32, uv_size=32)
    m = dict(pipeline.DEFAULT_MODEL, **small)
    extra = dict(tiny, D_detail={**tiny["D_detail"], "params": {**tiny["D_detail"]["params"],
                                                                 "extra": {"kernel": np.zeros((3, 3))}}})
    with pytest.raises(pipeline.CheckpointError, match=r"here \(D_detail\): unexpected variable "
                       r"\['params'\]\['extra'\]\['kernel'\] \(why\)"):
        pipeline.checked_variables(extra, m, 224, "here", "why")
    params = dict(tiny["E_detail"]["params"])
    params.pop("layers_2")
    with pytest.raises(pipeline.CheckpointError, match=r"here \(E_detail\): missing variable \['params'\]\['layers_2'\]"):
        pipeline.checked_variables(dict(tiny, E_detail={**tiny["E_detail"], "params": params}), m, 224, "here")
    ok = pipeline.checked_variables(tiny, m, 224, "here")
    assert ok["E_flame"]["params"]["encoder"]["conv1"]["kernel"].shape == (7, 7, 3, 8)

    # a converted model with a part missing or unreadable
    (tmp_path / "tiny" / "D_detail" / "_METADATA").unlink(missing_ok=True)
    for f in (tmp_path / "tiny" / "D_detail").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")
    with pytest.raises(pipeline.CheckpointError, match=rf"{tmp_path / 'tiny'}: D_detail is not readable"):
        pipeline.load_checkpoint(str(tmp_path / "tiny"))
    import shutil
    shutil.rmtree(tmp_path / "tiny" / "D_detail")
    with pytest.raises(pipeline.CheckpointError, match=r"converted DECA model lacks \['D_detail'\]"):
        pipeline.load_checkpoint(str(tmp_path / "tiny"))


def test_reconstruct_folder(tmp_path, model_dir):
    """Two faces in one batch (and two inputs skipped): each face's files hold its own codes, the
    ones its *_kpt2d.txt decodes from (a face written with another face's codes goes unseen with
    one face per batch)."""
    p = pipeline.load_pipeline(model_dir, flame.DEMO_HEAD)  # a model directory names no FLAME model
    src = tmp_path / "in"
    src.mkdir()
    for name, cam in (("head", (7.0, 0.0, 0.0)), ("head2", (6.0, 0.1, -0.05))):
        head, _ = render_head(p, cam=cam)
        big = cv2.copyMakeBorder(head, 40, 10, 60, 20, cv2.BORDER_CONSTANT, value=(77, 77, 77))
        export.save_image(str(src / f"{name}.png"), big)
    (src / "broken.jpg").write_bytes(b"not an image")
    export.save_image(str(src / "blank.png"), np.full((80, 80, 3), 0.3))
    res = reconstruct.reconstruct(str(src), str(tmp_path / "out"), pipe=p, batch=2)
    assert res["written"] == ["head", "head2"]
    reasons = dict(res["skipped"])
    assert "not a readable image" in reasons["broken"] and reasons["blank"] == f"{src / 'blank.png'}: no face detected"
    d = tmp_path / "out" / "head"
    for f in ("head.obj", "head.mtl", "head.png", "head_normals.png", "head_detail.obj", "head_kpt2d.txt",
              "head_kpt3d.txt", "head_depth.png", "head_vis.png", "head_codes.npz"):
        assert (d / f).stat().st_size > 0, f
    obj = (d / "head.obj").read_text()
    assert obj.count("\nv ") == p.arrays["v_template"].shape[0] and "vt " in obj
    assert np.loadtxt(d / "head_kpt2d.txt").shape == (68, 2)
    k3 = np.loadtxt(d / "head_kpt3d.txt")
    assert k3.shape == (68, 4) and set(np.unique(k3[:, 3])) <= {0.0, 1.0}
    codes = np.load(d / "head_codes.npz")
    assert codes["shape"].shape == (100,) and codes["detail"].shape == (128,)
    # A converted-layout model is DECA's released one, trained on landmarks normalised as p / S * 2 - 1:
    # its *_kpt2d.txt is DECA's (tensor_cropper.transform_points: (v * 0.5 + 0.5) * 224, then the
    # inverse crop), not jaxdeca's (p + 0.5) / S * 2 - 1 reading, half a crop pixel up-left of it.
    for name in ("head", "head2"):
        d = tmp_path / "out" / name
        codes = np.load(d / f"{name}_codes.npz")
        dec = p.decode({k: jnp.asarray(codes[k][None]) for k in ("shape", "exp", "pose", "tex", "cam", "light", "detail")})
        v = np.asarray(dec["landmarks2d"][0, :, :2], np.float64)
        inv = np.linalg.inv(codes["crop_tform"])
        deca_px = np.concatenate([(v * 0.5 + 0.5) * 224, np.ones((68, 1))], 1) @ inv.T
        np.testing.assert_allclose(np.loadtxt(d / f"{name}_kpt2d.txt"), deca_px[:, :2], atol=2e-3, err_msg=name)
    a, b = (np.load(tmp_path / "out" / n / f"{n}_codes.npz") for n in ("head", "head2"))
    assert not np.array_equal(a["cam"], b["cam"]) and not np.array_equal(a["shape"], b["shape"])
    assert p.lmk_convention == "deca"


def test_landmarks_in_original_pixels():
    """A decode's landmarks through a crop land back at the same original pixels."""
    p = pipeline.load_pipeline()
    head, out = render_head(p)
    lmk_crop = (np.asarray(out["landmarks2d"][0, :, :2]) + 1) * 112 - 0.5  # crop pixels, centre of k at k
    a = crop.square_transform(np.array([150.0, 90.0]), 223 / 1.5, 224)  # crop = 1.5 x original + shift
    orig = pipeline.landmarks_original(np.asarray(out["landmarks2d"][0]), a)
    np.testing.assert_allclose(orig * 1.5 + a[:2, 2], lmk_crop, atol=1e-6)


def test_cli_reports_missing_input(tmp_path, model_dir, capsys):
    rc = reconstruct.main(["--input", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"),
                           "--checkpoint", model_dir, "--flame", flame.DEMO_HEAD])
    assert rc == 2 and "nothing" in capsys.readouterr().err


def test_model_directory_without_flame_is_refused(tmp_path, model_dir, capsys):
    """A model directory (a converted DECA model) records no FLAME model; without --flame its codes
    were decoded on the embedded demo head's bases, a wrong face with no message (the README's
    own commands did so). It is one error naming --flame and what it takes."""
    with pytest.raises(pipeline.CheckpointError, match=rf"{model_dir}: a model directory records no FLAME model"):
        pipeline.load_pipeline(model_dir)
    rc = reconstruct.main(["--input", str(tmp_path), "--out", str(tmp_path / "o"), "--checkpoint", model_dir])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "pass --flame" in err and "generic_model.pkl" in err, err
    assert not (tmp_path / "o").exists()


def test_outputs_at_a_small_uv_size_with_decas_extracted_texture(tmp_path):
    """A model with a 32 x 32 UV map (configs/demo.py sizes; the FLAME masks are 256 x 256) writes
    every output, and the coarse texture is DECA's extract_tex: the photo inside the face-eye
    mask, albedo x SH shading outside it (here a pure red photo and a band-0 light of 2.6)."""
    arrays = flame.load_arrays()
    R = 32
    p = pipeline.Pipeline(arrays=arrays, flame=flame.from_arrays(arrays), topo=render.make_topology(arrays, uv_size=R),
                          variables=None, model={"uv_size": R})
    codes = dict(shape=jnp.zeros((1, 100)), exp=jnp.zeros((1, 50)), pose=jnp.zeros((1, 6)), tex=jnp.zeros((1, 50)),
                 cam=jnp.array([[7.0, 0.0, 0.0]]), light=jnp.zeros((1, 9, 3)).at[:, 0, :].set(2.6))
    photo = np.zeros((1, 224, 224, 3), np.float32)
    photo[..., 0] = 1.0
    out = p.decode(codes, photo)
    paths = pipeline.write_outputs(str(tmp_path), "x", out, 0, pipeline.Crop(photo[0], np.eye(3)), codes, arrays)
    assert all(os.path.getsize(f) > 0 for f in paths) and (tmp_path / "x" / "x_detail.obj").exists()
    tex = cv2.imread(str(tmp_path / "x" / "x.png"))[..., ::-1] / 255.0
    assert tex.shape == (R, R, 3)
    fem = np.asarray(p.topo.uv_face_eye_mask) > 0.5
    cover = np.asarray(p.topo.uv_raster.mask) > 0
    inside, outside = fem & cover, ~fem & cover
    assert inside.sum() > 50 and outside.sum() > 50
    red = np.array([1.0, 0.0, 0.0])
    assert np.mean(np.abs(tex[inside] - red).max(-1) < 0.02) > 0.9  # the photo (some texels at its border)
    shaded = np.clip(np.asarray(out["albedo"][0]) * 2.6 * 0.282095, 0, 1)
    np.testing.assert_allclose(tex[outside], shaded[outside], atol=1.5 / 255)
    # the detailed mesh is DECA's upsample_mesh: a vertex at every covered texel, the whole head
    # (it held the face-eye mask's texels alone), coloured as the texture PNG (clipped to [0, 1])
    detail, coarse = (wavefront.read(str(tmp_path / "x" / f)) for f in ("x_detail.obj", "x.obj"))
    assert len(detail["vertices"]) > 0.9 * cover.sum() > 1.5 * inside.sum()
    lo, hi = coarse["vertices"].min(0), coarse["vertices"].max(0)
    assert np.all(np.abs(detail["vertices"].min(0) - lo) < 0.1 * (hi - lo))
    assert np.all(np.abs(detail["vertices"].max(0) - hi) < 0.1 * (hi - lo))
    with open(tmp_path / "x" / "x_detail.obj") as f:
        rgb = np.array([[float(x) for x in line.split()[4:7]] for line in f if line.startswith("v ")])
    assert rgb.shape == detail["vertices"].shape and rgb.min() >= 0 and rgb.max() <= 1
    # a texture that decodes to NaN is written as the PNG holds it (0), not as 'nan' colours
    nan_tex = np.asarray(out["uv_texture_extracted"]).copy()
    nan_tex[:, :R // 2] = np.nan
    pipeline.write_outputs(str(tmp_path), "n", dict(out, uv_texture_extracted=nan_tex), 0,
                           pipeline.Crop(photo[0], np.eye(3)), codes, arrays)
    with open(tmp_path / "n" / "n_detail.obj") as f:
        rgb = np.array([[float(x) for x in line.split()[4:7]] for line in f if line.startswith("v ")])
    assert np.isfinite(rgb).all() and (rgb == 0).all(-1).any()


def test_load_pipeline_uses_the_flame_model_a_workdir_was_trained_with(tmp_path, capsys):
    """A training workdir records its FLAME file: the apps read it when --flame is not given,
    take an explicit --flame of the same topology, and refuse one of another topology (or a
    recorded file that is gone, with no --flame) with one message."""
    from jaxdeca.train import checkpoint
    demo = flame.load_arrays()
    trained = str(tmp_path / "trained_flame.npz")
    np.savez(trained, **dict(demo, v_template=demo["v_template"] * 2.0))
    other_topology = str(tmp_path / "other_topology.npz")
    np.savez(other_topology, **dict(demo, faces=demo["faces"][:, [0, 2, 1]]))
    workdir = str(tmp_path / "detail")
    m = checkpoint.make_manager(os.path.join(workdir, "checkpoints"), async_save=False)
    small = dict(width=0.125, blocks=(1, 1, 1, 1), hidden=32, uv_size=32)
    z = zero_variables(small)["E_flame"]  # not run here, but checked against the recorded config.model
    checkpoint.save(m, 1, {"params": {"E_flame": z["params"]}, "batch_stats": {"E_flame": z["batch_stats"]}},
                    {"stage": "coarse", "model": small, "image_size": 48, "flame_path": trained})
    m.wait_until_finished()

    v = lambda pipe: np.asarray(pipe.arrays["v_template"])  # noqa: E731
    assert pipeline.load_pipeline(workdir).lmk_convention == "jaxdeca"  # trained on (p + 0.5) / S * 2 - 1
    np.testing.assert_array_equal(v(pipeline.load_pipeline(workdir)), demo["v_template"] * 2.0)
    np.testing.assert_array_equal(v(pipeline.load_pipeline(workdir, flame.DEMO_HEAD)), demo["v_template"])
    with pytest.raises(pipeline.CheckpointError, match=f"{other_topology}: not the FLAME topology .*'faces' differ"):
        pipeline.load_pipeline(workdir, other_topology)
    rc = reconstruct.main(["--input", str(tmp_path), "--out", str(tmp_path / "o"), "--checkpoint", workdir,
                           "--flame", other_topology])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and other_topology in err[0] and trained in err[0], err
    os.remove(trained)
    with pytest.raises(pipeline.CheckpointError, match=f"trained with the FLAME model {trained}.*pass --flame"):
        pipeline.load_pipeline(workdir)
    np.testing.assert_array_equal(v(pipeline.load_pipeline(workdir, flame.DEMO_HEAD)), demo["v_template"])


def test_detail_mesh_offsets_along_unit_normals_as_decas_upsample_mesh():
    """The detailed OBJ's vertices (uv_detail_vertices) are DECA's util.upsample_mesh: the
    barycentric position plus (displacement + fixed displacement) times the interpolated vertex
    normal NORMALISED (displacement2normal, for the detail normals, offsets along the
    unnormalised one; upsample_mesh, which writes the mesh, divides by its length). Reference in
    numpy from DECA's formulas, on a posed demo head with a 2 cm fixed displacement."""
    arrays = dict(flame.load_arrays())
    R = 32
    arrays["fixed_displacement"] = np.full((256, 256), 0.02, np.float32)  # area-resized to R
    p = pipeline.Pipeline(arrays=arrays, flame=flame.from_arrays(arrays), topo=render.make_topology(arrays, uv_size=R),
                          variables=None, model={"uv_size": R})
    pose = jnp.asarray([[0.1, 0.4, -0.05, 0.25, 0.0, 0.0]])
    codes = dict(shape=jnp.zeros((1, 100)), exp=jnp.zeros((1, 50)), pose=pose, tex=jnp.zeros((1, 50)),
                 cam=jnp.array([[7.0, 0.0, 0.0]]), light=jnp.zeros((1, 9, 3)).at[:, 0, :].set(2.6))
    out = p.decode(codes)
    v = np.asarray(out["vertices"][0], np.float64)
    f = np.asarray(arrays["faces"])
    n = np.zeros_like(v)  # DECA util.vertex_normals: corner cross products summed, normalised
    for a, b, c in ((1, 2, 0), (2, 0, 1), (0, 1, 2)):
        np.add.at(n, f[:, a], np.cross(v[f[:, b]] - v[f[:, a]], v[f[:, c]] - v[f[:, a]]))
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
    fi = np.asarray(p.topo.uv_raster.face_index)
    bary = np.asarray(p.topo.uv_raster.bary, np.float64)
    cover = np.asarray(p.topo.uv_raster.mask) > 0
    tri = f[np.maximum(fi, 0)]  # [R, R, 3]
    pos = np.einsum("ijk,ijkc->ijc", bary, v[tri])
    nrm = np.einsum("ijk,ijkc->ijc", bary, n[tri])
    assert np.abs(np.linalg.norm(nrm[cover], axis=-1) - 1).max() > 1e-3  # the two conventions differ here
    want = pos[cover] + 0.02 * nrm[cover] / np.linalg.norm(nrm[cover], axis=-1, keepdims=True)
    got = np.asarray(out["uv_detail_vertices"][0])
    np.testing.assert_allclose(got[cover], want, atol=2e-6)
    np.testing.assert_array_equal(got[~cover], 0.0)  # write_outputs' coverage test relies on it
    # jit + grad through the uncovered (zero-normal) texels: finite, and nothing flows there
    cn = out["uv_detail_normals"] * jnp.asarray(cover, jnp.float32)[None, ..., None]
    loss = lambda n: jnp.sum(render.detail_vertices(out["uv_z"] + 0.01, out["uv_detail_vertices"], n,  # noqa: E731
                                                    p.topo.fixed_displacement) ** 2)
    g = np.asarray(jax.jit(jax.grad(loss))(cn))
    assert np.all(np.isfinite(g)) and np.all(g[0][~cover] == 0) and np.abs(g[0][cover]).max() > 0


def test_kpt3d_visibility_is_decas_visofp():
    """The visible column of *_kpt3d.txt is DECA's visofp: the transformed vertex normals
    interpolated at the landmarks (seletec_3d68: full_lmk_faces_idx, full_lmk_bary_coords), z < 0.1.
    It was the normal of the vertex nearest each landmark, which differed at turned heads.
    Reference: DECA's vertices2landmarks in torch, on the demo head at several yaws."""
    import torch
    arrays = dict(flame.load_arrays())
    p = pipeline.Pipeline(arrays=arrays, flame=flame.from_arrays(arrays), topo=render.make_topology(arrays, uv_size=32),
                          variables=None, model={"uv_size": 32})
    yaws = np.linspace(-1.2, 1.2, 9)
    pose = jnp.zeros((len(yaws), 6)).at[:, 1].set(jnp.asarray(yaws)).at[:, 3].set(0.2)
    n = len(yaws)
    codes = dict(shape=jnp.zeros((n, 100)), exp=jnp.zeros((n, 50)), pose=pose, tex=jnp.zeros((n, 50)),
                 cam=jnp.tile(jnp.array([[7.0, 0.0, 0.0]]), (n, 1)), light=jnp.zeros((n, 9, 3)))
    out = p.decode(codes)
    tn = np.asarray(out["trans_normals"])
    faces = torch.as_tensor(np.asarray(arrays["faces"], np.int64))
    idx = torch.as_tensor(np.asarray(arrays["full_lmk_faces_idx"], np.int64)).view(-1)
    bary = torch.as_tensor(np.asarray(arrays["full_lmk_bary_coords"], np.float32)).view(1, -1, 3).expand(n, -1, -1)
    normals = torch.tensor(tn)
    lmk_faces = torch.index_select(faces, 0, idx).view(1, -1, 3) + (torch.arange(n) * normals.shape[1]).view(-1, 1, 1)
    lmk_normals = normals.reshape(-1, 3)[lmk_faces].view(n, -1, 3, 3)
    deca = (torch.einsum("blfi,blf->bli", lmk_normals, bary)[:, :, 2] < 0.1).numpy()
    np.testing.assert_array_equal(np.asarray(out["landmarks3d_visible"]) == 1.0, deca)
    assert 0 < deca.sum() < deca.size  # some landmarks hidden at the turned poses


def test_decas_decoded_arrays_and_the_grid_on_the_original_frame(tmp_path, model_dir):
    """DECA's demo saves its decoded arrays (--saveMat: the displacement map, image-space
    landmarks, ...) and draws the results on the original photo (--render_orig); reconstruct
    wrote neither. --save-decoded and --vis-original write them, in DECA's names and frames."""
    p = pipeline.load_pipeline(model_dir, flame.DEMO_HEAD)
    head, out = render_head(p)
    src = tmp_path / "in"
    src.mkdir()
    big = cv2.copyMakeBorder(head, 40, 10, 60, 20, cv2.BORDER_CONSTANT, value=(77, 77, 77))  # 274 x 304
    export.save_image(str(src / "head.png"), big)
    assert reconstruct.main(["--input", str(src), "--out", str(tmp_path / "out"), "--checkpoint", model_dir,
                             "--flame", flame.DEMO_HEAD, "--save-decoded", "--vis-original", "--save-images"]) == 0
    d = tmp_path / "out" / "head"
    assert (d / "head_landmarks3d.png").stat().st_size > 0 and (d / "head_rendered_images.png").stat().st_size > 0
    dec, codes = np.load(d / "head_decoded.npz"), np.load(d / "head_codes.npz")
    assert sorted(dec.files) == ["albedo", "displacement_map", "landmarks2d", "landmarks3d", "landmarks3d_world",
                                 "normals", "trans_verts", "uv_detail_normals", "uv_texture_gt", "verts"]
    # DECA's batch_orth_proj, then y and z negated
    s, tx, ty = codes["cam"]
    v = dec["verts"].astype(np.float64)
    want = np.stack([s * (v[:, 0] + tx), -s * (v[:, 1] + ty), -s * v[:, 2]], 1)
    np.testing.assert_allclose(dec["trans_verts"], want, rtol=1e-5, atol=1e-5)
    # DECA's landmarks2d are [-1, 1] crop coordinates: its transform_points gives our original pixels
    inv = np.linalg.inv(codes["crop_tform"])
    px = np.concatenate([(dec["landmarks2d"] * 0.5 + 0.5) * 224, np.ones((68, 1))], 1) @ inv.T
    np.testing.assert_allclose(np.loadtxt(d / "head_kpt2d.txt"), px[:, :2], atol=2e-3)
    k3 = np.loadtxt(d / "head_kpt3d.txt")
    assert dec["landmarks3d"].shape == (68, 4)
    np.testing.assert_allclose(dec["landmarks3d"][:, 3], k3[:, 3])
    np.testing.assert_allclose(dec["landmarks3d_world"], k3[:, :3], atol=1e-6)
    uv_z = np.asarray(p.decode({k: jnp.asarray(codes[k][None]) for k in
                                ("shape", "exp", "pose", "tex", "cam", "light", "detail")})["uv_z"][0])
    assert np.abs(uv_z).max() > 0 and not np.asarray(p.topo.fixed_displacement).any()  # the demo head has none
    np.testing.assert_allclose(dec["displacement_map"], uv_z, atol=1e-6)
    with_fixed = dict(p.arrays, fixed_displacement=np.full((256, 256), 0.01, np.float32))  # official FLAME: DECA's
    row = {"uv_z": uv_z, **{k: np.zeros(1) for k in ("vertices", "trans_vertices", "landmarks3d_world", "normals",
                                                     "albedo", "uv_detail_normals")},
           "landmarks2d": np.zeros((68, 3)), "landmarks3d": np.zeros((68, 3)), "landmarks3d_visible": np.zeros(68)}
    np.testing.assert_allclose(pipeline.decoded_arrays(row.__getitem__, with_fixed)["displacement_map"], uv_z + 0.01,
                               atol=1e-6)
    assert dec["uv_texture_gt"].shape == dec["albedo"].shape == dec["uv_detail_normals"].shape

    grid = cv2.imread(str(d / "head_vis_original.png"))[..., ::-1]
    H, W = big.shape[:2]
    assert grid.shape == (H, 5 * W, 3)
    np.testing.assert_array_equal(grid[H // 2:, :W], big[H // 2:])  # the photo itself (its label at the top)
    # the renders go back where their crop came from: the head's render, with the crop that cut it from
    # the photo (rows 40.., columns 60..), is drawn over the head and nowhere else
    c = pipeline.Crop(head / 255.0, crop.square_transform((60 + 111.5, 40 + 111.5), 223, 224), big)
    g = lambda key: np.asarray(out[key])[0]  # noqa: E731
    tiles = pipeline.original_grid(g, c, np.zeros((0, 2)))
    shape_tile = tiles[:, 2 * W:3 * W].astype(int)
    changed = np.abs(shape_tile - big).max(-1) > 0
    changed[:20, :120] = False  # its label
    mask = np.zeros((H, W), bool)
    mask[40:264, 60:284] = np.asarray(out["mask"][0]) > 0.5
    assert changed[mask].mean() > 0.95 and not changed[:40].any() and not changed[:, :60].any()


def test_landmark_files_place_the_crop_instead_of_dlib(tmp_path, model_dir):
    """DECA's test data crops from a landmark file beside an image when there is one (AFLW2000's
    .mat, a .txt); reconstruct always ran dlib. --landmarks takes fit's landmark files: one for
    an image, a folder of <stem>.pts/.txt for a folder (frames without one: dlib)."""
    p = pipeline.load_pipeline(model_dir, flame.DEMO_HEAD)
    head, _ = render_head(p)
    big = cv2.copyMakeBorder(head, 40, 10, 60, 20, cv2.BORDER_CONSTANT, value=(77, 77, 77))
    src = tmp_path / "in"
    src.mkdir()
    export.save_image(str(src / "head.png"), big)
    export.save_image(str(src / "other.png"), big)
    dlib_tform = pipeline.crop_face(big).tform
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(110, 200, 68), rng.uniform(90, 190, 68)], 1)  # another box than dlib's
    lmk = tmp_path / "lmk"
    lmk.mkdir()
    np.savetxt(lmk / "head.txt", pts)
    want = preprocess.crop_for_inference(big, landmarks=pts, size=224)[1]
    assert np.abs(want - dlib_tform).max() > 0.05

    res = reconstruct.reconstruct(str(src / "head.png"), str(tmp_path / "one"), pipe=p, landmarks=str(lmk / "head.txt"))
    assert res["written"] == ["head"]
    np.testing.assert_allclose(np.load(tmp_path / "one" / "head" / "head_codes.npz")["crop_tform"], want, atol=1e-6)
    assert reconstruct.main(["--input", str(src), "--out", str(tmp_path / "all"), "--checkpoint", model_dir,
                             "--flame", flame.DEMO_HEAD, "--landmarks", str(lmk)]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "all" / "head" / "head_codes.npz")["crop_tform"], want, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "all" / "other" / "other_codes.npz")["crop_tform"], dlib_tform,
                               atol=1e-6)  # no file for it: dlib's
    with pytest.raises(pipeline.inputs.InputError, match="must be a folder"):
        reconstruct.reconstruct(str(src), str(tmp_path / "x"), pipe=p, landmarks=str(lmk / "head.txt"))
    with pytest.raises(pipeline.inputs.InputError, match="needs --crop detect"):
        reconstruct.reconstruct(str(src), str(tmp_path / "x"), pipe=p, landmarks=str(lmk), crop="none")


def test_each_panel_is_written_unlabelled_with_decas_names(tmp_path):
    """DECA's demo writes each panel of its grid as an image of its own (--saveImages), among them
    the 3D landmarks, visible points green and hidden ones red; reconstruct's grid tiles carry
    labels, so cutting the grid up gave no clean pictures. --save-images writes them."""
    p = pipeline.load_pipeline()
    codes = dict(shape=jnp.zeros((1, 100)), exp=jnp.zeros((1, 50)), pose=jnp.zeros((1, 6)).at[0, 1].set(0.9),
                 tex=jnp.zeros((1, 50)), cam=jnp.array([[7.0, 0.0, 0.0]]),
                 light=jnp.zeros((1, 9, 3)).at[:, 0, :].set(2.6))
    photo = np.full((1, 224, 224, 3), 0.5, np.float32)
    out = p.decode(codes, photo)
    seen = np.asarray(out["landmarks3d_visible"][0]) > 0.5
    assert 0 < seen.sum() < 68  # the head turned: some landmarks are hidden
    paths = pipeline.write_outputs(str(tmp_path), "x", out, 0, pipeline.Crop(photo[0], np.eye(3)), codes, p.arrays,
                                   images=True)
    d = tmp_path / "x"
    read = lambda key: cv2.imread(str(d / f"x_{key}.png"))[..., ::-1]  # noqa: E731
    for key in ("inputs", "landmarks2d", "landmarks3d", "shape_images", "shape_detail_images", "rendered_images"):
        assert str(d / f"x_{key}.png") in paths
    np.testing.assert_array_equal(read("shape_images"), (np.clip(np.asarray(out["shape_images"][0]), 0, 1) * 255
                                                         + 0.5).astype(np.uint8))  # no label drawn on it
    np.testing.assert_array_equal(read("inputs"), np.full((224, 224, 3), 128, np.uint8))
    l3 = read("landmarks3d").astype(int)
    green = (l3[..., 1] > 200) & (l3[..., 0] < 60) & (l3[..., 2] < 60)
    red = (l3[..., 0] > 200) & (l3[..., 1] < 60) & (l3[..., 2] < 60)
    assert green.sum() > 20 and red.sum() > 5


def test_face_crops_keep_their_photos_only_when_asked(tmp_path):
    """Every Crop of a batch held its full-resolution photo, which only reconstruct's
    --vis-original reads: 8 faces of 8000 x 6000 photos held 1.1 GB more at the default
    --batch 8 (reconstruct, animate, fit). face_crops keeps them only with keep_original."""
    for k in range(2):
        cv2.imwrite(str(tmp_path / f"f{k}.png"), np.full((300, 200, 3), 60 * k, np.uint8))
    skipped = []
    plain = list(pipeline.face_crops(str(tmp_path), "none", skipped, "t"))
    kept = list(pipeline.face_crops(str(tmp_path), "none", skipped, "t", keep_original=True))
    assert [n for n, _ in plain] == ["f0", "f1"] and not skipped
    assert all(c.original is None for _, c in plain)
    assert all(c.original.shape == (300, 200, 3) for _, c in kept)
    assert pipeline.crop_face(np.zeros((50, 40, 3), np.uint8), "none").original is not None  # one image: kept
    from jaxdeca.apps import fit  # fit's crops from landmarks: not kept either
    lmk = np.stack(np.meshgrid(np.linspace(60, 140, 17), [120.0, 180.0, 230.0, 250.0]), -1).reshape(-1, 2)[:68]
    assert fit.landmark_crop(np.zeros((300, 200, 3), np.uint8), lmk).original is None
