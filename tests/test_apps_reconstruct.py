"""reconstruct app: a folder with a rendered demo-head face, a broken file and a no-face
image, run with a random-weight model saved in the converted-checkpoint layout."""

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

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


def test_checkpoint_errors(tmp_path):
    with pytest.raises(pipeline.CheckpointError, match="no such checkpoint"):
        pipeline.load_checkpoint(str(tmp_path / "missing"))


def test_reconstruct_folder(tmp_path, model_dir):
    p = pipeline.load_pipeline(model_dir)
    head, out = render_head(p)
    src = tmp_path / "in"
    src.mkdir()
    big = cv2.copyMakeBorder(head, 40, 10, 60, 20, cv2.BORDER_CONSTANT, value=(77, 77, 77))
    export.save_image(str(src / "head.png"), big)
    (src / "broken.jpg").write_bytes(b"not an image")
    export.save_image(str(src / "blank.png"), np.full((80, 80, 3), 0.3))
    res = reconstruct.reconstruct(str(src), str(tmp_path / "out"), pipe=p, batch=2)
    assert res["written"] == ["head"]
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
                           "--checkpoint", model_dir])
    assert rc == 2 and "nothing" in capsys.readouterr().err
