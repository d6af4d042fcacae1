"""The main job on the embedded default writes its pictures (run through jaxdeca.main)."""
import cv2

from jaxdeca import main as jmain
from configs import demo as demo_config


def test_showcase_writes_pictures(tmp_path):
    config = demo_config.get_config()
    config.mode = "showcase"
    config.showcase.image_size = 96
    jmain.run_mode(config, str(tmp_path))
    views = cv2.imread(str(tmp_path / "showcase" / "head_views.png"))
    outputs = cv2.imread(str(tmp_path / "showcase" / "render_outputs.png"))
    assert views.shape == (2 * 96, 5 * 96, 3) and outputs.shape == (2 * 96, 3 * 96, 3)
    assert views.std() > 10 and outputs.std() > 10  # not blank
    assert (tmp_path / "showcase" / "head_neutral.obj").stat().st_size > 100_000
