"""soft_blend (SoftRas's colour aggregation): against a dense every-pixel-every-face reference
written from the formula, its gradients against autodiff of that reference and finite
differences, the hard limit, knobs that must not change results, and bad arguments."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeca.render import interpolate, rasterize, soft_blend


def _cross(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def dense_reference(v, faces, attr, H, W, sigma, gamma, z_range, eps, bg):
    """The blend of one image, every pixel centre against every face.

    v: [V, 3] image space; attr: [V, C]; bg: [C] -> [H, W, C]. Plain jax.numpy (so that it can
    be differentiated); the maximum nearness is held constant, as the result does not depend on it.
    """
    zn, zf = z_range
    px = jnp.stack([(v[:, 0] + 1) * W / 2, (v[:, 1] + 1) * H / 2], -1)
    ys, xs = jnp.meshgrid(jnp.arange(H) + 0.5, jnp.arange(W) + 0.5, indexing="ij")
    p = jnp.stack([xs, ys], -1)[:, :, None, :]  # [H, W, 1, 2]
    a, b, c = (px[faces[:, k]] for k in range(3))  # [F, 2]
    det = _cross(b - a, c - a)
    longest = jnp.max(jnp.stack([jnp.sum((b - a) ** 2, -1), jnp.sum((c - b) ** 2, -1),
                                 jnp.sum((a - c) ** 2, -1)]), 0)
    nondeg = jnp.abs(det) > jnp.maximum(1e-10, 1e-6 * longest)
    safe = jnp.where(nondeg, det, 1.0)
    lam = jnp.stack([_cross(b - p, c - p), _cross(c - p, a - p), _cross(a - p, b - p)], -1) / safe[:, None]
    inside = jnp.all(lam >= 0, -1)

    def seg2(s, e):  # squared distance from p to segment s-e
        d = e - s
        t = jnp.clip(jnp.sum((p - s) * d, -1) / jnp.maximum(jnp.sum(d * d, -1), 1e-12), 0, 1)
        return jnp.sum((p - s - t[..., None] * d) ** 2, -1)

    d2 = jnp.minimum(jnp.minimum(seg2(a, b), seg2(b, c)), seg2(c, a))
    use = nondeg & (inside | (d2 < 16 * sigma))
    D = jax.nn.sigmoid(jnp.where(inside, d2, -d2) / sigma)
    wc = jnp.clip(lam, 0, 1)
    wc = wc / jnp.maximum(wc.sum(-1, keepdims=True), 1e-5)
    z = jnp.sum(wc * v[faces, 2], -1)
    n = (zf - z) / (zf - zn)
    valid = use & (n >= 0) & (n <= 1)
    m = jax.lax.stop_gradient(jnp.maximum(eps, jnp.max(jnp.where(valid, n, -jnp.inf), -1)))[..., None]
    e = jnp.where(valid, D * jnp.exp(jnp.where(valid, n - m, 0) / gamma), 0)
    col = jnp.einsum("hwfk,fkc->hwfc", wc, attr[faces])
    eb = jnp.exp((eps - m) / gamma)
    return (eb * bg + jnp.sum(e[..., None] * col, -2)) / (eb + jnp.sum(e, -1, keepdims=True))


def scene(seed=0, n_faces=8, V_extra=0):
    rng = np.random.default_rng(seed)
    v = rng.uniform(-0.9, 0.9, (n_faces * 3, 3)).astype(np.float32)
    v[:, 2] = rng.uniform(1, 5, n_faces * 3)
    faces = np.arange(n_faces * 3).reshape(n_faces, 3)
    faces[1, 0] = faces[0, 1]  # a shared vertex, so gradients from two faces add up
    attr = rng.uniform(0, 1, (n_faces * 3, 3)).astype(np.float32)
    return v, faces, attr


ARGS = dict(sigma=2.0, gamma=0.05, z_range=(0.0, 6.0), eps=1e-3)
BG = np.array([0.2, 0.5, 0.9], np.float32)


@pytest.mark.parametrize("knobs", [{}, {"window": 4, "slots": 3}])
def test_matches_the_dense_reference_whatever_the_windows(knobs):
    v, faces, attr = scene()
    H, W = 19, 23
    want = np.asarray(dense_reference(jnp.asarray(v), faces, jnp.asarray(attr), H, W, bg=BG, **ARGS))
    got = np.asarray(soft_blend(v[None], faces, attr[None], (H, W), background=BG, **ARGS, **knobs))[0]
    assert got.shape == (H, W, 3)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # a real blend: some pixels mix the background and several faces
    assert np.abs(want - BG).max() > 0.3 and ((np.abs(want - BG) > 1e-3).mean() < 0.98)


def test_gradients_equal_autodiff_of_the_dense_reference_under_jit_and_vmap():
    v, faces, attr = scene(1)
    H, W = 16, 18
    rng = np.random.default_rng(5)
    wts = jnp.asarray(rng.normal(size=(2, H, W, 3)), jnp.float32)
    v2 = jnp.asarray(np.stack([v, v * 0.95 + 0.01]))
    a2 = jnp.asarray(np.stack([attr, attr[::-1]]))
    bg = jnp.asarray(np.stack([BG, BG[::-1]]))

    def ours(v, a, bg, batch_size=None):
        out = soft_blend(v, faces, a, (H, W), background=bg[:, None, None], batch_size=batch_size, **ARGS)
        return jnp.sum(wts * out)

    def ref(v, a, bg):
        out = jax.vmap(lambda v, a, bg: dense_reference(v, faces, a, H, W, bg=bg, **ARGS))(v, a, bg)
        return jnp.sum(wts * out)

    want = jax.grad(ref, argnums=(0, 1, 2))(v2, a2, bg)
    assert np.abs(np.asarray(want[0])[..., :2]).max() > 0.5  # positions receive real gradients
    for bs in (None, 2):
        got = jax.jit(jax.grad(ours, argnums=(0, 1, 2)), static_argnums=3)(v2, a2, bg, bs)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=2e-3, atol=2e-3)
    # vmap over images of a single-image call gives the same
    per_image = jax.vmap(jax.grad(lambda v, a, bg, w: jnp.sum(w * soft_blend(
        v[None], faces, a[None], (H, W), background=bg, **ARGS)[0])))(v2, a2, bg, wts)
    np.testing.assert_allclose(per_image, want[0], rtol=2e-3, atol=2e-3)


def test_position_gradient_matches_finite_differences():
    v, faces, attr = scene(2, n_faces=3)
    H, W = 14, 14
    w = jnp.asarray(np.random.default_rng(6).normal(size=(H, W, 3)), jnp.float32)

    def loss(v):
        return jnp.sum(w * soft_blend(v, faces, attr[None], (H, W), background=BG, **ARGS)[0])

    v = jnp.asarray(v[None])
    g = np.asarray(jax.jit(jax.grad(loss))(v))
    f = jax.jit(loss)
    for i, k in [(0, 0), (0, 1), (1, 0), (4, 1), (5, 2), (7, 0)]:
        e = np.zeros(v.shape, np.float32)
        e[0, i, k] = 1e-3
        fd = (float(f(v + e)) - float(f(v - e))) / 2e-3
        assert abs(g[0, i, k] - fd) <= 0.03 * max(abs(fd), 0.3), (i, k, g[0, i, k], fd)


def test_sharp_limit_is_the_hard_z_buffer_colour():
    """sigma and gamma -> 0: each covered pixel takes its nearest face's interpolated attributes,
    the others the background (pixel centres within ~1e-2 px of an edge may differ)."""
    from jaxdeca.render.meshes import uv_sphere
    m = uv_sphere(10, 20, radius=0.7)
    v = jnp.asarray(np.asarray(m["verts"])[None] + np.array([0.1, 0.0, 3.0]), jnp.float32)
    faces = np.asarray(m["faces"])
    attr = jnp.asarray(np.random.default_rng(3).uniform(size=(1, v.shape[1], 2)), jnp.float32)
    H, W = 32, 28
    fr = rasterize(v, faces, (H, W), sigma=0.0)
    hard = np.where(np.asarray(fr.mask)[..., None] > 0, np.asarray(interpolate(attr, faces, fr)), -1.0)
    soft = np.asarray(soft_blend(v, faces, attr, (H, W), sigma=1e-5, gamma=1e-6, z_range=(0.0, 6.0),
                                 background=-1.0))
    close = np.all(np.abs(soft - hard) < 1e-3, -1)
    assert np.asarray(fr.mask).sum() > 300 and close.mean() > 0.995, close.mean()


def test_bad_arguments_are_refused():
    v, faces, attr = scene()
    for kw in ({"sigma": 0.0}, {"gamma": 0.0}, {"sigma": float("inf")}, {"gamma": float("nan")},
               {"gamma": 1e-40}, {"sigma": 1e-40}, {"z_range": (1.0, 1.0)}):  # 1e-40: 1 / gamma overflowed to NaN
        with pytest.raises(ValueError, match="soft_blend needs"):
            soft_blend(v[None], faces, attr[None], (8, 8), **kw)


def test_an_empty_batch_is_empty_and_a_mesh_with_no_faces_is_the_background():
    """B = 0 gives [0, H, W, C]; F = 0 gives C_b at every pixel (the blend of the background
    alone), with the background's gradient and none for the vertices or attributes."""
    v, faces, attr = scene()
    out = soft_blend(jnp.zeros((0,) + v.shape), faces, jnp.zeros((0,) + attr.shape), (5, 6), **ARGS)
    assert out.shape == (0, 5, 6, 3)
    no_faces = np.zeros((0, 3), np.int32)

    def loss(v, a, bg):
        return jnp.sum(soft_blend(v[None], no_faces, a[None], (5, 6), background=bg, **ARGS))

    np.testing.assert_array_equal(np.asarray(soft_blend(v[None], no_faces, attr[None], (5, 6), background=BG,
                                                        **ARGS)), np.broadcast_to(BG, (1, 5, 6, 3)))
    gv, ga, gbg = jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(v), jnp.asarray(attr), jnp.asarray(BG))
    assert not np.asarray(gv).any() and not np.asarray(ga).any()
    np.testing.assert_array_equal(np.asarray(gbg), 30.0)  # each of the 5 x 6 pixels is C_b


