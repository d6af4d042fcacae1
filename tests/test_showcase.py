"""The main job on the embedded default writes its pictures (run through jaxdeca.main)."""
import cv2
import numpy as np

from jaxdeca import main as jmain
from configs import demo as demo_config


def test_showcase_writes_pictures(tmp_path):
    config = demo_config.get_config()
    config.mode = "showcase"
    config.showcase.image_size = 96
    jmain.run_mode(config, str(tmp_path))
    views = cv2.imread(str(tmp_path / "showcase" / "head_views.png"))
    outputs = cv2.imread(str(tmp_path / "showcase" / "render_outputs.png"))
    assert views.shape == (2 * 96, 5 * 96, 3) and outputs.shape == (3 * 96, 3 * 96, 3)
    assert views.std() > 10 and outputs.std() > 10  # not blank
    # the SoftRas panels (last row: alpha, sharp blend, blurred blend) hold a head on black
    alpha, sharp, blurred = (outputs[2 * 96 + 16:, k * 96:(k + 1) * 96].astype(float) for k in range(3))
    for panel in (alpha, sharp, blurred):
        assert panel[-1, 0].max() < 5 and 0.2 < (panel > 5).any(-1).mean() < 0.9
    assert np.abs(sharp - blurred).mean() > 2  # sigma and gamma change the picture
    assert (tmp_path / "showcase" / "head_neutral.obj").stat().st_size > 100_000


def test_showcase_landmarks_follow_the_apps_drawing_convention():
    """showcase drew image-space landmarks at round((x + 1) w / 2), half a pixel right of and
    below the apps' convention (visualize.image_to_pixels: pixel k's centre at k), and raised
    on a NaN point. It now draws through visualize.draw_landmarks: the same pixels as the
    apps, NaN and far-off points left out."""
    import numpy as np

    from jaxdeca.apps import showcase, visualize as vis
    w = 32
    lmk = np.zeros((68, 2))
    lmk[:, 0] = -1 + (2 * (np.arange(68) % 16 * 2 + 1) + 1) / w  # pixel centres x = 1, 3, ..., 31
    lmk[:, 1] = -1 + (2 * (np.arange(68) // 16 * 6 + 2) + 1) / w
    lmk[5], lmk[40] = np.nan, 1e12
    out = showcase._draw_landmarks(np.zeros((w, w, 3), np.float32), lmk)
    px = vis.image_to_pixels(lmk, w)
    want = vis.draw_landmarks(vis.draw_landmarks(np.zeros((w, w, 3)), px[:17], (60, 200, 255), 1),
                              px[17:], (255, 60, 60), 1)
    assert out.dtype == np.float32 and out.shape == (w, w, 3)
    np.testing.assert_array_equal(np.round(out * 255).astype(np.uint8), want)


def test_showcase_image_size_must_be_a_positive_int(tmp_path):
    # 0 or a negative size was an OpenCV or jax traceback from deep inside the render
    import pytest
    from jaxdeca.train import paths
    config = demo_config.get_config()
    config.mode = "showcase"
    for bad in (0, -3):
        config.showcase.image_size = bad
        with pytest.raises(paths.ConfigError, match=rf"config.showcase.image_size={bad} must be a positive int"):
            jmain.run_mode(config, str(tmp_path))
    config.showcase.image_size = 32
    for bad in (((1.0, 0.0),), ((1.0,),), (("a", 1.0),), ((float("inf"), 1e-4),), ((1.0, 1e-40),)):
        c = config.copy_and_resolve_references()
        c.showcase.blends = bad
        with pytest.raises(paths.ConfigError, match=r"config.showcase.blends=.* must be \(sigma, gamma\) pairs"):
            jmain.run_mode(c, str(tmp_path))
    for field in ("n_shape", "n_exp"):  # the panels vary components 0 and 1: fewer was an IndexError traceback
        c = config.copy_and_resolve_references()
        c[field] = 1
        with pytest.raises(paths.ConfigError, match=rf"config.{field}=1 must be an int of at least 2"):
            jmain.run_mode(c, str(tmp_path))
    assert not (tmp_path / "showcase").exists()


def test_the_demo_refuses_showcase_fields_before_it_trains(tmp_path):
    """--config.n_shape=300 on the demo head (100 identity components) was refused only at the
    showcase, after the whole training; the demo checks the showcase's fields at start now."""
    import pytest
    from jaxdeca.flame import FlameFileError
    from jaxdeca.train import paths
    config = demo_config.get_config("tiny")
    for field, value, error, message in (
            ("n_shape", 300, FlameFileError, "asked for n_shape=300, n_exp=50 but the file has 100 identity"),
            ("n_tex", 500, FlameFileError, "the albedo basis has"),
            ("n_exp", 1, paths.ConfigError, "config.n_exp=1 must be an int of at least 2")):
        c = config.copy_and_resolve_references()
        c[field] = value
        with pytest.raises(error, match=message):
            jmain.run_mode(c, str(tmp_path / "w"))
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [".jaxdeca.lock"]  # nothing built or trained
