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
