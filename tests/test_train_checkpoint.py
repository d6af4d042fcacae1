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
