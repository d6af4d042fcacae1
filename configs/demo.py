"""The embedded default: everything runs on the generated demo head, no downloads.

`launch/local.sh demo` runs `python -m jaxdeca.main --config=configs/demo.py --workdir=workdir/demo`.
"""
import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.mode = "showcase"
    config.seed = 0
    # FLAME model: None = the embedded demo head (jaxdeca/assets/demo_head.npz); otherwise a
    # FLAME npz written by `python -m jaxdeca.flame.convert`.
    config.flame_path = ml_collections.config_dict.placeholder(str)
    config.n_shape = 100
    config.n_exp = 50
    config.n_tex = 50

    config.showcase = ml_collections.ConfigDict()
    config.showcase.image_size = 256
    config.showcase.identity_sigma = 2.0  # identity modes shown at +-sigma
    config.showcase.jaw_open = 0.35  # radians
    config.showcase.cam = (7.6, 0.0, 0.0)  # DECA orthographic camera (scale, tx, ty)
    return config
