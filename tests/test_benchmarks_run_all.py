"""benchmarks/run_all.sh without running a benchmark: a stand-in interpreter (PYTHON=) prints or
fails per script, so what the runner does with each run's exit status and its RUNS argument shows."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_ALL = os.path.join(ROOT, "benchmarks", "run_all.sh")


def _run_all(tmp_path, *args):
    py = tmp_path / "py"
    py.write_text('#!/usr/bin/env bash\ncase "$*" in\n  -c*) echo "jax stand-in";;\n'
                  '  *render.py*) echo "render failed" >&2; exit 3;;\n  *) echo "figures of $1";;\nesac\n')
    py.chmod(0o755)
    env = dict(os.environ, PYTHON=str(py), SMOKE="1")
    return subprocess.run(["bash", RUN_ALL, str(tmp_path / "out"), *args], env=env, capture_output=True,
                          text=True, timeout=60)


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
