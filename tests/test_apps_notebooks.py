"""The Colab notebooks run top to bottom, headless, on the demo head (nbclient, python3 kernel), and
README's Python block runs as written."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", ["reconstruct_and_animate.ipynb", "train_tiny_model.ipynb"])
def test_notebook_runs(name, tmp_path):
    """As a user runs them after `pip install -e .`: jaxdeca importable (this checkout's, through a
    folder holding only the package), the repository root neither on the path nor the kernel's
    working directory."""
    nb = nbformat.read(os.path.join(ROOT, "colabs", name), as_version=4)
    site, run = tmp_path / "site", tmp_path / "run"
    site.mkdir()
    run.mkdir()
    (site / "jaxdeca").symlink_to(os.path.join(ROOT, "jaxdeca"), target_is_directory=True)
    env_path = os.environ.get("PYTHONPATH", "")
    others = [p for p in env_path.split(os.pathsep) if p and os.path.realpath(p) != os.path.realpath(ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site)] + others)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(run)}}).execute()
    finally:
        os.environ["PYTHONPATH"] = env_path
    if name == "reconstruct_and_animate.ipynb":  # what its cells say they write
        for f in ("demo/demo.obj", "demo/demo_vis.png", "demo/demo_codes.npz", "animation.gif"):
            assert (run / "nb_out" / f).is_file(), f


def test_the_readmes_python_block_runs_as_written(tmp_path, capsys):
    """README's 'From Python' block (the library calls the apps wrap), run as it is written."""
    import re
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index("### From Python"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(block, "README.md:From Python", "exec"), {"__name__": "readme"})
    finally:
        os.chdir(cwd)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].endswith(", 3) (1, 224, 224, 3)") and lines[-1] == "(1, 50)", lines
