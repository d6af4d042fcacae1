"""Rasterizer: hand-computed scenes, a brute-force numpy reference, chunk overflow,
finite-difference gradients (interior barycentrics and soft silhouette), jit/vmap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeca.render import barycentric, rasterize


def pix_to_img(p, size):
    """pixel coords [..., 2] -> image space for a square image of side size."""
    return p * 2.0 / size - 1.0


def brute_force(verts_img, faces, H, W):
    """Independent numpy z-buffer: every pixel centre against every face."""
    v = np.asarray(verts_img, np.float64)
    px = (v[:, 0] + 1) * W / 2
    py = (v[:, 1] + 1) * H / 2
    fidx = -np.ones((H, W), int)
    zb = np.full((H, W), np.inf)
    bary = np.zeros((H, W, 3))
    for i in range(H):
        for j in range(W):
            x, y = j + 0.5, i + 0.5
            for f, (a, b, c) in enumerate(faces):
                det = (py[b] - py[c]) * (px[a] - px[c]) + (px[c] - px[b]) * (py[a] - py[c])
                if abs(det) < 1e-12:
                    continue
                l0 = ((py[b] - py[c]) * (x - px[c]) + (px[c] - px[b]) * (y - py[c])) / det
                l1 = ((py[c] - py[a]) * (x - px[c]) + (px[a] - px[c]) * (y - py[c])) / det
                l2 = 1 - l0 - l1
                if min(l0, l1, l2) < 0:
                    continue
                z = l0 * v[a, 2] + l1 * v[b, 2] + l2 * v[c, 2]
                if z < zb[i, j]:
                    zb[i, j], fidx[i, j], bary[i, j] = z, f, (l0, l1, l2)
    return fidx, bary, np.where(fidx >= 0, zb, 0.0)


def test_single_triangle_hand_computed():
    # Right triangle with legs along the top and left image edges, 8 px images:
    # pixel (row i, col j) centre (j+.5, i+.5) is inside iff j + i + 1 < 7.5.
    size = 8
    p = np.array([[0.0, 0.0], [7.5, 0.0], [0.0, 7.5]])
    v = np.concatenate([pix_to_img(p, size), np.full((3, 1), 2.0)], 1)[None].astype(np.float32)
    fr = rasterize(jnp.asarray(v), np.array([[0, 1, 2]]), (size, size), sigma=0.0)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    expected = (i + j + 1 < 7.5)
    np.testing.assert_array_equal(np.asarray(fr.face_index[0]) == 0, expected)
    # pixel (row 1, col 2): centre (2.5, 1.5) -> bary (1 - 4/7.5, 2.5/7.5, 1.5/7.5)
    np.testing.assert_allclose(fr.bary[0, 1, 2], [1 - 4 / 7.5, 2.5 / 7.5, 1.5 / 7.5], atol=1e-5)
    np.testing.assert_allclose(fr.depth[0][expected], 2.0, atol=1e-5)
    assert float(fr.depth[0, 7, 7]) == 0.0 and int(fr.face_index[0, 7, 7]) == -1


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_overlap_nearest_wins_any_order_and_winding(order):
    size = 12
    near = np.array([[1, 1, 0.5], [11, 1, 0.5], [1, 11, 0.5]], np.float32)  # CCW in pixels
    far = np.array([[0, 0, 3.0], [0, 12, 3.0], [12, 12, 3.0]], np.float32)   # other winding
    tris = [near, far]
    v = np.concatenate([tris[order[0]], tris[order[1]]])
    v[:, :2] = pix_to_img(v[:, :2], size)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    fr = rasterize(jnp.asarray(v[None]), faces, (size, size), sigma=0.0)
    ref_f, ref_b, ref_z = brute_force(v, faces, size, size)
    np.testing.assert_array_equal(fr.face_index[0], ref_f)
    np.testing.assert_allclose(fr.bary[0], ref_b, atol=1e-5)
    np.testing.assert_allclose(fr.depth[0], ref_z, atol=1e-5)
    near_id = order.index(0)
    assert int(fr.face_index[0, 2, 2]) == near_id  # covered by both: the near one wins


def random_scene(rng, n_faces, spread=1.3):
    v = rng.uniform(-spread, spread, (n_faces * 3, 3)).astype(np.float32)
    v[:, 2] = rng.uniform(1, 5, n_faces * 3)
    return v, np.arange(n_faces * 3).reshape(n_faces, 3)


@pytest.mark.parametrize("capacity,tile", [(2, 4), (32, 8)])
def test_random_scene_matches_brute_force_any_capacity(capacity, tile):
    # Large, overlapping, partly off-screen triangles: the per-tile lists overflow the
    # capacity many times over with capacity=2, and a 13x11 image is not a tile multiple.
    rng = np.random.default_rng(0)
    v, faces = random_scene(rng, 12)
    H, W = 13, 11
    fr = rasterize(jnp.asarray(v[None]), faces, (H, W), sigma=0.0, window=tile, slots=capacity)
    ref_f, ref_b, ref_z = brute_force(v, faces, H, W)
    np.testing.assert_array_equal(fr.face_index[0], ref_f)
    np.testing.assert_allclose(fr.bary[0], ref_b, atol=1e-4)
    np.testing.assert_allclose(fr.depth[0], ref_z, atol=1e-4)


def test_soft_alpha_limits():
    rng = np.random.default_rng(1)
    v, faces = random_scene(rng, 6, spread=0.8)
    fr_small = rasterize(jnp.asarray(v[None]), faces, (16, 16), sigma=1e-8)
    hard = np.asarray(fr_small.mask[0])
    # sigma -> 0 recovers the hard mask (a pixel centre within ~1e-4 px of an edge may differ)
    assert (np.abs(np.asarray(fr_small.alpha[0]) - hard) > 1e-3).sum() <= 1
    fr = rasterize(jnp.asarray(v[None]), faces, (16, 16), sigma=2.0)
    a = np.asarray(fr.alpha[0])
    assert (a >= 0).all() and (a <= 1).all()
    assert a[hard == 0].max() > 0.05  # blur reaches outside the silhouette


def _fd_check(loss, v, idx, eps=2e-3, rtol=0.05, atol=None):
    g = np.asarray(jax.jit(jax.grad(loss))(v))
    loss = jax.jit(loss)
    for (a, b) in idx:
        e = np.zeros_like(np.asarray(v))
        e[0, a, b] = eps
        fd = (float(loss(v + e)) - float(loss(v - e))) / (2 * eps)
        tol = atol if atol is not None else rtol * max(abs(fd), 1e-2)
        assert abs(g[0, a, b] - fd) <= tol, (a, b, g[0, a, b], fd)


def test_interior_gradient_through_barycentrics():
    size = 16
    p = np.array([[2.3, 2.1, 1.0], [13.7, 3.4, 2.0], [4.2, 12.9, 3.0]], np.float32)
    p[:, :2] = pix_to_img(p[:, :2], size)
    v = jnp.asarray(p[None])
    faces = np.array([[0, 1, 2]])
    w = jnp.asarray(np.random.default_rng(2).uniform(size=(size, size)), jnp.float32)
    attr = jnp.array([[[1.0], [-2.0], [0.5]]])

    def loss(v):
        fr = rasterize(v, faces, (size, size), sigma=0.0)
        col = jnp.sum(fr.bary * attr[0, :, 0], -1)  # interpolated attribute
        return jnp.sum(w * (col + fr.depth) * fr.mask[0])

    # eps small enough that no pixel changes coverage: the loss is smooth there
    _fd_check(loss, v, [(0, 0), (0, 1), (1, 0), (2, 1), (1, 2)], eps=1e-3, rtol=0.02)


def test_barycentric_and_depth_gradients_equal_autodiff_of_the_plain_formula():
    """The rasterizer's hand-written VJP of barycentrics and depth against jax.grad of the
    plain formula (`barycentric` at the pixel centres of the same winning faces), on a batch
    of two meshes whose faces share vertices (the per-pixel gradients add up per vertex),
    under jit and vmap."""
    from jaxdeca.render.meshes import uv_sphere
    m = uv_sphere(8, 16)
    rng = np.random.default_rng(7)
    v0 = np.asarray(m["verts"]) * 0.7 + np.array([0.0, 0.0, 3.0])
    v = jnp.asarray(np.stack([v0, v0 * 0.9 + rng.normal(0, 0.02, v0.shape)]), jnp.float32)
    faces = np.asarray(m["faces"])
    H, W = 24, 20
    wb = jnp.asarray(rng.normal(size=(2, H, W, 3)), jnp.float32)
    wd = jnp.asarray(rng.normal(size=(2, H, W)), jnp.float32)
    fidx = rasterize(v, faces, (H, W), sigma=0.0).face_index
    assert (np.asarray(fidx) >= 0).sum() > 300

    def loss(v):
        fr = rasterize(v, faces, (H, W), sigma=0.0)
        return jnp.sum(wb * fr.bary) + jnp.sum(wd * fr.depth)

    def plain(v):
        px = jnp.stack([(v[..., 0] + 1) * W / 2, (v[..., 1] + 1) * H / 2], -1)
        ys, xs = jnp.meshgrid(jnp.arange(H) + 0.5, jnp.arange(W) + 0.5, indexing="ij")
        p = jnp.stack([xs, ys], -1)
        hit = fidx >= 0
        vid = jnp.asarray(faces)[jnp.maximum(fidx, 0)]  # [B, H, W, 3]
        c = [jax.vmap(lambda t, i: t[i])(px, vid[..., k]) for k in range(3)]
        z = [jax.vmap(lambda t, i: t[i])(v[..., 2], vid[..., k]) for k in range(3)]
        b, _ = barycentric(p, *c)
        b = jnp.where(hit[..., None], b, 0.0)
        depth = b[..., 0] * z[0] + b[..., 1] * z[1] + b[..., 2] * z[2]
        return jnp.sum(wb * b) + jnp.sum(wd * depth)

    np.testing.assert_allclose(loss(v), plain(v), rtol=1e-5)
    want = np.asarray(jax.grad(plain)(v))
    assert np.abs(want).max() > 1.0
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(v), want, rtol=1e-4, atol=1e-3)
    per_image = jax.vmap(jax.grad(lambda x, i: jnp.sum(wb[i] * rasterize(x[None], faces, (H, W), sigma=0.0).bary[0])
                                  + jnp.sum(wd[i] * rasterize(x[None], faces, (H, W), sigma=0.0).depth[0])))
    np.testing.assert_allclose(per_image(v, jnp.arange(2)), want, rtol=1e-4, atol=1e-3)


def test_edge_gradient_through_soft_coverage():
    size = 16
    p = np.array([[3.0, 3.0, 1.0], [12.0, 4.0, 1.0], [5.0, 12.0, 1.0]], np.float32)
    p[:, :2] = pix_to_img(p[:, :2], size)
    v = jnp.asarray(p[None])
    faces = np.array([[0, 1, 2]])
    target = jnp.zeros((size, size)).at[2:14, 2:14].set(1.0)

    def loss(v):
        a = rasterize(v, faces, (size, size), sigma=1.0).alpha[0]
        return jnp.sum((a - target) ** 2)

    g = np.asarray(jax.grad(loss)(v))
    assert np.abs(g[0, :, :2]).max() > 1.0  # silhouette edges receive gradient
    _fd_check(loss, v, [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)], eps=1e-3, rtol=0.03)


def test_jit_vmap_grad():
    rng = np.random.default_rng(3)
    v, faces = random_scene(rng, 5, spread=0.9)
    vb = jnp.stack([jnp.asarray(v), jnp.asarray(v) * 0.9])
    f = jax.jit(lambda v: rasterize(v, faces, (12, 12), sigma=0.5))
    fr = f(vb)
    fv = jax.vmap(lambda x: rasterize(x[None], faces, (12, 12), sigma=0.5))(vb)
    np.testing.assert_array_equal(fr.face_index, fv.face_index[:, 0])
    np.testing.assert_allclose(fr.alpha, fv.alpha[:, 0], atol=1e-6)
    g = jax.jit(jax.grad(lambda v: jnp.sum(rasterize(v, faces, (12, 12), sigma=0.5).alpha)))(vb)
    assert g.shape == vb.shape and np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("sigma,perspective", [(0.0, False), (0.5, False), (0.5, True)])
def test_an_empty_batch_is_empty_and_a_mesh_with_no_faces_is_background(sigma, perspective):
    """B = 0 gives fragments [0, H, W] and a gradient [0, V, 3], as the renderer's other
    functions do with an empty batch; F = 0 (e.g. a face selection that came out empty) gives
    background at every pixel, and the interpolation of it 0."""
    from jaxdeca.render import interpolate
    rng = np.random.default_rng(5)
    v, faces = random_scene(rng, 4, spread=0.9)
    no_faces = np.zeros((0, 3), np.int32)

    def run(x, f):
        return rasterize(x, f, (6, 7), sigma=sigma, perspective=perspective)

    def loss(x, f):
        fr = run(x, f)
        return jnp.sum(fr.alpha) + jnp.sum(fr.depth) + jnp.sum(fr.bary)

    empty = jnp.zeros((0,) + v.shape, jnp.float32)
    fr = run(empty, faces)
    assert [x.shape for x in jax.tree.leaves(fr)] == [(0, 6, 7), (0, 6, 7, 3), (0, 6, 7), (0, 6, 7), (0, 6, 7)]
    assert jax.jit(jax.grad(lambda x: loss(x, faces)))(empty).shape == (0,) + v.shape
    two = jnp.stack([jnp.asarray(v), jnp.asarray(v) * 0.8])
    fr = run(two, no_faces)
    np.testing.assert_array_equal(np.asarray(fr.face_index), -1)
    for name in ("bary", "depth", "mask", "alpha"):
        x = np.asarray(getattr(fr, name))
        assert x.shape[:3] == (2, 6, 7) and x.dtype == np.float32 and not x.any(), name
    np.testing.assert_array_equal(np.asarray(interpolate(two, no_faces, fr)), np.zeros((2, 6, 7, 3)))
    np.testing.assert_array_equal(np.asarray(jax.grad(loss)(two, no_faces)), 0.0)


def test_barycentric_reconstructs_point():
    rng = np.random.default_rng(4)
    tri = rng.normal(size=(3, 2))
    p = rng.normal(size=(2,))
    b, _ = barycentric(jnp.asarray(p), *(jnp.asarray(t) for t in tri))
    np.testing.assert_allclose(np.asarray(b) @ tri, p, atol=1e-5)
    np.testing.assert_allclose(np.asarray(b).sum(), 1.0, atol=1e-6)


@pytest.mark.parametrize("window", [3, 4, 8])
def test_faces_at_one_depth_go_to_the_lowest_index_whatever_the_window(window):
    """Ties go to the lowest face index, as a sequential z-test's would, and results do not
    depend on the window (4 px on CPU, 8 on accelerators). Depth summed from each window's
    origin was off by an ulp either way, so faces in one plane (UV maps: every face at z = 1)
    were ordered by rounding: 387 of 809 pixels here went to another face than the lowest."""
    rng = np.random.default_rng(7)
    v, faces = random_scene(rng, 40, spread=1.1)
    v[:, 2] = 1.0
    fr = rasterize(jnp.asarray(v[None]), faces, (32, 32), sigma=0.0, window=window)
    # the lowest face covering each pixel centre (brute_force's float64 depths tie by rounding too)
    p = (v[:, :2].astype(np.float64) + 1) * 16
    ys, xs = np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5, indexing="ij")
    want = -np.ones((32, 32), int)
    for f in range(len(faces) - 1, -1, -1):
        a, b, c = p[faces[f]]
        d = (b[1] - c[1]) * (a[0] - c[0]) + (c[0] - b[0]) * (a[1] - c[1])
        l0 = ((b[1] - c[1]) * (xs - c[0]) + (c[0] - b[0]) * (ys - c[1])) / d
        l1 = ((c[1] - a[1]) * (xs - c[0]) + (a[0] - c[0]) * (ys - c[1])) / d
        want[(l0 >= 0) & (l1 >= 0) & (1 - l0 - l1 >= 0)] = f
    np.testing.assert_array_equal(fr.face_index[0], want)


@pytest.mark.parametrize("bad_first", [True, False])
def test_a_face_with_a_non_finite_vertex_puts_no_nan_into_the_gradients(bad_first):
    """A face with a non-finite vertex (behind a perspective camera, say) is skipped, and the
    gradients of the others are as without it. They were NaN on the vertices it shares with
    them: through the soft pass when it was the last face (the last round's unused slots
    repeat it with zero weight, and 0 x inf is NaN), through the barycentrics and depth when it
    was face 0 (background pixels read its corners)."""
    v = jnp.asarray([[[-0.5, -0.5, 1.0], [0.5, -0.4, 1.0], [0.0, 0.6, 1.0], [np.inf, 0.0, 1.0]]], jnp.float32)
    good, bad = [0, 1, 2], [1, 3, 2]  # the bad face shares vertices 1 and 2
    faces = np.array([bad, good] if bad_first else [good, bad])
    for sigma, out in ((1.0, "alpha"), (0.0, "depth"), (0.0, "bary")):
        def loss(x, f):
            return jnp.sum(getattr(rasterize(x, f, (16, 16), sigma=sigma), out))
        g = np.asarray(jax.grad(loss)(v, faces))[0, :3]
        want = np.asarray(jax.grad(loss)(v, np.array([good])))[0, :3]
        assert np.all(np.isfinite(g)), (out, g)
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5, err_msg=out)


def test_half_precision_vertices_are_rasterized_in_float32():
    """bfloat16 vertices were rasterized in bfloat16 (8 significant bits: at 224 px a pixel
    position to within 1 px): 3051 of 25148 covered pixels took another face than the same
    vertices in float32, barycentrics were off by up to 2.3. They are promoted."""
    from jaxdeca.render.meshes import uv_sphere
    m = uv_sphere(24, 48)
    v = np.asarray(m["verts"]) * 0.8 + np.array([0.0, 0.0, 3.0])
    vb = jnp.asarray(v[None], jnp.bfloat16)
    got = rasterize(vb, m["faces"], (224, 224), sigma=1.0)
    want = rasterize(vb.astype(jnp.float32), m["faces"], (224, 224), sigma=1.0)
    assert got.alpha.dtype == got.bary.dtype == got.depth.dtype == jnp.float32
    for name in ("face_index", "bary", "depth", "alpha"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


def test_a_traced_sigma_is_one_clear_type_error():
    """sigma sets the soft windows' size, so it must be static under jit: a traced one is a
    TypeError that says so, not JAX's ConcretizationTypeError from deep inside."""
    v, faces = random_scene(np.random.default_rng(0), 2)
    with pytest.raises(TypeError, match="sigma must be a Python number.*static"):
        jax.jit(lambda v, s: rasterize(v, faces, (8, 8), sigma=s).alpha)(jnp.asarray(v[None]), 1.0)
    jax.jit(lambda v, s: rasterize(v, faces, (8, 8), sigma=s).alpha, static_argnums=1)(jnp.asarray(v[None]), 1.0)
    # inf was an OverflowError from the window size; a subnormal sigma gave NaN gradients (1 / sigma = inf)
    for bad in (float("inf"), float("nan"), -1.0, 1e-40):
        with pytest.raises(ValueError, match="rasterize needs sigma = 0 or a finite sigma >= 1.18e-38"):
            rasterize(jnp.asarray(v[None]), faces, (8, 8), sigma=bad)
    fr = rasterize(jnp.asarray(v[None]), faces, (8, 8), sigma=2.0 ** -126)  # the smallest allowed: hard, finite
    np.testing.assert_array_equal(fr.alpha, fr.mask)
    g = jax.grad(lambda v: rasterize(v, faces, (8, 8), sigma=2.0 ** -126).alpha.sum())(jnp.asarray(v[None]))
    assert np.all(np.isfinite(g))


