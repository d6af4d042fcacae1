"""Rodrigues and linear blend skinning: closed forms, gradients vs finite differences."""
import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.transform import Rotation

from jaxdeca.flame import lbs
from flame_testing import random_flame


def test_rodrigues_matches_scipy():
    r = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    np.testing.assert_allclose(lbs.rodrigues(jnp.asarray(r)), Rotation.from_rotvec(r).as_matrix(), atol=1e-5)


def test_rodrigues_identity_and_finite_gradient_at_zero():
    np.testing.assert_allclose(lbs.rodrigues(jnp.zeros(3)), np.eye(3), atol=1e-6)
    g = jax.jacobian(lbs.rodrigues)(jnp.zeros(3))
    assert np.all(np.isfinite(g))
    # d R / d r_z at 0 is the generator K_z = [[0,-1,0],[1,0,0],[0,0,0]].
    np.testing.assert_allclose(g[..., 2], [[0, -1, 0], [1, 0, 0], [0, 0, 0]], atol=1e-3)


def _fd_check(f, x, eps=1e-3, n=6, rtol=2e-2, seed=0):
    x = np.asarray(x, np.float64)
    g = np.asarray(jax.grad(lambda z: f(z))(jnp.asarray(x)))
    idx = np.random.default_rng(seed).choice(x.size, size=min(n, x.size), replace=False)
    for i in idx:
        d = np.zeros(x.size)
        d[i] = eps
        d = d.reshape(x.shape)
        fd = (float(f(jnp.asarray(x + d))) - float(f(jnp.asarray(x - d)))) / (2 * eps)
        np.testing.assert_allclose(g.reshape(-1)[i], fd, rtol=rtol, atol=1e-4)


def test_rodrigues_gradient_fd():
    w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3)))
    _fd_check(lambda r: jnp.sum(lbs.rodrigues(r) * w), np.array([0.3, -0.2, 0.5]))


def test_lbs_gradients_fd():
    m = random_flame()
    basis = np.concatenate([m["shapedirs"][:, :, :5], m["exprdirs"][:, :, :3]], 2) * 30
    posedirs = m["posedirs"].reshape(-1, 36).T * 30
    w = jnp.asarray(np.random.default_rng(2).normal(size=(1, m["v_template"].shape[0], 3)), jnp.float32)

    def loss(betas, pose):
        v, _ = lbs.lbs(betas, pose, jnp.asarray(m["v_template"]), jnp.asarray(basis), jnp.asarray(posedirs),
                       jnp.asarray(m["J_regressor"]), (-1, 0, 1, 1, 1), jnp.asarray(m["lbs_weights"]))
        return jnp.sum(v * w)

    rng = np.random.default_rng(3)
    betas, pose = rng.normal(size=(1, 8)), rng.normal(size=(1, 15)) * 0.4
    _fd_check(lambda b: loss(b, jnp.asarray(pose)), betas, eps=1e-2)
    _fd_check(lambda p: loss(jnp.asarray(betas), p), pose, eps=1e-2)


def test_rigid_chain_rotates_children_about_their_joint():
    joints = jnp.asarray([[[0.0, 0, 0], [0, 1, 0], [0, 2, 0], [1, 2, 0], [-1, 2, 0]]])
    rot = jnp.broadcast_to(jnp.eye(3), (1, 5, 3, 3))
    rz = lbs.rodrigues(jnp.asarray([0.0, 0.0, np.pi / 2]))
    rot = rot.at[0, 1].set(rz)  # rotate the neck by 90 degrees about z
    posed, rel = lbs.rigid_transforms(rot, joints, (-1, 0, 1, 1, 1))
    np.testing.assert_allclose(posed[0, 2], [-1.0, 1.0, 0.0], atol=1e-6)  # (0,2) about (0,1) -> (-1,1)
    p = jnp.asarray([0.0, 2.0, 0.0, 1.0])  # a rest point at joint 2, skinned to joint 2
    np.testing.assert_allclose((rel[0, 2] @ p)[:3], [-1.0, 1.0, 0.0], atol=1e-6)


