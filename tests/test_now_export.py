"""NoW export through the apps: two rendered demo-head photos in NoW's folder layout -> neutral
mesh + 7 landmarks per image, with `fit` (no network) and with a converted-layout checkpoint."""
import copy
import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeca import flame
from jaxdeca.apps import export, inputs, pipeline
from jaxdeca.convert.core import save_variables
from jaxdeca.evaluation import meshio, now, now_predict

SUBJ = "FaMoS_000001_TA"
ENTRIES = [f"{SUBJ}/multiview_neutral/IMG_0001.jpg", f"{SUBJ}/multiview_expressions/IMG_0002.jpg"]


def render(p, jaw=0.0, exp0=0.0):
    codes = dict(shape=jnp.zeros((1, 100)), exp=jnp.zeros((1, 50)).at[0, 0].set(exp0),
                 pose=jnp.zeros((1, 6)).at[0, 3].set(jaw), tex=jnp.zeros((1, 50)), cam=jnp.array([[7.0, 0.0, 0.0]]),
                 light=jnp.zeros((1, 9, 3)).at[:, 0, :].set(2.6).at[:, 3, :].set(1.0))
    out = p.decode(codes)
    img = np.asarray(out["images"][0]) + (1 - np.asarray(out["mask"][0]))[..., None] * 0.3
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def now_root(tmp_path_factory):
    """final_release_version/{iphone_pictures, detected_face} + an image list with a missing entry."""
    p = pipeline.load_pipeline()
    root = tmp_path_factory.mktemp("now") / "final_release_version"
    for entry, (jaw, e) in zip(ENTRIES, [(0.0, 0.0), (0.2, 1.5)]):
        export.save_image(str(root / "iphone_pictures" / entry), render(p, jaw, e))
    # a box for the first image only (the second falls back to dlib's landmark crop)
    now_predict.write_bbox(str(root / "detected_face" / ENTRIES[0].replace(".jpg", ".npy")), 60.0, 50.0, 165.0, 180.0)
    lst = root.parent / "imagepathsvalidation.txt"
    lst.write_text("\n".join(ENTRIES + [f"{SUBJ}/selfie/IMG_0009.jpg"]) + "\n")
    return root, lst, p


def gt_scan(p):
    """The rendered identity's neutral head as a 'scan' in mm with its 7 landmarks."""
    v, l7 = now_predict.neutral_prediction(p.flame, jnp.zeros((1, 100)))
    return np.asarray(v[0]) * 1000, np.asarray(l7[0]) * 1000


def test_fit_export_writes_official_layout_and_neutral_meshes(tmp_path, now_root, capsys):
    root, lst, p = now_root
    res = now_predict.export_model(str(root.parent), str(lst), str(tmp_path / "pred"), pipe=p, fit_steps=(40, 120, 0))
    assert res["written"] == ENTRIES
    assert [e for e, _ in res["skipped"]] == [f"{SUBJ}/selfie/IMG_0009.jpg"]
    assert "IMG_0009.jpg: no such file" in capsys.readouterr().err
    scan, scan_l7 = gt_scan(p)
    faces = np.asarray(p.arrays["faces"])
    for entry in ENTRIES:
        obj, npy = now.prediction_paths(str(tmp_path / "pred"), entry)
        v, f = meshio.read_obj(obj)
        l7 = meshio.read_landmarks(npy)
        assert v.shape == p.arrays["v_template"].shape and np.array_equal(f, faces)
        # expression and jaw are zeroed: both photos give the identity's neutral head (mm)
        d = now.compute_errors(scan, scan_l7, v, f, l7)
        assert np.median(d) < 1.0, (entry, np.median(d))
        # neutral = template + identity basis only: the residual outside the shape space is ~0,
        # while the rendered jaw-open, smiling head has one
        assert shape_space_residual(p, v) < 1e-6
    posed = p.flame(jnp.zeros((1, 100)), jnp.zeros((1, 50)).at[0, 0].set(1.5), jnp.zeros((1, 6)).at[0, 3].set(0.2))
    assert shape_space_residual(p, np.asarray(posed["vertices"][0])) > 1e-4


