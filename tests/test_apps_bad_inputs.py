"""Bad inputs for reconstruct, animate and fit: no face, unreadable file, empty folder, a video
that cannot be decoded. Each gives one message naming the file, and the rest of a folder is
still processed. The face is a rendered demo head (dlib finds it); networks are random."""
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeca.apps import animate, export, fit, pipeline, reconstruct
from jaxdeca.data import preprocess


@pytest.fixture(scope="module")
def pipe():
    return pipeline.load_pipeline(random_seed=0)


@pytest.fixture(scope="module")
def head(pipe):
    codes = dict(shape=jnp.zeros((1, 100)), exp=jnp.zeros((1, 50)), pose=jnp.zeros((1, 6)),
                 tex=jnp.zeros((1, 50)), cam=jnp.array([[7.0, 0.0, 0.0]]),
                 light=jnp.zeros((1, 9, 3)).at[:, 0, :].set(2.6).at[:, 3, :].set(1.0))
    out = pipe.decode(codes)
    img = np.asarray(out["images"][0]) + (1 - np.asarray(out["mask"][0]))[..., None] * 0.3
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def folder(tmp_path, head):
    """good face, unreadable image, no-face image, undecodable video."""
    d = tmp_path / "in"
    d.mkdir()
    export.save_image(str(d / "a_face.png"), head)
    (d / "b_broken.jpg").write_bytes(b"not an image at all")
    export.save_image(str(d / "c_blank.png"), np.full((96, 96, 3), 0.4))
    (d / "d_clip.mp4").write_bytes(os.urandom(200))
    return d


def check_messages(err, app, folder):
    """One stderr line per bad file, each naming its path."""
    lines = [ln for ln in err.splitlines() if ln.startswith(f"{app}: skipped")]
    assert len(lines) == 3, err
    for name, what in (("b_broken.jpg", "not a readable image"), ("c_blank.png", "no face detected"),
                       ("d_clip.mp4", "video")):
        hits = [ln for ln in lines if str(folder / name) in ln]
        assert len(hits) == 1 and what in hits[0], (name, err)


