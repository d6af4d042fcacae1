"""Training loop on the toy task: learning, determinism, real kill-and-resume, sharding, multi-process."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test_toy
from jaxdeca.train import checkpoint, loop
from jaxdeca.train.toy import ToyTask

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = textwrap.dedent("""
    import os, sys, time
    import jax, numpy as np
    from absl import logging
    logging.set_verbosity(logging.INFO)
    from configs import test_toy
    from jaxdeca.train import loop, parallel, toy

    workdir, out, sleep = sys.argv[1], sys.argv[2], float(sys.argv[3])
    extra = sys.argv[4:]
    config = test_toy.get_config()
    config.train.image_every = int(os.environ.get("IMAGE_EVERY", "0"))
    if extra:
        config.coordinator_address, config.num_processes, config.process_id = extra[0], 2, int(extra[1])
        parallel.maybe_initialize_distributed(config.coordinator_address, 2, int(extra[1]))

    class SlowLoader(toy.ToyLoader):
        def next(self):
            if self.i == int(os.environ.get("FAIL_AT", "-1")):
                raise RuntimeError(f"loader failed at batch {self.i}")
            if self.i == int(os.environ.get("HOLD_AT", "-1")):
                time.sleep(3600)  # a job that keeps running (the test kills it)
            time.sleep(sleep)
            return super().next()

    class Task(toy.ToyTask):
        def make_loader(self, local_bs, pi, pc):
            return SlowLoader(local_bs, pi, int(self.config.seed), self.dim)

    def signalling_manager(make):  # signals to this process itself, at the moments named in the env
        def made(*args, **kwargs):
            m = make(*args, **kwargs)
            save, wait = m.save, m.wait_until_finished
            def save_at(step, *a, **kw):  # what checkpoint.save calls
                if step == int(os.environ.get("SIGINT_IN_SAVE", "-1")):
                    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while orbax copies the state to host
                    time.sleep(0.2)
                return save(step, *a, **kw)
            def wait_for_writes():
                # the loop's final wait: checkpoint.wait called from _train
                if os.environ.get("SIGTERM_IN_LAST_WAIT") and sys._getframe(2).f_code.co_name == "_train":
                    os.kill(os.getpid(), signal.SIGTERM)  # a time limit while the last checkpoint is written
                    time.sleep(0.2)
                return wait()
            m.save, m.wait_until_finished = save_at, wait_for_writes
            return m
        return made

    from jaxdeca.train import checkpoint
    import signal
    checkpoint.make_manager = signalling_manager(checkpoint.make_manager)
    if os.environ.get("SIGINT_IN_SAVE"):  # Ctrl-C as in a terminal (a pytest-xdist worker's children ignore it)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    res = loop.train(config, workdir, Task(config))
    leaves = jax.tree.leaves(jax.device_get(res["state"].params))
    if jax.process_index() == 0:
        np.savez(out, *[np.asarray(l) for l in leaves], losses=np.array([l for _, l in res["losses"]]))
    print("DONE", jax.device_count(), flush=True)
""")


def _driver(tmp_path):
    p = tmp_path / "driver.py"
    p.write_text(DRIVER)
    return str(p)


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    env.update(extra)
    return env


def _leaves(npz):
    d = np.load(npz)
    return [d[k] for k in sorted((k for k in d.files if k.startswith("arr_")), key=lambda s: int(s[4:]))]


def test_loss_decreases_and_same_seed_same_losses(tmp_path):
    config = test_toy.get_config()
    a = loop.train(config, str(tmp_path / "a"), ToyTask(config))
    b = loop.train(config, str(tmp_path / "b"), ToyTask(config))
    la = [l for _, l in a["losses"]]
    # each logged loss is the mean of 5 steps (one step's loss ranges 0.14-2.1 here): 0.59 -> 0.31
    assert la[-1] < 0.6 * la[0]
    ev = a["eval_history"]
    assert ev[-1][1]["eval/mse"] < ev[0][1]["eval/mse"]
    np.testing.assert_array_equal(la, [l for _, l in b["losses"]])
    # checkpoints: keep-last-3 of every 10 steps up to 40
    assert sorted(int(d) for d in os.listdir(tmp_path / "a" / "checkpoints") if d.isdigit()) == [20, 30, 40]


class _ProjFromConfig(ToyTask):
    """proj as the DECA stages' loss networks: read from config (a fixed file) at every start,
    never saved; it holds ToyTask's values. Records the keys init_variables is called with."""
    frozen_from_config = ("proj",)

    def __init__(self, config):
        super().__init__(config)
        self.proj = ToyTask(config).init_variables(jax.random.key(int(config.seed)))[2]["proj"]  # "the file"
        self.keys = []

    def init_variables(self, rng):
        self.keys.append(rng)
        p, s, f = super().init_variables(rng)
        return p, s, dict(f, proj=self.proj)


