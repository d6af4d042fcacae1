"""The Colab notebooks run top to bottom, headless, on the demo head (nbclient, python3 kernel)."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", ["reconstruct_and_animate.ipynb", "train_tiny_model.ipynb"])
def test_notebook_runs(name, tmp_path):
    nb = nbformat.read(os.path.join(ROOT, "colabs", name), as_version=4)
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + env_path if env_path else "")
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ["PYTHONPATH"] = env_path
    assert all(c.get("outputs") is not None for c in nb.cells if c.cell_type == "code")
