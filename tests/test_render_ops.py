"""Camera, grid_sample (torch parity), SH and directional shading, normals, UV maps, interpolation."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxdeca.render import (SH_CONSTANTS, dense_grid_faces, directional_shading, displacement_to_normals,
                            face_normals, grid_normals, grid_sample, orth_proj, perspective_proj, sh_basis, sh_shading,
                            to_pixels, uv_rasterize, vertex_normals, vertex_visibility, world2uv)


def test_orth_proj_hand_computed():
    v = jnp.array([[[0.1, 0.2, 0.3]]])
    cam = jnp.array([[2.0, 0.5, -0.1]])
    np.testing.assert_allclose(orth_proj(v, cam)[0, 0], [1.2, -0.2, -0.6], atol=1e-6)
    np.testing.assert_allclose(to_pixels(jnp.array([-1.0, 1.0, 7.0]), (10, 20)), [0.0, 10.0, 7.0])


def test_perspective_centre_and_scale():
    v = jnp.array([[[0.0, 0.0, -2.0], [1.0, 1.0, -2.0]]])
    out = perspective_proj(v, jnp.array([100.0]), jnp.array([[32.0, 32.0]]), (64, 64))
    np.testing.assert_allclose(out[0, 0], [0.0, 0.0, 2.0], atol=1e-6)
    # x -> 32 + 50 px (right), y up in camera -> 32 - 50 px (up in the image)
    np.testing.assert_allclose(to_pixels(out, (64, 64))[0, 1, :2], [82.0, -18.0], atol=1e-4)


def test_perspective_points_behind_the_camera_are_not_drawn():
    """A triangle behind the camera (z > 0) was projected mirrored with a negative depth, so the
    rasterizer drew it in front of the visible one: it won 36 of their 64 shared pixels."""
    from jaxdeca.render import rasterize
    tri = np.array([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.0]], np.float32)
    front = np.concatenate([tri, np.full((3, 1), -5.0, np.float32)], 1)
    behind = np.concatenate([tri * [1.0, -1.0], np.full((3, 1), 5.0, np.float32)], 1)  # lands on `front`
    straddle = np.array([[0.0, 0.0, -5.0], [0.1, 0.0, 2.0], [0.0, 0.1, -5.0]], np.float32)  # one vertex behind
    v = jnp.asarray(np.concatenate([front, behind, straddle])[None])
    faces = jnp.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]])

    @functools.partial(jax.jit, static_argnums=1)
    def image(v, sigma):
        out = perspective_proj(v, jnp.array([40.0]), jnp.array([[16.0, 16.0]]), (32, 32))
        return rasterize(out, faces[:v.shape[1] // 3], (32, 32), sigma=sigma)  # v[:, :3]: the front face alone

    out = perspective_proj(v, jnp.array([40.0]), jnp.array([[16.0, 16.0]]), (32, 32))
    assert np.isfinite(np.asarray(out[0, :3])).all() and np.isnan(np.asarray(out[0, 3:6])).all()
    assert np.isnan(np.asarray(out[0, 7])).all() and np.isfinite(np.asarray(out[0, [6, 8]])).all()
    fr = image(v, 1.0)
    assert set(np.unique(np.asarray(fr.face_index)).tolist()) == {-1, 0}
    np.testing.assert_array_equal(np.asarray(image(v[:, :3], 0.0).face_index), np.asarray(fr.face_index))
    np.testing.assert_allclose(np.asarray(fr.alpha), np.asarray(image(v[:, :3], 1.0).alpha), atol=1e-6)
    g = jax.grad(lambda v: jnp.sum(image(v, 1.0).alpha * image(v, 1.0).depth))(v)
    assert np.isfinite(np.asarray(g)).all() and np.all(np.asarray(g[0, 3:]) == 0)
    assert np.abs(np.asarray(g[0, :3])).sum() > 0


def test_grid_sample_matches_torch_including_out_of_range():
    """Values and gradients (image and grid, the custom VJP) against torch, for a batch of two
    (forward vmapped, backward looped over the images on CPU) and of one (no vmap); under jit
    too. tests/test_render_sharded.py covers the vmapped backward."""
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    grid = rng.uniform(-1.6, 1.6, size=(2, 9, 11, 2)).astype(np.float32)
    grid[0, 0, :4] = [[-1, -1], [1, 1], [-1.0 - 1 / 7, 0], [1.0, 1.0 + 1 / 5]]  # exact borders
    for n in (2, 1):
        i, g = img[:n], grid[:n]
        ref = torch.nn.functional.grid_sample(torch.from_numpy(i).permute(0, 3, 1, 2), torch.from_numpy(g),
                                              mode="bilinear", padding_mode="zeros", align_corners=False)
        for fn in (grid_sample, jax.jit(grid_sample)):
            np.testing.assert_allclose(fn(jnp.asarray(i), jnp.asarray(g)), ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)
        # gradients w.r.t. image and grid agree with torch autograd
        ti = torch.from_numpy(i).permute(0, 3, 1, 2).requires_grad_()
        tg = torch.from_numpy(g).requires_grad_()
        # a linear loss with random weights: the cotangent of sum(out^2) is 0 wherever out is (at
        # samples all of whose taps are outside), so it could not see the VJP's masking there
        w = rng.normal(size=(n, 9, 11, 3)).astype(np.float32)
        (torch.nn.functional.grid_sample(ti, tg, align_corners=False) * torch.from_numpy(w).permute(0, 3, 1, 2)).sum().backward()
        gi, gg = jax.jit(jax.grad(lambda i, g: jnp.sum(grid_sample(i, g) * w), argnums=(0, 1)))(jnp.asarray(i), jnp.asarray(g))
        np.testing.assert_allclose(gi, ti.grad.permute(0, 2, 3, 1).numpy(), atol=1e-4)
        inner = np.abs(g).max(-1) < 0.9  # torch's grid grad at exact integer taps is one-sided
        np.testing.assert_allclose(np.asarray(gg)[inner], tg.grad.numpy()[inner], atol=1e-3)
    # a non-finite coordinate samples zeros and passes no gradient
    bad = jnp.asarray(grid[:1]).at[0, 0, 0].set(jnp.nan)
    np.testing.assert_array_equal(grid_sample(jnp.asarray(img[:1]), bad)[0, 0, 0], 0.0)
    assert np.isfinite(np.asarray(jax.grad(lambda i: jnp.sum(grid_sample(i, bad) ** 2))(jnp.asarray(img[:1])))).all()


def test_grid_sample_image_gradient_matches_torch_under_a_masked_loss():
    """The image's gradient when the incoming gradient is zero at many samples (DECA's photometric
    loss masks the background, whose samples all lie at the UV centre): those samples are left
    out of the scatter-adds, and the gradient still equals torch's, which adds them. Samples with
    a zero gradient in some channels only are kept; a batch of two and of one."""
    rng = np.random.default_rng(3)
    img = rng.normal(size=(2, 6, 8, 3)).astype(np.float32)
    grid = rng.uniform(-1.2, 1.2, size=(2, 10, 12, 2)).astype(np.float32)
    background = rng.uniform(size=(2, 10, 12)) < 0.6
    background[0, 0, :3] = False
    grid[background] = 0.0  # the UV centre, as a render's background pixels
    w = rng.normal(size=(2, 10, 12, 3)).astype(np.float32)
    w[background] = 0.0
    w[0, 0, :3, 1:] = 0.0  # one channel of gradient left
    for n in (2, 1):
        ti = torch.from_numpy(img[:n]).permute(0, 3, 1, 2).requires_grad_()
        out = torch.nn.functional.grid_sample(ti, torch.from_numpy(grid[:n]), align_corners=False)
        (out * torch.from_numpy(w[:n]).permute(0, 3, 1, 2)).sum().backward()
        gi = jax.jit(jax.grad(lambda i: jnp.sum(grid_sample(i, jnp.asarray(grid[:n])) * w[:n])))(jnp.asarray(img[:n]))
        np.testing.assert_allclose(gi, ti.grad.permute(0, 2, 3, 1).numpy(), atol=1e-5)
        assert np.abs(np.asarray(gi)).sum() > 0


def test_sh_constants_and_closed_form():
    np.testing.assert_allclose(SH_CONSTANTS, [0.282095, 1.023327, 1.023327, 1.023327, 0.858086, 0.858086,
                                              0.858086, 0.429043, 0.247708], atol=1e-6)
    n = np.array([[0.0, 0.0, 1.0], [0.6, 0.0, 0.8], [0.0, -1.0, 0.0]], np.float32)
    light = np.random.default_rng(1).normal(size=(1, 9, 3)).astype(np.float32)
    out = np.asarray(sh_shading(jnp.asarray(n[None]), jnp.asarray(light)))[0]
    c = SH_CONSTANTS
    for k, (x, y, z) in enumerate(n):
        basis = np.array([1, x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1]) * c
        np.testing.assert_allclose(out[k], basis @ light[0], atol=1e-5)
        # the exported basis (no caller in the package tested it): the same scaled terms
        np.testing.assert_allclose(np.asarray(sh_basis(jnp.asarray(n[k]))), basis, atol=1e-6)
    np.testing.assert_allclose(np.einsum("nk,kc->nc", np.asarray(sh_basis(jnp.asarray(n))), light[0]), out, atol=1e-5)
    # n = +z with only the band-0 and z terms: 0.282095 l0 + 1.023327 l3 + 2 * 0.247708 l8
    np.testing.assert_allclose(out[0], c[0] * light[0, 0] + c[3] * light[0, 3] + 2 * c[8] * light[0, 8], atol=1e-5)


def test_sh_shading_gradients_match_finite_differences():
    """The hand-written VJP of sh_shading: normals and light gradients against central
    differences (float64, jax.test_util.check_grads), for [B, H, W, 3] maps and [B, N, 3]
    vertex normals; jit and vmap."""
    from jax.test_util import check_grads
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        for shape in ((2, 3, 4, 3), (2, 5, 3)):
            n, light, w = (jnp.asarray(rng.normal(size=s)) for s in (shape, (2, 9, 3), shape))
            loss = jax.jit(lambda n, l: jnp.sum(w * sh_shading(n, l) ** 2))
            check_grads(loss, (n, light), order=1, modes=("rev",), eps=1e-6, atol=1e-8, rtol=1e-6)
    n, light = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((2, 5, 3), (2, 9, 3)))
    v = jax.vmap(sh_shading)(n[:, None], light[:, None])
    np.testing.assert_allclose(v[:, 0], sh_shading(n, light), rtol=1e-6)


def test_directional_shading_hand_computed():
    # n = +z: the 4 corner lights give 1/sqrt(3), the frontal one 1 -> mean * 1.7
    s = directional_shading(jnp.array([[0.0, 0.0, 1.0]]))
    np.testing.assert_allclose(s[0], 1.7 * (4 / np.sqrt(3) + 1) / 5 * np.ones(3), atol=1e-5)
    s = directional_shading(jnp.array([[0.0, 0.0, -1.0]]))
    np.testing.assert_allclose(s[0], 0.0)
    np.testing.assert_array_equal(vertex_visibility(jnp.array([[[0, 0, -1.0], [0, 0, 0.2]]])), [[1.0, 0.0]])
    # the light positions may be traced (they were normalised with numpy): jit and grad pass
    n, pos = jnp.array([[0.0, 0.6, 0.8]]), jnp.array([[0.0, 1.0, 1.0], [1.0, 0.0, 2.0]])
    loss = jax.jit(lambda p: directional_shading(n, p).sum())
    want = 3 * 1.7 / 2 * (1.4 / np.sqrt(2) + 1.6 / np.sqrt(5))
    np.testing.assert_allclose(loss(pos), want, rtol=1e-6)
    # d/dp of n.p/|p| = (n - (n.p_hat) p_hat) / |p|, times 3 channels x 1.7 / 2 lights
    p0 = np.array([0.0, 1.0, 1.0])
    g = (np.array([0.0, 0.6, 0.8]) - 1.4 / 2 * p0) / np.sqrt(2) * 3 * 1.7 / 2
    np.testing.assert_allclose(jax.grad(loss)(pos)[0], g, rtol=1e-5, atol=1e-6)


def torch_vertex_normals(vertices, faces):
    """DECA util.vertex_normals (torch), the reference."""
    bs, nv = vertices.shape[:2]
    normals = torch.zeros(bs * nv, 3)
    faces = faces + (torch.arange(bs) * nv)[:, None, None]
    vf = vertices.reshape((bs * nv, 3))[faces.long()]
    faces = faces.reshape(-1, 3)
    vf = vf.reshape(-1, 3, 3)
    normals.index_add_(0, faces[:, 1].long(), torch.cross(vf[:, 2] - vf[:, 1], vf[:, 0] - vf[:, 1], dim=-1))
    normals.index_add_(0, faces[:, 2].long(), torch.cross(vf[:, 0] - vf[:, 2], vf[:, 1] - vf[:, 2], dim=-1))
    normals.index_add_(0, faces[:, 0].long(), torch.cross(vf[:, 1] - vf[:, 0], vf[:, 2] - vf[:, 0], dim=-1))
    return torch.nn.functional.normalize(normals, eps=1e-6, dim=1).reshape((bs, nv, 3))


def test_vertex_normals_match_deca_torch():
    rng = np.random.default_rng(2)
    v = rng.normal(size=(2, 12, 3)).astype(np.float32)
    f = np.stack([rng.choice(12, 3, replace=False) for _ in range(20)]).astype(np.int32)
    ref = torch_vertex_normals(torch.from_numpy(v), torch.from_numpy(f)[None].expand(2, -1, -1))
    np.testing.assert_allclose(vertex_normals(jnp.asarray(v), f), ref.numpy(), atol=1e-5)
    fn = face_normals(jnp.asarray(v), f)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(fn), axis=-1), 1.0, atol=1e-5)


def test_vertex_normals_of_a_batch_of_heads_match_deca_torch():
    """A batch of demo heads (vertices of valence 5 to 84), values and gradients against DECA's
    torch code."""
    from jaxdeca import flame
    arrays = flame.load_arrays(None)
    f = np.asarray(arrays["faces"], np.int32)
    rng = np.random.default_rng(4)
    v = (np.asarray(arrays["v_template"])[None] + rng.normal(size=(3,) + arrays["v_template"].shape) * 2e-3)
    v = v.astype(np.float32)
    w = rng.normal(size=v.shape).astype(np.float32)
    tv = torch.from_numpy(v).requires_grad_()
    ref = torch_vertex_normals(tv, torch.from_numpy(f)[None].expand(3, -1, -1))
    (ref * torch.from_numpy(w)).sum().backward()
    np.testing.assert_allclose(vertex_normals(jnp.asarray(v), f), ref.detach().numpy(), atol=1e-5)
    g = jax.jit(jax.grad(lambda x: jnp.sum(vertex_normals(x, f) * w)))(jnp.asarray(v))
    gt = tv.grad.numpy()
    np.testing.assert_allclose(g, gt, rtol=1e-4, atol=1e-4 * np.abs(gt).max())


def test_float16_vertices_give_the_float32_normals_and_a_finite_render():
    """A FLAME face's squared cross product (~3e-10 m^4) and eps^2 are 0 in float16: every face
    normal and 86% of the vertex normals were NaN, and so were 37% of render's pixels."""
    from jaxdeca import flame, render
    arrays = flame.load_arrays(None)
    topo = render.make_topology(arrays, uv_size=32)
    verts = flame.from_arrays(arrays)(jnp.zeros((1, 100)), jnp.zeros((1, 50)), jnp.zeros((1, 6)))["vertices"]
    v16 = verts.astype(jnp.float16)
    for fn in (face_normals, vertex_normals):
        n16 = fn(v16, topo.faces)
        assert n16.dtype == jnp.float16
        np.testing.assert_allclose(np.asarray(n16, np.float32), np.asarray(fn(v16.astype(jnp.float32), topo.faces)),
                                   atol=2e-3)
    trans = render.orth_proj(v16, jnp.array([[8.0, 0.0, 0.0]], jnp.float16))
    light = jnp.zeros((1, 9, 3)).at[:, 0].set(2.0)
    out = render.render(v16, trans, jnp.full((1, 32, 32, 3), 0.5), light, topo, image_size=(32, 32))
    for key in ("images", "shape_images"):
        assert np.isfinite(np.asarray(out[key], np.float32)).all(), key


