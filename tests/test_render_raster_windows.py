"""Face-window rasterizer: large / off-screen / multi-window triangles, round overflow,
soft coverage against a brute-force SoftRas reference, the hand-written soft VJP against
autodiff and finite differences, degenerate faces, images rasterized together on one canvas,
and the memory of a batch-32 call."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeca.render import rasterize
from test_render_rasterize import _fd_check, brute_force, pix_to_img

R = importlib.import_module("jaxdeca.render.rasterize")


def _cross(a, b):
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def softras_reference(verts_img, faces, H, W, sigma):
    """numpy SoftRas alpha: 1 - prod_j (1 - sigmoid(+-d_j^2 / sigma)) over non-degenerate
    faces within d^2 < 16 sigma (or containing the pixel centre)."""
    v = np.asarray(verts_img, np.float64)
    p2 = np.stack([(v[:, 0] + 1) * W / 2, (v[:, 1] + 1) * H / 2], -1)
    ys, xs = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    p = np.stack([xs, ys], -1).reshape(-1, 2)
    logt = np.zeros(len(p))
    for a, b, c in faces:
        t = p2[[a, b, c]]
        area = _cross(t[1] - t[0], t[2] - t[0])
        if abs(area) <= 1e-6 * max(np.sum((t - np.roll(t, -1, 0)) ** 2, -1)):
            continue
        d2 = np.full(len(p), np.inf)
        inside = np.ones(len(p), bool)
        for k in range(3):
            s, e = t[k], t[(k + 1) % 3]
            ab = e - s
            tt = np.clip(((p - s) @ ab) / (ab @ ab), 0, 1)
            d2 = np.minimum(d2, np.sum((p - s - tt[:, None] * ab) ** 2, -1))
            inside &= np.sign(area) * _cross(ab, p - s) >= 0
        x = np.where(inside, d2, -d2) / sigma
        use = inside | (d2 < 16 * sigma)
        logt += np.where(use, -np.logaddexp(0, x), 0.0)
    return (1 - np.exp(logt)).reshape(H, W)


def big_scene():
    """A triangle much larger than the image (clipped, many windows), a mid-size one in
    front of it, a sliver, a degenerate face (two equal corners) and small faces behind."""
    rng = np.random.default_rng(5)
    tris = [
        [[-3.0, -2.5, 4.0], [3.5, -1.0, 4.0], [0.2, 3.0, 4.5]],   # covers the whole image
        [[-0.7, -0.6, 2.0], [0.8, -0.4, 1.0], [0.1, 0.9, 3.0]],   # in front, ~10 px windows
        [[-0.9, 0.5, 1.5], [0.9, 0.52, 1.5], [0.0, 0.51, 1.5]],   # sliver
        [[0.3, 0.3, 1.0], [0.5, 0.6, 1.0], [0.5, 0.6, 1.0]],      # degenerate
    ]
    for _ in range(6):  # small faces, some behind the big one
        c = rng.uniform(-0.8, 0.8, 2)
        t = np.concatenate([c + rng.uniform(-0.15, 0.15, (3, 2)), rng.uniform(3.0, 5.0, (3, 1))], 1)
        tris.append(t.tolist())
    v = np.asarray(tris, np.float32).reshape(-1, 3)
    return v, np.arange(len(v)).reshape(-1, 3)


@pytest.mark.parametrize("kw", [{}, dict(window=8), dict(window=4, slots=3), dict(window=5, soft_window=7, slots=1)])
def test_big_offscreen_and_hidden_faces_match_brute_force(kw):
    v, faces = big_scene()
    H, W = 20, 17
    fr = rasterize(jnp.asarray(v[None]), faces, (H, W), sigma=0.0, **kw)
    ref_f, ref_b, ref_z = brute_force(v, faces, H, W)
    assert (ref_f == 0).sum() > 100 and (ref_f == 1).sum() > 20  # big face mostly behind face 1
    np.testing.assert_array_equal(fr.face_index[0], ref_f)
    np.testing.assert_allclose(fr.bary[0], ref_b, atol=1e-4)
    np.testing.assert_allclose(fr.depth[0], ref_z, atol=1e-4)


@pytest.mark.parametrize("kw", [{}, dict(soft_window=8, slots=2)])
def test_soft_alpha_equals_softras_reference(kw):
    v, faces = big_scene()
    v = v[3:]  # drop the image-covering face so the silhouette is inside the image
    faces = faces[:-1]
    H, W = 18, 16
    for sigma in (0.5, 2.0):
        fr = rasterize(jnp.asarray(v[None]), faces, (H, W), sigma=sigma, **kw)
        ref = softras_reference(v, faces, H, W, sigma)
        np.testing.assert_allclose(np.asarray(fr.alpha[0]), ref, atol=2e-5)
        assert ref.min() < 0.01 and ref.max() > 0.9


def test_soft_vjp_matches_autodiff():
    # hand-written per-window VJP of log(1 - D) vs jax.vjp of the forward factor's log, float64,
    # random windows
    with jax.enable_x64(True):
        rng = np.random.default_rng(6)
        M, S = 7, 8
        fv = jnp.asarray(rng.uniform(-2, 10, (M, 3, 2)))
        ox = jnp.asarray(rng.integers(0, 3, M), jnp.int32)
        oy = jnp.asarray(rng.integers(0, 3, M), jnp.int32)
        ok = jnp.asarray(rng.uniform(size=(M, S, S)) < 0.9)
        g = jnp.asarray(rng.normal(size=(M, S, S)))
        _, vjp = jax.vjp(lambda f: jnp.log(R._soft_factor(f, ox, oy, ok, 1.5)), fv)
        np.testing.assert_allclose(R._soft_term_vjp(fv, ox, oy, ok, 1.5, g), vjp(g)[0], rtol=1e-9, atol=1e-9)


def test_soft_alpha_saturates_under_many_stacked_faces():
    # 40 copies of one triangle: the product of their 1 - D underflows to 0 well inside it, where
    # alpha must be exactly 1 with finite gradients, and near the edge it equals 1 - (1 - D)^40
    size = 24
    p = np.array([[2.0, 2.0, 1.0], [22.0, 3.0, 1.0], [4.0, 21.0, 1.0]], np.float32)
    p[:, :2] = pix_to_img(p[:, :2], size)
    v = jnp.asarray(np.tile(p, (40, 1))[None])
    faces = np.arange(120).reshape(40, 3)
    alpha = lambda v: rasterize(v, faces, (size, size), sigma=1.0).alpha[0]
    a = np.asarray(alpha(v))
    assert a[8, 8] == 1.0 and a[23, 23] == 0.0
    one = np.asarray(rasterize(v[:, :3], faces[:1], (size, size), sigma=1.0).alpha[0])
    np.testing.assert_allclose(a, 1.0 - (1.0 - one) ** 40, atol=1e-5)
    g = np.asarray(jax.grad(lambda v: jnp.sum(alpha(v) * jnp.arange(size * size, dtype=jnp.float32).reshape(size, size)))(v))
    assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_big_triangle_edge_gradient_finite_differences():
    # a triangle spanning several soft windows and rounds (slots=2): silhouette gradients
    size = 24
    p = np.array([[1.5, 2.0, 1.0], [22.0, 5.0, 1.0], [6.0, 21.5, 1.0]], np.float32)
    p[:, :2] = pix_to_img(p[:, :2], size)
    v = jnp.asarray(p[None])
    faces = np.array([[0, 1, 2]])
    target = jnp.zeros((size, size)).at[3:20, 3:20].set(1.0)

    def loss(v):
        a = rasterize(v, faces, (size, size), sigma=1.0, soft_window=8, slots=2).alpha[0]
        return jnp.sum((a - target) ** 2)

    g = np.asarray(jax.grad(loss)(v))
    assert np.abs(g[0, :, :2]).max() > 1.0
    _fd_check(loss, v, [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)], eps=1e-3, rtol=0.03)


def four_scenes():
    """big_scene and three other placements of its faces: mirrored, stretched past the bottom
    and right edges (windows reach into the canvas padding), and shifted mostly off-screen."""
    v, faces = big_scene()
    vs = np.stack([v, v * [-0.8, -0.9, 1.0] + [0.1, 0.0, 0.0], v * [1.2, 1.4, 1.0] + [0.4, 0.5, 0.0],
                   v + [-0.9, 0.7, 0.0]]).astype(np.float32)
    return vs, faces


@pytest.mark.parametrize("batch_size", [2, 3])
def test_images_rasterized_together_equal_one_at_a_time(batch_size):
    # batch_size 2: two canvases of two (lax.map); 3: a canvas of three, then one of one.
    # No image's faces reach another's pixels; fragments and gradients are those of one image
    # at a time, whose face indices match the brute-force reference.
    vs, faces = four_scenes()
    H, W = 20, 17
    w = jnp.asarray(np.random.default_rng(7).normal(size=(4, H, W)), jnp.float32)

    def frags(v, bs):
        return rasterize(v, faces, (H, W), sigma=1.0, batch_size=bs, window=4, slots=5)

    def loss(v, bs):
        fr = frags(v, bs)
        return jnp.sum(w * (fr.alpha + fr.depth + fr.bary @ jnp.array([1.0, 2.0, 3.0])))

    run, grad = jax.jit(frags, static_argnums=1), jax.jit(jax.grad(loss), static_argnums=1)
    one, together = run(jnp.asarray(vs), 1), run(jnp.asarray(vs), batch_size)
    for b in range(4):
        np.testing.assert_array_equal(one.face_index[b], brute_force(vs[b], faces, H, W)[0])
    np.testing.assert_array_equal(together.face_index, one.face_index)
    for name in ("bary", "depth", "mask", "alpha"):
        np.testing.assert_allclose(getattr(together, name), getattr(one, name), atol=1e-6, err_msg=name)
    g1, g = (grad(jnp.asarray(vs), bs) for bs in (1, batch_size))
    assert np.abs(np.asarray(g1)).max() > 1.0
    np.testing.assert_allclose(g, g1, rtol=1e-5, atol=1e-4)


def test_degenerate_and_nonfinite_faces_are_ignored():
    v, faces = big_scene()
    v = np.concatenate([v, [[np.nan, 0.0, 1.0], [0.1, 0.1, 1.0], [0.2, -0.3, 1.0]]]).astype(np.float32)
    faces = np.concatenate([faces, [[len(v) - 3, len(v) - 2, len(v) - 1]]])
    fr = rasterize(jnp.asarray(v[None]), faces, (16, 16), sigma=1.0)
    assert not np.isin(np.asarray(fr.face_index), [3, len(faces) - 1]).any()
    assert np.isfinite(np.asarray(fr.alpha)).all()
    g = jax.grad(lambda x: rasterize(x, faces, (16, 16), sigma=1.0).alpha.sum())(jnp.asarray(v[None]))
    g = np.asarray(g)[0]
    assert np.isfinite(g[:-3]).all() and np.abs(g[9:12]).max() == 0.0  # degenerate face: no gradient


@pytest.mark.parametrize("accelerator_defaults", [False, True])
def test_batch32_224_10k_faces_memory_is_bounded(accelerator_defaults, monkeypatch):
    # compile only: XLA's own accounting of what a forward+backward call needs, with the CPU
    # defaults (one image at a time) and with the accelerators' (all 32 images on one canvas,
    # rounds of up to 2^24 pixels), compiled here for the CPU
    from jaxdeca.render.meshes import uv_sphere
    s = uv_sphere(50, 100, radius=0.9)
    faces = jnp.asarray(s["faces"])
    assert faces.shape[0] == 10000
    batch_size = None
    if accelerator_defaults:
        monkeypatch.setattr(R, "_CPU_ROUND_PIXELS", R._ACCELERATOR_ROUND_PIXELS)
        batch_size = 32

    def loss(v):
        return jnp.sum(rasterize(v, faces, (224, 224), sigma=1.0, batch_size=batch_size).alpha)

    x = jax.ShapeDtypeStruct((32,) + s["verts"].shape, jnp.float32)
    m = jax.jit(jax.grad(loss)).lower(x).compile().memory_analysis()
    if m is None:
        pytest.skip("backend without memory_analysis")
    total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
    print(f"accelerator_defaults={accelerator_defaults}: {total / 2**20:.0f} MiB")
    assert total < 2 * 2**30, total / 2**20


# ----------------------------------------------------------------------------- back-face culling

def _front(v, faces):
    """numpy: faces counter-clockwise as the viewer sees them (negative area, y down)."""
    t = np.asarray(v, np.float64)[np.asarray(faces)][..., :2]
    return _cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]) < 0


def test_cull_backfaces_equals_references_over_front_faces():
    # big_scene with the winding of some faces reversed: culled, the result is the brute-force
    # z-buffer and the SoftRas reference over the front faces alone, and a back face that wins
    # pixels without culling is skipped
    v, faces = big_scene()
    faces = faces.copy()
    faces[[1, 5, 7]] = faces[[1, 5, 7], ::-1]
    front = _front(v, faces)
    assert 0 < front.sum() < len(faces) - 1
    keep = np.flatnonzero(front)
    H, W = 20, 17
    full = rasterize(jnp.asarray(v[None]), faces, (H, W), sigma=0.0)
    assert np.isin(np.asarray(full.face_index), np.flatnonzero(~front)).sum() > 20
    for kw in ({}, dict(window=5, soft_window=8, slots=2)):
        fr = rasterize(jnp.asarray(v[None]), faces, (H, W), sigma=0.0, cull_backfaces=True, **kw)
        ref_f, ref_b, ref_z = brute_force(v, faces[keep], H, W)
        np.testing.assert_array_equal(fr.face_index[0], np.where(ref_f >= 0, keep[ref_f], -1))
        np.testing.assert_allclose(fr.bary[0], ref_b, atol=1e-4)
        np.testing.assert_allclose(fr.depth[0], ref_z, atol=1e-4)
        soft = rasterize(jnp.asarray(v[None]), faces, (H, W), sigma=1.0, cull_backfaces=True, **kw)
        np.testing.assert_allclose(soft.alpha[0], softras_reference(v, faces[keep], H, W, 1.0), atol=2e-5)


def test_cull_backfaces_closed_sphere_and_reversed_winding():
    # a closed mesh shows only front faces: culling changes neither which face wins nor the
    # barycentrics; with every winding reversed, culling shows the far half from the inside
    from jaxdeca.render.meshes import uv_sphere
    s = uv_sphere(10, 20, radius=0.8)
    v, faces = jnp.asarray(s["verts"][None] * [1.0, -1.0, -1.0]) + jnp.array([0.0, 0.0, 3.0]), s["faces"]
    full = rasterize(v, faces, (32, 32), sigma=1.0)
    cull = rasterize(v, faces, (32, 32), sigma=1.0, cull_backfaces=True)
    assert (np.asarray(full.face_index) >= 0).sum() > 400
    np.testing.assert_array_equal(cull.face_index, full.face_index)
    np.testing.assert_allclose(cull.bary, full.bary, atol=1e-6)
    a_full, a_cull = np.asarray(full.alpha), np.asarray(cull.alpha)
    assert (a_cull <= a_full + 1e-6).all() and a_cull.max() > 0.9  # fewer terms in the product
    back = rasterize(v, faces[:, ::-1], (32, 32), sigma=0.0, cull_backfaces=True)
    np.testing.assert_array_equal(back.mask, full.mask)  # the far half, seen from inside
    hit = np.asarray(full.mask[0]) > 0
    gap = np.asarray(back.depth[0])[hit] - np.asarray(full.depth[0])[hit]
    assert gap.min() > 0.0 and gap.mean() > 0.5


@pytest.mark.parametrize("camera", ["orth", "perspective"])
def test_flame_winding_is_front_facing_under_both_cameras(camera):
    # what `front_facing` promises: every face the demo head shows without culling is a front
    # face, under DECA's orthographic camera and under perspective_proj, so culling keeps the image
    from jaxdeca.flame.model import DEMO_HEAD
    from jaxdeca.render import front_facing, orth_proj, perspective_proj, to_pixels
    d = np.load(DEMO_HEAD)
    v = jnp.asarray(d["v_template"][None], jnp.float32)
    faces = jnp.asarray(d["faces"], jnp.int32)
    size = 64
    if camera == "orth":
        vi = orth_proj(v - v.mean(1, keepdims=True), jnp.array([[6.0, 0.0, 0.0]])).at[..., 2].add(10.0)
    else:  # the head 0.6 m in front of a pinhole camera, turned a little
        c, s_ = np.cos(0.4), np.sin(0.4)
        rot = jnp.array([[c, 0.0, s_], [0.0, 1.0, 0.0], [-s_, 0.0, c]], jnp.float32)
        vc = (v - v.mean(1, keepdims=True)) @ rot.T - jnp.array([0.0, 0.0, 0.6])
        vi = perspective_proj(vc, jnp.array([120.0]), jnp.array([[size / 2, size / 2]]), (size, size))
    full = rasterize(vi, faces, (size, size), sigma=0.0)
    seen = np.unique(np.asarray(full.face_index))[1:]
    assert len(seen) > 500
    front = np.asarray(front_facing(to_pixels(vi, (size, size))[0][faces][..., :2]))
    assert front[seen].all() and not front.all()
    cull = rasterize(vi, faces, (size, size), sigma=0.0, cull_backfaces=True)
    np.testing.assert_array_equal(cull.face_index, full.face_index)


def test_cull_backfaces_gradients_finite_differences():
    # a front triangle over a larger back-facing one: culled, the soft silhouette is the front
    # one's alone, its vertices' gradients match finite differences, the back face gets none
    size = 16
    p = np.array([[3.0, 3.0, 1.0], [5.0, 12.0, 1.0], [12.0, 4.0, 1.0],      # front (ccw on screen)
                  [1.0, 1.0, 2.0], [15.0, 2.0, 2.0], [2.0, 15.0, 2.0]], np.float32)  # back
    p[:, :2] = pix_to_img(p[:, :2], size)
    v = jnp.asarray(p[None])
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    assert list(_front(p, faces)) == [True, False]
    target = jnp.zeros((size, size)).at[2:14, 2:14].set(1.0)

    def loss(v):
        return jnp.sum((rasterize(v, faces, (size, size), sigma=1.0, cull_backfaces=True).alpha[0] - target) ** 2)

    g = np.asarray(jax.grad(loss)(v))
    assert np.abs(g[0, :3, :2]).max() > 1.0 and np.abs(g[0, 3:]).max() == 0.0
    _fd_check(loss, v, [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)], eps=1e-3, rtol=0.03)
