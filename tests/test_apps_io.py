"""Apps' input reading (bad files reported, the rest processed) and exporters (OBJ round trip)."""
import contextlib
import errno
import os
import shutil
import signal

import cv2
import numpy as np
import pytest

from jaxdeca import wavefront
from jaxdeca.apps import export, inputs


def _write_folder(d):
    rng = np.random.default_rng(0)
    img = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(d / "a_good.png"), img)
    cv2.imwrite(str(d / "b_gray.png"), img[..., 0])
    cv2.imwrite(str(d / "c_16bit.png"), (img.astype(np.uint16) * 257))
    (d / "d_empty.jpg").write_bytes(b"")
    (d / "e_text.jpg").write_text("not an image")
    ok, enc = cv2.imencode(".jpg", img)
    (d / "f_truncated.jpg").write_bytes(enc.tobytes()[:20])
    return img


def test_folder_with_bad_files_is_processed_and_each_problem_reported(tmp_path):
    img = _write_folder(tmp_path)
    items = list(inputs.iter_frames(str(tmp_path)))
    frames = {i.name: i for i in items if isinstance(i, inputs.Frame)}
    skipped = {i.name: i.reason for i in items if isinstance(i, inputs.Skipped)}
    assert sorted(frames) == ["a_good", "b_gray", "c_16bit"]
    np.testing.assert_array_equal(frames["a_good"].image, img[..., ::-1])  # BGR on disk -> RGB
    assert frames["b_gray"].image.shape == (40, 50, 3)
    np.testing.assert_array_equal(frames["c_16bit"].image, img[..., ::-1])
    assert sorted(skipped) == ["d_empty", "e_text", "f_truncated"]
    assert "empty file" in skipped["d_empty"] and "e_text.jpg" in skipped["e_text"]


def test_folder_entries_that_are_no_file_say_what_they_are(tmp_path):
    # a folder named like an image and symbolic links that lead nowhere were all 'no such file'
    (tmp_path / "a_dir.jpg").mkdir()
    os.symlink("b_loop.png", tmp_path / "b_loop.png")
    os.symlink("gone.png", tmp_path / "c_dangling.png")
    skipped = {i.name: i.reason for i in inputs.iter_frames(str(tmp_path))}
    assert skipped == {"a_dir": f"{tmp_path / 'a_dir.jpg'}: a folder, not an image file",
                       "b_loop": f"{tmp_path / 'b_loop.png'}: a symbolic link that cannot be followed "
                                 f"({os.strerror(errno.ELOOP)})",
                       "c_dangling": f"{tmp_path / 'c_dangling.png'}: a symbolic link that cannot be followed "
                                     f"({os.strerror(errno.ENOENT)})"}
    with pytest.raises(inputs.InputError, match="b_loop.png: a symbolic link that cannot be followed"):
        list(inputs.iter_frames(str(tmp_path / "b_loop.png")))