def _wall_and_hidden_triangle(f=40.0, size=64):
    """Camera-space vertices: a wall receding from distance 1 to 20, and a small triangle facing
    the camera 10% behind the wall along the ray through pixel (row 44, column 32)."""
    A, B, C = np.array([-2.0, -1.0, -1.0]), np.array([2.0, -1.0, -1.0]), np.array([0.0, 3.0, -20.0])
    ray = np.array([(32.5 - size / 2) / f, -(44.5 - size / 2) / f, -1.0])
    n = np.cross(B - A, C - A)
    hit = ray * (n @ A) / (n @ ray)
    q, s = hit * 1.1, 0.08 * -hit[2]
    return np.array([A, B, C, q + [-s, -s, 0], q + [s, -s, 0], q + [0, s, 0]]), np.array([[0, 1, 2], [3, 4, 5]])


def test_perspective_depth_test_and_barycentrics_are_those_of_a_ray_cast():
    """Under perspective_proj the z-buffer interpolated the view distance linearly on screen:
    a triangle behind a receding wall showed through it (12 of its 13 pixels), the wall's depth
    was 451% off and its barycentrics were those of another point. A float64 ray cast is the
    reference."""
    from jaxdeca.render import perspective_proj
    f, size = 40.0, 64
    verts, faces = _wall_and_hidden_triangle(f, size)
    v_img = perspective_proj(jnp.asarray(verts[None], jnp.float32), jnp.array([f]),
                             jnp.array([[size / 2, size / 2]]), (size, size))
    fr = rasterize(v_img, faces, (size, size), sigma=0.0, perspective=True)
    ys, xs = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    rays = np.stack([(xs - size / 2) / f, -(ys - size / 2) / f, -np.ones_like(xs)], -1)
    nearest = np.full((size, size), np.inf)
    want_face, want_bary = -np.ones((size, size), int), np.zeros((size, size, 3))
    for k, tri in enumerate(verts[faces]):  # Moeller-Trumbore per pixel ray
        e1, e2 = tri[1] - tri[0], tri[2] - tri[0]
        p = np.cross(rays, e2)
        det = p @ e1
        t_vec = -tri[0]
        u = np.einsum("hwc,c->hw", p, t_vec) / det
        qv = np.cross(t_vec, e1)
        v = (qv @ rays.reshape(-1, 3).T).reshape(size, size) / det
        t = (qv @ e2) / det
        inside = (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        better = inside & (t < nearest)
        nearest[better] = t[better]
        want_face[better] = k
        want_bary[better] = np.stack([1 - u - v, u, v], -1)[better]
    got_face = np.asarray(fr.face_index[0])
    assert want_face[44, 32] == 0 and (want_face == 1).sum() <= 1  # the triangle is hidden (but a pixel)
    np.testing.assert_array_equal(got_face, want_face)
    both = want_face >= 0  # the rays' view-axis component is -1: t is the view distance
    np.testing.assert_allclose(np.asarray(fr.depth[0])[both], nearest[both], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(fr.bary[0])[both], want_bary[both], atol=1e-4)


def test_perspective_gradients_match_finite_differences():
    """bary and depth of the perspective rasterizer differentiate to the camera-space vertices
    through the 1 / d correction (autodiff) and the rasterizer's own VJP."""
    from jaxdeca.render import perspective_proj
    size, f = 16, 14.0
    cam = np.array([[-0.6, -0.5, -1.5], [0.7, -0.4, -3.0], [-0.1, 0.6, -2.2]], np.float32)
    faces = np.array([[0, 1, 2]])
    attr = jnp.array([1.0, -2.0, 0.5])
    project = jax.jit(lambda v: perspective_proj(v, jnp.array([f]), jnp.array([[size / 2, size / 2]]), (size, size)))
    # weights 0 at pixels within 0.5 px of an edge: eps moves the edges, and no weighted pixel
    # may change coverage (the loss is smooth only there)
    corners = (np.asarray(project(jnp.asarray(cam[None])))[0, :, :2] + 1) * size / 2
    ys, xs = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    near = np.zeros((size, size), bool)
    for a, b in ((0, 1), (1, 2), (2, 0)):
        e = corners[b] - corners[a]
        near |= np.abs(e[0] * (ys - corners[a][1]) - e[1] * (xs - corners[a][0])) / np.linalg.norm(e) < 0.5
    w = jnp.asarray(np.random.default_rng(3).uniform(size=(size, size)) * ~near, jnp.float32)

    def loss(v):
        fr = rasterize(project(v), faces, (size, size), sigma=0.0, perspective=True)
        return jnp.sum(w * (jnp.sum(fr.bary * attr, -1) + fr.depth) * fr.mask[0])

    _fd_check(loss, jnp.asarray(cam[None]), [(0, 0), (0, 2), (1, 1), (1, 2), (2, 0), (2, 2)], eps=1e-3, rtol=0.03)
