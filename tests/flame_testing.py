"""A small random-but-valid FLAME npz dict for tests (not a head: random geometry)."""
import numpy as np


def random_flame(V=120, F=200, T=140, n_shape=100, n_exp=50, R=8, K=6, seed=0):
    rng = np.random.default_rng(seed)
    J = rng.random((5, V)).astype(np.float32)
    W = rng.random((V, 5)).astype(np.float32)
    return dict(
        v_template=(rng.normal(size=(V, 3)) * 0.05).astype(np.float32),
        shapedirs=(rng.normal(size=(V, 3, n_shape)) * 1e-3).astype(np.float32),
        exprdirs=(rng.normal(size=(V, 3, n_exp)) * 1e-3).astype(np.float32),
        posedirs=(rng.normal(size=(V, 3, 36)) * 1e-3).astype(np.float32),
        J_regressor=J / J.sum(1, keepdims=True), parents=np.array([-1, 0, 1, 1, 1], np.int32),
        lbs_weights=W / W.sum(1, keepdims=True), faces=rng.integers(0, V, (F, 3)).astype(np.int32),
        uv_coords=rng.random((T, 2)).astype(np.float32), uv_faces=rng.integers(0, T, (F, 3)).astype(np.int32),
        static_lmk_faces_idx=rng.integers(0, F, 51).astype(np.int32),
        static_lmk_bary_coords=rng.dirichlet([1, 1, 1], 51).astype(np.float32),
        dynamic_lmk_faces_idx=rng.integers(0, F, (79, 17)).astype(np.int32),
        dynamic_lmk_bary_coords=rng.dirichlet([1, 1, 1], (79, 17)).astype(np.float32),
        full_lmk_faces_idx=rng.integers(0, F, 68).astype(np.int32),
        full_lmk_bary_coords=rng.dirichlet([1, 1, 1], 68).astype(np.float32),
        albedo_mean=rng.random((R, R, 3)).astype(np.float32),
        albedo_basis=(rng.normal(size=(R, R, 3, K)) * 0.1).astype(np.float32),
    )
