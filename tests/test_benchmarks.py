"""benchmarks/ without timing anything: run_all.sh with a stand-in interpreter (PYTHON=) that prints
or fails per script, so what the runner does with each run's exit status and its RUNS argument
shows; render.py's peer launcher with a peer interpreter that is not there."""
import os
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_ALL = os.path.join(ROOT, "benchmarks", "run_all.sh")


def _run_all(tmp_path, *args, cases='  *render.py*) echo "render failed" >&2; exit 3;;\n  *) echo "figures of $1";;\n',
             timeout=60, **env):
    """run_all.sh (SMOKE) into tmp_path/out with a stand-in interpreter (PYTHON=): `-c` (the jax
    version line) prints a stand-in, the rest is `cases`, bash case arms on its arguments (by
    default render.py fails with exit 3 and every other script prints a line); env: more variables."""
    py = tmp_path / "py"
    py.write_text('#!/usr/bin/env bash\ncase "$*" in\n  -c*) echo "jax stand-in";;\n' + cases + 'esac\n')
    py.chmod(0o755)
    env = dict(os.environ, PYTHON=str(py), SMOKE="1", **env)
    return subprocess.run(["bash", RUN_ALL, str(tmp_path / "out"), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_a_failing_run_is_reported_and_the_next_runs(tmp_path):
    r = _run_all(tmp_path, "render,texture")
    assert r.returncode == 1
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "## render: exit 3" in summary and "render failed" in summary
    assert "## texture: exit 0" in summary and "figures of benchmarks/texture.py" in summary


def test_an_unknown_run_name_is_an_error_not_an_empty_success(tmp_path):
    r = _run_all(tmp_path, "render,txture")
    assert r.returncode == 2
    assert "txture" in r.stderr and "texture" in r.stderr  # names the bad one and the known ones
    assert not (tmp_path / "out" / "render.log").exists()  # nothing ran


def _probe_wheel(folder):
    """A minimal pure-Python wheel, probe_pkg 0.1 (VALUE = 41), written into folder by hand."""
    import zipfile
    folder.mkdir(exist_ok=True)
    path = folder / "probe_pkg-0.1-py3-none-any.whl"
    info = "probe_pkg-0.1.dist-info"
    files = {"probe_pkg/__init__.py": "VALUE = 41\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: probe_pkg\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def _wheels_run_all(tmp_path, wheels, pip_fails=False):
    """run_all.sh (SMOKE, RUNS=texture) with WHEELS=wheels and a stand-in interpreter: `-m pip` goes
    to this interpreter's real pip (offline) unless pip_fails; a benchmark script imports probe_pkg
    from the runs' PYTHONPATH and prints it with the folder it came from."""
    import sys
    pip = "exit 1" if pip_fails else f'exec "{sys.executable}" "$@"'
    cases = (f'  "-m pip"*) {pip};;\n  *) exec "{sys.executable}" -c "import probe_pkg, os; '
             f'print(\'probe\', probe_pkg.VALUE, os.path.dirname(os.path.dirname(probe_pkg.__file__)))";;\n')
    return _run_all(tmp_path, "texture", cases=cases, timeout=120, WHEELS=str(wheels))


def test_wheels_are_installed_without_network_onto_the_runs_path(tmp_path):
    """WHEELS=DIR (benchmarks/offline_wheels.sh, for a machine that cannot reach PyPI): its wheels
    are installed by pip with --no-index --no-deps into a temporary folder, which every run finds
    first on its PYTHONPATH; the summary names the wheels, and the folder is removed at the end."""
    wheel = _probe_wheel(tmp_path / "wheels")
    r = _wheels_run_all(tmp_path, wheel.parent)
    assert r.returncode == 0, r.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert f"wheels from {wheel.parent}: {wheel.name}" in summary
    log = (tmp_path / "out" / "texture.log").read_text().split()
    assert log[:2] == ["probe", "41"], log
    assert not os.path.exists(log[2])  # the temporary site folder


def test_offline_wheels_asks_pip_for_binary_wheels_of_the_target_python(tmp_path):
    """benchmarks/offline_wheels.sh DIR 3.13 asks pip (here a stand-in that records its arguments)
    for binary wheels, without dependencies, for CPython 3.13, of the pinned packages, into DIR."""
    py = tmp_path / "py"
    py.write_text(f'#!/usr/bin/env bash\necho "$@" > "{tmp_path}/args"\n')
    py.chmod(0o755)
    r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "offline_wheels.sh"), str(tmp_path / "w"), "3.13"],
                       env=dict(os.environ, PYTHON=str(py)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    args = (tmp_path / "args").read_text().split()
    assert args[:3] == ["-m", "pip", "download"] and args[args.index("-d") + 1] == str(tmp_path / "w")
    for flag in ("--no-deps", "--only-binary=:all:", "--implementation", "cp", "manylinux2014_x86_64"):
        assert flag in args, args
    assert args[args.index("--python-version") + 1] == "3.13"
    assert {"ml-collections==1.1.0", "jaxrenderer==0.4.0", "deodr==0.2.3", "trimesh==5.2.0"} <= set(args)


@pytest.mark.parametrize("case", ["empty", "pip fails"])
def test_wheels_that_cannot_be_installed_stop_before_any_run(tmp_path, case):
    """WHEELS naming a folder without wheels, or wheels pip cannot install, is one error line (exit 2)
    before any benchmark runs, not runs that each fail on a missing import."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    if case == "pip fails":
        _probe_wheel(folder)
    r = _wheels_run_all(tmp_path, folder, pip_fails=case == "pip fails")
    assert r.returncode == 2, r.stderr
    message = "holds no .whl files" if case == "empty" else "could not install the wheels"
    assert message in r.stderr and str(folder) in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()  # nothing ran


def _bench_render(monkeypatch):
    import importlib.util
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))  # render.py imports timing from there
    spec = importlib.util.spec_from_file_location("bench_render", os.path.join(ROOT, "benchmarks", "render.py"))
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    return render


TRIANGLE = (np.array([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]], np.float32), np.array([[0, 1, 2]], np.int32))


@pytest.mark.parametrize("peer", ["DEODR", "jaxrenderer"])
def test_render_peer_interpreter_missing_is_a_note_not_a_crash(tmp_path, monkeypatch, peer):
    """PEER_PYTHON / JAXRENDERER_PYTHON naming no interpreter (e.g. the docstring's venv never
    made) skips that peer with a note, as a missing deodr or jaxrenderer does, instead of ending
    the run after our figures."""
    render = _bench_render(monkeypatch)
    missing = str(tmp_path / "no_venv" / "bin" / "python")
    rows, note = render.run_peer(*TRIANGLE, 8, [1], 1, missing, peer)
    assert rows == {} and missing in note and "unavailable" in note and note.startswith(peer)


def test_render_peer_rows_skips_and_note_are_read(tmp_path, monkeypatch):
    """What a peer's worker prints (a JSON row per batch size, a row that says it was skipped over
    the time budget, a closing note) reaches the table: rows by B, the note appended to the
    peer's line. The worker here is a stand-in interpreter that prints those lines."""
    render = _bench_render(monkeypatch)
    py = tmp_path / "py"
    py.write_text('#!/usr/bin/env bash\necho \'{"B": 1, "fwd": 2.0, "bwd": 5.0, "fwd_mib": 1.0, "bwd_mib": 2.0}\'\n'
                  'echo \'{"B": 8, "skipped": "over --peer-budget 120 s"}\'\n'
                  'echo \'{"note": "jax 0.12 on cpu; gradients finite"}\'\n')
    py.chmod(0o755)
    rows, note = render.run_peer(*TRIANGLE, 8, [1, 8], 1, str(py), "jaxrenderer", 120.0)
    assert rows[1]["bwd"] == 5.0 and "skipped" in rows[8]
    assert note == f"jaxrenderer via {py} (jax 0.12 on cpu; gradients finite)"


def test_render_unknown_peer_is_one_argument_error():
    """--peers naming no known peer is argparse's one error line naming it and the known ones
    (exit 2), before any of our figures are computed."""
    import sys
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "render.py"), "--peers", "DEODR,pytorch3d"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--peers: unknown pytorch3d (known: DEODR, jaxrenderer)" in r.stderr and r.stdout == ""