def test_whole_input_errors(tmp_path):
    with pytest.raises(inputs.InputError, match="no such file"):
        list(inputs.iter_frames(str(tmp_path / "missing.jpg")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(inputs.InputError, match="no images"):
        list(inputs.iter_frames(str(tmp_path / "empty")))
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(inputs.InputError, match="broken.mp4"):
        list(inputs.iter_frames(str(tmp_path / "broken.mp4")))


def test_video_frames(tmp_path):
    path = str(tmp_path / "clip.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for k in range(5):
        w.write(np.full((24, 32, 3), 40 * k, np.uint8))
    w.release()
    frames = list(inputs.iter_frames(path, video_every=2))
    assert [f.name for f in frames] == ["clip_00000", "clip_00002", "clip_00004"]
    assert frames[0].image.shape == (24, 32, 3)


def _numbered_video(path, n, size, fourcc):
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 25.0, (size, size))
    for i in range(n):
        f = np.full((size, size, 3), (i * 7) % 255, np.uint8)
        cv2.circle(f, (size // 2, size // 2), size // 3, (200, 150, 120), -1)
        cv2.putText(f, str(i), (5, size - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        w.write(f)
    w.release()


def test_a_damaged_video_gives_every_frame_or_its_skip(tmp_path, monkeypatch):
    """A video with a damaged stretch in its middle was cut at the first frame that failed to
    decode, silently (animate wrote a clip half as long and exited 0), though the frames after
    it decode. Now reading goes on, and each frame up to the last decodable one is either read
    or one Skipped, in order, so animate keeps the driver's timing."""
    monkeypatch.setenv("OPENCV_FFMPEG_LOGLEVEL", "-8")
    path = str(tmp_path / "clip.mp4")
    _numbered_video(path, 120, 48, "mp4v")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2:len(data) // 2 + 4000] = bytes(4000)
    open(path, "wb").write(bytes(data))
    items = list(inputs.iter_frames(path))
    assert [i.name for i in items] == [f"clip_{k:05d}" for k in range(120)]
    kinds = "".join("F" if isinstance(i, inputs.Frame) else "S" for i in items)
    assert kinds.startswith("F") and kinds.endswith("F") and "FS" in kinds and "SF" in kinds, kinds
    skipped = [i for i in items if isinstance(i, inputs.Skipped)]
    assert skipped[0].reason == f"{path} frame {skipped[0].name[-5:].lstrip('0')}: cannot be decoded"
    assert [i.name for i in inputs.iter_frames(path, video_every=5)] == [f"clip_{k:05d}" for k in range(0, 120, 5)]
    # a file cut short ends at its last decodable frame (its missing end cannot be told from a
    # frame count the container only estimates: test_mpeg_and_wmv_videos_are_read_not_left_out)
    avi = str(tmp_path / "cut.avi")
    _numbered_video(avi, 40, 48, "MJPG")
    data = open(avi, "rb").read()
    open(avi, "wb").write(data[:int(len(data) * 0.6)])
    items = list(inputs.iter_frames(avi))
    assert 0 < len(items) < 40 and all(isinstance(i, inputs.Frame) for i in items)


def test_folder_with_videos_expands_good_ones_and_skips_broken_ones(tmp_path):
    w = cv2.VideoWriter(str(tmp_path / "b_clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for k in range(2):
        w.write(np.full((24, 32, 3), 60 * k, np.uint8))
    w.release()
    (tmp_path / "c_bad.mp4").write_bytes(b"\x00" * 64)
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    items = list(inputs.iter_frames(str(tmp_path)))
    assert [i.name for i in items] == ["a", "b_clip_00000", "b_clip_00001", "c_bad"]
    assert items[1].source == f"{tmp_path / 'b_clip.avi'} frame 0" and items[0].source == str(tmp_path / "a.png")
    assert isinstance(items[3], inputs.Skipped) and items[3].reason.startswith(str(tmp_path / "c_bad.mp4"))


def test_mpeg_and_wmv_videos_are_read_not_left_out(tmp_path):
    """Videos in the containers OpenCV reads but the extension list lacked (.mpg, .wmv) were
    left out of a folder without a word, and as --input called "not a readable image"."""
    img = np.full((16, 16, 3), 128, np.uint8)
    for name, codec in (("a.mpg", "PIM1"), ("b.wmv", "WMV2")):
        w = cv2.VideoWriter(str(tmp_path / name), cv2.VideoWriter_fourcc(*codec), 25, (16, 16))
        for _ in range(2):
            w.write(img)
        w.release()
    names = [i.name for i in inputs.iter_frames(str(tmp_path))]
    assert names == ["a_00000", "a_00001", "b_00000", "b_00001"], names
    assert [f.name for f in inputs.iter_frames(str(tmp_path / "a.mpg"))] == ["a_00000", "a_00001"]


def test_jfif_images_are_read_and_heic_photos_named_as_skipped(tmp_path):
    """.jfif/.jpe JPEGs and .HEIC phone photos in a folder were left out without a word ("0
    skipped"): the JPEGs are read, a HEIC photo (which OpenCV cannot decode) is one Skipped."""
    ok, data = cv2.imencode(".jpg", np.full((16, 16, 3), 90, np.uint8))
    for name in ("a.jfif", "b.jpe", "c.HEIC"):
        (tmp_path / name).write_bytes(data.tobytes())
    items = list(inputs.iter_frames(str(tmp_path)))
    assert [(i.name, type(i).__name__) for i in items] == [("a", "Frame"), ("b", "Frame"), ("c", "Skipped")]
    assert items[2].reason == f"{tmp_path / 'c.HEIC'}: HEIC/HEIF image (OpenCV cannot read it): convert it to JPEG first"


def test_folder_items_with_the_same_name_are_renamed(tmp_path):
    """Outputs go to out/<name>/: a later file (or video frame) whose name an earlier one has
    gets '<name>_<ext>', so nothing is overwritten; the other names stay as they were."""
    img = np.zeros((8, 8, 3), np.uint8)
    for f in ("a.png", "face.jpg", "face.png", "face_png.png", "clip_00000.png"):
        cv2.imwrite(str(tmp_path / f), img)
    (tmp_path / "face.bmp").write_bytes(b"not an image")  # skipped, under a unique name too
    w = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (8, 8))
    for _ in range(2):
        w.write(img)
    w.release()
    items = list(inputs.iter_frames(str(tmp_path)))
    assert [(i.name, os.path.basename(i.source.split(" frame ")[0]) if isinstance(i, inputs.Frame) else None)
            for i in items] == [("a", "a.png"), ("clip_00000", "clip.avi"), ("clip_00001", "clip.avi"),
                                ("clip_00000_png", "clip_00000.png"), ("face", None), ("face_jpg", "face.jpg"),
                                ("face_png", "face.png"), ("face_png_png", "face_png.png")]


def test_write_obj_roundtrip_with_texture(tmp_path):
    rng = np.random.default_rng(1)
    v = rng.normal(size=(6, 3))
    f = np.array([[0, 1, 2], [2, 3, 4], [3, 4, 5]])
    vt = rng.random((7, 2))
    ft = np.array([[0, 1, 2], [2, 3, 4], [5, 6, 0]])
    tex = rng.random((16, 16, 3))
    nmap = rng.uniform(-1, 1, (16, 16, 3))
    path = export.write_obj(str(tmp_path / "m.obj"), v, f, uv_coords=vt, uv_faces=ft, texture=tex, normal_map=nmap)
    m = wavefront.read(path)
    np.testing.assert_allclose(m["vertices"], v, atol=1e-6)
    np.testing.assert_allclose(m["uv_coords"], vt, atol=1e-6)
    np.testing.assert_array_equal(m["faces"], f)
    np.testing.assert_array_equal(m["uv_faces"], ft)
    assert "usemtl FaceTexture" in open(path).read()
    assert "map_Kd m.png" in open(tmp_path / "m.mtl").read()
    back = cv2.imread(str(tmp_path / "m.png"))[..., ::-1] / 255.0
    np.testing.assert_allclose(back, tex, atol=1 / 255)
    assert os.path.exists(tmp_path / "m_normals.png")


@pytest.mark.parametrize("name", ["Screenshot at 10.00.obj", "take#2.obj", "a #1.obj"])
def test_textured_obj_of_a_name_with_spaces_or_hash_resolves_in_spec_readers(tmp_path, name):
    """An input named like macOS screenshots ('Screenshot 2024-01-01 at 10.00.00.png') or with a
    '#' ('take#2.jpg'): OBJ's `mtllib` takes a list of whitespace-separated file names, MTL
    readers take a map's file name as the last token after its options, and '#' starts a
    comment (readers that allow one at the end of a line drop the rest of it) and a URL's
    fragment (web viewers), so every file the OBJ and the MTL name must be one token without
    '#', and it must exist beside the OBJ. Our own reader takes the OBJ either way."""
    rng = np.random.default_rng(3)
    tex, nmap = rng.random((8, 8, 3)), rng.uniform(-1, 1, (8, 8, 3))
    path = export.write_obj(str(tmp_path / name), rng.normal(size=(3, 3)), np.array([[0, 1, 2]]),
                            uv_coords=rng.random((3, 2)), uv_faces=np.array([[0, 1, 2]]), texture=tex, normal_map=nmap)
    assert os.path.basename(path) == name  # the OBJ keeps its name; only the files it names are sanitized
    lines = lambda f: [line.split("#")[0] for line in open(f)]  # noqa: E731 - comments dropped
    mtllibs = [t for line in lines(path) if line.startswith("mtllib ") for t in line.split()[1:]]
    assert len(mtllibs) == 1 and os.path.isfile(tmp_path / mtllibs[0]), mtllibs
    records = [line.split() for line in lines(tmp_path / mtllibs[0]) if line.strip()]
    maps = {r[0]: r[-1] for r in records if r[0] in ("map_Kd", "disp")}
    assert sorted(maps) == ["disp", "map_Kd"]
    back = cv2.imread(str(tmp_path / maps["map_Kd"]))
    assert back is not None, maps
    np.testing.assert_allclose(back[..., ::-1] / 255.0, tex, atol=1 / 255)
    assert cv2.imread(str(tmp_path / maps["disp"])) is not None, maps
    assert wavefront.read(path)["uv_faces"].tolist() == [[0, 1, 2]]


def test_grid_mesh_and_dense_mesh_orientation():
    valid = np.zeros((4, 5), bool)
    valid[1:3, 1:4] = True  # 2 x 3 valid texels -> 1 x 2 cells -> 4 triangles
    faces = export.grid_mesh(valid)
    assert faces.shape == (4, 3)
    ii, jj = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    pos = np.stack([jj, -ii, np.zeros_like(ii)], -1).astype(float)  # a flat sheet in the z=0 plane
    for sign in (1.0, -1.0):
        nrm = np.zeros((4, 5, 3))
        nrm[..., 2] = sign
        verts, f, _ = export.dense_detail_mesh(pos, nrm, valid)
        assert verts.shape == (6, 3) and f.max() == 5
        fn = np.cross(verts[f[:, 1]] - verts[f[:, 0]], verts[f[:, 2]] - verts[f[:, 0]])
        assert np.all(np.sign(fn[:, 2]) == sign)


def test_video_writer_streams_gif_and_mp4_at_10_fps(tmp_path):
    from PIL import Image

    from jaxdeca.apps import animate
    frames = [np.full((24, 32, 3), 60 * k, np.uint8) for k in range(3)]
    with animate.VideoWriter(str(tmp_path / "sub" / "v.gif")) as w:
        for f in frames:
            w.append(f)
    assert w.close() == str(tmp_path / "sub" / "v.gif") and w.n_frames == 3
    im = Image.open(tmp_path / "sub" / "v.gif")
    assert im.n_frames == 3
    for k in range(3):
        im.seek(k)
        assert im.info["duration"] == 100  # ms: 10 frames per second, as the mp4
        np.testing.assert_allclose(np.asarray(im.convert("RGB"))[0, 0], 60 * k, atol=2)
    path = animate.write_video(str(tmp_path / "v.mp4"), [f.astype(np.float32) / 255.0 for f in frames])
    cap = cv2.VideoCapture(path)
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and round(cap.get(cv2.CAP_PROP_FPS)) == 10
    cap.release()


def test_animated_gif_is_read_as_a_video_and_video_names_need_a_stem(tmp_path):
    """An animated GIF (what teaser and animate write) given as a driver was read as one image,
    its first frame, with no word of the rest; in a folder it was left out. It is a video now.
    A video name that is only an extension ('.mp4') was accepted and failed at the end."""
    from jaxdeca.apps import animate
    with animate.VideoWriter(str(tmp_path / "d" / "clip.gif")) as w:
        for k in range(3):
            w.append(np.full((16, 16, 3), 60 * k, np.uint8))
    frames = list(inputs.iter_frames(str(tmp_path / "d" / "clip.gif")))
    assert [f.name for f in frames] == ["clip_00000", "clip_00001", "clip_00002"]
    np.testing.assert_allclose([f.image[0, 0, 0] for f in frames], [0, 60, 120], atol=3)
    assert [i.name for i in inputs.iter_frames(str(tmp_path / "d"))] == ["clip_00000", "clip_00001", "clip_00002"]
    assert round(inputs.video_fps(str(tmp_path / "d" / "clip.gif"))) == 10
    for bad in (".mp4", "sub/.gif", "v.png"):
        with pytest.raises(inputs.InputError, match="not a video name"):
            animate.check_video_path(bad)
    assert animate.check_video_path("sub/v.GIF") == "sub/v.GIF"


def test_gif_of_a_fast_video_keeps_a_delay_browsers_honour(tmp_path):
    """GIF delays are whole centiseconds and browsers show 0 or 1 cs as 10 cs: a 60 fps
    animation would play at 10 fps. The GIF runs at most 50 fps (20 ms a frame) instead."""
    from PIL import Image

    from jaxdeca.apps import animate
    with animate.VideoWriter(str(tmp_path / "v.gif"), fps=60) as w:
        for k in range(2):
            w.append(np.full((8, 8, 3), 90 * k, np.uint8))
    im = Image.open(tmp_path / "v.gif")
    for k in range(2):
        im.seek(k)
        assert im.info["duration"] == 20


def test_gif_delays_are_made_once_a_frame(tmp_path, monkeypatch):
    """Every frame rebuilt the delay list of all frames so far: O(n^2) over a long GIF (28 ms a
    frame at 100k frames). Delays at 30 fps: 30, 40, 30 ms, ... adding up to the clip's length."""
    from PIL import Image

    from jaxdeca.apps import animate
    calls = []
    delay = animate.gif_delay_ms
    monkeypatch.setattr(animate, "gif_delay_ms", lambda k, fps: calls.append(k) or delay(k, fps))
    with animate.VideoWriter(str(tmp_path / "v.gif"), fps=30) as w:
        for k in range(7):
            w.append(np.full((8, 8, 3), 30 * k, np.uint8))
    assert calls == list(range(7))
    im = Image.open(tmp_path / "v.gif")
    got = []
    for k in range(7):
        im.seek(k)
        got.append(im.info["duration"])
    assert got == [30, 40, 30, 30, 40, 30, 30] and sum(got) == 230  # round(700 / 3) cs


def test_video_writer_without_frames_writes_nothing_and_refuses_a_size_change(tmp_path):
    from jaxdeca.apps import animate
    with animate.VideoWriter(str(tmp_path / "none.mp4")) as w:
        pass
    assert w.close() is None and not (tmp_path / "none.mp4").exists()
    with pytest.raises(ValueError, match=r"none.gif: no frames to write"):
        animate.write_video(str(tmp_path / "none.gif"), [])
    with pytest.raises(ValueError, match=r"v.gif: frame of size \(8, 8\), the video's is \(4, 4\)"):
        animate.write_video(str(tmp_path / "v.gif"), [np.zeros((4, 4, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)])
    for name in ("v", "v.png"):  # neither a GIF nor a video container: refused before any frame
        with pytest.raises(inputs.InputError, match=rf"{name}: not a video name; .*\.mp4, .*\.gif"):
            animate.VideoWriter(str(tmp_path / name))


def test_chunks_are_lazy_and_keep_the_short_tail():
    from jaxdeca.apps import pipeline
    drawn = []

    def items():
        for i in range(5):
            drawn.append(i)
            yield i

    it = pipeline.chunks(items(), 2)
    assert next(it) == [0, 1] and drawn == [0, 1]
    assert list(it) == [[2, 3], [4]]
    assert list(pipeline.chunks([], 3)) == []


def test_batch_helpers_refuse_an_empty_batch():
    """No app reaches the batch helpers with zero images (`chunks` yields no empty chunk: a
    folder of only unusable files reports '0 face(s) written, N skipped', exit 1), but an API
    caller could: pad_rows returned fewer rows than asked for, padded_batch failed in np.stack,
    Pipeline.decode with a ZeroDivisionError inside FLAME and split_batch of no arrays with an
    IndexError. Each now raises one ValueError saying the batch is empty."""
    from jaxdeca import flame, render
    from jaxdeca.apps import pipeline
    with pytest.raises(ValueError, match="empty batch"):
        pipeline.pad_rows(np.zeros((0, 3)), 2)
    assert pipeline.pad_rows(np.zeros((0, 3)), 0).shape == (0, 3)  # nothing asked for
    with pytest.raises(ValueError, match="empty batch"):
        pipeline.padded_batch([], 2)
    arrays = flame.load_arrays()
    pipe = pipeline.Pipeline(arrays=arrays, flame=flame.from_arrays(arrays),
                             topo=render.make_topology(arrays, uv_size=32), variables=None)
    codes = dict(shape=np.zeros((0, 100)), exp=np.zeros((0, 50)), pose=np.zeros((0, 6)), tex=np.zeros((0, 50)),
                 cam=np.zeros((0, 3)), light=np.zeros((0, 9, 3)))
    for tree in (codes, {}, np.zeros((0, 224, 224, 3), np.float32)):
        with pytest.raises(ValueError, match="empty batch"):
            pipe.split_batch(tree)
    with pytest.raises(ValueError, match="empty batch"):
        pipe.decode(codes)


def test_float_tiff_reads_as_its_0_to_1_intensities(tmp_path):
    """A 32-bit float TIFF holds intensities in [0, 1] (OpenCV's and image tools' convention for
    float images): it reads as the same picture as its 8-bit PNG, not as a black image."""
    img = (np.random.default_rng(2).random((20, 30, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "f.tif"), img.astype(np.float32) / 255.0)
    assert cv2.imread(str(tmp_path / "f.tif"), cv2.IMREAD_UNCHANGED).dtype == np.float32
    np.testing.assert_array_equal(inputs.read_image(str(tmp_path / "f.tif")), img[..., ::-1])


def test_apps_read_images_with_the_training_decoder(tmp_path, monkeypatch):
    """The apps decoded image files with a decoder of their own (inputs.to_rgb_uint8, a copy of
    images.decode_image's conversions); they read through images.decode_image now, so a file
    reads the same for training and reconstruction, refusals included. What showed it: a
    truncated JPEG was 'truncated JPEG (no end-of-image marker)' for prepare but 'not a readable
    image (corrupt, truncated or not an image format)' for the apps, and a signed 16-bit TIFF,
    which prepare refuses, was clipped to 0..255 by the apps (a white picture). Each is now one
    message naming the file and the decoder's reason. Sizes below training's MIN_SIDE still read
    in the apps (test_float_tiff_reads_as_its_0_to_1_intensities: 30 x 20 px)."""
    from jaxdeca.data import images
    rng = np.random.default_rng(5)
    bgr = cv2.GaussianBlur(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8), (5, 5), 2)
    files = {"grey.png": bgr[..., 0], "bgra.png": np.concatenate([bgr, bgr[..., :1]], -1),
             "g16.png": bgr[..., 1].astype(np.uint16) * 257 + 100, "f.tif": bgr.astype(np.float32) / 255.0,
             "c.jpg": bgr}
    for name, a in files.items():
        cv2.imwrite(str(tmp_path / name), a)
        np.testing.assert_array_equal(inputs.read_image(str(tmp_path / name)),
                                      images.decode_image((tmp_path / name).read_bytes()))
    data = (tmp_path / "c.jpg").read_bytes()
    cut, signed = str(tmp_path / "cut.jpg"), str(tmp_path / "s16.tif")
    open(cut, "wb").write(data[:len(data) * 3 // 5])
    cv2.imwrite(signed, bgr[..., 0].astype(np.int16) * 100)
    for path, reason in ((cut, "truncated JPEG (no end-of-image marker)"), (signed, "unsupported pixel type int16")):
        with pytest.raises(inputs.InputError) as e:
            inputs.read_image(path)
        assert str(e.value) == f"{path}: not a readable image: {reason}", str(e.value)
    seen = []
    monkeypatch.setattr(images, "decode_image", lambda data, min_side=images.MIN_SIDE: seen.append(len(data)) or
                        np.zeros((1, 1, 3), np.uint8))
    inputs.read_image(str(tmp_path / "grey.png"))
    assert seen == [os.path.getsize(tmp_path / "grey.png")]


def test_detail_obj_with_no_faces_is_skipped_with_a_message(tmp_path, capsys):
    """An empty (or too sparse) valid-texel mask gives a detailed mesh with no faces and, as
    unused texels are dropped, no vertices: an OBJ the package's reader refuses. It is not
    written (an earlier run's file of that name is removed) and stderr says why; a mesh with
    faces is written and reads back."""
    pos = np.random.default_rng(0).normal(size=(6, 6, 3))
    nrm = np.zeros((6, 6, 3))
    nrm[..., 2] = 1.0
    path = tmp_path / "x_detail.obj"
    path.write_text("v 0 0 0\n")  # a previous run's output
    sparse = np.zeros((6, 6))
    sparse[::2, ::2] = 1.0  # valid texels, but no three of them form a grid triangle
    for valid in (np.zeros((6, 6)), sparse):
        assert export.write_detail_obj(str(path), pos, nrm, valid) is None
        err = capsys.readouterr().err
        assert f"{path}: not written: the detailed mesh has no faces" in err and err.count("\n") == 1, err
        assert not path.exists()
    valid = np.zeros((6, 6))
    valid[1:4, 1:5] = 1.0
    assert export.write_detail_obj(str(path), pos, nrm, valid) == str(path)
    assert len(wavefront.read(str(path))["faces"]) == 2 * 2 * 3 and capsys.readouterr().err == ""


@contextlib.contextmanager
def disk_full_past(n_bytes):
    """Writes past byte n_bytes of any file fail with EFBIG after the bytes before it were
    written, as on a disk that fills up mid-file (RLIMIT_FSIZE; Python ignores SIGXFSZ)."""
    resource = pytest.importorskip("resource")
    if signal.getsignal(signal.SIGXFSZ) != signal.SIG_IGN:
        pytest.skip("SIGXFSZ is not ignored: a write past RLIMIT_FSIZE would kill the process")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _video(path, rng):
    from jaxdeca.apps import animate
    return animate.write_video(path, [rng.random((64, 64, 3)) for _ in range(3)])


def _now_prediction(path, v, f):
    from jaxdeca.evaluation import now
    return now.export_prediction(os.path.join(os.path.dirname(path), "pred"), "s/c/b.jpg", v, f, np.zeros((7, 3)))


_BIG = 4096  # bytes a file may have: each writer below has more to write to the file named
_CUT_SHORT = {  # writer(out/"a", vertices, faces, rng); the file it cannot complete; those complete before it
    "image": (lambda p, v, f, rng: export.save_image(p + ".png", rng.random((64, 64, 3))), "a.png", []),
    "obj": (lambda p, v, f, rng: export.write_obj(p + ".obj", v, f), "a.obj", []),
    "textured obj": (lambda p, v, f, rng: export.write_obj(p + ".obj", v, f, uv_coords=rng.random((len(v), 2)),
                                                           uv_faces=f, texture=np.zeros((8, 8, 3))),
                     "a.obj", ["a.mtl", "a.png"]),
    "landmarks": (lambda p, v, f, rng: export.save_landmarks(p + "_kpt3d.txt", v), "a_kpt3d.txt", []),
    "codes": (lambda p, v, f, rng: export.save_npz(p + "_codes.npz", {"shape": v, "crop_tform": np.eye(3)}),
              "a_codes.npz", []),
    "gif": (lambda p, v, f, rng: _video(p + ".gif", rng), "a.gif", []),
    "now prediction": (lambda p, v, f, rng: _now_prediction(p, v, f), "pred/s/c/b.obj", []),
}


@pytest.mark.parametrize("writer", sorted(_CUT_SHORT))
def test_a_write_cut_short_leaves_no_partial_file_and_keeps_the_complete_ones(tmp_path, capsys, writer):
    """A disk that fills up in the middle of a file left that file half written under its own
    name (a truncated OBJ, PNG, landmark file, npz or video), which a re-run or a reader takes
    for a complete one. Each output is now written beside its name and moved there only when
    complete: the WriteError names the file, nothing is left under its name nor beside it, and
    the files completed before it are kept."""
    write, name, before = _CUT_SHORT[writer]
    rng = np.random.default_rng(0)
    v, f = rng.normal(size=(400, 3)), rng.integers(0, 400, (400, 3))
    out = tmp_path / "out"
    write(str(out / "a"), v, f, rng)  # with room: the complete files
    assert os.path.getsize(out / name) > _BIG
    complete = {p: (out / p).read_bytes() for p in before}
    shutil.rmtree(out)
    with disk_full_past(_BIG):
        kept = export.save_landmarks(str(out / "kept.txt"), np.zeros((5, 2)))  # complete before the failure
        with pytest.raises(export.WriteError) as e:
            write(str(out / "a"), v, f, rng)
    path = str(out / name)
    assert e.value.filename == path and e.value.errno == errno.EFBIG, (e.value, e.value.errno)
    assert str(e.value) == f"{path}: cannot write: {os.strerror(errno.EFBIG)}"
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert left == sorted([*before, "kept.txt"]), left  # no partial file, no temporary one
    assert all((out / p).read_bytes() == data for p, data in complete.items())
    np.testing.assert_array_equal(np.loadtxt(kept), np.zeros((5, 2)))


def test_an_mp4_that_cv2_failed_to_write_is_an_error(tmp_path):
    """cv2's VideoWriter raises nothing when the disk fills up: frames and the index it cannot
    write are warnings on stderr, and the file is left unreadable (no index). Finished, it is
    now read back: a WriteError naming the video, nothing left under its name nor beside it."""
    from jaxdeca.apps import animate
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(20)]
    assert animate.write_video(str(tmp_path / "ok.mp4"), frames) == str(tmp_path / "ok.mp4")
    size = os.path.getsize(tmp_path / "ok.mp4")
    with disk_full_past(size // 2), pytest.raises(export.WriteError) as e:
        animate.write_video(str(tmp_path / "v.mp4"), frames)
    assert e.value.filename == str(tmp_path / "v.mp4") and "cv2's writer failed silently" in str(e.value), e.value
    assert os.listdir(tmp_path) == ["ok.mp4"]


def test_a_video_whose_block_fails_is_not_left_behind(tmp_path):
    """A video is complete only when its `with` block (or `close`) ends without an error: one
    ended by an error (a later output that could not be written, a frame of another size) was
    closed with the frames so far under the video's name, and is now discarded."""
    from jaxdeca.apps import animate
    for name in ("v.gif", "v.mp4"):
        with pytest.raises(RuntimeError, match="stop"):
            with animate.VideoWriter(str(tmp_path / name)) as w:
                w.append(np.zeros((8, 8, 3), np.uint8))
                raise RuntimeError("stop")
        assert w.close() is None
    with pytest.raises(ValueError, match="frame of size"):
        animate.write_video(str(tmp_path / "s.gif"), [np.zeros((4, 4, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)])
    assert os.listdir(tmp_path) == []


def test_replacing_writes_through_a_link_and_keeps_the_files_mode(tmp_path):
    """An output written whole (`atomic_file.replacing`) replaces what a write in place would
    have written: the file a symbolic link points to (the link stays a link), with the replaced
    file's permission bits, not the default ones."""
    target = tmp_path / "store" / "a.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    (tmp_path / "out").mkdir()
    link = tmp_path / "out" / "a.png"
    link.symlink_to(target)
    export.save_image(str(link), np.zeros((4, 4, 3), np.uint8))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes()[:4] == b"\x89PNG" and (os.stat(target).st_mode & 0o777) == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.png"]


def test_animated_webp_is_read_as_a_video_and_a_still_one_as_an_image(tmp_path):
    """An animated WebP driver was read as one image, its first frame: animate made a one-frame
    'animation'. It is read frame by frame with its frame rate, as an animated GIF is."""
    from PIL import Image
    frames = [Image.fromarray(np.full((16, 16, 3), (c, 255 - c, 7), np.uint8)) for c in (0, 80, 160, 240)]
    frames[0].save(tmp_path / "drv.webp", save_all=True, append_images=frames[1:], duration=50, loop=0,
                   lossless=True)
    frames[0].save(tmp_path / "still.webp", lossless=True)
    got = list(inputs.iter_frames(str(tmp_path / "drv.webp"), video_every=1))
    assert [f.name for f in got] == [f"drv_{i:05d}" for i in range(4)]
    assert [tuple(f.image[0, 0]) for f in got] == [(c, 255 - c, 7) for c in (0, 80, 160, 240)]  # RGB order
    assert got[1].source == f"{tmp_path / 'drv.webp'} frame 1"
    assert [f.name for f in inputs.iter_frames(str(tmp_path / "drv.webp"), video_every=3)] == ["drv_00000", "drv_00003"]
    assert inputs.video_fps(str(tmp_path / "drv.webp")) == pytest.approx(20.0)
    assert inputs.video_frame_count(str(tmp_path / "drv.webp")) == 4
    assert inputs.is_video(str(tmp_path / "drv.webp")) and not inputs.is_video(str(tmp_path / "still.webp"))
    (still,) = inputs.iter_frames(str(tmp_path / "still.webp"))
    assert still.name == "still" and inputs.video_fps(str(tmp_path / "still.webp")) is None
    names = [i.name for i in inputs.iter_frames(str(tmp_path))]
    assert names == ["drv_00000", "drv_00001", "drv_00002", "drv_00003", "still"]


def test_avif_photos_in_a_folder_are_read(tmp_path):
    """OpenCV reads AVIF, but .avif was not an image extension: a folder's AVIF photos were
    neither processed nor named as skipped ('folder contains no images' for a folder of them)."""
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, :8] = (200, 30, 30)
    if not cv2.imwrite(str(tmp_path / "a.avif"), img[..., ::-1]):
        pytest.skip("this OpenCV build writes no AVIF")
    (got,) = inputs.iter_frames(str(tmp_path))
    assert got.name == "a" and got.image.shape == (16, 16, 3)
    assert abs(int(got.image[8, 2, 0]) - 200) < 20 and got.image[8, 2, 2] < 60  # red stays red


def test_sixteen_bit_images_are_converted_without_float_copies():
    """x / 257 rounded made two float64 copies of a 16-bit image (5.6 GB peak for a 12000 x
    9000 PNG); the same levels now come with no float copy."""
    import tracemalloc

    from jaxdeca.data import images
    x = np.arange(65536, dtype=np.uint16)
    levels = (x / 257.0).round().astype(np.uint8)
    img = np.stack([np.resize(x, (256, 256))] * 3, -1)  # BGR, every 16-bit value in each channel
    tracemalloc.start()
    try:
        got = images.to_rgb_uint8(img)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, np.resize(levels, (256, 256))[..., None].repeat(3, -1))
    assert peak < 2 * img.nbytes, peak  # float64 copies: 4x the uint16 image each
    np.testing.assert_array_equal(images.to_rgb_uint8(np.resize(x, (256, 256, 1))),
                                  np.resize(levels, (256, 256))[..., None].repeat(3, -1))


NON_UTF8_DRIVER = """
import os, sys
from jaxdeca.apps import inputs
folder = sys.argv[1]
print(len(list(inputs.iter_frames(folder))), inputs.video_fps(os.path.join(folder, os.fsdecode(b"clip\\xe9.avi"))))
"""


def test_file_names_that_are_not_utf8_are_read_and_written(tmp_path):
    """A Latin-1 name from a zip (b'Jos\\xe9.jpg'; Python's str of it holds a surrogate escape):
    cv2.VideoCapture crashed the process (SIGSEGV) on such a video in an input folder, and a
    face's MTL could not be written (UnicodeEncodeError), which ended a reconstruct run."""
    import subprocess
    import sys
    vid = tmp_path / "v"
    vid.mkdir()
    w = cv2.VideoWriter(str(vid / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for k in range(3):
        w.write(np.full((24, 32, 3), 40 * k, np.uint8))
    w.release()
    os.rename(vid / "clip.avi", os.fsencode(str(vid)) + b"/clip\xe9.avi")  # (cv2 would crash on the name)
    res = subprocess.run([sys.executable, "-c", NON_UTF8_DRIVER, str(vid)], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert res.returncode == 0 and res.stdout.split() == ["3", "10.0"], (res.returncode, res.stderr[-2000:])

    obj = os.path.join(str(tmp_path / "o"), os.fsdecode(b"Jos\xe9.obj"))
    f = np.array([[0, 1, 2]])
    export.write_obj(obj, np.eye(3), f, uv_coords=np.eye(3)[:, :2], uv_faces=f, texture=np.zeros((4, 4, 3)))
    files = sorted(os.listdir(os.fsencode(str(tmp_path / "o"))))
    assert files == [b"Jos\xe9.mtl", b"Jos\xe9.obj", b"Jos\xe9.png"]
    with open(os.fsencode(str(tmp_path / "o")) + b"/Jos\xe9.mtl", "rb") as fh:
        assert b"map_Kd Jos\xe9.png" in fh.read()  # the file's own bytes: readers find the texture
    with open(os.fsencode(obj), "rb") as fh:
        assert fh.readline() == b"mtllib Jos\xe9.mtl\n"


def test_a_still_webp_above_pillows_pixel_limit_is_read(tmp_path, monkeypatch):
    """Telling an animated WebP from a still one opened every .webp with Pillow, which refuses
    an image above its pixel limit (a 14000 x 13000 panorama) with a DecompressionBombError:
    the whole run ended. It reads the header now, and OpenCV reads the image as before."""
    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 32 x 32 is over twice the limit: refused
    cv2.imwrite(str(tmp_path / "pano.webp"), np.full((32, 32, 3), 90, np.uint8))
    (got,) = inputs.iter_frames(str(tmp_path / "pano.webp"))
    assert got.name == "pano" and got.image.shape == (32, 32, 3)
    assert not inputs.is_video(str(tmp_path / "pano.webp"))


def test_names_too_long_for_their_output_files_are_shortened_and_stay_distinct(tmp_path):
    """A 248-byte file name made '<name>_normals.png' longer than the file system's 255-byte
    limit: reconstruct stopped with exit 2 and the folder's other images were never processed.
    Names over inputs.NAME_BYTES keep their start and get a hash of the whole name."""
    img = np.full((8, 8, 3), 128, np.uint8)
    long_a, long_b = "a" * 240 + "1", "a" * 240 + "2"
    cjk = "\u6587" * 80  # 240 bytes of 3-byte characters: cut on a character boundary
    for name in (long_a, long_b, cjk, "short"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), img)
    names = [f.name for f in inputs.iter_frames(str(tmp_path))]
    assert "short" in names and len(set(names)) == 4
    for n in names:
        assert len(n.encode()) <= inputs.NAME_BYTES and len((n + "_shape_detail_images.png").encode()) <= 255
        (tmp_path / f"{n}_shape_detail_images.png").write_bytes(b"")  # the longest output name: writable
    assert inputs.output_name("short") == "short"
    assert inputs.output_name(cjk).startswith("\u6587" * 55) and inputs.output_name(cjk) != inputs.output_name(cjk + "x")
    (single,) = inputs.iter_frames(str(tmp_path / f"{long_a}.png"))
    assert single.name == inputs.output_name(long_a) and single.name in names and single.key == long_a
    # --landmarks files are named after the input, not the shortened output name
    from jaxdeca.apps import landmark_files
    (tmp_path / "lmk").mkdir()
    pts = np.random.default_rng(0).uniform(10, 60, (68, 2))
    np.savetxt(tmp_path / "lmk" / f"{long_a}.txt", pts)
    np.testing.assert_allclose(landmark_files.landmarks_for(single, str(tmp_path / "lmk"), False), pts)
    # a long-named video's frames keep their index at the end of the shortened name
    video = tmp_path / "v" / ("b" * 240 + ".avi")
    video.parent.mkdir()
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (16, 16))
    for _ in range(3):
        w.write(np.full((16, 16, 3), 100, np.uint8))
    w.release()
    frames = list(inputs.iter_frames(str(video)))
    assert [f.name[-6:] for f in frames] == ["_00000", "_00001", "_00002"]
    assert all(len(f.name.encode()) <= inputs.NAME_BYTES for f in frames)
    assert [f.key for f in frames] == ["b" * 240 + f"_{k:05d}" for k in range(3)]