def test_frozen_from_config_left_out_of_checkpoints_and_restored_on_resume(tmp_path):
    config = test_toy.get_config()
    ref = loop.train(config, str(tmp_path / "ref"), ToyTask(config))
    half = test_toy.get_config()
    half.train.num_steps = 20

    loop.train(half, str(tmp_path / "new"), _ProjFromConfig(half))
    reader = checkpoint.open_for_reading(str(tmp_path / "new" / "checkpoints"))
    assert "proj" not in reader.item_metadata(20)["state"]["frozen"]
    proj = ToyTask(half).init_variables(jax.random.key(int(half.seed)))[2]["proj"]
    assert checkpoint.restore_latest(reader)[2]["frozen_from_config"] == {"proj": loop.fingerprint(proj)}
    # a checkpoint from before entries were left out (it holds proj) resumes the same way
    loop.train(half, str(tmp_path / "old"), ToyTask(half))
    assert "proj" in checkpoint.open_for_reading(str(tmp_path / "old" / "checkpoints")).item_metadata(20)["state"]["frozen"]

    # a resume restores onto the state's shapes: init_variables is only traced (jax.eval_shape),
    # nothing initialised that the checkpoint overwrites; it goes on bit for bit
    for run in ("new", "old"):
        task = _ProjFromConfig(config)
        out = loop.train(config, str(tmp_path / run), task)
        assert [s for s, _ in out["losses"]][0] > 20, "did not resume"
        assert task.keys and all(isinstance(k, jax.core.Tracer) for k in task.keys), task.keys
        np.testing.assert_array_equal(np.asarray(out["state"].frozen["proj"]), np.asarray(ref["state"].frozen["proj"]))
        assert jax.tree.structure(out["state"]) == jax.tree.structure(ref["state"])
        for x, y in zip(jax.tree.leaves(ref["state"]), jax.tree.leaves(out["state"])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert out["losses"] == [(s, l) for s, l in ref["losses"] if s > 20]

    class OtherProj(_ProjFromConfig):  # config.weights now names a different file
        def __init__(self, config):
            super().__init__(config)
            self.proj = self.proj * 1.01

    more = test_toy.get_config()
    more.train.num_steps = 50
    with pytest.raises(ValueError, match="trained with frozen 'proj' weights"):
        loop.train(more, str(tmp_path / "new"), OtherProj(more))

    class ProjFromKey(ToyTask):  # names as read from config an entry it computes from the key
        frozen_from_config = ("proj",)

    with pytest.raises(TypeError, match="ProjFromKey.init_variables computes its frozen_from_config entry 'proj'"):
        loop.train(more, str(tmp_path / "new"), ProjFromKey(more))


def test_resume_over_unreadable_checkpoint_keeps_history_and_a_finished_run_trains_nothing(tmp_path, capsys):
    """A 30-step run whose step-30 checkpoint is then unreadable (garbage in every file) is
    continued to 40 steps: it resumes from 20, sets 30 aside as 30.unreadable and saves 30
    and 40 again; its eval history spans the whole run (checkpoints carry it) and its state
    equals an uninterrupted run's. Run again, it trains nothing and reports the run complete."""
    from jaxdeca.train import run

    config = test_toy.get_config()  # 40 steps, a checkpoint every 10, an eval every 20
    ref = loop.train(config, str(tmp_path / "ref"), ToyTask(config))
    half = test_toy.get_config()
    half.train.num_steps = 30
    work = tmp_path / "work"
    loop.train(half, str(work), ToyTask(half))
    for root, _, files in os.walk(work / "checkpoints" / "30"):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")

    out = loop.train(config, str(work), ToyTask(config))
    assert [s for s, _ in out["losses"]][0] == 25, "did not resume from step 20"
    names = os.listdir(work / "checkpoints")
    assert sorted(int(d) for d in names if d.isdigit()) == [20, 30, 40] and "30.unreadable" in names
    assert checkpoint.restore_latest(checkpoint.open_for_reading(str(work / "checkpoints")))[0] == 40
    for x, y in zip(jax.tree.leaves(ref["state"].params), jax.tree.leaves(out["state"].params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)
    assert [s for s, _ in out["eval_history"]] == [s for s, _ in ref["eval_history"]] == [0, 20, 40]
    for (_, a), (_, b) in zip(out["eval_history"], ref["eval_history"]):
        np.testing.assert_allclose(a["eval/mse"], b["eval/mse"], rtol=1e-5)

    again = loop.train(config, str(work), ToyTask(config))
    assert again["losses"] == [] and [s for s, _ in again["eval_history"]] == [0, 20, 40]
    capsys.readouterr()
    run.run(config, str(work))
    assert "no steps trained: the run in" in capsys.readouterr().out


def _wait_for_checkpoint(procs, path, hang_limit=240):
    """Polls until `path` (a committed checkpoint folder) exists while every process in `procs`
    runs. A process that ends first fails the test; so does `hang_limit` seconds without it, a
    guard against a hung child (not a speed check). On failure the processes are killed."""
    start = time.monotonic()
    while not path.exists():
        ended = [p.args for p in procs if p.poll() is not None]
        hung = time.monotonic() - start > hang_limit
        if ended or hung:
            for p in procs:
                p.kill()
            pytest.fail(f"run ended before its first checkpoint: {ended}" if ended else
                        f"no checkpoint {path} after {hang_limit} s: the run hangs")
        time.sleep(0.1)


def test_kill_after_checkpoint_and_resume_matches_uninterrupted(tmp_path):
    drv = _driver(tmp_path)
    ref = subprocess.run([sys.executable, drv, str(tmp_path / "ref"), str(tmp_path / "ref.npz"), "0"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]

    work = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, drv, str(work), str(tmp_path / "k.npz"), "0"], cwd=REPO,
                            env=_env(HOLD_AT="12"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint([proc], work / "checkpoints" / "10")  # orbax renames to the final name only on commit
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = [int(d) for d in os.listdir(work / "checkpoints") if d.isdigit()]
    assert max(steps) < 40, "the run was not interrupted"

    res = subprocess.run([sys.executable, drv, str(work), str(tmp_path / "k.npz"), "0"], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from step" in res.stderr
    for x, y in zip(_leaves(tmp_path / "ref.npz"), _leaves(tmp_path / "k.npz")):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fails", ["save", "wait"])
def test_a_checkpoint_the_disk_cannot_take_is_one_checkpoint_error_and_the_run_resumes(tmp_path, monkeypatch, fails):
    """A full disk made orbax's writer tasks fail with tensorstore's ValueError('RESOURCE_EXHAUSTED
    ...'), raised by the next save or by the final wait, among hundreds of its tracebacks
    (environment review). It is one CheckpointError naming the folder (jaxdeca.main prints it as
    an error line); the checkpoints before it are kept and a re-run resumes. Here the storage's
    failure is raised in orbax's place: the save of step 4, or the wait after it."""
    import orbax.checkpoint as ocp
    config = test_toy.get_config()
    config.train.update(dict(num_steps=4, checkpoint_every=2, eval_every=0, log_every=0))
    full = ValueError('RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database at local file "x/4.orbax-'
                      'checkpoint-tmp/": Failed to write 711855 bytes to file 7: No space left on device')
    real_save, real_wait, pending = ocp.CheckpointManager.save, ocp.CheckpointManager.wait_until_finished, []

    def save(self, step, *a, **k):
        if step != 4:
            return real_save(self, step, *a, **k)
        if fails == "save":
            raise full
        pending.append(full)  # an async write that failed in the background: its error comes at the wait
        return True

    def wait(self):
        real_wait(self)
        if pending and fails == "wait":
            raise pending.pop()
    with monkeypatch.context() as m:
        m.setattr(ocp.CheckpointManager, "save", save)
        m.setattr(ocp.CheckpointManager, "wait_until_finished", wait)
        what = "checkpoint step 4 \\(or the one before it\\)" if fails == "save" else "the last checkpoint started"
        with pytest.raises(checkpoint.CheckpointError, match=f"{what} could not be written in .*checkpoints "
                                                             "\\(No space left on device\\); the checkpoints written "
                                                             "before it are kept"):
            loop.train(config, str(tmp_path / "r"), ToyTask(config))
    assert 2 in checkpoint.open_for_reading(str(tmp_path / "r" / "checkpoints")).all_steps()
    out = loop.train(config, str(tmp_path / "r"), ToyTask(config))  # room again: resumes after step 2
    assert [s for s, _ in out["losses"]] == [4]


def test_an_error_after_a_checkpoint_began_leaves_that_checkpoint_whole(tmp_path):
    """The loop waited for an async checkpoint only when it ended normally: a loader error (or
    Ctrl-C) just after step 10's save began ended the process with the checkpoint still being
    written, left as 10.orbax-checkpoint-tmp, and a restart began again from step 0."""
    res = subprocess.run([sys.executable, _driver(tmp_path), str(tmp_path / "w"), str(tmp_path / "o.npz"), "0"],
                         cwd=REPO, env=_env(FAIL_AT="10"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "RuntimeError: loader failed at batch 10" in res.stderr, res.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["10"]


def test_sigterm_checkpoints_the_step_reached_and_a_rerun_resumes_there(tmp_path):
    """SIGTERM (scancel, a SLURM time limit) ended a one-process run where it was, losing the
    steps since its last checkpoint; in a multi-process run jax.distributed's preemption service
    caught it and the run trained on until SIGKILL. The loop now saves the step it reached and
    exits with status 143 (128 + SIGTERM); the same command resumes from there."""
    drv, work = _driver(tmp_path), tmp_path / "w"
    proc = subprocess.Popen([sys.executable, drv, str(work), str(tmp_path / "o.npz"), "0.3"], cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint([proc], work / "checkpoints" / "10")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    stopped = int(out.split("stopped by SIGTERM after step ")[1].split(":")[0])
    assert 10 < stopped < 40 and stopped in [int(d) for d in os.listdir(work / "checkpoints") if d.isdigit()], out
    res = subprocess.run([sys.executable, drv, str(work), str(tmp_path / "o.npz"), "0"], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and f"resumed from step {stopped}" in res.stderr, res.stderr[-2000:]


def test_sigterm_while_the_last_checkpoint_is_written_waits_for_it(tmp_path):
    """The SIGTERM handler was removed before the loop's final wait for the checkpoint being
    written: a SIGTERM then (a second scancel, a time limit during the last checkpoint) killed
    the run, left 40.orbax-checkpoint-tmp, and a rerun trained steps 31-40 again. The write is
    finished now, and the run still stops as SIGTERM asks (status 143): in one process, the
    demo's next stage would have started."""
    res = subprocess.run([sys.executable, _driver(tmp_path), str(tmp_path / "w"), str(tmp_path / "o.npz"), "0"],
                         cwd=REPO, env=_env(SIGTERM_IN_LAST_WAIT="1"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 143 and "DONE" not in res.stdout, (res.returncode, res.stderr[-2000:])
    assert "stopped by SIGTERM after step 40: checkpoint 40 saved" in res.stdout, res.stdout[-2000:]
    assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["20", "30", "40"]


def test_ctrl_c_while_a_checkpoint_is_handed_to_orbax_leaves_it_whole(tmp_path):
    """A KeyboardInterrupt inside orbax's synchronous part of an async save (the copy of the
    state to host memory) stopped it half way: <step>.orbax-checkpoint-tmp was left, which the
    loop's final wait could not finish, and a rerun went back to the checkpoint before."""
    res = subprocess.run([sys.executable, _driver(tmp_path), str(tmp_path / "w"), str(tmp_path / "o.npz"), "0"],
                         cwd=REPO, env=_env(SIGINT_IN_SAVE="20"), capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGINT and "KeyboardInterrupt" in res.stderr, (res.returncode, res.stderr[-2000:])
    assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["10", "20"]


def test_sigterm_stops_a_two_process_run_at_one_step_checkpointed(tmp_path):
    """Two processes: each gets SIGTERM (as srun passes scancel on); they agree on a step through
    jax.distributed's preemption service, both save it and exit 143. Before, both trained to the
    last step."""
    drv, work = _driver(tmp_path), tmp_path / "mp"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, drv, str(work), str(tmp_path / "o.npz"), "0.3", f"127.0.0.1:{port}",
                               str(i)], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    _wait_for_checkpoint(procs, work / "checkpoints" / "10")
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [143, 143], outs[0][1][-2000:]
    stopped = int(outs[0][0].split("stopped by SIGTERM after step ")[1].split(":")[0])
    assert 10 < stopped < 40 and stopped in [int(d) for d in os.listdir(work / "checkpoints") if d.isdigit()]


def test_four_host_devices_match_one_device(tmp_path, four_device_flags):
    drv = _driver(tmp_path)
    one = subprocess.run([sys.executable, drv, str(tmp_path / "one"), str(tmp_path / "one.npz"), "0"], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=300)
    four = subprocess.run([sys.executable, drv, str(tmp_path / "four"), str(tmp_path / "four.npz"), "0"], cwd=REPO,
                          env=_env(XLA_FLAGS=four_device_flags),
                          capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and four.returncode == 0, (one.stderr[-1500:], four.stderr[-1500:])
    assert "DONE 1" in one.stdout and "DONE 4" in four.stdout
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "four.npz")
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-5, atol=1e-6)
    for x, y in zip(_leaves(tmp_path / "one.npz"), _leaves(tmp_path / "four.npz")):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_two_process_distributed_run_checkpoints_and_writes_image_grids(tmp_path):
    """Two processes, one device each: the image grids (computed from the global batch, split
    over both processes) are gathered to every process and written by process 0."""
    drv = _driver(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tmp_path / "mp"
    procs = [subprocess.Popen([sys.executable, drv, str(work), str(tmp_path / "mp.npz"), "0", f"127.0.0.1:{port}", str(i)],
                              cwd=REPO, env=_env(IMAGE_EVERY="20"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-2000:]
        assert "DONE 2" in o
    assert 40 in [int(d) for d in os.listdir(work / "checkpoints") if d.isdigit()]
    assert np.isfinite(np.load(tmp_path / "mp.npz")["losses"]).all()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(work))


def test_image_grids_written_and_config_paths_checked(tmp_path):
    import ml_collections
    from jaxdeca.train import paths
    config = test_toy.get_config()
    with config.unlocked():
        config.train.num_steps, config.train.image_every = 4, 2
    loop.train(config, str(tmp_path / "img"), ToyTask(config))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "img"))

    c = ml_collections.ConfigDict({"detail": {"coarse_checkpoint": None}})
    with pytest.raises(paths.ConfigPathError, match=r"config.detail.coarse_checkpoint is not set.*coarse encoder"):
        paths.require_path(c, "detail.coarse_checkpoint", "the frozen coarse encoder")
    c.detail.coarse_checkpoint = str(tmp_path / "missing")
    with pytest.raises(paths.ConfigPathError, match="does not exist"):
        paths.require_path(c, "detail.coarse_checkpoint", "the frozen coarse encoder")
    c.detail.coarse_checkpoint = str(tmp_path)
    assert paths.require_path(c, "detail.coarse_checkpoint", "x") == str(tmp_path)
    # a bucket URL stays a URL (a local path made absolute would become ./gs:/bucket/...)
    assert paths.resolve("gs://bucket/deca/coarse") == "gs://bucket/deca/coarse"
    assert paths.resolve("runs/coarse") == os.path.abspath("runs/coarse")
    assert checkpoint.make_manager(str(tmp_path / "m")).directory.as_posix() == str(tmp_path / "m")


def test_image_grids_are_one_program_traced_under_the_mesh(run_on_four_devices, tmp_path):
    # task.images ran eagerly: op by op at every due step, and without the context mesh, under
    # which the DECA tasks' renderer rasterizes each device's own images (without it every device
    # rasterizes the whole gathered batch). It is now jitted once, traced under the mesh.
    code = textwrap.dedent(f"""
        import os, jax
        from configs import test_toy
        from jaxdeca.train import loop, toy
        calls = []

        class Task(toy.ToyTask):
            def images(self, state, batch):
                calls.append((isinstance(batch["x"], jax.core.Tracer), dict(jax.sharding.get_abstract_mesh().shape)))
                return super().images(state, batch)

        config = test_toy.get_config()
        config.train.num_steps, config.train.image_every, config.train.eval_every = 6, 2, 0
        loop.train(config, {str(tmp_path / "w")!r}, Task(config))
        assert calls == [(True, {{"data": 4}})], calls
        assert any(f.startswith("events.out.tfevents") for f in os.listdir({str(tmp_path / "w")!r}))
        print("OK")
    """)
    run_on_four_devices(code)


def test_a_path_field_given_none_on_the_command_line_says_how_to_leave_it_unset():
    """--config.init.checkpoint=None gives the placeholder(str) field the string 'None'
    (ml_collections parses the value as the field's type), and the job said only
    "config.init.checkpoint='None' does not exist"; the line now says where 'None' came from and
    how to leave the field unset."""
    import ml_collections
    from jaxdeca.train import paths
    c = ml_collections.ConfigDict({"init": {"checkpoint": "None"}})
    with pytest.raises(paths.ConfigPathError) as e:
        paths.require_path(c, "init.checkpoint", "the workdir of the stage this one starts from")
    assert str(e.value) == ("config.init.checkpoint='None' does not exist; it must name the workdir of the stage "
                            "this one starts from (--config.init.checkpoint=None sets the string 'None'; to leave "
                            "the field unset, leave the flag out or give it no value: --config.init.checkpoint=)")
    c.init.checkpoint = ""  # what that hint says: unset
    with pytest.raises(paths.ConfigPathError, match=r"^config.init.checkpoint is not set"):
        paths.require_path(c, "init.checkpoint", "x")


@pytest.mark.parametrize("flags, message", [
    (["--config=configs/coarse.py"], "error: config.weights.vggface2 is not set"),
    (["--config=configs/test_toy.py", "--config.task=nope"], "error: config.task='nope' is not one of"),
    # a typo in an override's field name: one line naming the flag (ml_collections' traceback before)
    (["--config=configs/test_toy.py", "--config.train.num_stpes=3"],
     "error: --config.train.num_stpes: the config has no field 'num_stpes'; did you mean \"num_steps\""),
    (["--config=configs/test_toy.py", "--config.trian.num_steps=3"], "error: --config.trian.num_steps: the config "
     "has no field 'trian'"),
    # a value of another type than the field's: one line naming the override and the type (absl's
    # 'FATAL Flags parsing error' line, exit status 1, before)
    (["--config=configs/test_toy.py", "--config.seed=abc"], "error: --config.seed=abc: config.seed takes an int "
     "(invalid literal for int() with base 10: 'abc')"),
    (["--config=configs/test_toy.py", "--config.optim.learning_rate", "fast"], "error: --config.optim.learning_rate"
     "=fast: config.optim.learning_rate takes a float (could not convert string to float: 'fast')"),
    (["--config=configs/test_toy.py", "--config.train.async_checkpoints=maybe"], "error: --config.train."
     "async_checkpoints=maybe: config.train.async_checkpoints takes a bool (true or false)"),
    (["--config=configs/test_toy.py", "--config.num_processes=two"], "error: --config.num_processes=two: "
     "config.num_processes takes an int"),
    # a config file argument its get_config refuses (absl's FATAL line with a traceback inside, or a
    # bare KeyError traceback, before), one it takes none of, and a config file that is not there
    (["--config=configs/demo.py:huge"], "error: --config=configs/demo.py:huge: configs/demo.py: unknown size 'huge'"),
    (["--config=configs/coarse.py:nope"], "error: --config=configs/coarse.py:nope: configs/coarse.py: unknown stage "
     "'nope'; use one of 'coarse', 'detail', 'pretrain'"),
    (["--config=configs/test_toy.py:x"], "error: --config=configs/test_toy.py:x: TypeError: get_config() takes 0 "
     "positional arguments but 1 was given"),
    (["--config=configs/nope.py"], "error: --config=configs/nope.py: no such config file configs/nope.py"),
    # a pretrain task given a coarse stage's config ran the coarse objective and saved it as coarse
    (["--config=configs/test_coarse.py:coarse", "--config.task=pretrain"], "error: config.task='pretrain' but "
     "config.stage='coarse': a DECA stage is named by both"),
    # a workdir that cannot be made (tracebacks before)
    (["--config=configs/test_toy.py", "--workdir="], "error: --workdir is empty"),
    (["--config=configs/test_toy.py", "--workdir=setup.cfg"], "error: --workdir=setup.cfg: cannot be made a folder "
     "(File exists)"),
    # a Latin-1 name: TensorFlow's ValueError traceback from the TensorBoard writer, the folder made
    (["--config=configs/test_toy.py", "--workdir=/tmp/toy\udce9"], "error: --workdir=/tmp/toy\\xe9: its path is not "
     "valid UTF-8"),
    # the demo's stages and FLAME file, checked before its dataset is rendered (a KeyError traceback
    # after it, and a FLAME error after it, before)
    (["--config=configs/demo.py:tiny", "--config.stages=('pretrian',)"], "error: config.stages=('pretrian',) must "
     "name some of ('pretrain', 'coarse', 'detail')"),
    (["--config=configs/demo.py:tiny", "--config.flame_path=nope.npz"], "error: config.flame_path='nope.npz' does "
     "not exist"),
    # numbers out of range (config_ranges): a negative weight switched its term off, a negative
    # learning rate trained uphill (both exit 0), a negative seed or a zero batch ended in a
    # traceback after the networks were built; the demo checks every stage before it starts
    (["--config=configs/test_coarse.py:coarse", "--config.loss.lmk=-1.0"], "error: config.loss: loss weights: "
     "lmk=-1.0 must be a finite number >= 0"),
    (["--config=configs/test_toy.py", "--config.optim.learning_rate=-0.001"], "error: config.optim.learning_rate"
     "=-0.001 must be > 0.0"),
    (["--config=configs/test_toy.py", "--config.seed=-1"], "error: config.seed=-1 must be >= 0"),
    (["--config=configs/demo.py:tiny", "--config.detail.train.num_steps=-1"], "error: stage detail "
     "(config.stage_defaults, then config.detail on top): config.train.num_steps=-1 must be >= 0"),
    # fields the demo sets itself are not in its config (they were silently overwritten)
    (["--config=configs/demo.py:tiny", "--config.stage_defaults.flame.path=x.npz"], "error: "
     "--config.stage_defaults.flame.path: the config has no field 'flame'; this config spells it --config.flame_path"),
    # the demo's top-level flame_path and data_dir are flame.path and data.data_dir in a stage's
    # config: the error named neither (an extension review tried both ways)
    (["--config=configs/test_coarse.py:coarse", "--config.flame_path=x.npz"], "error: --config.flame_path: the "
     "config has no field 'flame_path'; this config spells it --config.flame.path"),
    (["--config=configs/demo.py:tiny", "--config.data.data_dir=/x"], "error: --config.data.data_dir: the config "
     "has no field 'data'; this config spells it --config.data_dir"),
    # of two overrides ending in the same name, the one the config lacks (the first was named)
    (["--config=configs/demo.py:tiny", "--config.stage_defaults.loss.lipd=1.0", "--config.pretrain.loss.lipd=1.0"],
     "error: --config.pretrain.loss.lipd: the config has no field 'lipd'"),
])
def test_main_reports_a_config_it_cannot_use_in_one_line(tmp_path, flags, message):
    res = subprocess.run([sys.executable, "-m", "jaxdeca.main", f"--workdir={tmp_path / 'w'}", *flags], cwd=REPO,
                         env=_env(TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("error:")][0].startswith(message), res.stderr


def test_a_flag_error_outside_the_config_is_absls_own_report():
    """Flag errors that are not about --config (a misspelt flag, a value absl's own int flag cannot
    take) keep absl's report: its 'FATAL Flags parsing error' line and help hint, exit status 1
    (parse_flags passes them on; no test ran that path before)."""
    script = textwrap.dedent("""
        import sys
        from jaxdeca import main
        for flag in sys.argv[1:]:
            try:
                main.parse_flags(["main", "--config=configs/test_toy.py", flag])
            except SystemExit as e:
                sys.stderr.flush()
                print("exit", e.code, flush=True)
    """)
    res = subprocess.run([sys.executable, "-c", script, "--workdr=/tmp/w", "--verbosity=loud"], cwd=REPO,
                         env=_env(TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=300)
    assert res.stdout.split("\n")[:2] == ["exit 1", "exit 1"], (res.stdout, res.stderr[-2000:])
    assert res.stderr.splitlines() == [
        "FATAL Flags parsing error: Unknown command line flag 'workdr'. Did you mean: workdir ?",
        "Pass --helpshort or --helpfull to see help on flags.",
        "FATAL Flags parsing error: flag --verbosity=loud: invalid literal for int() with base 10: 'loud'",
        "Pass --helpshort or --helpfull to see help on flags."], res.stderr[-2000:]


def test_a_config_error_is_reported_before_tensorflow_is_imported(tmp_path):
    """A config error found once the stage's modules are imported (a seed below 0) took 10 s to
    be reported, 6 of them importing TensorFlow: clu's metric writers came with the training
    loop, and main imported the loop and the dataset code to recognise the error. Both wait now
    until they are used, so the error comes before TensorFlow is imported (4 s in all)."""
    script = textwrap.dedent("""
        import sys
        from absl import app
        from jaxdeca import main
        sys.argv = ["main", "--config=configs/demo.py", "--config.seed=-1", "--workdir=" + sys.argv[1]]
        try:
            app.run(main.main, flags_parser=main.parse_flags)
        except SystemExit as e:
            print("exit", e.code, "tensorflow" in sys.modules, "jaxdeca.train.loop" in sys.modules)
    """)
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "w")], cwd=REPO,
                         env=_env(TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=300)
    assert "error: stage pretrain" in res.stderr and "config.seed=-1 must be >= 0" in res.stderr, res.stderr[-2000:]
    assert res.stdout.split() == ["exit", "2", "False", "True"], (res.stdout, res.stderr[-2000:])


def test_the_other_spelling_hint_reads_any_config():
    """The unknown-override error's '; this config spells it ...' (jaxdeca.main) walks the config's
    fields: a user's config with int keys (a dict of step boundaries) ended in a TypeError
    traceback there (diff review)."""
    from ml_collections import ConfigDict
    from jaxdeca.main import _spelled_otherwise
    c = ConfigDict(dict(flame_path="x", data_dir="d", boundaries={1000: 0.5, 2000: 0.1}))
    assert _spelled_otherwise(c, "flame.path") == "flame_path"
    assert _spelled_otherwise(c, "data.data_dir") == "data_dir"
    assert _spelled_otherwise(c, "seed") is None and _spelled_otherwise(None, "flame.path") is None


def test_shipped_configs_load_from_any_working_directory(tmp_path):
    """The shipped configs import each other (`from configs import coarse`), so a --config path
    to them from outside the repository root was 'No module named configs'. (jaxdeca imports from
    the installed package here: the repository root is not on the path.)"""
    env = {k: v for k, v in _env(TF_CPP_MIN_LOG_LEVEL="2").items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-m", "jaxdeca.main", f"--workdir={tmp_path / 'w'}",
                          f"--config={os.path.join(REPO, 'configs', 'test_coarse.py')}:coarse", "--config.task=pretrain"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "error: config.task='pretrain' but config.stage='coarse'" in res.stderr, res.stderr


def test_shipped_config_fields_can_all_be_overridden():
    """ml_collections cannot override a field whose default is a bare None (or a list, a dict):
    every field of the shipped configs is a bool, int, float, str or tuple, or a typed
    placeholder (ml_collections.config_dict.placeholder), so `--config.X=value` works for each."""
    import importlib

    from ml_collections import ConfigDict
    from ml_collections.config_dict import FieldReference

    def untyped(c, prefix=""):
        for k in c.keys():
            v = c._fields[k]
            if isinstance(v, ConfigDict):
                yield from untyped(v, f"{prefix}{k}.")
            elif (v.get_type() if isinstance(v, FieldReference) else type(v)) not in (bool, int, float, str, tuple):
                yield prefix + k

    for name, args in [("coarse", ("pretrain", "coarse", "detail")), ("pretrain", ()), ("detail", ()),
                       ("demo", ("", "tiny")), ("test_coarse", ("pretrain", "coarse", "detail")), ("test_toy", ())]:
        module = importlib.import_module(f"configs.{name}")
        for config in [module.get_config(a) for a in args] or [module.get_config()]:
            assert list(untyped(config)) == [], name


def test_main_reports_an_override_of_an_untyped_field_in_one_line(tmp_path):
    """A user's own config file with a field defaulting to None: `--config.sub.y=3` was absl's
    'FATAL Flags parsing error: Type <class 'NoneType'> of field config.sub.y is not supported for
    overriding ...' (exit status 1). It is one error line naming the override and the fix."""
    cfg = tmp_path / "mine.py"
    cfg.write_text(textwrap.dedent("""
        import ml_collections
        def get_config():
            c = ml_collections.ConfigDict()
            c.mode = "train"
            c.sub = ml_collections.ConfigDict(dict(y=None))
            return c
    """))
    res = subprocess.run([sys.executable, "-m", "jaxdeca.main", f"--workdir={tmp_path / 'w'}", f"--config={cfg}",
                          "--config.sub.y=3"], cwd=REPO, env=_env(TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and "FATAL" not in res.stderr, res.stderr[-3000:]
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("error:")] == [
        "error: --config.sub.y=3: config.sub.y defaults to None, which cannot be overridden from the command "
        "line; give it a typed default in the config file: ml_collections.config_dict.placeholder(<type>)"]


def test_zero_log_and_checkpoint_cadence_means_only_the_last_step(tmp_path):
    """train.log_every / checkpoint_every = 0 turn the periodic reports off, as eval_every and
    image_every = 0 do: the last step is still logged and saved. A negative one is refused."""
    config = test_toy.get_config()
    config.train.update(dict(num_steps=3, log_every=0, checkpoint_every=0, eval_every=0))
    out = loop.train(config, str(tmp_path / "z"), ToyTask(config))
    assert [s for s, _ in out["losses"]] == [3]
    assert [d for d in os.listdir(tmp_path / "z" / "checkpoints") if d.isdigit()] == ["3"]
    config.train.checkpoint_every = -1
    with pytest.raises(ValueError, match="config.train.checkpoint_every=-1"):
        loop.train(config, str(tmp_path / "n"), ToyTask(config))


def test_keep_checkpoints_below_one_is_a_config_error(tmp_path):
    """train.keep_checkpoints = 0 made orbax delete every checkpoint, the last one included, so a
    finished run left nothing to resume or export; it is refused before training, naming the field."""
    from jaxdeca.train import paths
    config = test_toy.get_config()
    config.train.update(dict(num_steps=3, keep_checkpoints=0, eval_every=0))
    with pytest.raises(paths.ConfigError, match="config.train.keep_checkpoints=0"):
        loop.train(config, str(tmp_path / "k"), ToyTask(config))
    config.train.keep_checkpoints = 1
    loop.train(config, str(tmp_path / "k"), ToyTask(config))
    assert [d for d in os.listdir(tmp_path / "k" / "checkpoints") if d.isdigit()] == ["3"]


def test_workdir_of_another_stage_is_refused(tmp_path):
    """A workdir trained as one stage and run again with another stage's config (pretrain and
    coarse share one train-state structure) was resumed silently: the coarse run went on from
    the pretrain weights, optimiser and step count, or reported 'nothing to train'. It is a
    ConfigError naming both stages, and leaves the checkpoints as they were."""
    from jaxdeca.train import paths
    config = test_toy.get_config()
    config.train.update(dict(num_steps=3, eval_every=0))
    loop.train(config, str(tmp_path / "w"), ToyTask(config))
    other = test_toy.get_config()
    other.train.update(dict(num_steps=6, eval_every=0))
    other.stage = "coarse"
    with pytest.raises(paths.ConfigError, match="stage 'toy'.*config.stage='coarse'"):
        loop.train(other, str(tmp_path / "w"), ToyTask(other))
    assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["3"]


def test_cosine_schedule_resumed_with_other_num_steps_is_refused(tmp_path):
    """optim.schedule='cosine' decays over train.num_steps and the optimiser state counts steps:
    a run resumed with another num_steps did not extend its schedule but switched to another
    curve, silently (a finished 4-step run resumed with 8: the learning rate jumped from 5% of
    the base rate back to 52%). It is one ConfigError naming both values and the jump, the
    checkpoints left as they were; the same num_steps resumes, and a constant schedule resumes
    with any num_steps."""
    from jaxdeca.train import paths

    def config(steps, schedule="cosine"):
        c = test_toy.get_config()
        c.optim.schedule = schedule
        c.train.update(dict(num_steps=steps, eval_every=0))
        return c
    loop.train(config(4), str(tmp_path / "w"), ToyTask(config(4)))
    with pytest.raises(paths.ConfigError) as e:
        loop.train(config(8), str(tmp_path / "w"), ToyTask(config(8)))
    assert str(e.value) == (f"{tmp_path / 'w' / 'checkpoints'}: checkpoint step 4 was trained with "
                            "config.optim.schedule='cosine' over config.train.num_steps=4; config.train.num_steps=8 "
                            "would not extend or shorten that schedule but replace it: the learning rate would jump "
                            "from 0.0005 to 0.00525 at step 4; resume with config.train.num_steps=4, or use another "
                            "workdir"), str(e.value)
    assert sorted(os.listdir(tmp_path / "w" / "checkpoints")) == ["4"]
    assert loop.train(config(4), str(tmp_path / "w"), ToyTask(config(4)))["losses"] == []
    loop.train(config(4, "constant"), str(tmp_path / "c"), ToyTask(config(4, "constant")))
    out = loop.train(config(6, "constant"), str(tmp_path / "c"), ToyTask(config(6, "constant")))
    assert [s for s, _ in out["losses"]] == [5, 6]


def test_zero_eval_cadence_means_no_eval(tmp_path, capsys):
    """train.eval_every = 0 switches evaluation off, as image_every = 0 does: no eval at step 0
    (it used to run one there, on the untrained state, and none after), none on a resume that
    has nothing left to train. eval_every > 0 still evaluates the starting state (step 0)."""
    config = test_toy.get_config()
    config.train.update(dict(num_steps=3, eval_every=0))
    out = loop.train(config, str(tmp_path / "e"), ToyTask(config))
    assert out["eval_history"] == []
    out = loop.train(config, str(tmp_path / "e"), ToyTask(config))  # resumed at num_steps
    assert out["eval_history"] == [] and "eval at step" not in capsys.readouterr().out
    config.train.eval_every = 2
    out = loop.train(config, str(tmp_path / "f"), ToyTask(config))
    assert [s for s, _ in out["eval_history"]] == [0, 2, 3]


def test_progress_rate_leaves_out_the_compiling_first_step(monkeypatch):
    """The first step of a run (or of a resume) is mostly XLA compiling the train step; counted in
    steps/s it made the first reported rate and ETA far off the steady state (e.g. 1.1 steps/s
    for a step that takes milliseconds). Its time is reported apart; the rate counts from after it."""
    from jaxdeca.train import metrics
    clock = [100.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: clock[0])
    p = metrics.Progress(21, 4, start_step=0)
    clock[0] += 30.0  # step 1: compile + run
    assert p.first_step_done(1) == 30.0
    rates, line = p.report(1)  # a report at the first step itself: its time, no rate yet
    assert rates == {} and "first step 30.0 s" in line and "steps/s" not in line, line
    clock[0] += 5.0  # steps 2..11: 2 steps/s
    rates, line = p.report(11)
    assert rates == {"steps_per_sec": 2.0, "images_per_sec": 8.0}, rates
    assert line == "step 11/21 (52%) 2.00 steps/s 8.0 img/s ETA 0m05s", line
    p = metrics.Progress(21, 4, start_step=10)  # resumed: the first report comes after the first step
    clock[0] += 30.0
    p.first_step_done(11)
    clock[0] += 2.0  # steps 12..15
    assert p.report(15)[0]["steps_per_sec"] == 2.0


def _record_scalars(monkeypatch) -> dict:
    """The loop's TensorBoard writer replaced by one recording {step: {name: value}} (returned)."""
    written = {}

    class Writer:
        def write_scalars(self, step, scalars):
            written.setdefault(step, {}).update(scalars)

        def write_images(self, step, images):
            pass

        def flush(self):
            pass
    monkeypatch.setattr(loop.metrics, "make_writer", lambda workdir: Writer())
    return written


def test_first_logged_step_shows_its_time_not_a_rate(tmp_path, capsys, monkeypatch):
    """With log_every=1 the first line is the first step's time (compile included), the next
    ones rates; the time also goes to TensorBoard as first_step_sec, whatever log_every."""
    written = _record_scalars(monkeypatch)
    config = test_toy.get_config()
    config.train.update(dict(num_steps=3, log_every=1, eval_every=0))
    loop.train(config, str(tmp_path / "p"), ToyTask(config))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert len(lines) == 3 and "first step" in lines[0] and "steps/s" not in lines[0], lines
    assert all("steps/s" in ln for ln in lines[1:]), lines
    assert [s for s, scalars in written.items() if "first_step_sec" in scalars] == [1]
    assert [s for s, scalars in written.items() if "steps_per_sec" in scalars] == [2, 3]


class _CountingTask(ToyTask):
    """Batch i (from 1) is all i; the loss is i and its term 'twice' 2 i, whatever the params
    (zero gradients: Adam leaves them as they are), so a logged value is hand-computable."""

    class Loader:
        def __init__(self, local_bs, dim):
            self.local_bs, self.dim, self.i = local_bs, dim, 0

        def next(self):
            self.i += 1
            return {"x": np.full((self.local_bs, self.dim), self.i, np.float32),
                    "y": np.zeros((self.local_bs, 2), np.float32)}

        def position(self):
            return {"index": self.i}

        def restore(self, position):
            self.i = int(position["index"])

    def make_loader(self, local_bs, process_index, process_count):
        return self.Loader(local_bs, self.dim)

    def loss_fn(self, params, batch_stats, frozen, batch, rng):
        loss = jnp.mean(batch["x"]) + 0.0 * sum(jnp.sum(p) for p in jax.tree.leaves(params))
        return loss, ({"twice": 2.0 * loss}, batch_stats)


def test_logged_losses_are_the_mean_over_the_steps_since_the_last_log(tmp_path, capsys, monkeypatch):
    """Each log (the loop's losses, TensorBoard's train/* scalars, the console line) gives the mean
    of every step since the last log, as clu's metrics do, not the one step it falls on: steps
    1..7 with losses 1..7, log_every 3 -> 2 (steps 1-3), 5 (4-6), 7 (the last step alone). It was
    the sample 3, 6, 7. A run resumed from step 4 (a kill, a SIGTERM between two logs) logs the
    uninterrupted run's 5 at step 6: step 4's loss comes with the checkpoint. It averaged its own
    steps alone (5, 6 -> 5.5), so TensorBoard held two values at a step killed after its log."""
    written = _record_scalars(monkeypatch)
    config = test_toy.get_config()
    config.train.update(dict(num_steps=7, log_every=3, eval_every=0, checkpoint_every=4))
    out = loop.train(config, str(tmp_path / "w"), _CountingTask(config))
    assert out["losses"] == [(3, 2.0), (6, 5.0), (7, 7.0)]
    assert [(s, written[s]["train/loss"], written[s]["train/twice"]) for s in (3, 6, 7)] == [
        (3, 2.0, 4.0), (6, 5.0, 10.0), (7, 7.0, 14.0)]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")]
    assert [ln.split(" loss ")[-1] for ln in lines] == ["2.00000", "5.00000", "7.00000"], lines

    import shutil
    shutil.rmtree(tmp_path / "w" / "checkpoints" / "7")
    written.clear()
    resumed = loop.train(config, str(tmp_path / "w"), _CountingTask(config))
    assert resumed["losses"] == [(6, 5.0), (7, 7.0)]
    assert [(s, written[s]["train/loss"], written[s]["train/twice"]) for s in (6, 7)] == [(6, 5.0, 10.0), (7, 7.0, 14.0)]


def test_loss_sums_carry_a_resumed_interval_and_drop_it_for_other_terms():
    """The loop's log sums by hand: the interval a checkpoint carries (sums 6 and 2 over 2 steps)
    plus one step's terms (3 and 1) log the mean over 3 steps and checkpoint the sums over 3; the
    next interval starts empty. Terms other than the carried ones (another loss weight made a
    term appear) drop the carried steps: the mean is over this run's steps alone."""
    sums = loop._LossSums({"loss": 6.0, "a": 2.0}, 2)
    assert (sums.sums(), sums.count) == ({"loss": 6.0, "a": 2.0}, 2)  # a checkpoint before the first step
    sums.add({"loss": jnp.float32(3.0), "a": jnp.float32(1.0)})
    assert (sums.sums(), sums.count) == ({"loss": 9.0, "a": 3.0}, 3)
    assert sums.pop_means() == {"loss": 3.0, "a": 1.0}
    assert (sums.sums(), sums.count) == ({}, 0)
    sums.add({"loss": jnp.float32(4.0), "a": jnp.float32(0.0)})
    sums.add({"loss": jnp.float32(2.0), "a": jnp.float32(1.0)})
    assert sums.pop_means() == {"loss": 3.0, "a": 0.5}

    other = loop._LossSums({"loss": 6.0}, 2)
    other.add({"loss": jnp.float32(3.0), "b": jnp.float32(5.0)})
    assert other.count == 1
    assert other.pop_means() == {"loss": 3.0, "b": 5.0}


def test_create_is_one_setup_program_with_the_eager_leaves():
    """state.create makes the step, optimiser state and key in one setup program (op by op they
    were one small compile per shape, 33 in the tiny demo job's three stages) with the same
    leaves, and is traced inline under a caller's jit."""
    import optax
    from compile_count import compiles
    from jaxdeca.train import state as state_lib
    params = {"a": jnp.ones((3, 7)), "b": {"c": jnp.arange(5.0)}, "d": jnp.ones((2, 9, 4), jnp.bfloat16)}
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(optax.cosine_decay_schedule(1e-3, 10)))
    stats = {"bn": jnp.zeros(3)}
    with compiles() as n:
        st = state_lib.create(params, stats, {}, opt, 12345)
    assert len(n) == 1, len(n)
    assert st.params is params
    eager = (jnp.zeros((), jnp.int32), opt.init(params), jax.random.key_data(jax.random.key(12345)))
    got = (st.step, st.opt_state, st.rng)
    assert jax.tree.structure(got) == jax.tree.structure(eager)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(eager)):
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_array_equal(np.asarray(g), np.asarray(e))
    inside = jax.jit(lambda p: state_lib.create(p, {}, {}, opt, 12345).opt_state)(params)
    for g, e in zip(jax.tree.leaves(inside), jax.tree.leaves(eager[1])):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(e))


def test_a_diverged_run_stops_before_checkpointing_it_and_keeps_the_good_ones(tmp_path):
    """From step 13 the batches hold NaN, so the loss and then the params are NaN. The run went on
    to the end, saving NaN states that pushed every good checkpoint out (keep_checkpoints) and
    that a rerun resumed. It stops with TrainingDiverged at the first log (or, with no log
    before it, the first checkpoint) that sees it, saving nothing from it; a rerun resumes from
    the last finite checkpoint. main reports it in one line."""
    from jaxdeca import main
    from jaxdeca.train.toy import ToyLoader

    class NanLoader(ToyLoader):
        def next(self):
            b = super().next()
            return dict(b, x=b["x"] * np.nan) if self.i > 12 else b

    class NanTask(ToyTask):
        def make_loader(self, local_bs, pi, pc):
            return NanLoader(local_bs, pi, int(self.config.seed), self.dim)

    for log_every, what in ((5, "the logged train/loss"), (0, "the state to be checkpointed")):
        config = test_toy.get_config()
        config.train.update(dict(checkpoint_every=5, log_every=log_every, eval_every=0))
        work = tmp_path / f"log{log_every}"
        with pytest.raises(loop.TrainingDiverged, match=f"{what}.* at step 15 is not finite.*step 10 in"):
            loop.train(config, str(work), NanTask(config))
        assert sorted(int(d) for d in os.listdir(work / "checkpoints") if d.isdigit()) == [5, 10]
    out = loop.train(config, str(work), ToyTask(config))
    assert [s for s, _ in out["losses"]] == [40] and np.isfinite(out["losses"][-1][1])
    assert loop.TrainingDiverged in main._user_errors()


def test_ctrl_c_in_main_is_a_keyboard_interrupt_whatever_was_importing(tmp_path):
    """main's `except _user_errors()` ran _user_errors() for a KeyboardInterrupt too; it imported
    TensorFlow (jaxdeca.data) then, and after a Ctrl-C that cut such an import short it failed, so
    the run ended in an unrelated AttributeError. Here _user_errors fails as that import did."""
    script = textwrap.dedent("""
        import sys
        from absl import app
        from jaxdeca import main
        def interrupted(config, workdir):
            raise KeyboardInterrupt
        def broken_import():
            raise AttributeError("module 'tensorflow.python.data.ops.dataset_ops' has no attribute 'DatasetV2'")
        main.run_mode, main._user_errors = interrupted, broken_import
        sys.argv = ["main", "--config=configs/test_toy.py", "--workdir=" + sys.argv[1]]
        app.run(main.main, flags_parser=main.parse_flags)
    """)
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "w")], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGINT, (res.returncode, res.stderr[-2000:])
    assert res.stderr.rstrip().endswith("KeyboardInterrupt") and "AttributeError" not in res.stderr, res.stderr[-2000:]


def test_a_resume_with_another_seed_is_one_config_error(tmp_path):
    """A checkpoint trained with config.seed=0, resumed with --config.seed=1: the toy and
    synthetic streams went on silently with another seed's data, and a tfds loader's restore
    raised a bare ValueError (a traceback, no field named). Checkpoints record the seed; one that
    predates it is checked against its tfds loader position's."""
    from jaxdeca.train import paths
    config = test_toy.get_config()
    config.train.update(dict(num_steps=10, eval_every=0))
    loop.train(config, str(tmp_path / "w"), ToyTask(config))
    config.seed, config.train.num_steps = 1, 20
    with pytest.raises(paths.ConfigError, match=r"checkpoint step 10 was trained with config.seed=0 but "
                                                 r"config.seed=1 now .*resume with --config.seed=0"):
        loop.train(config, str(tmp_path / "w"), ToyTask(config))
    with pytest.raises(paths.ConfigError, match="config.seed=3 but config.seed=1"):
        loop._check_seed({"loader": {"step": 4, "seed": 3}}, 1, "old")
    loop._check_seed({"loader": {"index": 4}}, 1, "toy checkpoint before seeds were saved: not checked")
    config.seed = 0
    assert [s for s, _ in loop.train(config, str(tmp_path / "w"), ToyTask(config))["losses"]][-1] == 20


def test_a_second_job_on_a_workdir_in_use_is_refused_and_a_killed_jobs_lock_goes_with_it(tmp_path):
    """Two jobs on one workdir (a resubmitted job, a second terminal) went ahead together: each
    deleted the other's half-written checkpoints, so both crashed with a FileNotFoundError, or
    both finished while only one run's weights were kept. The second is now one 'error:' line
    naming the first, before it touches anything; the OS drops a killed job's lock."""
    from jaxdeca.train import demo, workdir_lock
    work = tmp_path / "w"
    # the first job stops at batch 12, after its step-10 checkpoint, until it is killed: it runs
    # however long the second job takes to start (a per-step sleep let a loaded machine finish it)
    proc = subprocess.Popen([sys.executable, _driver(tmp_path), str(work), str(tmp_path / "o.npz"), "0"], cwd=REPO,
                            env=_env(HOLD_AT="12"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_checkpoint([proc], work / "checkpoints" / "10")
        before = sorted(os.listdir(work))
        res = subprocess.run([sys.executable, "-m", "jaxdeca.main", "--config=configs/test_toy.py", f"--workdir={work}"],
                             cwd=REPO, env=_env(TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert errors and errors[0].startswith(f"error: --workdir={work} is in use by another job (pid {proc.pid} on "), \
            res.stderr[-3000:]
        with pytest.raises(workdir_lock.WorkdirInUse, match="is in use by another job"):
            demo.run(None, str(work))  # refused before it reads its config
        assert sorted(os.listdir(work)) == before
        assert proc.poll() is None, "the first job did not keep running"
    finally:
        proc.kill()
        proc.wait()
    with workdir_lock.hold(str(work)):  # a killed job leaves no stale lock
        pass
    with workdir_lock.hold(str(work)), pytest.raises(workdir_lock.WorkdirInUse):
        with workdir_lock.hold(str(work)):  # one process's second job is refused too
            pass


def test_a_workdir_whose_lock_file_cannot_be_written_is_one_config_error(tmp_path):
    """A workdir the user cannot write to is one ConfigError naming it and the lock file, not an
    OSError traceback from opening the lock file."""
    from jaxdeca.train import paths, workdir_lock
    work = tmp_path / "w"
    work.mkdir()
    (work / workdir_lock.LOCK_NAME).mkdir()  # a folder where the lock file goes: cannot be opened as one
    with pytest.raises(paths.ConfigError, match=rf"--workdir={work}: cannot write its lock file .*\.jaxdeca\.lock"):
        with workdir_lock.hold(str(work)):
            pass


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_optimizer_is_decas_adam_with_optional_global_norm_clipping(clip):
    """make_optimizer is torch's Adam as DECA uses it (b1 0.9, b2 0.999, no weight decay) behind
    optax.clip_by_global_norm(clip_norm) when clip_norm > 0, and plain Adam when it is 0. Two
    steps of different gradient norms: the first (norm 5) is clipped to norm 1 when clip_norm=1,
    which changes the second update (one step of Adam alone is scale-free)."""
    import ml_collections
    import optax
    from jaxdeca.train import state
    lr = 1e-2
    config = ml_collections.ConfigDict(dict(optim=dict(learning_rate=lr, clip_norm=clip, schedule="constant"),
                                            train=dict(num_steps=10)))
    adam = optax.adam(lr, b1=0.9, b2=0.999)
    want_opt = optax.chain(optax.clip_by_global_norm(clip), adam) if clip > 0 else adam
    other_opt = adam if clip > 0 else optax.chain(optax.clip_by_global_norm(1.0), adam)
    params = {"w": jnp.zeros(2)}

    def two_updates(opt):
        s = opt.init(params)
        out = []
        for g in ([3.0, 4.0], [0.3, -0.4]):
            u, s = opt.update({"w": jnp.asarray(g)}, s, params)
            out.append(np.asarray(u["w"]))
        return out
    got, want, other = (two_updates(o) for o in (state.make_optimizer(config), want_opt, other_opt))
    for step, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-9, err_msg=f"clip_norm={clip}: update {step + 1}")
    assert np.abs(want[1] - other[1]).max() > 1e-4  # the two steps tell clipped from unclipped Adam