def test_reconstruct_bad_inputs(tmp_path, folder, pipe, capsys, monkeypatch):
    res = reconstruct.reconstruct(str(folder), str(tmp_path / "out"), pipe=pipe, batch=2)
    assert res["written"] == ["a_face"] and (tmp_path / "out" / "a_face" / "a_face_vis.png").exists()
    assert sorted(n for n, _ in res["skipped"]) == ["b_broken", "c_blank", "d_clip"]
    check_messages(capsys.readouterr().err, "reconstruct", folder)

    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: pipe)
    (tmp_path / "empty").mkdir()
    for bad, what in ((tmp_path / "empty", "no images"), (folder / "d_clip.mp4", "cannot open video"),
                      (folder / "b_broken.jpg", "not a readable image")):
        rc = reconstruct.main(["--input", str(bad), "--out", str(tmp_path / "o"), "--random-weights", "0"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and str(bad) in err[0] and what in err[0], err
    rc = reconstruct.main(["--input", str(folder / "c_blank.png"), "--out", str(tmp_path / "o"), "--random-weights", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{folder / 'c_blank.png'}: no face detected" in err


def test_unlistable_input_folder_is_one_line(tmp_path, folder, pipe, capsys, monkeypatch):
    # a folder without read permission ended reconstruct, fit and animate in a PermissionError
    # traceback (the tests may run as root, where chmod does not stop listing: os.listdir fails
    # as it would)
    from jaxdeca.apps import inputs
    listdir = os.listdir

    def locked(path="."):
        if os.fspath(path) == str(folder):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return listdir(path)

    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: pipe)
    monkeypatch.setattr(inputs.os, "listdir", locked)
    rc = reconstruct.main(["--input", str(folder), "--out", str(tmp_path / "o"), "--random-weights", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"reconstruct: {folder}: cannot list the folder (Permission denied)"], err
    assert not (tmp_path / "o").exists()


def test_animate_bad_inputs(tmp_path, folder, pipe, head, capsys, monkeypatch):
    export.save_image(str(folder / "e_face.png"), np.roll(head, 6, axis=1))
    res = animate.animate(str(folder / "a_face.png"), str(folder), str(tmp_path / "out"), pipe, video="a.gif", batch=2)
    assert res["frames"] == ["a_face", "e_face"] and os.path.getsize(res["video"]) > 0
    check_messages(capsys.readouterr().err, "animate", folder)

    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: pipe)
    (tmp_path / "empty").mkdir()
    for ident, drv, bad, what in (
            (folder / "a_face.png", tmp_path / "empty", tmp_path / "empty", "no images"),
            (folder / "a_face.png", folder / "d_clip.mp4", folder / "d_clip.mp4", "cannot open video"),
            (folder / "b_broken.jpg", folder, folder / "b_broken.jpg", "not a readable image"),
            (folder / "c_blank.png", folder, folder / "c_blank.png", "no face detected")):
        rc = animate.main(["--identity", str(ident), "--expression", str(drv), "--out", str(tmp_path / "o"),
                           "--random-weights", "0"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and str(bad) in err[0] and what in err[0], err


def test_fit_bad_inputs(tmp_path, folder, pipe, head, capsys, monkeypatch):
    nonet = pipeline.load_pipeline()  # fit with no network starts from the mean
    steps = (4, 4, 0)
    # three faces in batches of 2 (a_face and e_face together, then f_face alone, padded to 2 so
    # that the fit is not compiled again), each written under its own name with its own fit:
    # the heads are shifted right by 20 and 40 px
    export.save_image(str(folder / "e_face.png"), np.roll(head, 20, axis=1))
    export.save_image(str(folder / "f_face.png"), np.roll(head, 40, axis=1))
    sizes, fit_crops = [], fit.fit_crops
    monkeypatch.setattr(fit, "fit_crops", lambda p, crops, *a: sizes.append(len(crops)) or fit_crops(p, crops, *a))
    res = fit.fit_inputs(str(folder), str(tmp_path / "out"), nonet, steps=steps, batch=2)
    assert res["written"] == ["a_face", "e_face", "f_face"] and sizes == [2, 2]
    kpt = {n: np.loadtxt(tmp_path / "out" / n / f"{n}_kpt2d.txt") for n in res["written"]}
    for n, shift in (("e_face", 20), ("f_face", 40)):
        np.testing.assert_allclose((kpt[n] - kpt["a_face"]).mean(0), [shift, 0], atol=5)
    check_messages(capsys.readouterr().err, "fit", folder)
    (folder / "e_face.png").unlink()
    (folder / "f_face.png").unlink()

    # a landmark folder: a_face has a broken .pts -> skipped with that file named, the rest go on
    lm = tmp_path / "lmk"
    lm.mkdir()
    (lm / "a_face.pts").write_text("version: 1\nn_points: 2\n{\n1 2\n3 4\n}\n")
    res = fit.fit_inputs(str(folder), str(tmp_path / "out2"), nonet, landmarks=str(lm), steps=steps)
    assert res["written"] == [] and dict(res["skipped"])["a_face"].startswith(str(lm / "a_face.pts"))
    capsys.readouterr()

    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: nonet)
    (tmp_path / "empty").mkdir()
    for bad, what in ((tmp_path / "empty", "no images"), (folder / "d_clip.mp4", "cannot open video"),
                      (folder / "b_broken.jpg", "not a readable image")):
        rc = fit.main(["--input", str(bad), "--out", str(tmp_path / "o"), "--steps", "4"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and str(bad) in err[0] and what in err[0], err
    rc = fit.main(["--input", str(folder / "c_blank.png"), "--out", str(tmp_path / "o"), "--steps", "4"])
    assert rc == 1 and f"{folder / 'c_blank.png'}: no face detected" in capsys.readouterr().err


def test_apps_without_dlib_stop_with_one_message(tmp_path, folder, pipe, capsys, monkeypatch):
    # detection cannot run at all: one message with the fix, not a traceback or a skip per file
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` fails as if not installed
    monkeypatch.setattr(preprocess, "_DETECTOR", {})  # no detector cached by earlier tests
    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: pipe)
    face, out = str(folder / "a_face.png"), str(tmp_path / "o")
    for app, run in (
            ("reconstruct", lambda: reconstruct.main(["--input", str(folder), "--out", out, "--random-weights", "0"])),
            ("animate", lambda: animate.main(["--identity", face, "--expression", str(folder), "--out", out,
                                              "--random-weights", "0"])),
            ("fit", lambda: fit.main(["--input", str(folder), "--out", out, "--steps", "4"]))):
        assert run() == 2, app
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"{app}: face detection needs dlib"), err
        assert "pip install -e '.[data]'" in err[0]
        assert not os.path.exists(out)


def test_cli_argument_errors(tmp_path, folder, pipe, capsys, monkeypatch):
    """--batch (and fit's --steps) below 1 is refused by argparse (exit 2, the option named); an
    output video name that is neither a GIF nor a video container, and a landmark file that is
    not text, give one line naming the file (exit 2) before anything is computed."""
    from jaxdeca.apps import teaser
    from jaxdeca.evaluation import now
    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: pipe)
    face, out = str(folder / "a_face.png"), str(tmp_path / "o")
    for b in ("0", "-1"):
        for run in (lambda: reconstruct.main(["--input", face, "--out", out, "--random-weights", "0", "--batch", b]),
                    lambda: fit.main(["--input", face, "--out", out, "--batch", b]),
                    lambda: animate.main(["--identity", face, "--expression", face, "--out", out,
                                          "--random-weights", "0", "--batch", b]),
                    lambda: now.main(["export", "--images", str(folder), "--image-list", face, "--out", out,
                                      "--batch", b])):
            with pytest.raises(SystemExit) as e:
                run()
            err = capsys.readouterr().err
            assert e.value.code == 2 and f"argument --batch: must be a positive integer, got {b}" in err, err
        with pytest.raises(SystemExit) as e:  # 0 steps would write the unfitted mean face
            fit.main(["--input", face, "--out", out, "--steps", b])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"argument --steps: must be a positive integer, got {b}" in err, err
    for name in ("anim", "anim.png"):
        for app, run in (
                ("teaser", lambda: teaser.main(["--out", str(tmp_path / name), "--frames", "1"])),
                ("animate", lambda: animate.main(["--identity", face, "--expression", face, "--out", out,
                                                  "--random-weights", "0", "--video", name]))):
            assert run() == 2, (app, name)
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"{app}: ") and name in err[0] and ".mp4" in err[0], err
    assert not os.path.exists(out)
    rc = fit.main(["--input", face, "--out", out, "--landmarks", face, "--steps", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"fit: {face}: not a landmark file (not text)"], err


def test_teaser_unwritable_out_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """--out under a folder that cannot be made (a file stands where it would be) or naming a
    folder: teaser caught the writer's OSError after loading the model and rendering every frame
    (its own 'cannot write' line); it now checks --out first as the other apps do
    (pipeline.check_out_dir on the folder it writes into): one line naming --out and the entry in
    the way, exit 2, no model loaded, nothing created."""
    from jaxdeca.apps import teaser

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")
    monkeypatch.setattr(pipeline, "load_pipeline", no_model)
    (tmp_path / "a_file").write_text("")
    (tmp_path / "a_dir.gif").mkdir()
    for out, culprit in ((tmp_path / "a_file" / "teaser.gif", tmp_path / "a_file"),
                         (tmp_path / "a_file" / "sub" / "teaser.gif", tmp_path / "a_file"),
                         (tmp_path / "a_dir.gif", tmp_path / "a_dir.gif")):
        assert teaser.main(["--out", str(out), "--frames", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        what = "is a folder" if culprit.is_dir() else "is not a folder"
        assert err == [f"teaser: --out {out}: cannot be written: {culprit} {what}"], err
    assert sorted(os.listdir(tmp_path)) == ["a_dir.gif", "a_file"]


def test_unusable_out_folder_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """--out where a file stands (or under one) ended reconstruct, animate and fit with an OSError
    traceback at their first write, after detection and the networks had run; each app now checks
    it first and stops with one line naming --out and the file in the way, exit 2, without loading
    a model."""
    def no_model(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")
    monkeypatch.setattr(pipeline, "load_pipeline", no_model)
    (tmp_path / "a_file").write_text("")
    img = tmp_path / "x.png"
    export.save_image(str(img), np.zeros((8, 8, 3)))
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "sub"):
        for app, argv in (("reconstruct", ["--input", str(img), "--random-weights", "0"]),
                          ("animate", ["--identity", str(img), "--expression", str(img), "--random-weights", "0"]),
                          ("fit", ["--input", str(img)])):
            assert getattr(sys.modules[f"jaxdeca.apps.{app}"], "main")([*argv, "--out", str(out)]) == 2, app
            err = capsys.readouterr().err.strip().splitlines()
            assert err == [f"{app}: --out {out}: cannot be the output folder: {tmp_path / 'a_file'} is not a folder"], err
    # a folder where animate's video goes: found after every frame was written, the video lost
    (tmp_path / "o" / "animation.mp4").mkdir(parents=True)
    rc = animate.main(["--identity", str(img), "--expression", str(img), "--random-weights", "0", "--out",
                       str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"animate: --video animation.mp4: cannot be written: {tmp_path / 'o' / 'animation.mp4'} "
                               "is a folder"], err


def test_a_write_failure_is_one_line_naming_the_file_and_what_was_written(tmp_path, head, pipe, capsys,
                                                                          monkeypatch):
    """A full disk (or an output folder that became unwritable) while an app writes, after
    --out was checked: the OSError ended reconstruct, animate and teaser with a traceback, and
    said nothing of what had been written. Each CLI now stops with one line naming the file and
    the OS error and how many faces (frames) were written before it, exit status 2; files
    written before it are kept."""
    import errno

    from jaxdeca import wavefront
    from jaxdeca.apps import teaser
    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: pipe)
    src = tmp_path / "in"
    src.mkdir()
    for n in ("a", "b"):
        export.save_image(str(src / f"{n}.png"), head)
    write, calls = wavefront.write, []

    def full_disk_at_second_obj(path, *a, **k):  # a's coarse and detail OBJs, then b's coarse one
        calls.append(path)
        if os.path.basename(path) == "b.obj":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write() on a full disk: no filename
        return write(path, *a, **k)
    monkeypatch.setattr(wavefront, "write", full_disk_at_second_obj)
    out = tmp_path / "out"
    no_space = os.strerror(errno.ENOSPC)
    rc = reconstruct.main(["--input", str(src), "--out", str(out), "--crop", "none", "--batch", "2",
                           "--random-weights", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"reconstruct: {out / 'b' / 'b.obj'}: cannot write: {no_space}; "
                               f"1 face(s) written to {out} before it"], err
    assert (out / "a" / "a_codes.npz").exists() and (out / "a" / "a.obj").exists()

    rc = animate.main(["--identity", str(src / "a.png"), "--expression", str(src), "--out", str(tmp_path / "anim"),
                       "--crop", "none", "--batch", "2", "--random-weights", "0", "--video", "v.gif"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"animate: {tmp_path / 'anim' / 'b' / 'b.obj'}: cannot write: {no_space}; "
                               f"1 frame(s) written to {tmp_path / 'anim'} before it"], err

    # an image that cannot be written (cv2 encodes it, the file write fails) and the video
    monkeypatch.setattr(export, "_write_bytes", lambda path, data: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    rc = reconstruct.main(["--input", str(src / "a.png"), "--out", str(tmp_path / "o2"), "--crop", "none",
                           "--random-weights", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"reconstruct: {tmp_path / 'o2' / 'a' / 'a.png'}: cannot write: {no_space}; "
                               f"0 face(s) written to {tmp_path / 'o2'} before it"], err
    monkeypatch.setattr(animate.imageio.v3, "imopen", lambda *a, **k: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, os.strerror(errno.EACCES), a[0])))
    rc = teaser.main(["--out", str(tmp_path / "t.gif"), "--frames", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"teaser: {tmp_path / 't.gif'}: cannot write: {os.strerror(errno.EACCES)}"], err
    # NoW export's prediction files: the same error, which its command line reports (CLI_ERRORS)
    from jaxdeca.evaluation import now
    monkeypatch.setattr(now, "write_obj", full_disk_at_second_obj)
    with pytest.raises(pipeline.CLI_ERRORS) as e:
        now.export_prediction(str(tmp_path / "pred"), "s/c/b.jpg", np.zeros((3, 3)), [[0, 1, 2]], np.zeros((7, 3)))
    assert str(e.value) == f"{tmp_path / 'pred' / 's' / 'c' / 'b.obj'}: cannot write: {no_space}"


def test_flame_file_with_too_few_albedo_components_is_refused_at_load(tmp_path, folder, capsys):
    # an albedo basis of 10 components loaded, then the first render failed deep in jax
    # ('texcode has 50 components, the albedo basis only 10'), not naming the file
    from jaxdeca import flame
    from jaxdeca.apps import showcase
    from configs import demo as demo_config
    demo = dict(np.load(flame.DEMO_HEAD))
    few = str(tmp_path / "few_albedo.npz")
    np.savez(few, **dict(demo, albedo_basis=demo["albedo_basis"][..., :10]))
    what = f"{few}: the albedo basis has 10 components, the texture code 50"
    rc = reconstruct.main(["--input", str(folder), "--out", str(tmp_path / "o"), "--random-weights", "0", "--flame", few])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and what in err[0], err
    config = demo_config.get_config()
    config.flame_path = few
    with pytest.raises(flame.FlameFileError, match=what):
        showcase.run(config, str(tmp_path / "w"))


def test_teaser_input_is_encoded_or_fitted_and_an_image_without_a_face_is_one_line(tmp_path, folder, pipe,
                                                                                   capsys, monkeypatch):
    """teaser --input (a path no test ran before): the face in the image is the video's identity,
    encoded by the networks from the test-time crop, or fitted to the image when there are none.
    An image without a face, an unreadable one, a folder or a missing file is one line naming it,
    exit status 2, and no video."""
    import functools

    from PIL import Image

    from jaxdeca.apps import inputs, teaser
    nonet = pipeline.load_pipeline()  # no networks
    assert nonet.variables is None
    face = str(folder / "a_face.png")
    crop = pipeline.crop_face(inputs.read_image(face))
    want = pipe.encode(crop.image[None])
    bases, render = [], teaser.teaser
    monkeypatch.setattr(teaser, "teaser", lambda p, base, *a: bases.append(base) or render(p, base, *a))
    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: pipe)
    out = tmp_path / "t.gif"
    assert teaser.main(["--input", face, "--out", str(out), "--frames", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"teaser: wrote {out}"
    assert Image.open(out).size == (3 * 224, 224)  # shape | detail shape | render
    for name, code in want.items():
        np.testing.assert_array_equal(np.asarray(bases[-1][name]), np.asarray(code), err_msg=name)

    # no networks: fitted (a few steps here), the codes fit_image gives the image
    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: nonet)
    monkeypatch.setattr(fit, "fit_image", functools.partial(fit.fit_image, steps=(4, 0, 0)))
    monkeypatch.setattr(teaser, "teaser", lambda p, base, path, *a: bases.append(base) or path)
    assert teaser.main(["--input", face, "--out", str(tmp_path / "fit.gif")]) == 0
    fitted = fit.fit_image(nonet, inputs.read_image(face))[0]
    assert sorted(bases[-1]) == sorted(fitted)
    for name, code in fitted.items():
        np.testing.assert_allclose(np.asarray(bases[-1][name]), np.asarray(code), rtol=1e-6, atol=1e-6, err_msg=name)
    capsys.readouterr()

    for p in (pipe, nonet):
        monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, p=p, **k: p)
        for bad, what in ((folder / "c_blank.png", "no face detected"),
                          (folder / "b_broken.jpg", "not a readable image"),
                          (folder, "a folder, not an image file"), (tmp_path / "nope.png", "no such file")):
            video = tmp_path / "bad.gif"
            assert teaser.main(["--input", str(bad), "--out", str(video), "--frames", "1"]) == 2, bad
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"teaser: {bad}: ") and what in err[0], err
            assert not video.exists()
