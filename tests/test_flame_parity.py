"""Parity with an independent reference: smplx's PyTorch FLAME on the same official-layout pickle.

The model is written with our writer in the official generic_model.pkl layout (plain arrays,
which smplx reads without chumpy); smplx's static landmark embedding is our full 68, so its
landmark output compares to our landmarks3d. Poses include global, jaw, neck and both eyes.
"""
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flame_testing import random_flame
from jaxdeca import flame
from jaxdeca.flame import io


def _smplx_parity(arrays, tmp_path, n_shape, n_exp):
    torch = pytest.importorskip("torch")
    smplx = pytest.importorskip("smplx")
    if not hasattr(np, "bool"):  # smplx 0.1.28 uses np.bool in places
        np.bool = bool
    d = tmp_path / "flame"
    d.mkdir()
    io.write_generic_model_pkl(str(d / "FLAME_NEUTRAL.pkl"), arrays, chumpy=False)
    with open(d / "flame_static_embedding.pkl", "wb") as f:  # our full 68 as smplx's static embedding
        pickle.dump(dict(lmk_face_idx=arrays["full_lmk_faces_idx"].astype(np.int64),
                         lmk_b_coords=arrays["full_lmk_bary_coords"].astype(np.float64)), f)
    B = 4
    ref = smplx.create(str(tmp_path), model_type="flame", num_betas=n_shape, num_expression_coeffs=n_exp,
                       use_face_contour=False, batch_size=B, ext="pkl")
    rng = np.random.default_rng(0)
    shape = rng.normal(size=(B, n_shape)).astype(np.float32)
    exp = rng.normal(size=(B, n_exp)).astype(np.float32)
    pose = (rng.normal(size=(B, 6)) * 0.3).astype(np.float32)
    neck = (rng.normal(size=(B, 3)) * 0.2).astype(np.float32)
    eye = (rng.normal(size=(B, 6)) * 0.2).astype(np.float32)
    with torch.no_grad():
        t = lambda a: torch.from_numpy(a)  # noqa: E731
        o = ref(betas=t(shape), expression=t(exp), global_orient=t(pose[:, :3]), jaw_pose=t(pose[:, 3:]),
                neck_pose=t(neck), leye_pose=t(eye[:, :3]), reye_pose=t(eye[:, 3:]), transl=torch.zeros(B, 3))
    m = flame.from_arrays(arrays, n_shape, n_exp)
    out = jax.jit(m.__call__)(*map(jnp.asarray, (shape, exp, pose, neck, eye)))
    size = float(np.linalg.norm(np.ptp(arrays["v_template"], 0)))
    np.testing.assert_allclose(out["vertices"], o.vertices.numpy(), atol=1e-5 * size)
    np.testing.assert_allclose(out["landmarks3d"], o.joints[:, 5:].numpy(), atol=1e-5 * size)


def test_parity_with_smplx_random_model(tmp_path):
    _smplx_parity(random_flame(), tmp_path, 100, 50)


def test_parity_with_smplx_demo_head(tmp_path):
    _smplx_parity(flame.load_arrays(), tmp_path, 100, 50)
