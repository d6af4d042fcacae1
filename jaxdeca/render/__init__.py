"""jaxdeca.render: DECA's differentiable renderer in pure jax.numpy.

Four orthogonal ops (camera/rasterize/interpolate/texture), SoftRas's soft colour blend
(`soft_blend`), DECA's shading, UV-space maps and a one-call `render` of a DECA decode. Runs on CPU/GPU/TPU; jit/vmap/grad friendly.
Faces that do not index the vertices given, and arrays of the wrong shape, are refused with a
ValueError naming the function (`checks`), where JAX's gathers would clamp them silently.
"""
from jaxdeca.render.camera import orth_proj, perspective_proj, to_pixels
from jaxdeca.render.deca import Topology, depth_image, image_geometry, make_topology, render, shade_image, shape_image
from jaxdeca.render.interpolate import (face_normals, face_vertices, interpolate, interpolate_face_attr,
                                        vertex_normals)
from jaxdeca.render.rasterize import (SMALLEST_SHARPNESS, Fragments, barycentric, front_facing, rasterize,
                                      sharpness_ok)
from jaxdeca.render.soft_blend import soft_blend
from jaxdeca.render.shading import (SH_CONSTANTS, directional_shading, sh_basis, sh_shading,
                                    vertex_visibility)
from jaxdeca.render.texture import grid_sample
from jaxdeca.render.uv import (UVRaster, dense_grid_faces, detail_vertices, displacement_to_normals, extract_texture,
                               grid_normals, uv_rasterize, uv_to_image, world2uv)
