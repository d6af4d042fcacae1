"""The FLAME head model as a JAX pytree: vertices and landmarks from shape, expression, pose.

`load_model(path=None)` returns a `FlameModel` for the embedded demo head or for a FLAME npz
written by `python -m jaxdeca.flame.convert`. A FlameModel is a pytree of arrays (pass it
into jit'd functions as an argument) with static sizes; calling it runs FLAME:

    model = load_model()
    out = model(shape [B,100], expression [B,50], pose [B,6])   # pose = global(3) + jaw(3)
    out["vertices"] [B,V,3], out["landmarks2d"] [B,68,3], out["landmarks3d"] [B,68,3]
"""
from __future__ import annotations

import os

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxdeca.explicit_sharding import batch_sharding
from jaxdeca.flame import io, lbs

PARENTS = io.FLAME_PARENTS
DEMO_HEAD = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "demo_head.npz")


@flax.struct.dataclass
class FlameModel:
    """FLAME arrays (see CONTRIBUTING.md for the npz schema) with DECA's forward pass."""

    v_template: jax.Array  # [V, 3]
    basis: jax.Array  # [V, 3, n_shape + n_exp]
    posedirs: jax.Array  # [36, V*3]
    J_regressor: jax.Array  # [5, V]
    lbs_weights: jax.Array  # [V, 5]
    faces: jax.Array  # [F, 3] int32
    static_lmk_faces_idx: jax.Array  # [51]
    static_lmk_bary_coords: jax.Array  # [51, 3]
    dynamic_lmk_faces_idx: jax.Array  # [79, 17]
    dynamic_lmk_bary_coords: jax.Array  # [79, 17, 3]
    full_lmk_faces_idx: jax.Array  # [68]
    full_lmk_bary_coords: jax.Array  # [68, 3]
    n_shape: int = flax.struct.field(pytree_node=False, default=100)
    n_exp: int = flax.struct.field(pytree_node=False, default=50)

    def __call__(self, shape, expression, pose, neck_pose=None, eye_pose=None):
        """FLAME forward (DECA's FLAME.forward).

        shape: [B, n_shape]; expression: [B, n_exp]; pose: [B, 6] = global rotation (3) and
        jaw rotation (3), axis-angle; neck_pose: [B, 3] (zeros if None); eye_pose: [B, 6]
        (zeros if None). Returns dict(vertices [B,V,3], landmarks2d [B,68,3] (17 dynamic
        contour + 51 static, iBUG-68 order), landmarks3d [B,68,3] (the fixed 68)).
        Raises ValueError for any other code shape (e.g. a full 15-value pose).
        """
        check_codes(dict(shape=shape, expression=expression, pose=pose, neck_pose=neck_pose, eye_pose=eye_pose),
                    dict(shape=self.n_shape, expression=self.n_exp, pose=6, neck_pose=3, eye_pose=6))
        B = shape.shape[0]
        dtype = self.v_template.dtype
        split = batch_sharding(pose)  # under an Explicit-axes mesh, the arrays made here are split as pose
        neck_pose = jnp.zeros((B, 3), dtype, out_sharding=split) if neck_pose is None else neck_pose
        eye_pose = jnp.zeros((B, 6), dtype, out_sharding=split) if eye_pose is None else eye_pose
        betas = jnp.concatenate([shape, expression], axis=1)
        full_pose = jnp.concatenate([pose[:, :3], neck_pose, pose[:, 3:6], eye_pose], axis=1)
        # rotations in the model's precision at least: all-bfloat16 poses put the contour's yaw
        # a table row off (its rounding is ~0.3 degrees at 40) and R - I's correctives coarse
        full_pose = full_pose.astype(jnp.promote_types(full_pose.dtype, dtype))
        verts, _ = lbs.lbs(betas, full_pose, self.v_template, self.basis, self.posedirs,
                           self.J_regressor, PARENTS, self.lbs_weights)
        row = dynamic_row(full_pose)
        dyn_faces = self.dynamic_lmk_faces_idx.at[row].get(out_sharding=split)  # [B, 17]
        dyn_bary = self.dynamic_lmk_bary_coords.at[row].get(out_sharding=split)  # [B, 17, 3]
        lmk_faces = jnp.concatenate([dyn_faces, jnp.broadcast_to(self.static_lmk_faces_idx, (B, 51),
                                                                 out_sharding=split)], 1)
        lmk_bary = jnp.concatenate([dyn_bary, jnp.broadcast_to(self.static_lmk_bary_coords, (B, 51, 3),
                                                               out_sharding=split)], 1)
        return dict(
            vertices=verts,
            landmarks2d=barycentric_landmarks(verts, self.faces, lmk_faces, lmk_bary),
            landmarks3d=self.select_3d68(verts),
        )

    def select_3d68(self, values):
        """Per-vertex values [B, V, C] at the fixed 68 landmarks (DECA's seletec_3d68: the
        vertices give landmarks3d, the transformed normals DECA's landmark visibility) -> [B, 68, C]."""
        B, split = values.shape[0], batch_sharding(values)
        return barycentric_landmarks(values, self.faces,
                                     jnp.broadcast_to(self.full_lmk_faces_idx, (B, 68), out_sharding=split),
                                     jnp.broadcast_to(self.full_lmk_bary_coords, (B, 68, 3), out_sharding=split))


