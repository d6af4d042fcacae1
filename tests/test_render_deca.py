"""The one-call DECA render on a UV sphere, and an inverse-rendering optimisation test."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdeca.render import extract_texture, make_topology, orth_proj, render
from jaxdeca.render.deca import face_texture, uv_face_eye_mask
from jaxdeca.render.meshes import uv_sphere

R = 32  # UV size for tests


@pytest.fixture(scope="module")
def sphere():
    m = uv_sphere(8, 12, radius=0.5)
    rng = np.random.default_rng(0)
    model = dict(faces=m["faces"], uv_coords=m["uv_coords"], uv_faces=m["uv_faces"],
                 uv_face_eye_mask=np.ones((R, R), np.float32),
                 fixed_displacement=rng.normal(size=(R, R)).astype(np.float32) * 1e-3)
    return m, make_topology(model, uv_size=R)


def test_make_topology_names_bad_key():
    with pytest.raises(KeyError, match="demo.npz: missing key 'uv_faces'"):
        make_topology(dict(faces=np.zeros((2, 3), np.int32), uv_coords=np.zeros((3, 2))), where="demo.npz")
    with pytest.raises(ValueError, match="fixed_displacement"):
        make_topology(dict(faces=np.zeros((1, 3), np.int32), uv_coords=np.zeros((3, 2)),
                           uv_faces=np.zeros((1, 3), np.int32), fixed_displacement=np.zeros((4, 5))), uv_size=8)


def test_make_topology_compiles_one_program_and_gives_the_op_by_op_bits():
    """make_topology's UV rasterization is one setup program (xla_options.setup_jit), not about
    90 eager operations each compiled on its own, with the bits those operations gave (at the
    even sizes checked, 32-256; at 37 and 41 px a few pixels, 3-7, take another face); uv_grid is
    numpy's. Under a jit, grad or vmap uv_rasterize is traced into the caller's program."""
    from compile_count import compiles
    from jaxdeca import flame
    from jaxdeca.render import uv
    arrays = flame.load_arrays(None)  # the demo head, at a size no other test uses
    with compiles() as n:
        topo = make_topology(arrays, uv_size=44)
    assert len(n) <= 3, len(n)  # the rasterization; transfers compile nothing
    coords = jnp.asarray(arrays["uv_coords"], jnp.float32)
    ref = uv._uv_rasterize.__wrapped__(coords, jnp.asarray(arrays["uv_faces"], jnp.int32), 44)  # op by op
    for got, want in zip(jax.tree.leaves(topo.uv_raster), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(topo.uv_grid), np.asarray(uv.uv_to_image(coords)[arrays["uv_faces"]]))
    faces = arrays["uv_faces"]
    inside = jax.jit(lambda c: uv.uv_rasterize(c, faces, 44))(coords)
    np.testing.assert_array_equal(np.asarray(inside.face_index), np.asarray(ref.face_index))
    np.testing.assert_allclose(np.asarray(inside.bary), np.asarray(ref.bary), atol=1e-6)
    g = jax.grad(lambda c: uv.uv_rasterize(c, faces, 44).bary.sum())(coords)  # UVs are constants
    np.testing.assert_array_equal(np.asarray(g), 0.0)
    masks = jax.vmap(lambda c: uv.uv_rasterize(c, faces, 44).mask)(jnp.stack([coords, coords]))
    np.testing.assert_array_equal(np.asarray(masks), np.asarray(ref.mask)[None].repeat(2, 0))


def test_uv_face_eye_mask_at_the_topology_size():
    """The apps' outputs take the mask at the model's UV size from the same function as Topology."""
    mask = np.zeros((16, 16), np.float32)
    mask[4:12, 2:10] = 1.0
    model = dict(faces=np.zeros((1, 3), np.int32), uv_coords=np.zeros((3, 2)), uv_faces=np.zeros((1, 3), np.int32),
                 uv_face_eye_mask=mask)
    topo = make_topology(model, uv_size=8)
    small = uv_face_eye_mask(model, 8)
    np.testing.assert_array_equal(np.asarray(topo.uv_face_eye_mask), small)
    np.testing.assert_array_equal(small, mask[::2, ::2])
    np.testing.assert_array_equal(uv_face_eye_mask(model, 16), mask)
    np.testing.assert_array_equal(uv_face_eye_mask({}, 4), np.ones((4, 4)))
    # texels a quarter, half and three quarters covered: area average, then > 0.5 (aligned blocks
    # alone let a threshold of > 0, or nearest-neighbour resizing, pass)
    mask = np.zeros((16, 16), np.float32)
    mask[3:12, 1:10] = 1.0
    mask[2, 2] = mask[2, 1] = mask[3, 0] = 1.0  # texel (1, 0): 3/4 covered, its top-left pixel not
    mask[12, 9] = 1.0  # texel (6, 4): 1/4
    want = mask.reshape(8, 2, 8, 2).mean((1, 3))
    assert {0.25, 0.5, 0.75} <= set(want.ravel().tolist())
    np.testing.assert_array_equal(uv_face_eye_mask(dict(model, uv_face_eye_mask=mask), 8), want > 0.5)


def test_render_outputs(sphere):
    m, topo = sphere
    B, S = 2, 24
    verts = jnp.broadcast_to(jnp.asarray(m["verts"]), (B,) + m["verts"].shape)
    cam = jnp.array([[1.4, 0.0, 0.0], [1.0, 0.1, 0.0]])
    tv = orth_proj(verts, cam)
    albedo = jnp.full((B, R, R, 3), 0.5)
    light = jnp.zeros((B, 9, 3)).at[:, 0].set(1.0)
    out = jax.jit(lambda *a: render(*a, topo, (S, S), uv_z=jnp.zeros((B, R, R, 1))))(verts, tv, albedo, light)
    mask = np.asarray(out["mask"])
    # silhouette of a sphere of image radius 0.7 (s = 1.4, r = 0.5) -> 0.7 * 12 px
    yy, xx = np.mgrid[:S, :S] + 0.5
    disk = (xx - 12) ** 2 + (yy - 12) ** 2 < (0.7 * 12 - 0.8) ** 2
    assert mask[0][disk].all() and not mask[0][(xx - 12) ** 2 + (yy - 12) ** 2 > (0.7 * 12 + 0.8) ** 2].any()
    # constant albedo and band-0 light: image = 0.5 * 0.282095 inside
    # (away from the UV border, where grid_sample's zero padding darkens the texture like torch)
    inner = disk & (np.abs(np.asarray(out["grid"])[0]).max(-1) < 1 - 1 / R)
    assert inner.sum() > 100
    np.testing.assert_allclose(np.asarray(out["images"])[0][inner], 0.5 * 0.282095, atol=1e-5)
    # centre pixel sees the +z pole: world normal ~ +z, nearest depth 1, shape shading
    n = np.asarray(out["normal_images"])[0, 12, 12]
    assert n[2] > 0.9  # (coarse 8 x 12 sphere)
    # depth is normalised per image: each image's nearest point is ~1, whatever else is in the
    # batch (image 1, at scale 1.0 next to image 0's 1.4, reached 0.86 when normalised over both)
    for k in range(B):
        assert np.asarray(out["depth_images"])[k][mask[k] > 0].max() > 0.95, k
    assert np.asarray(out["pos_mask"])[0, 12, 12] == 1.0
    s = np.asarray(out["shape_images"])[0, 12, 12]
    np.testing.assert_allclose(s, 180 / 255 * 1.7 * (4 / np.sqrt(3) * n[2] + n[2]) / 5, rtol=0.05)
    assert out["shape_detail_images"].shape == (B, S, S, 3)
    assert out["uv_pverts"].shape == (B, R, R, 3) and out["uv_detail_normals"].shape == (B, R, R, 3)
    # texture extraction samples the image where each UV texel's vertex projects
    tex = extract_texture(out["images"], out["uv_pverts"])
    assert tex.shape == (B, R, R, 3)
    # DECA's extracted texture: the photo inside the face-eye mask, albedo x shading outside
    fem = np.zeros((R, R), np.float32)
    fem[:, : R // 2] = 1.0
    ft = np.asarray(face_texture(tex, out["uv_texture"], jnp.asarray(fem)))
    np.testing.assert_array_equal(ft[:, :, : R // 2], np.asarray(tex)[:, :, : R // 2])
    np.testing.assert_array_equal(ft[:, :, R // 2:], np.asarray(out["uv_texture"])[:, :, R // 2:])


def test_render_of_an_empty_batch_is_empty(sphere):
    """Every output of a B = 0 render has a leading 0 and the shape of one image's."""
    m, topo = sphere
    verts = jnp.asarray(m["verts"][None])
    args = (jnp.full((1, R, R, 3), 0.5), jnp.zeros((1, 9, 3)).at[:, 0].set(1.0))
    one = render(verts, orth_proj(verts, jnp.array([[1.4, 0.0, 0.0]])), *args, topo, (12, 12),
                 uv_z=jnp.zeros((1, R, R, 1)))
    none = render(verts[:0], verts[:0], *(a[:0] for a in args), topo, (12, 12), uv_z=jnp.zeros((0, R, R, 1)))
    assert none.keys() == one.keys()
    for k in one:
        assert none[k].shape == (0,) + one[k].shape[1:], k


