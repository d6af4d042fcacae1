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