def test_fit_export_fits_every_batch_at_one_size(tmp_path, now_root, monkeypatch):
    """The fit export's short last batch was fitted at its own size (and its prediction run at
    it), compiling the fit and the neutral mesh again (4.5 s of a cold run); it is padded to
    --batch as fit's folders are, and only its own entries are written."""
    from jaxdeca.apps import fit
    root, lst, p = now_root
    sizes = []

    def fake_fit(pipe, crops, targets, steps):
        sizes.append(len(crops))
        return {"shape": jnp.zeros((len(crops), 100)).at[:, 0].set(jnp.arange(len(crops), dtype=jnp.float32))}

    monkeypatch.setattr(fit, "fit_crops", fake_fit)
    res = now_predict.export_model(str(root.parent), str(lst), str(tmp_path / "pred"), pipe=p, batch=3)
    assert sizes == [3] and res["written"] == ENTRIES
    assert all(os.path.exists(now.prediction_paths(str(tmp_path / "pred"), e)[0]) for e in ENTRIES)


def shape_space_residual(p, v):
    """RMS (metres) of v - template after projecting out the identity basis."""
    basis = np.asarray(p.arrays["shapedirs"], np.float64).reshape(-1, p.arrays["shapedirs"].shape[-1])
    r = (np.asarray(v, np.float64) - p.arrays["v_template"]).reshape(-1)
    coef = np.linalg.lstsq(basis, r, rcond=None)[0]
    return float(np.sqrt(np.mean((r - basis @ coef) ** 2)))


def test_checkpoint_export_cli_uses_now_crop_and_zeroes_expression(tmp_path, now_root, capsys):
    root, lst, p = now_root
    ckpt = tmp_path / "model"
    v = pipeline.random_variables(0)
    for n in pipeline.NETS:
        save_variables(v[n], str(ckpt / n))
    rc = now.main(["export", "--images", str(root), "--image-list", str(lst), "--out", str(tmp_path / "pred"),
                   "--checkpoint", str(ckpt), "--flame", flame.DEMO_HEAD, "--batch", "2"])
    assert rc == 0 and "IMG_0009.jpg" in capsys.readouterr().err
    pipe = pipeline.load_pipeline(str(ckpt), flame.DEMO_HEAD)
    img = inputs.read_image(str(root / "iphone_pictures" / ENTRIES[0]))
    box = now_predict.read_bbox(str(root / "detected_face" / ENTRIES[0].replace(".jpg", ".npy")))
    crop, t = now_predict.now_crop(img, box)
    assert crop.shape == (224, 224, 3) and abs(t[0, 0] - 223 / int(117.5 * 1.6)) < 1e-12
    # DECA's datasets/now.py: centre of the box, side int(1.6 * (w + h) / 2), its corners -> 0 and 223
    (l, top, r, b), side = box, int(1.6 * ((box[2] - box[0]) + (box[3] - box[1])) / 2)
    cx, cy = (l + r) / 2, (top + b) / 2
    for corner, want in (((cx - side / 2, cy - side / 2), (0, 0)), ((cx + side / 2, cy + side / 2), (223, 223))):
        np.testing.assert_allclose(t[:2] @ [*corner, 1.0], want, atol=1e-9)
    shape = pipe.encode(np.stack([crop, crop]))["shape"][:1]
    want_v, want_l7 = now_predict.neutral_prediction(pipe.flame, shape)
    obj, npy = now.prediction_paths(str(tmp_path / "pred"), ENTRIES[0])
    np.testing.assert_allclose(meshio.read_obj(obj)[0], np.asarray(want_v[0]), atol=1e-6)
    np.testing.assert_allclose(np.load(npy), np.asarray(want_l7[0]), atol=1e-6)
    assert os.path.isfile(now.prediction_paths(str(tmp_path / "pred"), ENTRIES[1])[0])