def check_codes(codes: dict, widths: dict) -> None:
    """Raises ValueError unless every code that is not None is [B, width] with one B.

    codes: name -> array or None; widths: name -> expected number of columns. Shapes are
    static, so this also runs under jit/vmap. (A full 15-value pose would otherwise be read
    as global + jaw = its neck rotation.)
    """
    B = None
    for name, code in codes.items():
        if code is None:
            continue
        hint = " (global, jaw)" if name == "pose" else ""
        if code.ndim != 2 or code.shape[1] != widths[name]:
            raise ValueError(f"FLAME: {name} must be [B, {widths[name]}]{hint}, found {tuple(code.shape)}")
        if B is None:
            B = code.shape[0]
        elif code.shape[0] != B:
            raise ValueError(f"FLAME: {name} must be [B, {widths[name]}] with B = {B}, found {tuple(code.shape)}")


def barycentric_landmarks(verts, faces, lmk_faces, lmk_bary):
    """verts: [B, V, 3]; faces: [F, 3]; lmk_faces: [B, L]; lmk_bary: [B, L, 3] -> [B, L, 3]."""
    faces = jnp.asarray(faces)  # numpy faces cannot be indexed by the traced lmk_faces
    vid = faces.at[lmk_faces].get(out_sharding=batch_sharding(lmk_faces))  # [B, L, 3]
    tri = jax.vmap(lambda v, i: v[i])(verts, vid)  # [B, L, 3, 3]
    return jnp.einsum("blk,blkc->blc", lmk_bary, tri, precision=lbs.HIGHEST)  # full float32 on GPUs/TPUs (lbs)


def yaw_degrees(rot):
    """DECA's rot_mat_to_euler: atan2(-R[2,0], sqrt(R00^2 + R10^2)) in degrees. rot: [B,3,3] -> [B]."""
    sq = rot[:, 0, 0] ** 2 + rot[:, 1, 0] ** 2
    sy = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)  # a finite gradient at +-90 degrees too
    return jnp.degrees(jnp.arctan2(-rot[:, 2, 0], sy))


def dynamic_row(full_pose):
    """Row of the 79-row contour table for each pose (DECA's convention, yaw not negated).

    full_pose: [B, 15] (global, neck, jaw, eyes). Uses the rotation global @ neck; yaw is
    clamped to at most 39 and rounded; negative yaw y maps to 39 - y (-1..-39 -> 40..78),
    anything below -39 to 78. Returns [B] int32. No gradient flows through the row choice.
    """
    rots = lbs.rodrigues(jax.lax.stop_gradient(full_pose[:, :6]).reshape(-1, 2, 3))
    rel = jnp.matmul(rots[:, 0], rots[:, 1], precision=lbs.HIGHEST)
    yaw = jnp.round(jnp.minimum(yaw_degrees(rel), 39.0)).astype(jnp.int32)
    return jnp.where(yaw < 0, jnp.where(yaw < -39, 78, 39 - yaw), yaw)


def check_components(arrays: dict, n_shape: int, n_exp: int, where: str = "FLAME model") -> None:
    """Refuses (FlameFileError naming `where`) a FLAME npz dict with fewer identity or expression
    components than asked for."""
    S, E = arrays["shapedirs"].shape[2], arrays["exprdirs"].shape[2]
    if n_shape > S or n_exp > E:
        raise io.FlameFileError(f"{where}: asked for n_shape={n_shape}, n_exp={n_exp} but the file has {S} identity "
                                f"and {E} expression components")


def from_arrays(arrays: dict, n_shape: int = 100, n_exp: int = 50, where: str = "FLAME model") -> FlameModel:
    """Builds a FlameModel from a FLAME npz dict (CONTRIBUTING schema), validating it."""
    io.validate(arrays, where)
    check_components(arrays, n_shape, n_exp, where)
    V = arrays["v_template"].shape[0]
    f32 = lambda k: jnp.asarray(arrays[k], jnp.float32)  # noqa: E731
    i32 = lambda k: jnp.asarray(arrays[k], jnp.int32)  # noqa: E731
    basis = np.concatenate([arrays["shapedirs"][:, :, :n_shape], arrays["exprdirs"][:, :, :n_exp]], 2)
    posedirs = np.asarray(arrays["posedirs"], np.float32).reshape(V * 3, -1).T
    return FlameModel(
        v_template=f32("v_template"), basis=jnp.asarray(basis, jnp.float32), posedirs=jnp.asarray(posedirs),
        J_regressor=f32("J_regressor"), lbs_weights=f32("lbs_weights"), faces=i32("faces"),
        static_lmk_faces_idx=i32("static_lmk_faces_idx"), static_lmk_bary_coords=f32("static_lmk_bary_coords"),
        dynamic_lmk_faces_idx=i32("dynamic_lmk_faces_idx"), dynamic_lmk_bary_coords=f32("dynamic_lmk_bary_coords"),
        full_lmk_faces_idx=i32("full_lmk_faces_idx").reshape(68), full_lmk_bary_coords=f32("full_lmk_bary_coords").reshape(68, 3),
        n_shape=n_shape, n_exp=n_exp)


def load_arrays(path: str | None = None) -> dict:
    """The FLAME npz dict (topology, UVs, masks, albedo too) of `path`, or of the demo head.

    path: None (the demo head), a FLAME npz, or for convenience the official files: a folder
    like DECA's data/ or the generic_model.pkl inside it (read with io.read_official).
    """
    if path is None:
        return io.load_npz(DEMO_HEAD)
    if os.path.isdir(path) or path.endswith(".pkl"):
        return io.read_official(path)
    return io.load_npz(path)


def load_model(path: str | None = None, n_shape: int = 100, n_exp: int = 50) -> FlameModel:
    """FLAME from a FLAME npz (`python -m jaxdeca.flame.convert`), an official folder or
    generic_model.pkl, or the demo head if None. Refuses n_shape/n_exp above the file's."""
    return from_arrays(load_arrays(path), n_shape, n_exp, where=DEMO_HEAD if path is None else path)