def test_float64_gradients_equal_the_dense_reference_to_rounding():
    """In float64 the hand-written VJP and autodiff of the dense reference agree to ~1e-14: the
    same function, not an approximation of it."""
    v, faces, attr = scene(1)
    H, W = 16, 18
    w = np.random.default_rng(5).normal(size=(H, W, 3))
    with jax.enable_x64(True):
        v, attr, bg = (jnp.asarray(x, jnp.float64) for x in (v, attr, BG))
        ours = jax.grad(lambda v, a, bg: jnp.sum(w * soft_blend(v[None], faces, a[None], (H, W), background=bg,
                                                                **ARGS)[0]), argnums=(0, 1, 2))(v, attr, bg)
        ref = jax.grad(lambda v, a, bg: jnp.sum(w * dense_reference(v, faces, a, H, W, bg=bg, **ARGS)),
                       argnums=(0, 1, 2))(v, attr, bg)
    for g, r in zip(ours, ref):
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e38])
@pytest.mark.parametrize("face,slots", [(0, 3), (-1, 3), (-1, None)])
def test_a_face_with_a_non_finite_vertex_is_left_out(bad, face, slots):
    """As in rasterize: the face is skipped, everything else is unchanged and finite. A last
    face so (its slot repeated, with zero weight, in a last round with unused slots) put NaN
    into most pixels; 1e38 px overflows to inf in the pixel coordinates."""
    v, faces, attr = scene()
    H, W = 15, 17
    keep = np.ones(len(faces), bool)
    keep[face] = False
    want = dense_reference(jnp.asarray(v), faces[keep], jnp.asarray(attr), H, W, bg=BG, **ARGS)
    v = v.copy()
    v[faces[face, 2], 0] = bad
    loss = lambda v: soft_blend(v[None], faces, attr[None], (H, W), background=BG, slots=slots,  # noqa: E731
                                **ARGS)[0]
    np.testing.assert_allclose(loss(jnp.asarray(v)), want, atol=2e-5)
    g = np.asarray(jax.grad(lambda v: jnp.sum(loss(v)))(jnp.asarray(v)))
    others = np.setdiff1d(np.arange(len(v)), faces[face])
    assert np.isfinite(g[others]).all() and np.abs(g[others]).max() > 0


def test_faces_beyond_the_depth_range_are_left_out_at_any_gamma():
    """A face whose depth lies outside z_range (nearer than z_near or beyond z_far) is left out, as
    the docstring and SoftRas say. At the default gamma (1e-4) a face beyond z_far weighs
    exp(-n / gamma) ~ 0 anyway; at gamma = 1 it showed (0.375 of its colour at the centre) when
    only the near bound was checked."""
    faces = jnp.asarray([[0, 1, 2]], jnp.int32)
    attr = jnp.ones((1, 3, 3))

    def centre(z):
        v = jnp.asarray([[[-0.8, -0.8, z], [0.8, -0.8, z], [0.0, 0.8, z]]], jnp.float32)
        return soft_blend(v, faces, attr, (16, 16), sigma=1.0, gamma=1.0, z_range=(-10.0, 10.0), background=0.0)
    assert float(centre(5.0)[0, 8, 8, 0]) > 0.5  # inside the range: drawn
    for z in (20.0, -20.0):
        np.testing.assert_array_equal(np.asarray(centre(z)), 0.0, err_msg=f"z={z}")