def test_neutral_landmarks_are_static_3d_landmarks():
    p = pipeline.load_pipeline()
    shape = jnp.asarray(np.random.default_rng(0).normal(size=(2, 100)), jnp.float32)
    v, l7 = now_predict.neutral_prediction(p.flame, shape)
    out = p.flame(shape, jnp.zeros((2, 50)), jnp.zeros((2, 6)))
    np.testing.assert_allclose(v, out["vertices"])
    np.testing.assert_allclose(l7, np.asarray(out["landmarks3d"])[:, 17:][:, [19, 22, 25, 28, 16, 31, 37]])


def test_export_refuses_an_unusable_out_before_any_work(tmp_path, capsys, monkeypatch):
    """now export loaded the model and ran the first batch (13 s, a fit longer) before finding
    that --out was a file; the apps check --out first (pipeline.check_out_dir), and so does it."""
    monkeypatch.setattr(now_predict, "export_model", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "pred").write_text("a file")
    (tmp_path / "l.txt").write_text(ENTRIES[0] + "\n")
    rc = now.main(["export", "--images", str(tmp_path), "--image-list", str(tmp_path / "l.txt"),
                   "--out", str(tmp_path / "pred")])
    assert rc == 2 and "pred" in capsys.readouterr().err


def test_export_cli_errors(tmp_path, capsys):
    rc = now.main(["export", "--images", str(tmp_path / "nowhere"), "--image-list", str(tmp_path / "l.txt"),
                   "--out", str(tmp_path / "o")])
    assert rc == 2 and "nowhere" in capsys.readouterr().err
    (tmp_path / "iphone_pictures").mkdir()
    (tmp_path / "l.txt").write_text(ENTRIES[0] + "\n")
    rc = now.main(["export", "--images", str(tmp_path), "--image-list", str(tmp_path / "l.txt"),
                   "--out", str(tmp_path / "o"), "--flame", str(tmp_path / "typo.npz")])
    assert rc == 2 and "typo.npz: FLAME model file not found" in capsys.readouterr().err
    for flag in ("--batch", "--fit-steps"):  # 0 steps would export the unfitted mean face
        with pytest.raises(SystemExit) as e:
            now.main(["export", "--images", str(tmp_path), "--image-list", str(tmp_path / "l.txt"),
                      "--out", str(tmp_path / "o"), flag, "0"])
        assert e.value.code == 2 and flag in capsys.readouterr().err
    (tmp_path / "bad.npy").write_bytes(b"junk")
    with pytest.raises(meshio.NowFileError, match="bad.npy"):
        now_predict.read_bbox(str(tmp_path / "bad.npy"))


def test_checkpoint_export_skips_an_image_whose_box_cannot_be_cropped(tmp_path, now_root, capsys):
    """A detected-face box of zero size or with NaN (another detector's failure, `write_bbox`)
    is one skipped image named in the report, not a ValueError traceback ending the export."""
    root, _, p = now_root
    img = inputs.read_image(str(root / "iphone_pictures" / ENTRIES[0]))
    mine = tmp_path / "final_release_version"
    entries = [f"{SUBJ}/selfie/IMG_{k}.jpg" for k in range(3)]
    for entry, box in zip(entries, [(60.0, 50.0, 165.0, 180.0), (80.0, 80.0, 80.0, 80.0),
                                    (float("nan"), 50.0, 165.0, 180.0)]):
        export.save_image(str(mine / "iphone_pictures" / entry), img)
        now_predict.write_bbox(str(mine / "detected_face" / entry.replace(".jpg", ".npy")), *box)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(entries) + "\n")
    pipe = copy.copy(p)  # the network path with a stand-in encoder: only the crops matter here
    pipe.variables = {}
    pipe.encode = lambda crops: {"shape": jnp.zeros((len(crops), 100))}
    res = now_predict.export_model(str(mine), str(lst), str(tmp_path / "pred"), pipe=pipe, batch=2)
    assert res["written"] == entries[:1]
    assert [e for e, _ in res["skipped"]] == entries[1:]
    err = capsys.readouterr().err
    assert "IMG_1.jpg" in err and "IMG_2.jpg" in err, err


