"""Numeric config fields out of range are one ConfigError naming the field (config_ranges), loss
weights are checked where they are read (losses.defaults.as_weights), and DECA's training-crop
fields reach the loader."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from configs import coarse, demo, test_toy
from jaxdeca.losses.defaults import as_weights
from jaxdeca.train import config_ranges, data, paths
from jaxdeca.train import demo as demo_lib


@pytest.mark.parametrize("field, value, message", [
    ("seed", -1, "config.seed=-1 must be >= 0"),
    ("optim.learning_rate", 0.0, "config.optim.learning_rate=0.0 must be > 0.0"),
    ("optim.learning_rate", math.nan, "config.optim.learning_rate=nan must be a finite number"),
    ("optim.clip_norm", -1.0, "config.optim.clip_norm=-1.0 must be >= 0.0"),
    ("train.batch_size", 0, "config.train.batch_size=0 must be >= 1"),
    ("train.num_steps", -1, "config.train.num_steps=-1 must be >= 0"),
    ("data.image_size", 0, "config.data.image_size=0 must be >= 1"),
    ("data.num_threads", -1, "config.data.num_threads=-1 must be >= 0"),
    ("data.eval_batches", -1, "config.data.eval_batches=-1 must be >= 0"),
    ("data.eval_seed", -2, "config.data.eval_seed=-2 must be >= 0"),
    ("data.color_jitter", -0.1, "config.data.color_jitter=-0.1 must be >= 0.0"),
    ("data.scale_min", 0.0, "config.data.scale_min=0.0 must be > 0.0"),
    ("data.eval_scale", -1.6, "config.data.eval_scale=-1.6 must be > 0.0"),
    ("data.scale_max", 1.0, r"config.data.scale_max=1.0 must be >= config.data.scale_min=1.4"),
    ("data.trans_scale", math.inf, "config.data.trans_scale=inf must be a finite number"),
    ("model.init_cam_scale", -8.0, "config.model.init_cam_scale=-8.0 must be >= 0.0"),
    ("loss.lmk", -1.0, r"config.loss: loss weights: lmk=-1.0 must be a finite number >= 0"),
    ("loss.photo", math.nan, r"config.loss: loss weights: photo=nan must be a finite number >= 0"),
])
def test_a_field_out_of_range_is_one_config_error_naming_it(field, value, message):
    config = coarse.get_config("coarse")
    section, _, name = field.rpartition(".")
    (config[section] if section else config)[name] = value
    with pytest.raises(paths.ConfigError, match=message):
        config_ranges.check_ranges(config)


def test_bounds_that_mean_off_are_allowed_and_other_tasks_losses_are_their_own():
    config = coarse.get_config("coarse")
    config.model.init_cam_scale = 0.0  # DECA's init, as None
    config.optim.clip_norm = 0.0
    config.loss.photo = 0.0
    config_ranges.check_ranges(config)
    toy = test_toy.get_config()  # a task of the user's own, with its own loss section
    with toy.unlocked():
        toy.loss = {"mse": 1.0}
    config_ranges.check_ranges(toy)


def test_the_shipped_configs_are_in_range():
    for stage in ("pretrain", "coarse", "detail"):
        config_ranges.check_ranges(coarse.get_config(stage))
    config_ranges.check_ranges(test_toy.get_config())  # no loss, data or model fields: nothing to check
    for size in ("", "tiny"):
        demo_lib.check_config(demo.get_config(size))


def test_the_demo_checks_every_stage_before_it_starts():
    config = demo.get_config("tiny")
    config.detail.train.num_steps = -1
    with pytest.raises(paths.ConfigError, match=r"stage detail \(config.stage_defaults, then config.detail on top\): "
                                                r"config.train.num_steps=-1 must be >= 0"):
        demo_lib.check_config(config)


def test_the_demo_config_has_no_field_the_demo_sets_itself():
    """stage_config sets the seed, stage, FLAME file and data dir of every stage; the same fields
    in stage_defaults were silently overwritten, and the jax.distributed ones never read."""
    d = demo.get_config().stage_defaults
    for field in ("seed", "mode", "task", "stage", "flame", "coordinator_address", "num_processes", "process_id"):
        assert field not in d, field
    assert "data_dir" not in d.data
    c = demo_lib.stage_config(demo.get_config(), "coarse", "/w")
    assert (c.seed, c.stage, c.task, c.flame.path, c.data.data_dir) == (0, "coarse", "coarse", None, "/w/data")


def test_loss_weights_are_finite_non_negative_numbers_and_switches_bools():
    import jax.numpy as jnp
    w = as_weights({"lmk": np.float32(0.5), "photo": 0, "id": jnp.float32(0.25), "eyed": np.array(2.0),
                    "use_seg": np.bool_(False), "use_wlmk": 0, "shape_consistency": 1})
    assert (w["lmk"], w["photo"], w["id"], w["eyed"]) == (0.5, 0, 0.25, 2.0)
    assert (w["use_seg"], w["use_wlmk"], w["shape_consistency"]) == (False, False, True)
    for bad, message in [({"lmk": -1.0}, "lmk=-1.0 must be a finite number >= 0"),
                         ({"id": math.inf}, "id=inf must be"), ({"eyed": "1"}, "eyed='1' must be"),
                         ({"lipd": True}, "lipd=True must be"), ({"lmk": jnp.float32(-1)}, "lmk=-1.0 must be"),
                         ({"use_seg": 2}, r"use_seg=2 must be True or False \(or 1 or 0\)"),
                         ({"render_sigma": 1e-40}, r"render_sigma=1e-40 must be 0 \(DECA's hard mask\) or a finite"),
                         ({"render_sigma": -1.0}, r"render_sigma=-1.0 must be 0 \(DECA's hard mask\) or a finite"),
                         ({"render_sigma": math.inf}, r"render_sigma=inf must be 0 \(DECA's hard mask\)")]:
        with pytest.raises(ValueError, match=message):
            as_weights(bad)


def test_loss_render_sigma_reaches_the_coarse_photometric_render_only(monkeypatch):
    """The SoftRas sigma of the coarse stage's photometric render was render.render's default
    (1 px^2) with no config field. It is config.loss.render_sigma now (0: DECA's hard mask, no
    soft pass); the renders whose soft alpha nothing reads (the image grids) ask for none."""
    import jax
    from configs import test_coarse
    from jaxdeca import render
    from jaxdeca.train.deca_coarse import CoarseTask
    seen, real = [], render.render

    def spy(*a, sigma=1.0, **k):
        seen.append(sigma)
        return real(*a, sigma=sigma, **k)
    monkeypatch.setattr(render, "render", spy)
    assert coarse.get_config("coarse").loss.render_sigma == 0.0  # DECA's hard mask
    for sigma in (0.0, 2.5):
        config = test_coarse.get_config("coarse")
        config.loss.render_sigma = sigma
        task = CoarseTask(config)
        params, stats, frozen = jax.eval_shape(task.init_variables, jax.random.key(0))
        batch = task.make_loader(4, 0, 1).next()
        seen.clear()
        jax.eval_shape(task.loss_fn, params, stats, frozen, batch, jax.random.key(1))
        assert seen == [sigma]
        seen.clear()
        jax.eval_shape(lambda p, s, b: task.images(SimpleNamespace(params=p, batch_stats=s), b), params, stats, batch)
        assert seen == [0.0]


def test_the_training_crop_fields_reach_the_loader(monkeypatch):
    """data.scale_min / scale_max / trans_scale (DECA's dataset fields) were not config fields:
    the crop was always U[1.4, 1.8] with no shift."""
    from jaxdeca.data import loader as loader_lib
    seen = {}
    monkeypatch.setattr(loader_lib, "tfds_loader", lambda builder, cfg, *a, **k: seen.setdefault("cfg", cfg))
    config = coarse.get_config("coarse")
    config.data.update(dict(k=2, scale_min=1.2, scale_max=1.5, trans_scale=0.1))
    data._tfds_loader(config, 4, 0, 1, "train", 0, builder=object())
    assert seen["cfg"].scale == (1.2, 1.5) and seen["cfg"].trans_scale == 0.1
    default = coarse.get_config("coarse").data
    assert (default.scale_min, default.scale_max, default.trans_scale) == (1.4, 1.8, 0.0)  # DECA's
