"""tfds builders: identity_faces from a prepared folder, synthetic_faces from the demo head."""
import json
import logging
import os

import cv2
import numpy as np
import pytest

from jaxdeca.data import detect, images, loader, prepare, synthetic, tfds_faces


@pytest.fixture(scope="module")
def synthetic_builder(tmp_path_factory):
    cfg = tfds_faces.SyntheticConfig(name="test", identities=3, images_per_identity=2, image_size=64, seed=5)
    return tfds_faces.build(tfds_faces.SyntheticFaces(config=cfg, data_dir=str(tmp_path_factory.mktemp("tfds"))))


def test_synthetic_records_groups_landmarks_masks(synthetic_builder):
    src = tfds_faces.data_source(synthetic_builder)
    groups = tfds_faces.groups(synthetic_builder)
    assert len(src) == 6 and groups.tolist() == [[0, 0, 2], [1, 2, 2], [2, 4, 2]]
    assert synthetic_builder.info.metadata["identities"] == ["synthetic_00000", "synthetic_00001", "synthetic_00002"]
    assert [src[i]["identity"] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    for i in range(6):
        r = src[i]
        img = images.decode_image(r["image"])
        mask = images.decode_mask(r["mask"])
        assert img.shape == (64, 64, 3) and mask.shape == (64, 64)
        lmk = r["landmarks"]
        assert lmk.shape == (68, 2) and np.isnan(r["score"])
        inner = np.round(lmk[27:36]).astype(int)  # nose: always visible, always skin
        assert np.mean(mask[inner[:, 1], inner[:, 0]] == 255) >= 0.8
        assert 0.05 < (mask > 0).mean() < 0.6
    # the landmarks are the generator's, exactly (same seed -> same codes -> same render)
    out = synthetic.render_faces(synthetic.sample_codes(np.random.default_rng([5, 1]), 2), 64)
    np.testing.assert_allclose(src[2]["landmarks"], out["landmarks"][0], atol=1e-4)
    np.testing.assert_allclose(src[3]["landmarks"], out["landmarks"][1], atol=1e-4)
    a, b = images.decode_image(src[2]["image"]), images.decode_image(src[3]["image"])
    assert np.abs(a.astype(int) - b).mean() > 5  # same identity, different expression/pose/light/background


def test_tfds_loader_over_synthetic(synthetic_builder):
    cfg = loader.LoaderConfig(groups_per_batch=2, k=2, image_size=32, seed=0, num_threads=2)
    ld = loader.tfds_loader(synthetic_builder, cfg, process_index=0, process_count=1)
    b = next(ld)
    assert b["image"].shape == (4, 32, 32, 3) and b["mask"].mean() > 0.05
    assert b["identity"][0] == b["identity"][1] and b["identity"][2] == b["identity"][3]
    assert np.all(np.abs(b["landmarks"][..., :2]) < 1)


def test_a_damaged_array_record_file_is_one_error_naming_it(synthetic_builder, tmp_path):
    """tfds reads an array_record file cut short (a full disk, an interrupted copy) as records
    whose every field is None, without an error: the loader skipped each of them as 'a object
    array' and stopped after three identities with a message naming no file. Opening the data
    is now one DatasetError (jaxdeca.main: one line) naming the file, whether it is cut short,
    damaged, holds another count of records than the dataset's info, or is missing."""
    import shutil
    from jaxdeca.data import DatasetError
    from jaxdeca.main import _user_errors
    root = tmp_path / "tfds"
    shutil.copytree(os.path.dirname(os.path.dirname(os.path.dirname(synthetic_builder.data_dir))), root)
    rel = os.path.relpath(synthetic_builder.data_dir, os.path.dirname(os.path.dirname(os.path.dirname(
        synthetic_builder.data_dir))))
    (shard,) = (root / rel).glob("*.array_record-*")
    data = shard.read_bytes()
    cfg = loader.LoaderConfig(groups_per_batch=2, k=2, image_size=32, seed=0, num_threads=2)

    def open_loader():
        b = tfds_faces.SyntheticFaces(config=synthetic_builder.builder_config, data_dir=str(root))
        return loader.tfds_loader(b, cfg, process_index=0, process_count=1)
    next(open_loader())  # the copy reads
    for cut, why in ((len(data) // 2, "not a readable array_record file"), (10, "not a readable array_record file")):
        shard.write_bytes(data[:cut])
        with pytest.raises(DatasetError, match=f"^{shard}: {why} .*--rebuild"):
            open_loader()
    from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
    shard.write_bytes(data)
    reader = ArrayRecordReader(str(shard))
    records = reader.read_all()
    reader.close()
    shard.unlink()
    writer = ArrayRecordWriter(str(shard), "group_size:1")  # a whole file, of another build
    for r in records[:-1]:
        writer.write(r)
    writer.close()
    with pytest.raises(DatasetError, match=f"^{shard}: holds 5 records where the dataset's info counts 6"):
        open_loader()
    shard.unlink()
    with pytest.raises(DatasetError, match=f"^{shard}: missing"):
        open_loader()
    assert DatasetError in _user_errors()


def make_prepared_vggface2(root):
    rng = np.random.default_rng(0)
    for rel in ("n0002/0001_01.jpg", "n0001/0002_01.png", "n0001/0001_01.jpg"):
        p = root / "images" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        img = cv2.GaussianBlur(rng.integers(0, 255, (90, 80, 3), dtype=np.uint8), (5, 5), 2)
        cv2.imwrite(str(p), img)
        detect.write_pts(str(p.with_suffix(".pts")), rng.uniform(20, 60, (68, 2)))
    s = prepare.prepare(str(root / "images"), str(root / "out"), "vggface2", workers=1, progress=False)
    assert s["ok"] == 3
    return root


@pytest.fixture(scope="module")
def prepared_vggface2(tmp_path_factory):
    return make_prepared_vggface2(tmp_path_factory.mktemp("vgg"))


def test_identity_faces_from_prepared_folder(prepared_vggface2, tmp_path):
    root = prepared_vggface2
    b = tfds_faces.build(tfds_faces.IdentityFaces(config="vggface2", data_dir=str(tmp_path)), str(root / "out"))
    src = tfds_faces.data_source(b)
    assert b.info.metadata["identities"] == ["n0001", "n0002"]
    assert tfds_faces.groups(b).tolist() == [[0, 0, 2], [1, 2, 1]]
    paths = [src[i]["path"].decode() for i in range(3)]
    assert paths == ["n0001/0001_01.jpg", "n0001/0002_01.png", "n0002/0001_01.jpg"]
    index = {json.loads(line)["path"]: json.loads(line) for line in open(root / "out" / "index.jsonl")}
    for i, p in enumerate(paths):
        r = src[i]
        assert r["identity_name"].decode() == p.split("/")[0] and r["identity"] == (0 if p.startswith("n0001") else 1)
        np.testing.assert_allclose(r["landmarks"], index[p]["landmarks"], atol=1e-3)
        assert r["mask"] == open(root / "out" / index[p]["mask"], "rb").read()
        original = open(root / "images" / p, "rb").read()
        if p.endswith(".jpg"):
            assert r["image"] == original  # clean JPEGs are stored byte for byte
        else:
            assert r["image"][:2] == b"\xff\xd8"  # others re-encoded as JPEG
            assert np.abs(images.decode_image(r["image"]).astype(int) - images.decode_image(original)).mean() < 4


def test_identity_faces_errors(prepared_vggface2, tmp_path):
    with pytest.raises(ValueError, match="prepared with layout 'vggface2', builder config is 'celeba'"):
        tfds_faces.build(tfds_faces.IdentityFaces(config="celeba", data_dir=str(tmp_path)),
                         str(prepared_vggface2 / "out"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("not a prepared folder")
    with pytest.raises(FileNotFoundError, match="index.jsonl: missing"):
        tfds_faces.build(tfds_faces.IdentityFaces(config="folders", data_dir=str(tmp_path / "d2")), str(empty))
    # a phone photo stored sideways with an EXIF orientation is stored upright, as prepare read it
    # (tfds' own decoding ignores EXIF: it saw the photo sideways, under upright landmarks and mask)
    import io
    import tensorflow as tf
    from PIL import Image
    upright = np.zeros((96, 160, 3), np.uint8)
    upright[10:40, 100:150] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to view
    buf = io.BytesIO()
    Image.fromarray(np.rot90(upright).copy()).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    (empty / "phone.jpg").write_bytes(buf.getvalue())
    stored = tf.io.decode_jpeg(tfds_faces._image_bytes(str(empty / "phone.jpg"))).numpy()
    assert stored.shape == (96, 160, 3) and np.abs(stored.astype(int) - upright).mean() < 3
    # an image that went bad after prepare accepted it stops the build naming the file
    (empty / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    with pytest.raises(images.BadImage, match=r"a\.jpg: truncated JPEG"):
        tfds_faces._image_bytes(str(empty / "a.jpg"))


def test_cli_and_loader(prepared_vggface2, tmp_path):
    assert tfds_faces.main(["--dataset", "identity_faces", "--config", "vggface2", "--manual-dir",
                            str(prepared_vggface2 / "out"), "--data-dir", str(tmp_path)]) == 0
    cfg = loader.LoaderConfig(groups_per_batch=2, k=2, image_size=32)
    builder = tfds_faces.get_builder("identity_faces", "vggface2", str(tmp_path))
    b = next(loader.tfds_loader(builder, cfg, process_index=0, process_count=1))
    assert b["identity"].tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
    assert not tfds_faces.get_builder("identity_faces", "folders", str(tmp_path)).is_prepared()
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        tfds_faces.get_builder("synthetic_faces", "nope")
    assert tfds_faces.main(["--dataset", "identity_faces", "--config", "celeba", "--manual-dir",
                            str(prepared_vggface2 / "out"), "--data-dir", str(tmp_path)]) == 2


def test_heldout_identity_split_rule_and_eval_fallback(synthetic_builder):
    from jaxdeca.train.data import choose_eval_split
    names = [f"n{i:06d}" for i in range(2, 2000)]
    assert tfds_faces.heldout_identities(names[:49]) == set()
    assert len(tfds_faces.heldout_identities(names[:50])) >= 1
    held = tfds_faces.heldout_identities(names)
    assert 0.01 < len(held) / len(names) < 0.03
    # by name, not by rank: every 50th sorted name moved when a name sorting first was added (a
    # rebuild after prepare recovered a file), so trained identities became the held-out ones
    assert tfds_faces.heldout_identities(["n000001", *names]) - {"n000001"} == held
    assert tfds_faces.heldout_identities(names[::-1]) == held
    # the fixture dataset holds no identities out: the trainer evaluates on 'train' instead
    assert choose_eval_split(synthetic_builder, "test") == "train"
    assert choose_eval_split(synthetic_builder, "train") == "train"


def test_fifty_names_none_hashing_to_zero_still_hold_one_identity_out():
    """From HELDOUT_EVERY (50) identities on there is a 'test' split: when no name hashes to 0
    modulo 50 (s1_00..s1_49: none does), the one name of the smallest hash, s1_25, is held out,
    rather than none (no 'test' split, the trainer silently evaluating on 'train')."""
    names = [f"s1_{i:02d}" for i in range(50)]
    assert not any(tfds_faces._name_hash(n) % tfds_faces.HELDOUT_EVERY == 0 for n in names)
    assert min(names, key=tfds_faces._name_hash) == "s1_25"
    assert tfds_faces.heldout_identities(names) == {"s1_25"}
    assert tfds_faces.heldout_identities(names[::-1]) == {"s1_25"}


def test_a_rebuild_names_the_trained_identities_it_holds_out():
    """A rebuild that moves identities from 'train' into 'test' (the one-time change from the
    rank rule to the name rule, for one) left a resumed run evaluating on faces it had trained
    on, silently; `_rebuild` warns with the names `moved_to_test` gives."""
    from types import SimpleNamespace

    def built(names, test):
        ids = {n: i for i, n in enumerate(names)}
        groups = {"train": [[ids[n], 0, 1] for n in names if n not in test], "test": [[ids[n], 0, 1] for n in test]}
        return SimpleNamespace(info=SimpleNamespace(metadata={"identities": names, "groups": groups}))

    old = built(["a", "b", "c", "d"], {"d"})
    assert tfds_faces.moved_to_test(old, built(["a", "b", "c", "d", "e"], {"d", "e"})) == []  # e is new
    assert tfds_faces.moved_to_test(old, built(["a", "b", "c", "d"], {"b", "c"})) == ["b", "c"]
    assert tfds_faces.moved_to_test(SimpleNamespace(info=SimpleNamespace(metadata={})), old) == []


def test_identity_faces_without_good_images_is_one_clear_error(tmp_path, capsys):
    # every image bad (here: text saved as .jpg): prepare lists them; the build says so, no tfds traceback
    (tmp_path / "images" / "n0001").mkdir(parents=True)
    (tmp_path / "images" / "n0001" / "a.jpg").write_text("<html>404</html>\n")
    s = prepare.prepare(str(tmp_path / "images"), str(tmp_path / "out"), "vggface2", workers=1, progress=False)
    assert s["ok"] == 0 and s["bad"] == 1
    with pytest.raises(ValueError, match=r"index\.jsonl: no usable images.*summary\.json"):
        tfds_faces.build(tfds_faces.IdentityFaces(config="vggface2", data_dir=str(tmp_path / "d")),
                         str(tmp_path / "out"))
    assert tfds_faces.main(["--dataset", "identity_faces", "--config", "vggface2", "--manual-dir",
                            str(tmp_path / "out"), "--data-dir", str(tmp_path / "d")]) == 2
    assert "no usable images" in capsys.readouterr().err


def test_moved_images_folder_is_given_by_its_new_path(tmp_path, capsys):
    # prepare records images relative to the folder (meta.json: where it was); moved, the build
    # names the missing folder and takes the new one with --images
    root = make_prepared_vggface2(tmp_path)
    (root / "images").rename(root / "moved")
    args = ["--dataset", "identity_faces", "--config", "vggface2", "--manual-dir", str(root / "out"),
            "--data-dir", str(tmp_path / "d")]
    assert tfds_faces.main(args) == 2
    err = capsys.readouterr().err
    assert f"{root / 'images'}: images folder not found (recorded in {root / 'out' / 'meta.json'}" in err
    assert "--images DIR" in err
    assert tfds_faces.main(args + ["--images", str(root / "nowhere")]) == 2
    assert "nowhere: images folder not found (given as --images)" in capsys.readouterr().err
    assert tfds_faces.main(args + ["--images", str(root / "moved")]) == 0
    b = tfds_faces.get_builder("identity_faces", "vggface2", str(tmp_path / "d"))
    src = tfds_faces.data_source(b)
    assert len(src) == 3 and src[0]["image"] == (root / "moved" / "n0001" / "0001_01.jpg").read_bytes()


def test_image_resized_after_prepare_stops_the_build_naming_it(tmp_path, capsys):
    # prepare's landmarks and mask are for the image it read: one resized since is named, with
    # both sizes, instead of being stored under a mask of another size (the loader would skip it)
    root = make_prepared_vggface2(tmp_path)
    p = root / "images" / "n0001" / "0002_01.png"
    cv2.imwrite(str(p), cv2.resize(cv2.imread(str(p)), (120, 135)))
    args = ["--dataset", "identity_faces", "--config", "vggface2", "--manual-dir", str(root / "out"),
            "--data-dir", str(tmp_path / "d")]
    assert tfds_faces.main(args) == 2
    err = capsys.readouterr().err
    assert f"{p}: now 120x135 px, prepare recorded 80x90 px" in err
    assert str(root / "out" / "records" / "n0001" / "0002_01.png.json") in err


def test_image_bytes_decodes_each_image_once(tmp_path, monkeypatch):
    # a clean RGB JPEG is kept byte for byte and a turned or grey one re-encoded upright as RGB,
    # from one decode each (the build used to decode every JPEG twice to compare the two)
    from PIL import Image
    y, x = np.mgrid[:96, :160]
    upright = np.stack([x * 1.5, y * 2.5, 128 + 0 * x], -1).astype(np.uint8)  # smooth, not symmetric
    upright[10:40, 100:150] = 255
    Image.fromarray(upright).save(tmp_path / "clean.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 3  # turned 180 degrees: same shape, other pixels
    Image.fromarray(upright[::-1, ::-1].copy()).save(tmp_path / "turned.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(upright[..., 1]).save(tmp_path / "grey.jpg", quality=95)
    calls = []
    imdecode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(1) or imdecode(*a))
    clean = tfds_faces._image_bytes(str(tmp_path / "clean.jpg"), (160, 96))
    assert clean == (tmp_path / "clean.jpg").read_bytes() and len(calls) == 1
    for name, want in (("turned", upright), ("grey", np.repeat(upright[..., 1:2], 3, -1))):
        data = tfds_faces._image_bytes(str(tmp_path / f"{name}.jpg"), (160, 96))
        assert data != (tmp_path / f"{name}.jpg").read_bytes()
        raw = cv2.cvtColor(imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
        assert raw.shape == (96, 160, 3) and np.abs(raw.astype(int) - want).mean() < 3, name
    assert len(calls) == 3


def test_image_changed_after_prepare_with_the_same_size_stops_the_build_naming_it(tmp_path, capsys):
    # a file retouched or replaced at the same size is caught by the sha256 prepare recorded;
    # records written before fingerprints still build (only their size is checked)
    root = make_prepared_vggface2(tmp_path)
    p = root / "images" / "n0001" / "0001_01.jpg"
    cv2.imwrite(str(p), 255 - cv2.imread(str(p)))  # same 80x90 px, other pixels
    args = ["--dataset", "identity_faces", "--config", "vggface2", "--manual-dir", str(root / "out"),
            "--data-dir", str(tmp_path / "d")]
    assert tfds_faces.main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {p}: changed since prepare read it")
    assert f"remove {root / 'out' / 'records' / 'n0001' / '0001_01.jpg.json'} and re-run prepare" in err
    index = root / "out" / "index.jsonl"
    old = [{k: v for k, v in json.loads(line).items() if k not in ("sha256", "file_size", "file_mtime_ns")}
           for line in open(index)]
    index.write_text("".join(json.dumps(r) + "\n" for r in old))
    assert tfds_faces.main(args) == 0


def test_python_dash_m_builds_the_dataset_the_readme_names(tmp_path):
    # README step 2 runs the builder as `python -m jaxdeca.data.tfds_faces`, where this file is
    # the module '__main__'; tfds finds a builder's package from its class's module, so the
    # command must build from the module imported under its own name (the trainer reads it so)
    import os
    import subprocess
    import sys
    root = make_prepared_vggface2(tmp_path)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    proc = subprocess.run([sys.executable, "-m", "jaxdeca.data.tfds_faces", "--dataset", "identity_faces",
                           "--config", "vggface2", "--manual-dir", str(root / "out"), "--data-dir",
                           str(tmp_path / "d")], cwd=str(tmp_path), env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "identity_faces/vggface2: train 3 examples of 2 identities" in proc.stdout
    # tfds' own lines said "Downloading and preparing dataset Unknown size" and warned of a
    # missing dataset_info.json before the first build; nothing is downloaded
    assert "(nothing is downloaded)" in proc.stdout
    assert "Downloading" not in proc.stdout and "downloaded and prepared" not in proc.stdout
    assert "dataset_info.json" not in proc.stderr
    b = tfds_faces.get_builder("identity_faces", "vggface2", str(tmp_path / "d"))
    assert b.info.module_name == "jaxdeca.data.tfds_faces"
    assert len(tfds_faces.data_source(b)) == 3


def test_a_first_build_says_what_it_writes_and_that_nothing_is_downloaded(tmp_path, capsys, caplog):
    cfg = tfds_faces.SyntheticConfig(name="say", identities=2, images_per_identity=2, image_size=32, seed=1)
    b = tfds_faces.SyntheticFaces(config=cfg, data_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        assert not b.is_prepared()
        tfds_faces.build(b)
        assert b.is_prepared()
    out = capsys.readouterr().out
    assert "Download" not in out and "downloaded and prepared" not in out
    assert (f"synthetic_faces/say 1.0.0: rendering 2 identities x 2 images at 32 px from the demo head into "
            f"{b.data_dir} (nothing is downloaded)") in out
    assert f"synthetic_faces/say 1.0.0: written to {b.data_dir}" in out
    assert "dataset_info.json" not in caplog.text  # tfds' is_prepared warns of a folder never made
    # a folder left without its info (a build cut short) is still warned about by tfds
    os.remove(os.path.join(b.data_dir, "dataset_info.json"))
    with caplog.at_level(logging.WARNING):
        assert not tfds_faces.SyntheticFaces(config=cfg, data_dir=str(tmp_path)).is_prepared()
    assert "dataset_info.json" in caplog.text


def test_identity_faces_without_manual_dir_is_one_clear_error(tmp_path, capsys):
    # the build without --manual-dir is one usage error, not tfds' AssertionError (the trainer's
    # not-built error names --manual-dir: test_train_data_errors)
    with pytest.raises(SystemExit) as e:
        tfds_faces.main(["--dataset", "identity_faces", "--config", "vggface2", "--data-dir", str(tmp_path)])
    assert e.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--manual-dir" in errors[0] and "jaxdeca.data.prepare" in errors[0]


def test_synthetic_head_setup_runs_flame_as_one_program():
    """The landmark box that frames every synthetic face comes from the neutral head's FLAME
    landmarks: one jitted program, not about 165 eager operations each compiled on its own;
    its extent and centre are the ones FLAME gives op by op."""
    import jax
    import jax.numpy as jnp
    from compile_count import compiles
    synthetic._model.cache_clear()
    jax.clear_caches()  # the eager operations' compiled programs too
    with compiles() as n:
        arrays, model, topo, extent, centre = synthetic._model(None)
    assert len(n) <= 4, len(n)  # make_topology's UV rasterization and 2 small ops, the FLAME program
    neutral = model(jnp.zeros((1, 100)), jnp.zeros((1, 50)), jnp.zeros((1, 6)))  # op by op
    lmk = np.asarray(neutral["landmarks2d"][0, :, :2])
    assert extent == float(((lmk.max(0) - lmk.min(0)).sum()) / 2)
    np.testing.assert_array_equal(centre, (lmk.max(0) + lmk.min(0)) / 2)


def test_rebuild_after_prepare_ran_again(tmp_path, capsys):
    # a build after prepare added (or fixed) images reused the dataset built before, silently:
    # the new images never reached training. Now it stops naming the dataset; --rebuild writes it again
    root = make_prepared_vggface2(tmp_path)
    args = ["--dataset", "identity_faces", "--config", "vggface2", "--manual-dir", str(root / "out"),
            "--data-dir", str(tmp_path / "d")]
    assert tfds_faces.main(args) == 0
    assert "train 3 examples of 2 identities" in capsys.readouterr().out
    assert tfds_faces.main(args) == 0  # nothing changed: reused
    p = root / "images" / "n0003" / "0001_01.jpg"
    p.parent.mkdir()
    cv2.imwrite(str(p), cv2.imread(str(root / "images" / "n0001" / "0001_01.jpg")))
    detect.write_pts(str(p.with_suffix(".pts")), np.random.default_rng(1).uniform(20, 60, (68, 2)))
    assert prepare.prepare(str(root / "images"), str(root / "out"), "vggface2", workers=1, progress=False)["ok"] == 4
    capsys.readouterr()
    assert tfds_faces.main(args) == 2
    err = capsys.readouterr().err
    assert "identity_faces/vggface2/1.0.0: built from an index.jsonl other than the one in" in err and "--rebuild" in err
    assert tfds_faces.main(args + ["--rebuild"]) == 0
    assert "train 4 examples of 3 identities" in capsys.readouterr().out
    b = tfds_faces.get_builder("identity_faces", "vggface2", str(tmp_path / "d"))
    assert len(tfds_faces.data_source(b)) == 4 and tfds_faces.groups(b).shape == (3, 3)


def test_build_input_errors_are_one_line_naming_the_file(tmp_path, capsys):
    root = make_prepared_vggface2(tmp_path)
    out = root / "out"

    def run(manual, data_dir):
        rc = tfds_faces.main(["--dataset", "identity_faces", "--config", "vggface2", "--manual-dir", str(manual),
                              "--data-dir", str(tmp_path / data_dir)])
        err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln.lower()]  # not tfds' progress bars
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
        return err[0]

    (tmp_path / "empty").mkdir()
    assert f"{tmp_path / 'nope'}: folder not found" in run(tmp_path / "nope", "d1")  # a tfds AssertionError
    assert f"{tmp_path / 'empty' / 'index.jsonl'}: missing" in run(tmp_path / "empty", "d2")
    # an image that became a folder (or unreadable): IsADirectoryError / PermissionError tracebacks
    img = root / "images" / "n0001" / "0001_01.jpg"
    data = img.read_bytes()
    img.unlink()
    img.mkdir()
    assert f"{img}: unreadable (Is a directory)" in run(out, "d3")
    img.rmdir()
    img.write_bytes(data)
    # a damaged mask was stored, and the loader then blamed the image
    mask = next(out.glob("masks/n0002/*.png"))
    good_mask = mask.read_bytes()
    mask.write_bytes(b"garbage")
    assert f"{mask}: the mask does not decode as PNG" in run(out, "d4")
    mask.write_bytes(good_mask)
    # a record without landmarks: KeyError traceback; a broken meta.json: a message naming no file
    index = (out / "index.jsonl").read_text()
    rec = json.loads(index.splitlines()[1])
    del rec["landmarks"]
    (out / "index.jsonl").write_text("\n".join([index.splitlines()[0], json.dumps(rec)] + index.splitlines()[2:]) + "\n")
    assert f"{out / 'index.jsonl'}:2: a record needs path, identity, landmarks, mask; this one lacks landmarks" \
        in run(out, "d5")
    (out / "index.jsonl").write_text(index)
    (out / "meta.json").write_text('{"images_ro')
    assert f"{out / 'meta.json'}: cannot be read as JSON" in run(out, "d6")


def _tree(folder):
    """{relative path: bytes} of every file under folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _records(builder):
    src = tfds_faces.data_source(builder)  # check_shards first
    return [(src[i]["path"].decode(), src[i]["image"], src[i]["landmarks"].tolist()) for i in range(len(src))]


def test_a_failed_rebuild_keeps_the_dataset_built_before(tmp_path, capsys, monkeypatch):
    # --rebuild used tfds' REUSE_CACHE_IF_EXISTS, which deletes the version folder before it
    # generates: a rebuild that then stopped (an image changed since prepare read it, a full
    # disk) left an empty folder, and training on the dataset built before could not start. Now
    # the old dataset stays as it was until a new one is complete, and then the new one replaces it
    root = make_prepared_vggface2(tmp_path)
    data = tmp_path / "d"
    args = ["--dataset", "identity_faces", "--config", "vggface2", "--manual-dir", str(root / "out"),
            "--data-dir", str(data)]
    assert tfds_faces.main(args) == 0
    capsys.readouterr()
    built = _tree(data)
    version = data / "identity_faces" / "vggface2" / "1.0.0"
    assert any(k.startswith("identity_faces/vggface2/1.0.0/") and "array_record" in k for k in built)
    old = _records(tfds_faces.get_builder("identity_faces", "vggface2", str(data)))
    assert [r[0] for r in old] == ["n0001/0001_01.jpg", "n0001/0002_01.png", "n0002/0001_01.jpg"]
    cfg = loader.LoaderConfig(groups_per_batch=2, k=2, image_size=32)

    def kept_as_it_was():
        assert _tree(data) == built  # the same files, byte for byte, and nothing left of the rebuild
        b = tfds_faces.get_builder("identity_faces", "vggface2", str(data))
        tfds_faces.check_shards(b)
        assert _records(b) == old and tfds_faces.groups(b).tolist() == [[0, 0, 2], [1, 2, 1]]
        batch = next(loader.tfds_loader(b, cfg, process_index=0, process_count=1))  # training still starts on it
        assert batch["image"].shape == (4, 32, 32, 3)

    # 1. an image changed since prepare read it: the same one-line error, the old dataset kept
    p = root / "images" / "n0001" / "0002_01.png"
    good = p.read_bytes()
    cv2.imwrite(str(p), 255 - cv2.imread(str(p)))
    assert tfds_faces.main(args + ["--rebuild"]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {p}: changed since prepare read it"), errors
    assert version.is_dir()
    kept_as_it_was()
    p.write_bytes(good)

    # 2. any other failure half way through writing (here: a full disk after the first example)
    generate = tfds_faces.IdentityFaces._generate_examples

    def disk_full(self, *a):
        for key, example in generate(self, *a):
            if key == 1:
                raise OSError(28, "No space left on device")
            yield key, example
    monkeypatch.setattr(tfds_faces.IdentityFaces, "_generate_examples", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        tfds_faces.build(tfds_faces.get_builder("identity_faces", "vggface2", str(data)), str(root / "out"),
                         rebuild=True)
    kept_as_it_was()
    monkeypatch.undo()

    # 3. a rebuild that succeeds replaces it: the new records, read where the old ones were
    q = root / "images" / "n0003" / "0001_01.jpg"
    q.parent.mkdir()
    cv2.imwrite(str(q), 255 - cv2.imread(str(root / "images" / "n0001" / "0001_01.jpg")))
    detect.write_pts(str(q.with_suffix(".pts")), np.random.default_rng(1).uniform(20, 60, (68, 2)))
    assert prepare.prepare(str(root / "images"), str(root / "out"), "vggface2", workers=1, progress=False)["ok"] == 4
    given = tfds_faces.get_builder("identity_faces", "vggface2", str(data))
    b = tfds_faces.build(given, str(root / "out"), rebuild=True)
    new = _records(b)
    assert b.data_dir == str(version) and [r[0] for r in new] == [r[0] for r in old] + ["n0003/0001_01.jpg"]
    assert new[:3] == old and new[3][1] == q.read_bytes()
    assert b.info.metadata["identities"] == ["n0001", "n0002", "n0003"] and len(tfds_faces.groups(b)) == 3
    again = tfds_faces.get_builder("identity_faces", "vggface2", str(data))
    assert _records(again) == new and again.info.metadata["index_sha256"] == tfds_faces.index_digest(str(root / "out"))
    assert sorted(_tree(data)) == sorted(built)  # the same files (new contents); no rebuild folder left
    assert tfds_faces.main(args) == 0  # reused as built from this index.jsonl
    assert "train 4 examples of 3 identities" in capsys.readouterr().out
    assert tfds_faces.main(args + ["--rebuild"]) == 0  # and the command line rebuilds it too
    assert "train 4 examples of 3 identities" in capsys.readouterr().out
    assert _records(tfds_faces.get_builder("identity_faces", "vggface2", str(data))) == new


def test_rebuild_keeps_the_images_folder_and_a_synthetic_config_object(tmp_path):
    # the rebuild writes with a builder of its own: it must read the images from the folder the
    # given builder was told (--images), and keep a config given as an object, not by name
    root = make_prepared_vggface2(tmp_path)
    data = str(tmp_path / "d")
    tfds_faces.build(tfds_faces.IdentityFaces(config="vggface2", data_dir=data), str(root / "out"))
    (root / "images").rename(root / "moved")
    b = tfds_faces.build(tfds_faces.IdentityFaces(config="vggface2", data_dir=data, images_root=str(root / "moved")),
                         str(root / "out"), rebuild=True)
    assert len(_records(b)) == 3
    cfg = tfds_faces.SyntheticConfig(name="test", identities=2, images_per_identity=2, image_size=32, seed=3)
    s = tfds_faces.build(tfds_faces.SyntheticFaces(config=cfg, data_dir=data))
    first = _records(s)
    s = tfds_faces.build(tfds_faces.SyntheticFaces(config=cfg, data_dir=data), rebuild=True)
    assert s.builder_config is cfg and _records(s) == first and len(first) == 4


def _fake_prepared(root, n, rng):
    """A prepared folder's index.jsonl (n records of 40 identities, 68 landmarks each) and meta.json."""
    os.makedirs(root)
    with open(os.path.join(root, "index.jsonl"), "w") as f:
        for i in range(n):
            f.write(json.dumps(dict(path=f"id{i % 40:02d}/{i:05d}.jpg", identity=f"id{i % 40:02d}",
                                    landmarks=np.round(rng.uniform(0, 200, (68, 2)), 3).tolist(),
                                    mask=f"masks/{i}.png", score=None, source="dlib")) + "\n")
    with open(os.path.join(root, "meta.json"), "w") as f:
        json.dump(dict(images_root=root, layout="folders"), f)


def test_identity_build_holds_no_record_until_it_writes_it(tmp_path):
    """The build read every index.jsonl record into memory and kept them until the last was
    written (68 landmarks each as lists: 13.5 KB an image, 42 GB for VGGFace2's 3.1M images).
    Now it keeps each record's place in the file and reads it when its example is written; a
    line that changed meanwhile stops the build naming it."""
    import tracemalloc
    import types
    root = str(tmp_path / "prepared")
    n = 3000
    _fake_prepared(root, n, np.random.default_rng(0))
    builder = tfds_faces.IdentityFaces(config="folders", data_dir=str(tmp_path / "tfds"))
    tracemalloc.start()
    gens = builder._split_generators(types.SimpleNamespace(manual_dir=root))
    kept = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert kept < 1000 * n, kept / n  # bytes an image: ~240 now, 10.8 KB when it kept the records
    groups = builder.info.metadata["groups"]
    assert sum(c for _, _, c in groups["train"]) + sum(c for _, _, c in groups.get("test", [])) == n

    with open(os.path.join(root, "index.jsonl")) as f:
        lines = f.readlines()
    lines[0] = lines[0].replace("00000.jpg", "other.jpg")  # prepare ran again meanwhile
    with open(os.path.join(root, "index.jsonl"), "w") as f:
        f.writelines(lines)
    with pytest.raises(ValueError, match=r"index.jsonl:1: changed while the dataset was being built"):
        next(gens["train"])


def test_a_first_build_finished_meanwhile_by_another_process_is_used(tmp_path, capsys, monkeypatch):
    """Two first builds of one dataset at once (two jobs): the one finishing second ended in a
    traceback, tfds' FileExistsError on renaming its incomplete.* folder to the version folder
    the other had made. It now uses that build. Here the other build runs to its end inside
    this one's generation, before this one's own."""
    cfg = tfds_faces.SyntheticConfig(name="race", identities=2, images_per_identity=2, image_size=32, seed=1)
    data = str(tmp_path / "d")
    mine = tfds_faces.SyntheticFaces(config=cfg, data_dir=data)
    own = mine._split_generators

    def other_build_first(*a, **kw):
        tfds_faces.build(tfds_faces.SyntheticFaces(config=cfg, data_dir=data))
        return own(*a, **kw)

    monkeypatch.setattr(mine, "_split_generators", other_build_first)
    b = tfds_faces.build(mine)
    assert "built meanwhile by another process; using that build" in capsys.readouterr().err
    assert b.is_prepared() and b.info.splits["train"].num_examples == 4
    tfds_faces.check_shards(b)
    assert not [n for n in os.listdir(os.path.join(data, "synthetic_faces", "race")) if n.startswith("incomplete")]


def test_names_that_are_not_utf8_are_bad_files_not_a_failed_build(tmp_path, capsys):
    """A Latin-1 file or identity folder name from a zip (b'Jos\\xe9'): prepare recorded the image
    as good, and the dataset build then stopped on it, hours in on a large folder (tfds stores the
    path and identity as text: UnicodeEncodeError). prepare counts it bad, naming why."""
    rng = np.random.default_rng(0)
    images_dir = os.fsencode(str(tmp_path / "images"))
    for rel in (b"n0001/a.jpg", b"n0001/Jos\xe9.jpg", b"Jos\xe9/b.jpg", b"n0002/c.jpg"):
        p = os.fsdecode(images_dir + b"/" + rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        ok, enc = cv2.imencode(".jpg", cv2.GaussianBlur(rng.integers(0, 255, (90, 80, 3), dtype=np.uint8), (5, 5), 2))
        with open(p, "wb") as f:
            f.write(enc.tobytes())
        detect.write_pts(os.path.splitext(p)[0] + ".pts", rng.uniform(20, 60, (68, 2)))
    s = prepare.prepare(str(tmp_path / "images"), str(tmp_path / "out"), "vggface2", workers=1, progress=False)
    assert (s["ok"], s["bad"]) == (2, 2), s
    reasons = sorted(b["reason"] for b in s["bad_files"])
    assert reasons == ["its file name is not valid UTF-8 (e.g. a Latin-1 name from a zip archive): rename it",
                       "its identity is not valid UTF-8 (e.g. a Latin-1 name from a zip archive): rename it"]
    capsys.readouterr()
    b = tfds_faces.build(tfds_faces.IdentityFaces(config="vggface2", data_dir=str(tmp_path / "d")), str(tmp_path / "out"))
    src = tfds_faces.data_source(b)
    assert sorted(src[i]["path"].decode() for i in range(len(src))) == ["n0001/a.jpg", "n0002/c.jpg"]


def build_mix(prepared, data_dir):
    """identity_faces/vggface2 and identity_faces/folders, built each on its own in one data dir,
    from the same 3 photos of 2 identities (n0001: 2 images, n0002: 1) prepared with each layout:
    a mix of two datasets whose identity names coincide."""
    prepare.prepare(str(prepared / "images"), str(prepared / "out_folders"), "folders", workers=1, progress=False)
    for name, out in (("vggface2", "out"), ("folders", "out_folders")):
        tfds_faces.build(tfds_faces.IdentityFaces(config=name, data_dir=str(data_dir)), str(prepared / out))
    return data_dir


def test_a_mix_of_datasets_reads_their_concatenation(prepared_vggface2, tmp_path):
    """DECA's training data is a mix (VGGFace2 + BUPT, VGGFace2 + VoxCeleb2): tfds_loader
    over a list of builders reads their splits end to end, sampling over the groups of
    both; the second dataset's identities follow the first's (its identity count), so the same
    name in two datasets is two identities, as in DECA's ConcatDataset."""
    build_mix(prepared_vggface2, tmp_path)
    builders = [tfds_faces.get_builder("identity_faces", n, str(tmp_path)) for n in ("vggface2", "folders")]
    assert [tfds_faces.identity_count(b) for b in builders] == [2, 2]
    cfg = loader.LoaderConfig(groups_per_batch=4, k=2, image_size=32, seed=0, num_threads=1)
    ld = loader.tfds_loader(builders, cfg, process_index=0, process_count=1)
    assert ld.groups.tolist() == [[0, 0, 2], [1, 2, 1], [2, 3, 2], [3, 5, 1]] and len(ld.source) == 6
    records = [ld.source[i] for i in range(6)]
    assert [int(r["identity"]) for r in records] == [0, 0, 1, 2, 2, 3]
    assert [r["identity_name"].decode() for r in records] == ["n0001", "n0001", "n0002"] * 2
    assert [r["path"] for r in records[3:]] == [r["path"] for r in records[:3]]
    b = next(ld)  # 4 groups a batch, 4 in the mix: one of each identity of both datasets
    assert sorted(b["identity"].reshape(4, 2)[:, 0].tolist()) == [0, 1, 2, 3]
    assert np.all(b["identity"][::2] == b["identity"][1::2])
    # the single-dataset reader is unchanged
    assert loader.tfds_loader(builders[1], cfg, process_index=0, process_count=1).groups.tolist() == \
        [[0, 0, 2], [1, 2, 1]]
