"""The embedded demo head: schema, closed outward mesh, anatomy of landmarks and modes."""
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeca import flame
from jaxdeca.assets import make_demo_head
from jaxdeca.flame import io


@pytest.fixture(scope="module")
def head():
    return flame.load_arrays()


@pytest.fixture(scope="module")
def model(head):
    return flame.from_arrays(head)


def _run(model, shape=None, exp=None, pose=None):
    z = lambda n: jnp.zeros((1, n))  # noqa: E731
    return {k: np.asarray(v[0]) for k, v in model(z(100) if shape is None else shape, z(50) if exp is None else exp,
                                                   z(6) if pose is None else pose).items()}


def test_schema_and_size(head):
    io.validate(head, "demo head")
    assert 2000 <= head["v_template"].shape[0] <= 6000
    assert head["shapedirs"].shape[2] >= 100 and head["exprdirs"].shape[2] >= 50
    assert head["albedo_basis"].shape[3] >= 50 and all(v.dtype != np.float16 for v in head.values())
    span = np.ptp(head["v_template"], 0)
    assert 0.13 < span[0] < 0.19 and 0.18 < span[1] < 0.30  # a human-sized head, metres


def test_closed_and_outward(head):
    f = head["faces"].astype(np.int64)
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert np.all(counts == 2)  # every edge shared by exactly two faces
    v = head["v_template"].astype(np.float64)
    vol = np.einsum("fc,fc->f", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6
    assert vol > 0
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    assert area.min() > 1e-10  # no degenerate triangles


def test_landmarks_on_the_right_anatomy(model):
    lmk = _run(model)["landmarks3d"]
    static = lmk[17:]
    assert np.argmax(static[:, 2]) + 17 == 30  # nose tip is the most forward static point
    assert lmk[36, 0] < lmk[39, 0] < lmk[42, 0] < lmk[45, 0]  # right eye (x<0) then left eye
    assert lmk[48, 0] < lmk[54, 0] and lmk[0, 0] < 0 < lmk[16, 0]
    brow_y, eye_y = lmk[17:27, 1].mean(), lmk[36:48, 1].mean()
    assert brow_y > eye_y > lmk[30, 1] > lmk[51, 1] > lmk[57, 1] > lmk[8, 1]  # top to bottom
    assert lmk[8, 1] == lmk[:17, 1].min()  # chin is the lowest contour point


def test_dynamic_contour_rows(head, model):
    rows = head["dynamic_lmk_faces_idx"]
    assert not np.array_equal(rows[0], rows[30]) and not np.array_equal(rows[0], rows[69])
    np.testing.assert_array_equal(rows[0], head["full_lmk_faces_idx"][:17])
    out = {d: _run(model, pose=jnp.asarray([[0.0, np.deg2rad(d), 0, 0, 0, 0]]))["landmarks2d"] for d in (-30, 0, 30)}
    assert not np.allclose(out[-30][:17], out[30][:17])


def test_jaw_opens_the_mouth(model):
    rest = _run(model)
    open_ = _run(model, pose=jnp.asarray([[0, 0, 0, 0.3, 0, 0]]))
    gap = lambda o: np.linalg.norm(o["landmarks3d"][62] - o["landmarks3d"][66])  # noqa: E731
    assert gap(open_) > gap(rest) + 0.01  # > 1 cm more between the inner lips
    np.testing.assert_allclose(open_["landmarks3d"][30], rest["landmarks3d"][30], atol=1e-4)  # nose stays
    assert open_["landmarks3d"][8, 1] < rest["landmarks3d"][8, 1] - 0.005  # the chin drops


def test_identity_and_expression_modes(model):
    rest = _run(model)["landmarks3d"]
    wide = _run(model, shape=jnp.zeros((1, 100)).at[0, 0].set(2.0))["landmarks3d"]
    assert np.ptp(wide[:17, 0]) > np.ptp(rest[:17, 0]) * 1.05  # mode 0: wider face
    brows = _run(model, exp=jnp.zeros((1, 50)).at[0, 0].set(2.0))["landmarks3d"]
    assert brows[19, 1] > rest[19, 1] + 0.005 and brows[24, 1] > rest[24, 1] + 0.005
    smile = _run(model, exp=jnp.zeros((1, 50)).at[0, 3].set(2.0))["landmarks3d"]
    assert smile[48, 1] > rest[48, 1] + 0.005 and smile[54, 1] > rest[54, 1] + 0.005
    closed = _run(model, exp=jnp.zeros((1, 50)).at[0, 2].set(2.0))["landmarks3d"]
    assert closed[37, 1] < rest[37, 1] - 0.005  # upper lid comes down


def test_uv_layout_and_masks(head):
    uv, uvf = head["uv_coords"], head["uv_faces"]
    assert uv.min() >= 0 and uv.max() <= 1
    tri = uv[uvf]
    area = 0.5 * ((tri[:, 1, 0] - tri[:, 0, 0]) * (tri[:, 2, 1] - tri[:, 0, 1]) - (tri[:, 2, 0] - tri[:, 0, 0]) * (tri[:, 1, 1] - tri[:, 0, 1]))
    assert np.abs(area).sum() < 1.01  # no triangle wraps across the seam
    m = head["uv_face_eye_mask"]
    assert m[128, 128] == 1 and m[5, 5] == 0 and 0.15 < m.mean() < 0.6
    assert head["uv_face_mask"].sum() < m.sum()  # eyes removed


def test_generator_is_deterministic_and_matches_the_shipped_file(head):
    raw = np.load(flame.DEMO_HEAD)
    assert all(raw[k].dtype in (np.float32, np.int32) for k in raw.files)  # float32 on disk, not only after loading
    fresh = make_demo_head.storage_dtypes(make_demo_head.generate(seed=0))
    for k, v in fresh.items():
        np.testing.assert_allclose(np.asarray(v, np.float32), head[k], atol=0, err_msg=k)


def test_roundtrip_through_official_layout(tmp_path, head):
    paths = io.write_official(str(tmp_path), head, chumpy=True)
    back = io.assemble(paths["model_pkl"], paths["landmarks"], paths["obj"], paths["albedo"], paths["uv_face_eye_mask"],
                       paths["uv_face_mask"], paths["fixed_displacement"])
    for k, v in head.items():
        if k in ("shapedirs", "exprdirs"):
            np.testing.assert_allclose(back[k][:, :, :v.shape[2]], v, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_allclose(back[k], v, atol=1e-5, err_msg=k)