def test_train_batch_not_divisible_by_the_devices_is_one_argument_error(four_device_flags):
    """benchmarks/train.py --batch that does not split over the devices (6 on 4) built both stages'
    networks and then stopped with a ValueError traceback from sharding the batch; it is argparse's
    one error line naming --batch and the device count (exit 2), as the trainer names
    config.train.batch_size, before anything is built."""
    import sys
    env = dict(os.environ, XLA_FLAGS=four_device_flags, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train.py"), "--batch", "6", "--k", "2",
                        "--size", "32", "--uv", "32", "--width", "0.125", "--blocks", "1,1,1,1", "--hidden", "16",
                        "--steps", "1", "--no-id", "--no-mrf"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "error: argument --batch: 6 (the global batch) must be a multiple of the number of devices" in r.stderr
    assert "4 devices" in r.stderr, r.stderr


def test_train_batch_not_a_multiple_of_k_is_one_argument_error():
    """benchmarks/train.py --batch that is not a multiple of --k (images per identity; 6 with K=4)
    was not checked: the coarse stage's networks were built and the step stopped with a ValueError
    traceback from the shape-consistency code swap ('swap_codes: batch 6 != n_identities 1 x k 4';
    --k 0 a ZeroDivisionError), while the trainer refuses such a config.train.batch_size with one
    ConfigError (data.check_k). It is argparse's one error line naming --batch and --k, exit
    status 2, before anything is built; so is --k 0."""
    import sys
    base = [sys.executable, os.path.join(ROOT, "benchmarks", "train.py"), "--size", "32", "--uv", "32", "--width",
            "0.125", "--blocks", "1,1,1,1", "--hidden", "16", "--steps", "1", "--no-id", "--no-mrf", "--stages",
            "coarse"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for batch, k, message in (("6", "4", "error: argument --batch: 6 gives 6 images per process, not a multiple of "
                                          "--k=4 (a batch holds whole identities of K images each)"),
                              ("4", "0", "error: argument --k: must be a positive integer, got 0")):
        r = subprocess.run([*base, "--batch", batch, "--k", k], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert message in r.stderr, r.stderr
        assert "stage" not in r.stdout, r.stdout  # no table: nothing was built or run
