"""jaxdeca.evaluation: the NoW benchmark (export + scan-to-mesh metric) without psbody-mesh.

`geometry` holds exact point-to-triangle distances and Umeyama alignment, `meshio` the NoW file
formats (OBJ, MeshLab .pp), `now` the export layout, the metric and the CLI
(`python -m jaxdeca.evaluation.now export|evaluate ...`), `now_predict` the model run that
exports predictions (a checkpoint's encoder, or `apps.fit`). Names are loaded lazily so that running the
`now` module as a script does not import it twice.
"""
import importlib

_EXPORTS = {
    "closest_point_on_triangle": "geometry", "point_to_triangle_distance": "geometry",
    "similarity_transform": "geometry", "NOW_LANDMARK_INDICES": "now", "compute_errors": "now",
    "evaluate": "now", "export_prediction": "now", "now_landmarks": "now", "summarise": "now",
    "export_model": "now_predict", "neutral_prediction": "now_predict",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"jaxdeca.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'jaxdeca.evaluation' has no attribute {name!r}")
