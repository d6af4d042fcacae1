"""Checkpoint save / resume / fallback on a small pytree."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeca.train import checkpoint


def _state(v):
    return {"params": {"w": jnp.full((3, 4), v, jnp.float32)}, "step": jnp.asarray(int(v), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(int(v)))}


def test_save_restore_roundtrip_and_keep_last(tmp_path):
    mngr = checkpoint.make_manager(str(tmp_path / "ckpt"), max_to_keep=2)
    for s in (1, 2, 3):
        checkpoint.save(mngr, s, _state(s), {"loader": {"position": 10 * s}})
    mngr.wait_until_finished()
    assert sorted(mngr.all_steps()) == [2, 3]
    step, state, extra = checkpoint.restore_latest(mngr, _state(0))
    assert step == 3
    np.testing.assert_array_equal(state["params"]["w"], np.full((3, 4), 3.0))
    np.testing.assert_array_equal(state["rng"], jax.random.key_data(jax.random.key(3)))
    assert extra == {"loader": {"position": 30}}


def test_empty_directory_gives_none(tmp_path):
    mngr = checkpoint.make_manager(str(tmp_path / "ckpt"))
    assert checkpoint.restore_latest(mngr, _state(0)) is None


def _corrupt(step_dir):
    for root, _, files in os.walk(step_dir):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")


def test_corrupt_latest_falls_back_to_previous(tmp_path, caplog):
    d = tmp_path / "ckpt"
    mngr = checkpoint.make_manager(str(d), max_to_keep=3, async_save=False)
    for s in (1, 2):
        checkpoint.save(mngr, s, _state(s), {"s": s})
    _corrupt(d / "2")
    mngr = checkpoint.make_manager(str(d), max_to_keep=3, async_save=False)
    step, state, extra = checkpoint.restore_latest(mngr, _state(0))
    assert step == 1 and extra == {"s": 1}
    np.testing.assert_array_equal(state["params"]["w"], np.ones((3, 4)))


def test_all_corrupt_raises_naming_steps(tmp_path):
    d = tmp_path / "ckpt"
    mngr = checkpoint.make_manager(str(d), async_save=False)
    checkpoint.save(mngr, 5, _state(5))
    _corrupt(d / "5")
    mngr = checkpoint.make_manager(str(d), async_save=False)
    with pytest.raises(checkpoint.CheckpointError, match="step 5"):
        checkpoint.restore_latest(mngr, _state(0))


def test_checkpoint_of_another_config_is_named_not_called_unreadable(tmp_path):
    """Resuming with another network width or optimiser (clip_norm, schedule) than the run was
    trained with was reported as 'checkpoint N is unreadable; trying the previous one' for every
    step, then 'no readable checkpoint', as if the files were corrupt. It is one CheckpointError
    naming the entry that differs, its shape in the checkpoint and now, and nothing is set aside."""
    d = tmp_path / "ckpt"
    mngr = checkpoint.make_manager(str(d), async_save=False)
    for s in (1, 2):
        checkpoint.save(mngr, s, _state(s))
    wider = dict(_state(0), params={"w": jnp.zeros((3, 5), jnp.float32)})
    with pytest.raises(checkpoint.CheckpointError, match=r"another config.*params/w is \(3, 4\) there but \(3, 5\)"):
        checkpoint.restore_latest(mngr, wider, set_aside_unreadable=True)
    more = dict(_state(0), opt_state=({"count": jnp.zeros((), jnp.int32)},))
    with pytest.raises(checkpoint.CheckpointError, match=r"another config.*opt_state/0/count is not in the checkpoint"):
        checkpoint.restore_latest(mngr, more, set_aside_unreadable=True)
    assert sorted(os.listdir(d)) == ["1", "2"]


def test_entry_the_state_has_no_place_for_is_another_config_not_unreadable(tmp_path):
    """A checkpoint holding an optimiser-state entry the state asked for lacks (a cosine schedule's
    step count in the optimiser's tuple, resumed with the constant schedule) passed the check of
    the entries the state wants; orbax then refused the tree and every step was reported
    unreadable ('no readable checkpoint'). It is one CheckpointError naming the entry, nothing set
    aside."""
    d = tmp_path / "ckpt"
    mngr = checkpoint.make_manager(str(d), async_save=False)
    for s in (1, 2):
        checkpoint.save(mngr, s, dict(_state(s), opt_state=({"mu": jnp.zeros((3, 4))}, {"count": jnp.asarray(s)})))
    fewer = dict(_state(0), opt_state=({"mu": jnp.zeros((3, 4))}, ()))
    with pytest.raises(checkpoint.CheckpointError, match=r"step 2 was written with another config.*"
                                                         r"opt_state/1/count is in the checkpoint but not in the state now"):
        checkpoint.restore_latest(mngr, fewer, set_aside_unreadable=True)
    assert sorted(os.listdir(d)) == ["1", "2"]


def test_check_extra_refuses_before_restoring_and_unreadable_extra_falls_back(tmp_path):
    """restore_latest's check_extra sees each checkpoint's extra before its state is read: what it
    raises stops the restore as it is (not 'unreadable', nothing set aside); a checkpoint whose
    files are damaged is still set aside and the previous one restored."""
    from jaxdeca.train import paths
    d = tmp_path / "ckpt"
    mngr = checkpoint.make_manager(str(d), async_save=False)
    for s in (1, 2):
        checkpoint.save(mngr, s, _state(s), {"s": s})
    seen = []

    def refuse(step, extra):
        seen.append((step, extra))
        raise paths.ConfigError(f"step {step} refused")
    with pytest.raises(paths.ConfigError, match="step 2 refused"):
        checkpoint.restore_latest(mngr, _state(0), set_aside_unreadable=True, check_extra=refuse)
    assert seen == [(2, {"s": 2})] and sorted(os.listdir(d)) == ["1", "2"]
    _corrupt(d / "2")
    mngr = checkpoint.make_manager(str(d), async_save=False)
    seen.clear()
    step, state, extra = checkpoint.restore_latest(mngr, _state(0), set_aside_unreadable=True,
                                                   check_extra=lambda s, e: seen.append((s, e)))
    assert step == 1 and extra == {"s": 1} and seen == [(1, {"s": 1})]
    np.testing.assert_array_equal(state["params"]["w"], np.ones((3, 4)))
    assert sorted(os.listdir(d)) == ["1", "2.unreadable"]


@pytest.mark.parametrize("was, now", [("cosine", "constant"), ("constant", "cosine")])
def test_resume_with_another_lr_schedule_names_config_optim_schedule(tmp_path, was, now):
    """A run trained with config.optim.schedule='cosine' (checkpoints at steps 2 and 4) and run
    again with the constant schedule reported every checkpoint as unreadable ('tree structures do
    not match'), then 'no readable checkpoint'; the reverse named only an optimiser-state entry.
    The checkpoints are whole, the config changed: it is one ConfigError naming
    config.optim.schedule, the checkpoint's and the config's, before any state is restored, and
    the checkpoint folders are left as they were."""
    from configs import test_toy
    from jaxdeca.train import loop, paths
    from jaxdeca.train.toy import ToyTask

    def config(schedule):
        c = test_toy.get_config()
        c.optim.schedule = schedule
        c.train.update(dict(num_steps=4, checkpoint_every=2, eval_every=0))
        return c
    work = tmp_path / "w"
    loop.train(config(was), str(work), ToyTask(config(was)))
    with pytest.raises(paths.ConfigError) as e:
        loop.train(config(now), str(work), ToyTask(config(now)))
    over = " over config.train.num_steps=4" if was == "cosine" else ""
    assert str(e.value) == (f"{work / 'checkpoints'}: checkpoint step 4 was written with another optimiser "
                            f"configuration: it was trained with config.optim.schedule={was!r}{over} but "
                            f"config.optim.schedule={now!r} now (another learning-rate curve and optimiser state); "
                            f"resume with config.optim.schedule={was!r}, or use another workdir"), str(e.value)
    assert sorted(os.listdir(work / "checkpoints")) == ["2", "4"]
    assert loop.train(config(was), str(work), ToyTask(config(was)))["losses"] == []