def test_render_with_backfaces_culled(sphere):
    # the sphere is closed: culling keeps every hard-pass output and lowers the soft coverage
    # only (the far half's terms are gone)
    m, topo = sphere
    verts = jnp.asarray(m["verts"][None])
    tv = orth_proj(verts, jnp.array([[1.4, 0.0, 0.0]]))
    args = (verts, tv, jnp.full((1, R, R, 3), 0.5), jnp.zeros((1, 9, 3)).at[:, 0].set(1.0), topo, (24, 24))
    full, cull = (render(*args, cull_backfaces=c) for c in (False, True))
    for k in ("mask", "images", "normal_images", "depth_images", "shape_images"):
        np.testing.assert_allclose(cull[k], full[k], atol=1e-6, err_msg=k)
    assert (np.asarray(cull["alpha"]) <= np.asarray(full["alpha"]) + 1e-6).all()
    assert np.abs(np.asarray(cull["alpha"]) - np.asarray(full["alpha"])).max() > 0.01


def test_uv_normal_map_matches_vertex_normals(sphere):
    m, topo = sphere
    verts = jnp.asarray(m["verts"])[None]
    out = render(verts, orth_proj(verts, jnp.array([[1.0, 0.0, 0.0]])), jnp.zeros((1, R, R, 3)),
                 jnp.zeros((1, 9, 3)), topo, (8, 8))
    un = np.asarray(out["uv_coarse_normals"])[0]
    up = np.asarray(out["uv_coarse_vertices"])[0]
    inside = np.asarray(topo.uv_raster.mask) > 0
    # on a sphere the (interpolated) normal points along the position
    cosang = np.sum(un * up, -1)[inside] / np.linalg.norm(un, axis=-1)[inside] / np.linalg.norm(up, axis=-1)[inside]
    assert cosang.min() > 0.97
    # row 0 of the UV map is the top (v = 1 -> +y pole)
    assert up[0, R // 2, 1] > 0.45 and up[-1, R // 2, 1] < -0.45


def test_optimise_translation_and_scale(sphere):
    m, topo = sphere
    S = 32
    verts = jnp.asarray(m["verts"])[None]
    u = np.linspace(0, 1, R, dtype=np.float32)
    albedo = jnp.asarray(np.stack(list(np.meshgrid(u, u, indexing="xy")) + [np.full((R, R), 0.5, np.float32)], -1))[None]
    light = jnp.zeros((1, 9, 3)).at[:, 0].set(2.0).at[:, 3].set(0.5)

    def draw(cam):
        out = render(verts, orth_proj(verts, cam[None]), albedo, light, topo, (S, S), sigma=1.0)
        return out["alpha"], out["images"]

    target_cam = jnp.array([1.3, 0.15, -0.1])
    ta, ti = draw(target_cam)

    def loss(cam):
        a, im = draw(cam)
        return jnp.mean((a - ta) ** 2) + jnp.mean((im - ti) ** 2)

    opt = optax.adam(0.02)
    cam = jnp.array([1.0, -0.1, 0.1])
    state = opt.init(cam)

    @jax.jit
    def step(cam, state):
        l, g = jax.value_and_grad(loss)(cam)
        upd, state = opt.update(g, state)
        return optax.apply_updates(cam, upd), state, l

    for _ in range(150):
        cam, state, l = step(cam, state)
    np.testing.assert_allclose(np.asarray(cam), np.asarray(target_cam), atol=0.02)


def test_render_matches_deca_formulas_in_torch():
    """Every output of `render` (coarse and detail, a non-square image) against DECA's
    SRenderY.forward / render_shape / render_depth / world2uv and displacement2normal written
    in torch, with the brute-force NumPy z-buffer as DECA's rasterizer (its attributes
    interpolated as DECA does: per-face corners x barycentrics, zero on background)."""
    import torch
    import torch.nn.functional as F
    from test_render_ops import deca_generate_triangles, torch_vertex_normals
    from test_render_rasterize import brute_force
    from jaxdeca.render import SH_CONSTANTS

    Ruv, H, W = 16, 16, 11
    m = uv_sphere(5, 7, radius=0.5)
    rng = np.random.default_rng(3)
    fem = np.zeros((Ruv, Ruv), np.float32)
    fem[3:13, 2:12] = 1.0
    fixed = rng.normal(size=(Ruv, Ruv)).astype(np.float32) * 1e-2
    topo = make_topology(dict(faces=m["faces"], uv_coords=m["uv_coords"], uv_faces=m["uv_faces"],
                              uv_face_eye_mask=fem, fixed_displacement=fixed), uv_size=Ruv)
    verts = (m["verts"] + 0.02 * rng.normal(size=m["verts"].shape)).astype(np.float32)[None]
    tv = np.array(orth_proj(jnp.asarray(verts), jnp.array([[1.6, 0.05, -0.03]])))
    albedo = rng.uniform(size=(1, Ruv, Ruv, 3)).astype(np.float32)
    light = (rng.normal(size=(1, 9, 3)) * 0.5).astype(np.float32)
    uv_z = (rng.normal(size=(1, Ruv, Ruv, 1)) * 0.01).astype(np.float32)
    out = jax.jit(lambda v, t, a, l, z: render(v, t, a, l, topo, (H, W), uv_z=z, sigma=0.0))(
        *(jnp.asarray(a) for a in (verts, tv, albedo, light, uv_z)))

    # DECA (NCHW)
    faces = torch.from_numpy(m["faces"]).long()
    V, TV, L = torch.from_numpy(verts), torch.from_numpy(tv), torch.from_numpy(light)

    def raster(vimg, f, face_attr, h, w):  # DECA's Pytorch3dRasterizer.forward -> [1, D + 1, h, w]
        fidx, bary, _ = brute_force(vimg[0].numpy(), f.numpy(), h, w)
        vals = (torch.from_numpy(bary).float()[..., None] * face_attr[0][torch.from_numpy(np.maximum(fidx, 0))]).sum(-2)
        vals[torch.from_numpy(fidx < 0)] = 0
        return torch.cat([vals.permute(2, 0, 1), torch.from_numpy((fidx >= 0).astype(np.float32))[None]])[None]

    fv = lambda a, f: a[:, f]  # util.face_vertices
    uvc = torch.from_numpy(m["uv_coords"])[None]
    uvc = torch.cat([uvc, uvc[..., :1] * 0 + 1], -1) * 2 - 1
    uvc[..., 1] = -uvc[..., 1]
    uvfaces = torch.from_numpy(m["uv_faces"]).long()
    normals, tnormals = torch_vertex_normals(V, faces[None]), torch_vertex_normals(TV, faces[None])
    rend = raster(TV, faces, torch.cat([fv(uvc, uvfaces), fv(tnormals, faces), fv(V, faces), fv(normals, faces)], -1), H, W)
    alpha = rend[:, -1:]
    grid = rend[:, :3].permute(0, 2, 3, 1)[..., :2]
    alb = torch.from_numpy(albedo).permute(0, 3, 1, 2)
    albedo_images = F.grid_sample(alb, grid, align_corners=False)
    normal_images = rend[:, 9:12]
    c = torch.from_numpy(SH_CONSTANTS)

    def add_sh(n):  # SRenderY.add_SHlight
        sh = torch.stack([n[:, 0] * 0 + 1, n[:, 0], n[:, 1], n[:, 2], n[:, 0] * n[:, 1], n[:, 0] * n[:, 2],
                          n[:, 1] * n[:, 2], n[:, 0] ** 2 - n[:, 1] ** 2, 3 * n[:, 2] ** 2 - 1], 1) * c[None, :, None, None]
        return torch.sum(L[:, :, :, None, None] * sh[:, :, None], 1)

    def render_shape(normal_images):  # SRenderY.render_shape with its default lights
        r = raster(TV, faces, torch.cat([fv(torch.full((1, V.shape[1], 3), 180 / 255), faces), fv(tnormals, faces)], -1), H, W)
        d = F.normalize(torch.tensor([[-1, 1, 1], [1, 1, 1], [-1, -1, 1], [1, -1, 1], [0, 0, 1]]).float(), dim=1)
        ndl = torch.clamp(torch.einsum("bchw,lc->blhw", normal_images, d), 0, 1)
        shading = (ndl[:, :, None] * 1.7).mean(1).expand(-1, 3, -1, -1)
        return r[:, :3] * shading * r[:, -1:] * (r[:, 5:6] < 0.15).float()

    world2uv = lambda a: raster(uvc, uvfaces, fv(a, faces), Ruv, Ruv)[:, :3]
    uv_cv, uv_cn = world2uv(V), world2uv(normals)
    mt = torch.from_numpy(fem)
    det = uv_cv + torch.from_numpy(uv_z).permute(0, 3, 1, 2) * mt * uv_cn + torch.from_numpy(fixed) * uv_cn
    dense = torch.from_numpy(deca_generate_triangles(Ruv, Ruv)).long()[None]
    udn = torch_vertex_normals(det.permute(0, 2, 3, 1).reshape(1, -1, 3), dense).reshape(1, Ruv, Ruv, 3).permute(0, 3, 1, 2)
    udn = udn * mt + uv_cn * (1 - mt)
    z = -(TV[..., 2:] - TV[..., 2:].min())
    z = (z - z.min()) / (z - z.min()).max()
    nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
    ref = dict(
        images=nhwc(albedo_images * add_sh(normal_images) * alpha),
        albedo_images=nhwc(albedo_images),  # DECA's trainer's (unmasked) grid_sample of the albedo
        mask=alpha[:, 0].numpy(), grid=grid.numpy(), normal_images=nhwc(normal_images * alpha),
        pos_mask=(rend[:, 5] < -0.05).float().numpy(), shape_images=nhwc(render_shape(normal_images)),
        depth_images=raster(TV, faces, fv(z.repeat(1, 1, 3), faces), H, W)[:, 0].numpy(),
        uv_pverts=nhwc(world2uv(TV)), uv_coarse_vertices=nhwc(uv_cv), uv_coarse_normals=nhwc(uv_cn),
        normals=normals.numpy(), trans_normals=tnormals.numpy(), uv_detail_normals=nhwc(udn),
        uv_shading=nhwc(add_sh(udn)), uv_texture=nhwc(alb * add_sh(udn)),
        shape_detail_images=nhwc(render_shape(F.grid_sample(udn, grid, align_corners=False) * alpha)))
    assert 0.2 < ref["mask"].mean() < 0.8 and ref["pos_mask"].sum() > 20
    # covered pixels on both sides of render_shape's threshold, tz < 0.15 (shaded) and above it (black)
    tz = rend[0, 5].numpy()[ref["mask"][0] > 0]
    assert ((tz >= 0) & (tz < 0.15)).sum() >= 2 and (tz >= 0.15).sum() >= 1
    for k, r in ref.items():
        np.testing.assert_allclose(np.asarray(out[k]), r, atol=1e-5, err_msg=k)


def test_extracted_texture_round_trips_a_rendered_albedo():
    """extract_texture samples the image at each texel's projected position: a sphere rendered
    with a (u, v) albedo under band-0 light only gives back albedo x 0.282095 on the front-facing
    texels. A y flip of the sampling positions passed every test (the v channel then reads the
    mirrored row: median error 0.08 of 0.28)."""
    R, S = 32, 64
    m = uv_sphere(16, 24, radius=0.5)
    topo = make_topology(dict(faces=m["faces"], uv_coords=m["uv_coords"], uv_faces=m["uv_faces"]), uv_size=R)
    verts = jnp.asarray(m["verts"])[None]
    tv = orth_proj(verts, jnp.array([[1.6, 0.0, 0.0]]))
    u = np.linspace(0, 1, R, dtype=np.float32)
    albedo = np.stack([np.tile(u, (R, 1)), np.tile(u[:, None], (1, R)), np.full((R, R), 0.5, np.float32)], -1)[None]
    light = jnp.zeros((1, 9, 3)).at[:, 0].set(1.0)
    out = render(verts, tv, jnp.asarray(albedo), light, topo, (S, S), sigma=0.0)
    pv, n = np.asarray(out["uv_pverts"])[0], np.asarray(out["uv_coarse_normals"])[0]
    front = (np.asarray(topo.uv_raster.mask) > 0) & (n[..., 2] > 0.5) & (np.abs(pv[..., :2]).max(-1) < 0.8)
    assert front.sum() > 150 and np.ptp(pv[..., 1][front]) > 1.0  # texels up and down the image
    err = np.abs(np.asarray(extract_texture(out["images"], out["uv_pverts"]))[0] - albedo[0] * 0.282095)[front]
    assert np.median(err) < 1e-3 and err.max() < 0.03, (np.median(err), err.max())