def test_skin_matches_full_4x4_blend():
    rng = np.random.default_rng(4)
    W = rng.dirichlet(np.ones(5), 7).astype(np.float32)
    A = np.tile(np.eye(4, dtype=np.float32), (2, 5, 1, 1))
    A[:, :, :3, :] = rng.normal(size=(2, 5, 3, 4))
    p = rng.normal(size=(2, 7, 3)).astype(np.float32)
    T = np.einsum("vj,bjmn->bvmn", W, A)
    expect = np.einsum("bvmn,bvn->bvm", T, np.concatenate([p, np.ones((2, 7, 1), np.float32)], -1))[..., :3]
    np.testing.assert_allclose(lbs.skin(jnp.asarray(W), jnp.asarray(A), jnp.asarray(p)), expect, atol=1e-5)


def test_rodrigues_half_precision_is_finite_at_zero_and_keeps_dtype():
    # 1e-8 underflows to 0 in float16, so |r + 1e-8| was 0 and R = 0 / 0 = NaN at zero pose.
    for dt in (jnp.float16, jnp.bfloat16):
        r = jnp.zeros((2, 3), dt)
        R = lbs.rodrigues(r)
        assert R.dtype == dt
        np.testing.assert_allclose(np.asarray(R, np.float32), np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-3)
        g = jax.jacobian(lambda x: lbs.rodrigues(x).astype(jnp.float32))(jnp.zeros(3, dt))
        np.testing.assert_allclose(np.asarray(g[..., 2], np.float32), [[0, -1, 0], [1, 0, 0], [0, 0, 0]], atol=1e-2)
        r = jnp.asarray([0.3, -0.2, 0.5], dt)
        np.testing.assert_allclose(np.asarray(lbs.rodrigues(r), np.float32),
                                   Rotation.from_rotvec(np.asarray(r, np.float64)).as_matrix(), atol=1e-2)


def _scipy_hessian_fd(r, h=1e-3):
    """d2 R / dr_i dr_j [3, 3, 3, 3] by central differences of scipy's rotvec -> matrix (float64)."""
    R = lambda x: Rotation.from_rotvec(x).as_matrix()  # noqa: E731
    E = np.eye(3) * h
    H = np.zeros((3, 3, 3, 3))
    for i in range(3):
        for j in range(3):
            H[:, :, i, j] = (R(r + E[i] + E[j]) - R(r + E[i] - E[j]) - R(r - E[i] + E[j]) + R(r - E[i] - E[j])) / (4 * h * h)
    return H


def test_rodrigues_second_derivatives_match_finite_differences():
    # At zero pose (the common case) the old form I + sin(a) K(r / a) + (1 - cos a) K(r / a)^2 with
    # a = |r + 1e-8| ~ 1.7e-8 had 1 - cos a = 0 in float32, so jax.hessian lost the K^2 term
    # there (0 where d2R/dr_i dr_j = (K_i K_j + K_j K_i) / 2), and its sin term's Hessian was a
    # cancellation of 1/a-sized pieces.
    for r in ([0.0, 0.0, 0.0], [1e-4, -2e-4, 3e-5], [0.004, 0.01, -0.003], [0.3, -0.2, 0.5], [1.5, 0.4, -2.0]):
        r = np.asarray(r)
        H = jax.hessian(lbs.rodrigues)(jnp.asarray(r, jnp.float32))
        np.testing.assert_allclose(H, _scipy_hessian_fd(r), atol=2e-3, err_msg=f"r = {r}")
    # jvp of grad of a scalar loss at zero pose, and a third derivative: finite and as above.
    w = jnp.asarray(np.random.default_rng(5).normal(size=(3, 3)), jnp.float32)
    loss = lambda r: jnp.sum(lbs.rodrigues(r) * w)  # noqa: E731
    v = jnp.asarray([0.2, -0.7, 0.4])
    hv = jax.jvp(jax.grad(loss), (jnp.zeros(3),), (v,))[1]
    np.testing.assert_allclose(hv, np.einsum("mnij,mn,j->i", _scipy_hessian_fd(np.zeros(3)), np.asarray(w), v), atol=2e-3)
    assert np.all(np.isfinite(jax.jacfwd(jax.hessian(loss))(jnp.zeros(3))))
    # batched and jitted, zero and non-zero rows together
    rb = jnp.asarray([[0.0, 0.0, 0.0], [0.3, -0.2, 0.5]])
    Hb = jax.jit(jax.vmap(jax.hessian(lbs.rodrigues)))(rb)
    np.testing.assert_allclose(Hb[1], _scipy_hessian_fd(np.asarray(rb[1], np.float64)), atol=2e-3)
    np.testing.assert_allclose(Hb[0], _scipy_hessian_fd(np.zeros(3)), atol=2e-3)
