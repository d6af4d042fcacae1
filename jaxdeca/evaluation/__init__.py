"""jaxdeca.evaluation: the NoW benchmark (export + scan-to-mesh metric) without psbody-mesh.

`geometry` holds exact point-to-triangle distances and Umeyama alignment, `meshio` the NoW file
formats (OBJ, MeshLab .pp), `now` the export, the metric and the `evaluate` CLI.
"""
from jaxdeca.evaluation.geometry import (closest_point_on_triangle, point_to_triangle_distance,
                                         similarity_transform)
from jaxdeca.evaluation.now import (NOW_LANDMARK_INDICES, compute_errors, evaluate, export_prediction,
                                    now_landmarks, summarise)

__all__ = ["closest_point_on_triangle", "point_to_triangle_distance", "similarity_transform",
           "NOW_LANDMARK_INDICES", "compute_errors", "evaluate", "export_prediction", "now_landmarks",
           "summarise"]
