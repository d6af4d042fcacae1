"""Every `python -m jaxdeca...` command answers --help, also under `python -OO`, which strips
docstrings: the commands built their argparse description from `__doc__` and stopped with
"'NoneType' object has no attribute 'splitlines'" before doing anything."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("jaxdeca.main", "jaxdeca.convert", "jaxdeca.apps.reconstruct", "jaxdeca.apps.fit", "jaxdeca.apps.animate",
            "jaxdeca.apps.teaser", "jaxdeca.data.prepare", "jaxdeca.data.tfds_faces", "jaxdeca.flame.convert",
            "jaxdeca.evaluation.now", "jaxdeca.assets.make_demo_head")

# one interpreter runs each command's --help in turn (as `python -m`), printing its exit status
SCRIPT = textwrap.dedent("""
    import contextlib, io, runpy, sys
    for name in sys.argv[1:]:
        sys.argv = [name, "--help"]
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):
                runpy.run_module(name, run_name="__main__", alter_sys=True)
            code = "no exit"
        except SystemExit as e:
            code = e.code
        except Exception as e:
            code = f"{type(e).__name__}: {e}"
        print(name, code, "--" in out.getvalue(), flush=True)
""")


def test_every_command_answers_help_under_python_OO():
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    res = subprocess.run([sys.executable, "-OO", "-c", SCRIPT, *COMMANDS], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("jaxdeca.")]
    # absl's --help (jaxdeca.main's flags) exits with status 1 by design; argparse's with 0
    assert lines == [f"{name} {1 if name == 'jaxdeca.main' else 0} True" for name in COMMANDS], \
        res.stdout + res.stderr[-3000:]
