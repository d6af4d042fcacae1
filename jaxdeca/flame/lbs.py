"""FLAME's skinning in jax.numpy: Rodrigues rotations, the kinematic chain, linear blend skinning.

The same maths as smplx's lbs.py and DECA's decalib/models/lbs.py, written for jit/vmap/grad.
"""
from __future__ import annotations

import jax.numpy as jnp


def rodrigues(rvec):
    """Axis-angle -> rotation matrix (DECA/smplx convention, finite gradients at zero).

    rvec: [..., 3]. Returns [..., 3, 3] in rvec's float dtype. angle = |r + 1e-8| as in the
    original, so the direction r / angle is defined (and differentiable) at r = 0. Half
    precision is computed in float32 (1e-8 underflows to 0 in float16: R = 0 / 0 at r = 0).
    """
    rvec = jnp.asarray(rvec)
    wide = jnp.promote_types(rvec.dtype, jnp.float32)
    out_dtype = rvec.dtype if jnp.issubdtype(rvec.dtype, jnp.floating) else wide
    r = rvec.astype(wide)
    angle = jnp.linalg.norm(r + 1e-8, axis=-1, keepdims=True)  # [..., 1]
    axis = r / angle
    s, c = jnp.sin(angle)[..., None], jnp.cos(angle)[..., None]
    x, y, z = axis[..., 0], axis[..., 1], axis[..., 2]
    zero = jnp.zeros_like(x)
    K = jnp.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(r.shape[:-1] + (3, 3))
    eye = jnp.eye(3, dtype=wide)
    return (eye + s * K + (1.0 - c) * (K @ K)).astype(out_dtype)


def rigid_transforms(rot_mats, joints, parents):
    """World transforms of a kinematic chain.

    rot_mats: [B, J, 3, 3] local rotations; joints: [B, J, 3] rest joint positions;
    parents: static tuple of J ints (-1 for the root, parents precede children).
    Returns (posed_joints [B, J, 3], relative transforms [B, J, 4, 4]) where the relative
    transform maps a rest-pose point skinned to joint j to its posed position.
    """
    B, J = joints.shape[:2]
    rel = jnp.concatenate([joints[:, :1], joints[:, 1:] - joints[:, list(parents[1:])]], 1)
    top = jnp.concatenate([rot_mats, rel[..., None]], -1)  # [B, J, 3, 4]
    bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], joints.dtype), (B, J, 1, 4))
    local = jnp.concatenate([top, bottom], -2)  # [B, J, 4, 4]
    chain = [local[:, 0]]
    for j in range(1, J):
        chain.append(chain[parents[j]] @ local[:, j])
    world = jnp.stack(chain, 1)  # [B, J, 4, 4]
    posed_joints = world[..., :3, 3]
    # Remove the rest-pose joint location: T_rel = world - world @ [joint; 0].
    corr = jnp.einsum("bjik,bjk->bji", world[..., :3, :3], joints)
    rel_t = world.at[..., :3, 3].add(-corr)
    return posed_joints, rel_t


def lbs(betas, full_pose, v_template, basis, posedirs, J_regressor, parents, lbs_weights):
    """Linear blend skinning with pose correctives (smplx.lbs.lbs, pose as axis-angle).

    betas: [B, K] concatenated shape and expression coefficients; full_pose: [B, J*3];
    v_template: [V, 3]; basis: [V, 3, K]; posedirs: [P, V*3] with P = (J-1)*9;
    J_regressor: [J, V]; parents: static tuple; lbs_weights: [V, J].
    Returns (vertices [B, V, 3], joints [B, J, 3]).
    """
    B = betas.shape[0]
    J = J_regressor.shape[0]
    v_shaped = v_template[None] + jnp.einsum("bk,vck->bvc", betas, basis)
    joints = jnp.einsum("jv,bvc->bjc", J_regressor, v_shaped)
    rot = rodrigues(full_pose.reshape(B, J, 3))  # [B, J, 3, 3]
    pose_feature = (rot[:, 1:] - jnp.eye(3, dtype=rot.dtype)).reshape(B, -1)
    v_posed = v_shaped + (pose_feature @ posedirs).reshape(B, -1, 3)
    posed_joints, A = rigid_transforms(rot, joints, parents)
    return skin(lbs_weights, A, v_posed), posed_joints


def skin(lbs_weights, transforms, points):
    """Blends per-joint rigid transforms and applies them: sum_j w_vj (R_j p_v + t_j).

    lbs_weights: [V, J]; transforms: [B, J, 4, 4]; points: [B, V, 3] -> [B, V, 3].
    Same result as smplx's T = W @ A; T[:, :, :3, :3] @ p + T[:, :, :3, 3], written so that
    only the 12 used entries are blended ([B, V, 12]) and the 3x4 product stays one fused
    elementwise pass (no [B, V, 4, 4] temporary, no batched 3x3 matmuls): 5-10x faster on CPU.
    """
    B, J = transforms.shape[:2]
    T = jnp.einsum("vj,bjk->bvk", lbs_weights, transforms[..., :3, :].reshape(B, J, 12))  # [B, V, 12] row-major 3x4
    x, y, z = points[..., 0:1], points[..., 1:2], points[..., 2:3]
    return T[..., 0:12:4] * x + T[..., 1:12:4] * y + T[..., 2:12:4] * z + T[..., 3:12:4]