def test_vertex_normals_gradient_of_collapsed_faces_matches_torch():
    """A vertex whose faces have all collapsed to a point has a zero normal sum. DECA's
    F.normalize passes it a finite gradient (torch's norm has subgradient 0 at 0); the
    gradient must not be NaN, neither there nor at the vertices next to it."""
    rng = np.random.default_rng(3)
    v = rng.normal(size=(1, 7, 3)).astype(np.float32)
    v[0, 4:] = v[0, 3]  # vertices 3..6 coincide: faces among them have zero area
    f = np.array([[0, 1, 2], [0, 2, 3], [3, 4, 5], [3, 5, 6], [4, 5, 6]], np.int32)
    w = rng.normal(size=(1, 7, 3)).astype(np.float32)
    tv = torch.from_numpy(v).requires_grad_()
    (torch_vertex_normals(tv, torch.from_numpy(f)[None]) * torch.from_numpy(w)).sum().backward()
    g = jax.grad(lambda x: jnp.sum(vertex_normals(x, f) * w))(jnp.asarray(v))
    np.testing.assert_allclose(g, tv.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_detail_normals_gradient_finite_where_the_uv_layout_leaves_texels_empty():
    # world2uv gives zeros outside the UV layout, so the dense grid's triangles there collapse
    # to the origin; the displacement's gradient must stay finite (the detail stage's loss)
    R = 16
    c = (np.arange(R) + 0.5) / R
    pos = np.stack(list(np.meshgrid(c, 1 - c, indexing="xy")) + [np.zeros((R, R))], -1)[None].astype(np.float32)
    nrm = np.broadcast_to(np.array([0, 0, 1.0], np.float32), pos.shape).copy()
    pos[:, :, R // 2:] = 0.0  # right half: no UV face
    nrm[:, :, R // 2:] = 0.0
    mask = np.zeros((R, R), np.float32)
    mask[:, 3:R // 2 - 1] = 1.0
    z = jnp.asarray(np.random.default_rng(0).normal(size=(1, R, R, 1)).astype(np.float32) * 0.01)

    def loss(z):
        n = displacement_to_normals(z, jnp.asarray(pos), jnp.asarray(nrm), jnp.asarray(mask), jnp.zeros((R, R)))
        return jnp.sum(n * jnp.array([1.0, 2.0, 3.0]))

    g = np.asarray(jax.grad(loss)(z))
    assert np.isfinite(g).all(), np.argwhere(~np.isfinite(g[0, ..., 0]))[:4]
    assert np.abs(g[0, :, 3:R // 2 - 1]).max() > 0 and np.abs(g[0, :, R // 2:]).max() == 0


def deca_generate_triangles(h, w, margin_x=2, margin_y=5):
    tris = []
    for x in range(margin_x, w - 1 - margin_x):
        for y in range(margin_y, h - 1 - margin_y):
            tris.append([y * w + x, y * w + x + 1, (y + 1) * w + x])
            tris.append([y * w + x + 1, (y + 1) * w + x + 1, (y + 1) * w + x])
    return np.array(tris)[:, [0, 2, 1]]


def test_dense_grid_faces_equal_deca_loop():
    np.testing.assert_array_equal(dense_grid_faces(16, 12), deca_generate_triangles(16, 12))


@pytest.mark.parametrize("h, w, margin_x, margin_y", [(16, 12, 2, 5), (9, 13, 0, 0), (12, 12, 1, 3), (8, 8, 2, 5)])
def test_grid_normals_equal_vertex_normals_of_the_dense_grid(h, w, margin_x, margin_y):
    """grid_normals (shifted slices) gives vertex_normals(scale_free) of DECA's grid triangles,
    values and gradients, zeros on the margins; (8, 8) with margins 2 and 5 has no triangle."""
    rng = np.random.default_rng(5)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pts = np.stack([xx * 1e-3, -yy * 1e-3, np.zeros((h, w))], -1)[None] + rng.normal(size=(2, h, w, 3)) * 3e-4
    pts = jnp.asarray(pts, jnp.float32)
    faces = dense_grid_faces(h, w, margin_x, margin_y)
    wgt = jnp.asarray(rng.normal(size=pts.shape), jnp.float32)

    def ref(p):
        return vertex_normals(p.reshape(2, h * w, 3), faces, scale_free=True).reshape(p.shape)

    want, got = np.asarray(ref(pts)), np.asarray(grid_normals(pts, margin_x, margin_y))
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(got == 0, want == 0)
    g_want = jax.grad(lambda p: jnp.sum(ref(p) * wgt))(pts)
    g_got = jax.jit(jax.grad(lambda p: jnp.sum(grid_normals(p, margin_x, margin_y) * wgt)))(pts)
    np.testing.assert_allclose(g_got, g_want, rtol=1e-5, atol=1e-5 * float(np.abs(g_want).max() + 1e-30))
    # float16 points are computed in float32, as vertex_normals does (its texel cross products,
    # ~1e-7 here, are below float16's smallest normal)
    p16 = pts.astype(jnp.float16)
    n16 = grid_normals(p16, margin_x, margin_y)
    assert n16.dtype == jnp.float16
    np.testing.assert_allclose(np.asarray(n16, np.float32), np.asarray(ref(p16.astype(jnp.float32))), atol=2e-3)


def test_displacement_normals_of_the_grid_equal_those_of_its_faces():
    """displacement_to_normals' default (grid_normals) equals passing dense_grid_faces(R, R)."""
    R = 24
    rng = np.random.default_rng(6)
    c = (np.arange(R) + 0.5) / R * 0.2
    pos = np.stack(list(np.meshgrid(c, -c, indexing="xy")) + [np.zeros((R, R))], -1)[None]
    pos = jnp.asarray(pos + rng.normal(size=(2, R, R, 3)) * 1e-3, jnp.float32)
    nrm = jnp.asarray(np.broadcast_to([0.0, 0.0, 1.0], (2, R, R, 3)), jnp.float32)
    mask = jnp.asarray(rng.uniform(size=(R, R)) > 0.2, jnp.float32)
    fixed = jnp.asarray(rng.normal(size=(R, R)) * 1e-4, jnp.float32)
    z = jnp.asarray(rng.normal(size=(2, R, R, 1)) * 1e-3, jnp.float32)
    faces = dense_grid_faces(R, R)
    np.testing.assert_allclose(displacement_to_normals(z, pos, nrm, mask, fixed),
                               displacement_to_normals(z, pos, nrm, mask, fixed, faces), atol=1e-6)


def quad():
    """A unit square as two triangles, UVs equal to its xy."""
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    return uv, faces


def test_uv_maps_of_a_quad():
    uv, faces = quad()
    uvr = uv_rasterize(uv, faces, 16)
    assert bool((uvr.face_index >= 0).all())
    verts = jnp.asarray(np.concatenate([uv, np.zeros((4, 1))], 1)[None].astype(np.float32))
    pos = np.asarray(world2uv(verts, faces, uvr))[0]
    c = (np.arange(16) + 0.5) / 16
    np.testing.assert_allclose(pos[..., 0], np.broadcast_to(c[None, :], (16, 16)), atol=1e-5)
    np.testing.assert_allclose(pos[..., 1], np.broadcast_to(1 - c[:, None], (16, 16)), atol=1e-5)  # row 0 is v = 1


def test_displacement_normals_plane_and_bump():
    R = 32
    c = (np.arange(R) + 0.5) / R
    pos = np.stack(list(np.meshgrid(c, 1 - c, indexing="xy")) + [np.zeros((R, R))], -1)[None].astype(np.float32)
    nrm = np.broadcast_to(np.array([0, 0, 1.0], np.float32), pos.shape)
    mask = np.ones((R, R), np.float32)
    zero = np.zeros((1, R, R, 1), np.float32)
    n = displacement_to_normals(jnp.asarray(zero), jnp.asarray(pos), jnp.asarray(nrm), jnp.asarray(mask),
                                jnp.zeros((R, R)))
    inner = np.asarray(n)[0, 6:-7, 3:-4]
    np.testing.assert_allclose(np.abs(inner[..., 2]), 1.0, atol=1e-5)
    # a ramp in displacement tilts the normal; outside the mask the coarse normal is kept
    ramp = (0.01 * np.arange(R)[None, None, :, None] * np.ones((1, R, R, 1))).astype(np.float32)
    mask[:, : R // 2] = 0
    n2 = np.asarray(displacement_to_normals(jnp.asarray(ramp), jnp.asarray(pos), jnp.asarray(nrm), jnp.asarray(mask),
                                            jnp.zeros((R, R))))[0]
    np.testing.assert_allclose(n2[:, : R // 2], nrm[0, :, : R // 2])
    tilt = n2[10, R // 2 + 5]
    assert abs(tilt[0]) > 0.2 and abs(tilt[1]) < 1e-4
    g = jax.grad(lambda z: displacement_to_normals(z, jnp.asarray(pos), jnp.asarray(nrm), jnp.asarray(mask),
                                                   jnp.zeros((R, R))).sum())(jnp.asarray(ramp))
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0


@pytest.mark.parametrize("scale", [1e-2, 1e-3])
def test_detail_normals_are_unit_whatever_the_texel_spacing(scale):
    """The dense grid's normals do not depend on the mesh's scale: a bumpy plane whose texels are
    0.3 mm (scale 1e-2) or 0.03 mm (1e-3) apart, as FLAME's face at a 1024 px or larger UV map,
    has the unit normals of the same plane at 3 cm. Before, DECA's absolute eps of 1e-6 (m^2)
    left them 0.6 (0.3 mm) and 6e-3 (0.03 mm) long, and detail shading that much darker."""
    R = 32
    c = (np.arange(R) + 0.5) / R
    pos = np.stack(list(np.meshgrid(c, 1 - c, indexing="xy")) + [np.zeros((R, R))], -1)[None].astype(np.float32)
    nrm = np.broadcast_to(np.array([0, 0, 1.0], np.float32), pos.shape)
    mask = np.ones((R, R), np.float32)
    bump = (0.05 * np.sin(np.arange(R) / 3.0)[None, :, None, None] * np.cos(np.arange(R) / 5.0)[None, None, :, None])

    def normals(s):
        z = jnp.asarray(bump * s, jnp.float32)
        return np.asarray(displacement_to_normals(z, jnp.asarray(pos * s), jnp.asarray(nrm), jnp.asarray(mask),
                                                  jnp.zeros((R, R))))[0, 6:-7, 3:-4]

    big, small = normals(1.0), normals(scale)
    np.testing.assert_allclose(np.linalg.norm(big, axis=-1), 1.0, atol=1e-5)
    assert np.abs(big[..., :2]).max() > 0.05  # the bumps tilt them
    np.testing.assert_allclose(small, big, atol=1e-4)


@pytest.mark.parametrize("scale", [1e-6, 1e-9])
def test_scale_free_vertex_normals_at_tiny_scales(scale):
    """vertex_normals(scale_free=True) of a mesh shrunk until its squared normal sums underflow
    float32 (and their rsqrt's derivative overflows) gives the normals of the mesh as it is, and
    finite gradients, a zero cotangent included."""
    from jaxdeca.render import vertex_normals
    from jaxdeca.render.meshes import uv_sphere
    m = uv_sphere(6, 8, radius=0.7)
    verts = jnp.asarray(m["verts"], jnp.float32)[None]
    faces = jnp.asarray(m["faces"], jnp.int32)
    want = np.asarray(vertex_normals(verts, faces, scale_free=True))
    np.testing.assert_allclose(np.asarray(vertex_normals(verts * scale, faces, scale_free=True)), want, atol=1e-5)
    w = jnp.zeros(want.shape).at[..., 0].set(1.0).at[:, :3].set(0.0)
    g = np.asarray(jax.grad(lambda v: jnp.sum(vertex_normals(v, faces, scale_free=True) * w))(verts * scale))
    assert np.isfinite(g).all() and np.abs(g).max() > 0


def test_interpolate_vertex_and_face_attributes_against_numpy():
    """Per-vertex and per-face attributes of 1, 3 and 12 channels (both code paths of the blend),
    values and the gradient w.r.t. the attributes, against a per-pixel NumPy loop. The faces are
    rolled so that face 0 shows (the sphere's own face 0 sits at a pole out of view): its pixels
    are not background."""
    from jaxdeca.render import interpolate, interpolate_face_attr, rasterize
    from jaxdeca.render.meshes import uv_sphere
    m = uv_sphere(6, 8, radius=0.7)
    verts = jnp.asarray(m["verts"], jnp.float32)[None]
    trans = orth_proj(verts, jnp.array([[1.0, 0.0, 0.0]]))
    centre = int(rasterize(trans, m["faces"], (12, 12), sigma=0.0).face_index[0, 6, 6])
    faces = np.roll(np.asarray(m["faces"], np.int32), -centre, axis=0)
    fr = rasterize(trans, faces, (12, 12), sigma=0.0)
    fidx, bary = np.asarray(fr.face_index[0]), np.asarray(fr.bary[0])
    assert (fidx == 0).any() and (fidx > 0).any() and (fidx < 0).any()
    rng = np.random.default_rng(0)
    for C in (1, 3, 12):
        attr = rng.normal(size=(1, verts.shape[1], C)).astype(np.float32)
        fattr = attr[:, faces]  # [1, F, 3, C]
        ref = np.zeros((12, 12, C), np.float32)
        for i, j in zip(*np.nonzero(fidx >= 0)):
            ref[i, j] = bary[i, j] @ attr[0, faces[fidx[i, j]]]
        np.testing.assert_allclose(interpolate(jnp.asarray(attr), faces, fr)[0], ref, atol=1e-5)
        np.testing.assert_allclose(interpolate_face_attr(jnp.asarray(fattr), fr)[0], ref, atol=1e-5)
        w = rng.normal(size=(1, 12, 12, C)).astype(np.float32)
        g = jax.grad(lambda a: jnp.sum(w * interpolate(a, faces, fr)))(jnp.asarray(attr))
        gref = np.zeros_like(attr)
        for i, j in zip(*np.nonzero(fidx >= 0)):
            for k in range(3):
                gref[0, faces[fidx[i, j], k]] += bary[i, j, k] * w[0, i, j]
        np.testing.assert_allclose(g, gref, atol=1e-5)


def test_take_rows_values_and_gradient_against_numpy():
    """take_rows (the corner gather of interpolate and rasterize, with a hand-written VJP):
    values and the table's gradient against NumPy's np.add.at, for one image (no vmap) and a
    batch of three (forward vmapped, backward looped over the images on CPU), eager and under
    jit, with repeated indices. tests/test_render_sharded.py covers the vmapped backward."""
    from jaxdeca.render.interpolate import take_rows
    rng = np.random.default_rng(1)
    for B in (1, 3):
        table = rng.normal(size=(B, 7, 3)).astype(np.float32)
        idx = rng.integers(0, 7, size=(B, 5, 4)).astype(np.int32)
        w = rng.normal(size=(B, 5, 4, 3)).astype(np.float32)
        ref = np.stack([table[b][idx[b]] for b in range(B)])
        gref = np.zeros_like(table)
        for b in range(B):
            np.add.at(gref[b], idx[b].reshape(-1), w[b].reshape(-1, 3))
        assert len(np.unique(idx[0])) < idx[0].size  # repeated rows accumulate
        loss = lambda t: jnp.sum(jnp.asarray(w) * take_rows(t, jnp.asarray(idx)))
        for fn in (loss, jax.jit(loss)):
            np.testing.assert_allclose(take_rows(jnp.asarray(table), jnp.asarray(idx)), ref)
            np.testing.assert_allclose(jax.grad(fn)(jnp.asarray(table)), gref, atol=1e-5)


def test_per_image_functions_refuse_batches_of_different_sizes():
    """grid_sample of one image with two grids returned one output (the second grid dropped),
    and interpolation of one image's attributes over two images' fragments read image 1 with
    image 0's data: the one-image shortcut looked at the first argument's batch only."""
    from jaxdeca.render.interpolate import take_rows
    with pytest.raises(ValueError, match=r"share their leading \(batch\) size.*\(1, 4, 4, 3\), \(2, 3, 3, 2\)"):
        grid_sample(jnp.zeros((1, 4, 4, 3)), jnp.zeros((2, 3, 3, 2)))
    with pytest.raises(ValueError, match="share their leading"):
        take_rows(jnp.zeros((1, 4, 3)), jnp.zeros((3, 5), jnp.int32))
    # sh_shading broadcast one light over two images' normals, then its VJP failed under grad
    for n, light in (((2, 3, 4, 3), (1, 9, 3)), ((1, 5, 3), (2, 9, 3))):
        with pytest.raises(ValueError, match=r"one batch size, got \(.*\) and \(.*\)"):
            jax.grad(lambda n, l: sh_shading(n, l).sum())(jnp.ones(n), jnp.ones(light))


def test_perspective_proj_on_a_non_square_image_with_two_focal_lengths():
    """The pinhole model by hand, 80 x 60 image, fx = 100, fy = 150, principal point (40, 30):
    x = cx + fx X / -Z, y = cy - fy Y / -Z in pixels. A square image with one focal length let fx
    read as fy, and W and H swapped, pass."""
    v = jnp.array([[[0.2, 0.1, -2.0]]])
    out = perspective_proj(v, jnp.array([[100.0, 150.0]]), jnp.array([[40.0, 30.0]]), (60, 80))
    np.testing.assert_allclose(to_pixels(out, (60, 80))[0, 0], [40 + 100 * 0.2 / 2, 30 - 150 * 0.1 / 2, 2.0], rtol=1e-6)


def test_fold_last_is_the_reduction_over_a_short_last_axis():
    """interpolate.fold_last (the renderer's sums, minima and maxima over xyz and a triangle's
    corners, as elementwise operations) gives the matching jnp reduction's values, with
    keepdims; a sum adds left to right, so it equals float64's rounded sum of three as XLA's loop
    does, and its gradient is the reduction's."""
    from jaxdeca.render.interpolate import fold_last
    x = jax.random.normal(jax.random.key(3), (4, 5, 3)) * jnp.array([1.0, 1e4, 1e-4])
    for op, ref in ((jnp.add, jnp.sum), (jnp.maximum, jnp.max), (jnp.minimum, jnp.min)):
        out = jax.jit(functools.partial(fold_last, op))(x)
        assert out.shape == (4, 5, 1)
        np.testing.assert_array_equal(out, ref(x, axis=-1, keepdims=True))
    wide = np.asarray(x, np.float64)
    np.testing.assert_array_equal(fold_last(jnp.add, x), ((wide[..., :1] + wide[..., 1:2]).astype(np.float32)
                                                          + wide[..., 2:]).astype(np.float32))
    g = jax.grad(lambda x: jnp.sum(jnp.sin(fold_last(jnp.add, x * x))))(x)
    np.testing.assert_allclose(g, jax.grad(lambda x: jnp.sum(jnp.sin(jnp.sum(x * x, -1))))(x), rtol=1e-6)
