"""reconstruct app: a folder with a rendered demo-head face, a broken file and a no-face
image, run with a random-weight model saved in the converted-checkpoint layout."""
import os

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeca.apps import export, pipeline, reconstruct
from jaxdeca.convert.core import save_variables


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


def test_crop_transform_round_trip():
    a = pipeline.crop_transform(np.array([310.0, 200.0]), 150.0)
    pts = np.array([[300.0, 190.0], [250.5, 260.25]])
    crop = pts @ a[:, :2].T + a[:, 2]
    np.testing.assert_allclose(pipeline.to_original(crop, a), pts, atol=1e-9)
    np.testing.assert_allclose(crop[0], [112 - 10 * 224 / 150, 112 - 10 * 224 / 150])


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
    assert "not a readable image" in reasons["broken"] and reasons["blank"] == "no face detected"
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
    lmk_crop = (np.asarray(out["landmarks2d"][0, :, :2]) + 1) * 112
    a = pipeline.crop_transform(np.array([150.0, 90.0]), 224 / 1.5)  # crop = 1.5 x original + shift
    orig = pipeline.landmarks_original(np.asarray(out["landmarks2d"][0]), a)
    np.testing.assert_allclose(orig * a[0, 0] + a[:, 2], lmk_crop, atol=1e-6)


def test_cli_reports_missing_input(tmp_path, model_dir, capsys):
    rc = reconstruct.main(["--input", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"),
                           "--checkpoint", model_dir])
    assert rc == 2 and "nothing" in capsys.readouterr().err
