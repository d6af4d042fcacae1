"""The apps' picture helpers (jaxdeca.apps.visualize) on awkward inputs."""
import numpy as np

from jaxdeca.apps import visualize as vis


def test_draw_landmarks_skips_points_far_outside_the_image():
    """A diverged prediction (train/demo.py's held-out grid, a fit's *_vis.png) can put
    landmarks at 1e12 pixels: OpenCV cannot take such a centre, so they are left out like
    NaN points, and a dot just outside the border still shows its visible part."""
    img = np.zeros((20, 30, 3), np.float32)
    out = vis.draw_landmarks(img, np.array([[1e12, 5.0], [5.0, -3e9], [np.nan, 1.0], [-1e30, 1e30]]))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8 and not out.any()
    edge = vis.draw_landmarks(img, np.array([[30.5, 10.0], [1e12, 5.0]]), radius=2)
    assert edge[:, 28:].any() and not edge[:, :25].any()


def test_to_uint8_maps_nan_to_black_without_a_cast_warning():
    """NaN pixels (a render of degenerate codes) are black, not an 'invalid value encountered
    in cast' RuntimeWarning per picture with a platform-dependent value; float64, out-of-range
    and bool inputs keep their meaning."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = vis.to_uint8(np.array([[[np.nan, np.inf, -np.inf], [0.5, 2.0, -1.0]]], np.float64))
    np.testing.assert_array_equal(out, [[[0, 255, 0], [128, 255, 0]]])
    np.testing.assert_array_equal(vis.to_uint8(np.array([[[True, False, True]]])), [[[255, 0, 255]]])


def test_a_dot_is_centred_on_its_point_rounded_to_the_nearest_pixel():
    """A landmark at (5.7, 5.7) px is drawn about pixel (6, 6), its nearest, not truncated to
    (5, 5) (a dot up to a pixel up-left of its point)."""
    out = vis.draw_landmarks(np.zeros((12, 12, 3)), [[5.7, 5.7]], radius=1).sum(-1).astype(np.float64)
    ys, xs = np.mgrid[:12, :12]
    centroid = np.array([(out * xs).sum(), (out * ys).sum()]) / out.sum()
    np.testing.assert_allclose(centroid, [6.0, 6.0], atol=0.1)