def test_box_crop_reads_a_phone_photo_upright_like_deca(tmp_path, now_root):
    """A JPEG stored sideways with EXIF orientation 6 (a portrait iPhone photo) is read upright,
    as DECA's skimage/imageio reader did, so its box crop is the upright image's crop, not one
    of the raw sideways pixels."""
    from PIL import Image
    root, _, _ = now_root
    up = inputs.read_image(str(root / "iphone_pictures" / ENTRIES[0]))[:, 20:]  # not square
    mine = tmp_path / "final_release_version"
    entry = f"{SUBJ}/selfie/IMG_0100.jpg"
    path = mine / "iphone_pictures" / entry
    path.parent.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to display
    Image.fromarray(np.rot90(up).copy()).save(str(path), quality=98, exif=exif.tobytes())
    box = (40.0, 50.0, 145.0, 180.0)
    now_predict.write_bbox(str(mine / "detected_face" / entry.replace(".jpg", ".npy")), *box)
    (item,) = now_predict._read_entries(str(mine / "iphone_pictures"), str(mine / "detected_face"), [entry], [])
    assert item[2].shape == up.shape and np.abs(item[2].astype(float) - up).mean() < 2.0
    (_, crop), = now_predict._crops([item], [])
    assert np.abs(crop - now_predict.now_crop(up, box)[0]).mean() < 2.0 / 255


def test_fit_export_takes_landmarks_inside_the_now_box(tmp_path, now_root, monkeypatch):
    """Without a checkpoint, an image with a detected_face box is fitted to dlib's landmarks
    found inside that box, as the network path crops with it: a face dlib's detector misses
    (an occluded one, here every face) is exported all the same, and a NaN box is one skipped
    image. Images without a box still need the detector (skipped here: it finds nothing)."""
    from jaxdeca.data import detect
    root, lst, p = now_root
    monkeypatch.setattr(detect.Detector, "detect", lambda self, image: [])
    seen = []
    landmarks = detect.Detector.landmarks
    monkeypatch.setattr(detect.Detector, "landmarks",
                        lambda self, image, box: seen.append(tuple(box)) or landmarks(self, image, box))
    mine = tmp_path / "final_release_version"
    img = inputs.read_image(str(root / "iphone_pictures" / ENTRIES[0]))
    entries = [f"{SUBJ}/multiview_occlusions/IMG_{k}.jpg" for k in range(3)]
    for entry, box in zip(entries, [(60.0, 50.0, 165.0, 180.0), (float("nan"), 50.0, 165.0, 180.0), None]):
        export.save_image(str(mine / "iphone_pictures" / entry), img)
        if box:
            now_predict.write_bbox(str(mine / "detected_face" / entry.replace(".jpg", ".npy")), *box)
    (tmp_path / "list.txt").write_text("\n".join(entries) + "\n")
    res = now_predict.export_model(str(mine), str(tmp_path / "list.txt"), str(tmp_path / "pred"), pipe=p,
                                   fit_steps=(40, 120, 0))
    assert res["written"] == entries[:1] and seen == [(60.0, 50.0, 165.0, 180.0)]
    reasons = dict(res["skipped"])
    assert "detected-face box" in reasons[entries[1]] and "no face detected" in reasons[entries[2]]
    scan, scan_l7 = gt_scan(p)
    v, f = meshio.read_obj(now.prediction_paths(str(tmp_path / "pred"), entries[0])[0])
    l7 = meshio.read_landmarks(now.prediction_paths(str(tmp_path / "pred"), entries[0])[1])
    assert np.median(now.compute_errors(scan, scan_l7, v, f, l7)) < 1.0
