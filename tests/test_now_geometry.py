"""Exact point-to-triangle distances and the Umeyama similarity used by the NoW metric."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jaxdeca.evaluation.geometry import (brute_force_point_to_triangle_distance, closest_point_on_triangle,
                                         point_to_triangle_distance, similarity_transform)



def icosphere(level: int, radius: float = 1.0):
    """Subdivided icosahedron: vertices [V, 3] on the sphere, faces [F, 3] outward."""
    t = (1 + 5 ** 0.5) / 2
    v = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
         [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
         [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11],
         [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    v = [np.array(x, float) / np.linalg.norm(x) for x in v]
    for _ in range(level):
        cache, nf = {}, []

        def mid(i, j):
            key = (min(i, j), max(i, j))
            if key not in cache:
                m = v[i] + v[j]
                v.append(m / np.linalg.norm(m))
                cache[key] = len(v) - 1
            return cache[key]
        for a, b, c in f:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            nf += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        f = nf
    return np.array(v) * radius, np.array(f)


def reference_closest(p, a, b, c):
    """Independent formulation: projection onto the plane if it falls inside, else best of the 3 edges."""
    def seg(p, a, b):
        ab = b - a
        L = ab @ ab
        t = 0.0 if L == 0 else np.clip((p - a) @ ab / L, 0, 1)
        return a + t * ab
    n = np.cross(b - a, c - a)
    cands = [seg(p, a, b), seg(p, b, c), seg(p, c, a)]
    if n @ n > 1e-20:
        q = p - (p - a) @ n / (n @ n) * n
        # barycentric of q by sub-areas with signs
        u = np.cross(c - b, q - b) @ n
        v = np.cross(a - c, q - c) @ n
        w = np.cross(b - a, q - a) @ n
        if u >= 0 and v >= 0 and w >= 0:
            cands.append(q)
    return min(cands, key=lambda q: (p - q) @ (p - q))


def random_triangles(rng, n):
    tri = rng.normal(size=(n, 3, 3))
    # degenerate-ish: needles, collinear, coincident vertices, tiny
    tri[0] = [[0, 0, 0], [1, 0, 0], [2, 0, 0]]
    tri[1] = [[0, 0, 0], [0, 0, 0], [0, 0, 0]]
    tri[2] = [[0, 0, 0], [1, 0, 0], [1, 1e-9, 0]]
    tri[3] = [[1, 1, 1], [1, 1, 1], [0, 2, 0]]
    tri[4] = tri[4] * 1e-4
    return tri


def test_closest_point_matches_independent_formulation_and_dense_sampling():
    rng = np.random.default_rng(0)
    tri = random_triangles(rng, 40)
    pts = rng.normal(size=(40, 25, 3)) * 2
    q = closest_point_on_triangle(pts, tri[:, None, 0], tri[:, None, 1], tri[:, None, 2], xp=np)
    d = np.linalg.norm(pts - q, axis=-1)
    n = 60  # dense barycentric grid per triangle
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    bary = np.stack([i[keep], j[keep], n - i[keep] - j[keep]], -1) / n
    for k in range(len(tri)):
        samples = bary @ tri[k]  # [S, 3]
        dense = np.linalg.norm(pts[k][:, None] - samples[None], axis=-1).min(1)
        h = max(np.linalg.norm(tri[k][a] - tri[k][b]) for a, b in ((0, 1), (1, 2), (2, 0))) / n
        assert np.all(d[k] <= dense + 1e-9), k
        assert np.all(dense - d[k] <= h + 1e-9), k
        ref = np.array([reference_closest(p, *tri[k]) for p in pts[k]])
        np.testing.assert_allclose(d[k], np.linalg.norm(pts[k] - ref, axis=-1), atol=1e-7, rtol=1e-7)


def test_closest_point_numpy_equals_jax_and_passes_jit_vmap_grad():
    rng = np.random.default_rng(1)
    tri = rng.normal(size=(30, 3, 3)).astype(np.float32)
    p = rng.normal(size=(30, 3)).astype(np.float32) * 2
    q_np = closest_point_on_triangle(p, tri[:, 0], tri[:, 1], tri[:, 2], xp=np)
    f = jax.jit(jax.vmap(lambda p, t: closest_point_on_triangle(p, t[0], t[1], t[2])))
    np.testing.assert_allclose(np.asarray(f(p, tri)), q_np, atol=1e-5)

    def dist(p, t):
        q = closest_point_on_triangle(p, t[0], t[1], t[2])
        return jnp.sqrt(jnp.sum((p - q) ** 2))
    g = jax.jit(jax.vmap(jax.grad(dist)))(jnp.asarray(p, jnp.float32), tri)
    assert np.all(np.isfinite(np.asarray(g)))
    # finite differences in float64 numpy on the same function
    eps = 1e-5
    for k in range(10):
        num = []
        for ax in range(3):
            e = np.zeros(3)
            e[ax] = eps
            hi = np.linalg.norm(p[k] + e - closest_point_on_triangle(p[k] + e, *tri[k].astype(float), xp=np))
            lo = np.linalg.norm(p[k] - e - closest_point_on_triangle(p[k] - e, *tri[k].astype(float), xp=np))
            num.append((hi - lo) / (2 * eps))
        np.testing.assert_allclose(np.asarray(g[k]), num, atol=2e-3)


@pytest.mark.parametrize("seed", [0, 1])
def test_accelerated_search_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    v, f = icosphere(2, 80.0)
    v = v + rng.normal(scale=2.0, size=v.shape)
    soup = np.concatenate([v[f], random_triangles(rng, 20) * 30])  # varied sizes, degenerate ones
    pts = np.concatenate([rng.normal(scale=60, size=(400, 3)), rng.normal(scale=300, size=(50, 3)),
                          v[:30] + 1e-3])
    d, q = point_to_triangle_distance(pts, soup, chunk=128)
    d_ref, q_ref = brute_force_point_to_triangle_distance(pts, soup, xp=np)
    np.testing.assert_allclose(d, d_ref, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(pts - q, axis=1), d_ref, rtol=1e-12, atol=1e-9)


def test_point_to_triangle_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"triangles: expected \[M, 3, 3\]"):
        point_to_triangle_distance(np.zeros((2, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"points: expected \[N, 3\]"):
        point_to_triangle_distance(np.zeros((2, 2)), np.zeros((1, 3, 3)))


def test_similarity_recovers_known_transform_from_7_points():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(7, 3)) * 0.05  # metres
    R = Rotation.from_rotvec([0.3, -1.2, 0.5]).as_matrix()
    s, t = 1013.7, np.array([4.0, -20.0, 300.0])
    dst = s * src @ R.T + t
    s_, R_, t_ = similarity_transform(src, dst)
    np.testing.assert_allclose(s_, s, rtol=1e-10)
    np.testing.assert_allclose(R_, R, atol=1e-10)
    np.testing.assert_allclose(t_, t, atol=1e-7)
    # the same in JAX under jit, and without scale
    s_j, R_j, t_j = jax.jit(similarity_transform)(jnp.asarray(src, jnp.float32), jnp.asarray(dst, jnp.float32))
    np.testing.assert_allclose(np.asarray(R_j), R, atol=1e-3)
    np.testing.assert_allclose(float(s_j), s, rtol=1e-3)
    batch = jnp.stack([jnp.asarray(dst, jnp.float32), jnp.asarray(2 * dst, jnp.float32)])
    s_b, _, _ = jax.vmap(similarity_transform, in_axes=(None, 0))(jnp.asarray(src, jnp.float32), batch)
    np.testing.assert_allclose(np.asarray(s_b), [s, 2 * s], rtol=1e-3)
    s1, R1, _ = similarity_transform(src, src @ R.T + t, with_scale=False)
    assert s1 == 1.0
    np.testing.assert_allclose(R1, R, atol=1e-10)


def test_similarity_excludes_reflection_unless_asked():
    rng = np.random.default_rng(3)
    src = rng.normal(size=(7, 3))
    mirrored = src * np.array([-1.0, 1, 1])
    _, R, _ = similarity_transform(src, mirrored)
    assert np.linalg.det(R) == pytest.approx(1.0)
    s, Rr, t = similarity_transform(src, mirrored, allow_reflection=True)
    assert np.linalg.det(Rr) == pytest.approx(-1.0)
    np.testing.assert_allclose(s * src @ Rr.T + t, mirrored, atol=1e-10)


def test_similarity_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    src = rng.normal(size=(7, 3))
    dst = 2.0 * src @ Rotation.from_rotvec([0.1, 0.2, 0.3]).as_matrix().T + rng.normal(scale=0.1, size=(7, 3))

    def loss(dst, xp):
        s, R, t = similarity_transform(src if xp is np else jnp.asarray(src), dst)
        return ((s * src @ R.T + t - dst) ** 2).sum()
    with jax.enable_x64(True):
        g = np.asarray(jax.grad(lambda d: loss(d, jnp))(jnp.asarray(dst, jnp.float64)))
    eps = 1e-6
    num = np.zeros_like(dst)
    for i in range(7):
        for j in range(3):
            e = np.zeros_like(dst)
            e[i, j] = eps
            num[i, j] = (loss(dst + e, np) - loss(dst - e, np)) / (2 * eps)
    np.testing.assert_allclose(g, num, atol=1e-5)


def test_one_large_triangle_does_not_make_every_point_test_every_triangle(monkeypatch):
    """A mesh with one big triangle (a cap, a background quad) stays exact without the search
    degenerating to all pairs: count the (point, triangle) pairs given to Ericson's test."""
    from jaxdeca.evaluation import geometry
    rng = np.random.default_rng(5)
    v, f = icosphere(3, 80.0)  # 1280 triangles, bounding radii ~4
    big = np.array([[[-1000.0, -1000, -500], [1000, -1000, -500], [0, 1000, -500]]])
    soup = np.concatenate([v[f], big])
    dirs = rng.normal(size=(300, 3))
    pts = (80 + rng.uniform(-3, 3, size=(300, 1))) * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    pts[:5] = [[0, 0, -490], [10, 5, -510], [0, 0, -300], [300, 200, -450], [0, 0, -5000]]  # near the big one
    pairs = []
    real = geometry.closest_point_on_triangle

    def counting(p, a, b, c, xp=jnp):
        pairs.append(np.broadcast_shapes(np.shape(p), np.shape(a))[0])
        return real(p, a, b, c, xp=xp)
    monkeypatch.setattr(geometry, "closest_point_on_triangle", counting)
    d, _ = point_to_triangle_distance(pts, soup)
    monkeypatch.undo()
    d_ref, _ = brute_force_point_to_triangle_distance(pts, soup, xp=np)
    np.testing.assert_allclose(d, d_ref, rtol=1e-12, atol=1e-9)
    assert sum(pairs) < 40 * len(pts), sum(pairs)  # all pairs would be 300 * 1281


