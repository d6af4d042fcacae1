"""FlameModel: DECA's dynamic contour rows, landmarks, jit/vmap/grad, component limits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flame_testing import random_flame
from jaxdeca import flame


def _yaw_pose(deg):
    return jnp.asarray([[0.0, np.deg2rad(deg), 0.0] + [0.0] * 12], jnp.float32)


@pytest.mark.parametrize("deg,row", [(0, 0), (0.4, 0), (-0.4, 0), (30, 30), (39, 39), (50, 39), (-1, 40),
                                     (-30, 69), (-39, 78), (-50, 78)])
def test_dynamic_row_follows_deca_convention(deg, row):
    assert int(flame.dynamic_row(_yaw_pose(deg))[0]) == row


def test_dynamic_row_uses_global_times_neck():
    pose = jnp.zeros((1, 15)).at[0, 1].set(np.deg2rad(20)).at[0, 4].set(np.deg2rad(15))  # global + neck yaw
    assert int(flame.dynamic_row(pose)[0]) == 35


def test_landmarks2d_pick_contour_rows():
    arrays = random_flame()
    m = flame.from_arrays(arrays)
    z = lambda n: jnp.zeros((1, n))  # noqa: E731
    outs = {d: m(z(100), z(50), jnp.asarray([[0.0, np.deg2rad(d), 0, 0, 0, 0]]))["landmarks2d"] for d in (-30, 0, 30)}
    # Same vertices' barycentric points for the static part; the contour rows differ.
    for d, row in ((-30, 69), (0, 0), (30, 30)):
        v = m(z(100), z(50), jnp.asarray([[0.0, np.deg2rad(d), 0, 0, 0, 0]]))["vertices"][0]
        f = arrays["faces"][arrays["dynamic_lmk_faces_idx"][row]]
        expect = np.einsum("lk,lkc->lc", arrays["dynamic_lmk_bary_coords"][row], np.asarray(v)[f])
        np.testing.assert_allclose(outs[d][0, :17], expect, atol=1e-6)
        f = arrays["faces"][arrays["static_lmk_faces_idx"]]
        static = np.einsum("lk,lkc->lc", arrays["static_lmk_bary_coords"], np.asarray(v)[f])
        np.testing.assert_allclose(outs[d][0, 17:], static, atol=1e-6)
    assert not np.allclose(outs[-30][0, :17], outs[30][0, :17])


def test_jit_vmap_grad():
    m = flame.from_arrays(random_flame())
    rng = np.random.default_rng(0)
    shape, exp, pose = (jnp.asarray(rng.normal(size=(2, n)), jnp.float32) for n in (100, 50, 6))
    out = jax.jit(m.__call__)(shape, exp, pose)
    assert out["vertices"].shape == (2, 120, 3) and out["landmarks2d"].shape == (2, 68, 3)
    per = jax.vmap(lambda s, e, p: m(s[None], e[None], p[None])["vertices"][0])(shape, exp, pose)
    np.testing.assert_allclose(per, out["vertices"], atol=1e-6)
    g = jax.grad(lambda s, e, p: jnp.sum(m(s, e, p)["landmarks3d"] ** 2), argnums=(0, 1, 2))(shape, exp, pose)
    assert all(np.all(np.isfinite(x)) and np.abs(x).sum() > 0 for x in g)
    # The model is a pytree: it can be a jit argument.
    v = jax.jit(lambda mm, s: mm(s, exp, pose)["vertices"])(m, shape)
    np.testing.assert_allclose(v, out["vertices"], atol=1e-6)


def test_an_empty_batch_gives_empty_outputs_under_jit_and_grad():
    """B = 0 (e.g. the codes of a selection that came out empty) gives [0, V, 3] vertices and
    [0, 68, 3] landmarks, as numpy would, not an error from inside the skinning."""
    m = flame.from_arrays(random_flame())
    z = lambda n: jnp.zeros((0, n))  # noqa: E731
    out = jax.jit(m.__call__)(z(100), z(50), z(6))
    assert {k: v.shape for k, v in out.items()} == {"vertices": (0, 120, 3), "landmarks2d": (0, 68, 3),
                                                     "landmarks3d": (0, 68, 3)}
    g = jax.grad(lambda s: jnp.sum(m(s, z(50), z(6))["vertices"]))(z(100))
    assert g.shape == (0, 100)


def test_too_many_components_refused():
    with pytest.raises(flame.FlameFileError, match="n_shape=300"):
        flame.from_arrays(random_flame(), n_shape=300)


@pytest.mark.parametrize("name, args, message", [
    # A full 15-value pose (global, neck, jaw, eyes) was read as global + jaw = its neck rotation.
    ("full pose", dict(pose=(1, 15)), r"pose must be \[B, 6\] \(global, jaw\), found \(1, 15\)"),
    ("global only", dict(pose=(1, 3)), r"pose must be \[B, 6\]"),
    ("fewer shape", dict(shape=(1, 50)), r"shape must be \[B, 100\], found \(1, 50\)"),
    ("unbatched", dict(shape=(100,), expression=(50,), pose=(6,)), r"shape must be \[B, 100\], found \(100,\)"),
    ("batch", dict(expression=(2, 50)), r"expression must be \[B, 50\] with B = 1, found \(2, 50\)"),
    ("neck", dict(neck_pose=(1, 6)), r"neck_pose must be \[B, 3\]"),
    ("eyes", dict(eye_pose=(1, 3)), r"eye_pose must be \[B, 6\]"),
])
def test_wrong_code_shapes_refused_with_clear_error(name, args, message):
    m = flame.from_arrays(random_flame())
    shapes = dict(shape=(1, 100), expression=(1, 50), pose=(1, 6), neck_pose=None, eye_pose=None)
    shapes.update(args)
    codes = {k: None if s is None else jnp.zeros(s) for k, s in shapes.items()}
    with pytest.raises(ValueError, match=message):
        m(**codes)


def test_yaw_degrees_has_a_finite_gradient_at_90_degrees():
    """sqrt(R00^2 + R10^2) at 0 (yaw +-90 degrees) gave NaN gradients."""
    rot = jnp.asarray([[[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]])
    assert float(flame.model.yaw_degrees(rot)[0]) == pytest.approx(90.0)
    grad = jax.grad(lambda r: flame.model.yaw_degrees(r).sum())(rot)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_half_precision_poses_are_rotated_in_float32():
    """With pose, neck and eye pose all bfloat16 the rotations (and the contour's yaw) were
    computed in bfloat16: over a 0.1-degree yaw sweep the contour took a neighbouring table row
    for ~5% of poses. They are promoted: the result equals that of the same values in float32."""
    m = flame.from_arrays(random_flame())
    deg = np.arange(-45, 45, 0.1)
    B = len(deg)
    pose = jnp.zeros((B, 6)).at[:, 1].set(np.deg2rad(deg) * 0.6)
    neck = jnp.zeros((B, 3)).at[:, 1].set(np.deg2rad(deg) * 0.4).at[:, 0].set(0.1)
    eye = jnp.zeros((B, 6))
    z = lambda n: jnp.zeros((B, n))  # noqa: E731
    half = [x.astype(jnp.bfloat16) for x in (pose, neck, eye)]
    got = m(z(100), z(50), *half)
    want = m(z(100), z(50), *(x.astype(jnp.float32) for x in half))
    for k in ("vertices", "landmarks2d"):
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


def test_barycentric_landmarks_take_numpy_faces():
    """faces given as a numpy array (as the renderer's functions take them) were indexed by the
    traced landmark faces inside vmap: TracerArrayConversionError, even eagerly."""
    from jaxdeca.flame.model import barycentric_landmarks
    rng = np.random.default_rng(0)
    verts = rng.normal(size=(2, 6, 3)).astype(np.float32)
    faces = np.array([[0, 1, 2], [3, 4, 5], [1, 3, 5]])
    lmk_faces = np.array([[2, 0], [1, 2]])
    bary = rng.uniform(size=(2, 2, 3)).astype(np.float32)
    want = np.einsum("blk,blkc->blc", bary, verts[np.arange(2)[:, None, None], faces[lmk_faces]])
    np.testing.assert_allclose(barycentric_landmarks(verts, faces, lmk_faces, bary), want, rtol=1e-5, atol=1e-6)


def test_dynamic_row_matches_decas_torch_code_on_random_head_and_neck_poses():
    """DECA's FLAME._find_dynamic_lmk_idx_and_bcoords ported to torch (smplx's batch_rodrigues and
    rot_mat_to_euler, neck_kin_chain [1, 0]) on poses with pitch, roll, fractional yaw and a neck
    rotation. The whole-degree yaws above passed with the yaw truncated instead of rounded (44%
    of these rows differ), with R[2, 1] in place of R[1, 0] (19%) and with neck @ global (62%)."""
    torch = pytest.importorskip("torch")
    smplx_lbs = pytest.importorskip("smplx.lbs")
    rng = np.random.default_rng(0)
    pose = np.zeros((600, 15), np.float32)
    pose[:, 0:3] = rng.normal(size=(600, 3)) * np.deg2rad([10, 25, 8])
    pose[300:, 3:6] = rng.normal(size=(300, 3)) * np.deg2rad([10, 15, 8])
    p = torch.from_numpy(pose)
    aa = torch.index_select(p.view(600, -1, 3), 1, torch.tensor([1, 0]))
    rots = smplx_lbs.batch_rodrigues(aa.reshape(-1, 3)).view(600, -1, 3, 3)
    rel = torch.eye(3).unsqueeze(0).expand(600, -1, -1)
    for i in range(2):
        rel = torch.bmm(rots[:, i], rel)
    y = torch.round(torch.clamp(smplx_lbs.rot_mat_to_euler(rel) * 180.0 / np.pi, max=39)).long()
    neg, low = (y < 0).long(), (y < -39).long()
    want = (neg * (low * 78 + (1 - low) * (39 - y)) + (1 - neg) * y).numpy()
    got = np.asarray(flame.dynamic_row(jnp.asarray(pose)))
    assert (got == want).mean() > 0.995, np.flatnonzero(got != want)  # a yaw at x.5 may round either way
