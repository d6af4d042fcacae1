"""Shared pytest setup: CPU, float32, quiet TensorFlow, one temporary folder per test session.

The session folder holds everything the suite leaves in the system's temporary directory, and
is removed at the end:
- Temporary files. TMPDIR points into it for this process and every child (subprocess runs,
  notebook kernels), so a notebook's `tempfile.mkdtemp` workdir or the empty folder tfds makes
  for every builder of an unprepared dataset do not pile up in /tmp. pytest's own `tmp_path`
  folders stay where pytest keeps them (PYTEST_DEBUG_TEMPROOT).
- One XLA compilation cache. Most of the suite's time on a 2-core CPU is XLA compiling the same
  train steps, renders and networks again: in each test that builds them, in the subprocess
  runs (kill-and-resume, distributed, forced devices) and in the notebook kernels. A persistent
  cache shared by this process and every child through the environment lets an identical
  program compile once per session. It starts empty, so no test depends on an earlier run; set
  JAX_COMPILATION_CACHE_DIR yourself to keep one.
Under pytest-xdist (`launch/local.sh test` runs two workers) the controlling process loads this
file before it starts the workers, so they inherit the same folder, and it alone removes it.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_SESSION_DIR = None
if "JAXDECA_TEST_SESSION_DIR" not in os.environ:  # not set: this is the controlling (or only) process
    _SESSION_DIR = tempfile.mkdtemp(prefix="jaxdeca-test-")
    os.environ["JAXDECA_TEST_SESSION_DIR"] = _SESSION_DIR
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    os.environ["TMPDIR"] = os.path.join(_SESSION_DIR, "tmp")
    os.makedirs(os.environ["TMPDIR"])
    tempfile.tempdir = None  # this process's tempfile reads TMPDIR again
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_SESSION_DIR, "xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


def _xla_flags_with(flag):
    """This process's XLA_FLAGS with `flag` appended."""
    return (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()


# Test programs are tiny, so LLVM's optimisation passes cost more than they save; results differ
# from the optimised build only by rounding (e.g. fused multiply-adds). Subprocesses inherit
# this; tests that need four host devices add to it (`four_device_flags`).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = _xla_flags_with("--xla_backend_optimization_level=0")
# XLA:CPU's MLIR fusion emitters take most of a small program's compile time: about 25-45 ms of
# backend compile for one eager op such as jnp.sin on a few rows, against 9 ms with the older
# emitters, and the suite compiles thousands of such programs (tests that run library code op by
# op) besides its train steps. Off, test_train_coarse.py + test_losses_pipeline.py took 102 s
# instead of 149 s (120 CPU s instead of 193) on a quiet 2-core machine, with the same results.
# The library keeps them on: its programs run faster with them (jaxdeca/xla_options.py).
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = _xla_flags_with("--xla_cpu_use_fusion_emitters=false")


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_DIR is not None:
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture
def four_device_flags():
    """XLA_FLAGS for a subprocess with four host devices that keeps this session's flags (-O0)."""
    return _xla_flags_with("--xla_force_host_platform_device_count=4")


_TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def run_python():
    """`run(code, xla_flags, timeout=300) -> subprocess.CompletedProcess`: runs Python source
    `code` in a CPU subprocess with XLA_FLAGS=xla_flags (the repository and tests/ importable)
    and asserts that it exits 0, showing the end of its stderr otherwise."""
    def run(code, xla_flags, timeout=300):
        path = [_TESTS, os.path.dirname(_TESTS)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(path))
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, out.stderr[-3000:]
        return out
    return run


@pytest.fixture
def run_on_four_devices(four_device_flags, run_python):
    """`run(code, timeout=300)`: runs Python source `code` in a subprocess with four host CPU
    devices (this session's XLA flags; `run_python`) and asserts that it exits 0 and prints OK,
    showing the end of its stderr otherwise."""
    def run(code, timeout=300):
        out = run_python(code, four_device_flags, timeout)
        assert "OK" in out.stdout, out.stderr[-3000:]
    return run


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module, its compiled programs and traces are let go (jax.clear_caches):
    a worker kept every program of every module it had run, and the largest one reached 9.9 GB
    on 2-core CI with two workers. A later module that needs a program again reads it from the
    session's persistent compilation cache."""
    yield
    import gc

    import jax
    jax.clear_caches()
    gc.collect()