def test_non_finite_points_get_nan_and_leave_the_others_exact():
    """A raw scan with NaN (or inf) rows, e.g. holes a scanner exports as NaN: those rows have
    no distance (NaN), every other row is the brute-force minimum; scipy's KD-tree used to
    refuse the whole call ('x' must be finite)."""
    rng = np.random.default_rng(4)
    v, f = icosphere(1, 50.0)
    pts = rng.normal(scale=60, size=(40, 3))
    pts[3] = np.nan
    pts[7, 1] = np.inf
    d, q = point_to_triangle_distance(pts, v[f])
    bad = np.zeros(len(pts), bool)
    bad[[3, 7]] = True
    assert np.isnan(d[bad]).all() and np.isnan(q[bad]).all()
    d_ref, q_ref = brute_force_point_to_triangle_distance(pts[~bad], v[f], xp=np)
    np.testing.assert_allclose(d[~bad], d_ref, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(q[~bad], q_ref, rtol=1e-12, atol=1e-9)


def test_similarity_without_reflection_is_the_best_proper_rotation_on_a_mirrored_set():
    """On a mirrored point set the unconstrained optimum is a reflection; with it excluded, the
    fit equals a brute-force least-squares search over proper rotations (scipy). Only det R = +1
    was checked before: the scale without the sign vector, or the first axis flipped instead of
    the last, passed."""
    from scipy.optimize import minimize
    rng = np.random.default_rng(1)
    src = rng.normal(size=(7, 3)) * [3, 2, 1]
    dst = src * [1, 1, -1] * 1.3 + 0.01 * rng.normal(size=(7, 3))

    def resid(s, R, t):
        return float(((s * src @ R.T + t - dst) ** 2).sum())

    fits = [minimize(lambda p: resid(np.exp(p[0]), Rotation.from_rotvec(p[1:4]).as_matrix(), p[4:]),
                     np.r_[0, rng.normal(size=3), 0, 0, 0], method="BFGS", options=dict(gtol=1e-10)) for _ in range(10)]
    best = min(f.fun for f in fits)
    s, R, t = similarity_transform(src, dst)
    assert np.linalg.det(R) > 0
    np.testing.assert_allclose(resid(s, R, t), best, rtol=1e-5)
