"""The renderer's public functions refuse a face list that does not belong to their vertices, and
arrays of the wrong shape, with one ValueError naming the function (jaxdeca.render.checks).

Before, JAX's gathers clamped an index past the end (and wrapped a negative one) and its scatters
dropped it, so such faces rendered, shaded and interpolated without a word."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeca import render

# two triangles of a quad in DECA image space, a batch of one
VERTS = jnp.asarray([[[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [0.5, 0.5, 1.0], [-0.5, 0.5, 1.0]]], jnp.float32)
FACES = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
SIZE = (8, 8)


def _calls(faces, verts=VERTS):
    """Each public function that takes faces, called with `faces` on the quad's vertices."""
    frags = render.rasterize(VERTS, FACES, SIZE)
    uvr = render.uv_rasterize(np.asarray(VERTS[0, :, :2]) * 0.5 + 0.5, FACES, 8)
    return {
        "rasterize": lambda: render.rasterize(verts, faces, SIZE),
        "soft_blend": lambda: render.soft_blend(verts, faces, verts, SIZE),
        "vertex_normals": lambda: render.vertex_normals(verts, faces),
        "face_vertices": lambda: render.face_vertices(verts, faces),
        "face_normals": lambda: render.face_normals(verts, faces),
        "interpolate": lambda: render.interpolate(verts, faces, frags),
        "world2uv": lambda: render.world2uv(verts, faces, uvr),
        "uv_rasterize": lambda: render.uv_rasterize(np.asarray(verts[0, :, :2]) * 0.5 + 0.5, faces, 8),
    }


def _where(name):
    return "face_vertices" if name in ("face_normals", "world2uv") else name  # they gather by face_vertices


@pytest.mark.parametrize("faces, message", [
    (FACES + 1, r"hold vertex indices 1\.\.4, but there are 4 vertices \(valid: 0\.\.3; "
                r"faces of another mesh, or 1-based"),
    (FACES - 1, r"hold vertex indices -1\.\.2, but there are 4 vertices"),
    (FACES.astype(np.float32), r"must be integer vertex indices, got dtype float32"),
    (FACES[:, :2], r"must be \[F, 3\] vertex indices, got shape \(2, 2\)"),
    (FACES[0], r"must be \[F, 3\] vertex indices, got shape \(3,\)"),
])
def test_faces_that_do_not_fit_the_vertices_are_refused(faces, message):
    for name, call in _calls(faces).items():
        with pytest.raises(ValueError, match=rf"^{_where(name)}: (uv_)?faces {message}"):
            call()


def test_faces_are_checked_at_trace_time_when_their_values_are_known():
    """Faces closed over by the caller's jit (constants) are checked when it traces; faces passed
    as its argument are a tracer, unknown until the program runs, and go unchecked (the shapes
    still are)."""
    bad = FACES + 1
    with pytest.raises(ValueError, match="rasterize: faces hold vertex indices 1..4"):
        jax.jit(lambda v: render.rasterize(v, bad, SIZE).alpha)(VERTS)
    traced = jax.jit(lambda v, f: render.rasterize(v, f, SIZE).face_index)
    np.testing.assert_array_equal(traced(VERTS, FACES), render.rasterize(VERTS, FACES, SIZE).face_index)
    with pytest.raises(ValueError, match=r"rasterize: faces must be \[F, 3\]"):
        traced(VERTS, FACES[:, :2])
    # jnp arrays and lists of ints are values too; grad and vmap pass through the checked functions
    np.testing.assert_array_equal(render.rasterize(VERTS, jnp.asarray(FACES), SIZE).face_index,
                                  render.rasterize(VERTS, FACES.tolist(), SIZE).face_index)
    g = jax.grad(lambda v: jnp.sum(render.rasterize(v, FACES, SIZE).alpha))(VERTS)
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0
    n = jax.vmap(lambda v: render.vertex_normals(v[None], FACES)[0])(jnp.concatenate([VERTS, VERTS]))
    np.testing.assert_allclose(n, jnp.concatenate([render.vertex_normals(VERTS, FACES)] * 2))


@pytest.mark.parametrize("call, message", [
    (lambda: render.rasterize(VERTS[0], FACES, SIZE), r"rasterize: verts_img must be \[B, V, 3\] .*got shape \(4, 3\)"),
    (lambda: render.rasterize(VERTS[..., :2], FACES, SIZE), r"rasterize: verts_img must be \[B, V, 3\] .*\(1, 4, 2\)"),
    (lambda: render.vertex_normals(VERTS[0], FACES), r"vertex_normals: verts must be \[B, V, 3\]"),
    (lambda: render.interpolate(VERTS[0], FACES, render.rasterize(VERTS, FACES, SIZE)),
     r"interpolate: attr must be \[B, V, C\] .*got shape \(4, 3\)"),
    (lambda: render.soft_blend(VERTS, FACES, VERTS[:, :3], SIZE),
     r"soft_blend: attr must be \[B, V, C\] for verts_img's B and V \(1, 4\), got shape \(1, 3, 3\)"),
    (lambda: render.orth_proj(VERTS, jnp.ones((1, 4))),
     r"orth_proj: verts must be \[B, V, 3\] and cam \[B, 3\] .*got shapes \(1, 4, 3\) and \(1, 4\)"),
    (lambda: render.orth_proj(jnp.concatenate([VERTS] * 2), jnp.ones((3, 3))),
     r"orth_proj: .*\(2, 4, 3\) and \(3, 3\)"),
    (lambda: render.grid_sample(jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 4, 4, 3))),
     r"grid_sample: img must be \[B, H, W, C\] and grid \[B, \.\.\., 2\] .*\(1, 8, 8, 3\) and \(1, 4, 4, 3\)"),
    (lambda: render.grid_sample(jnp.zeros((8, 8, 3)), jnp.zeros((1, 4, 4, 2))), r"grid_sample: img must be"),
    (lambda: render.uv_rasterize(np.zeros((4, 3)), FACES, 8),
     r"uv_rasterize: uv_coords must be \[T, 2\], got shape \(4, 3\)"),
])
def test_arrays_of_the_wrong_shape_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_orth_proj_broadcasts_a_camera_of_batch_one():
    verts = jnp.concatenate([VERTS, VERTS * 2.0])
    cam = jnp.asarray([[2.0, 0.1, -0.2]])
    np.testing.assert_array_equal(render.orth_proj(verts, cam), render.orth_proj(verts, jnp.concatenate([cam, cam])))
