"""How the DECA stage tasks wire their parts together, checked on the test-sized configs with
random networks (no trained checkpoint): the detail stage's frozen coarse encoder in eval mode,
the consistency swap's identity groups, the detail and coarse eval metrics, the pretrain stage's
lack of an identity term. Shapes alone are traced (jax.eval_shape) where a call's arguments are what counts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test_coarse
from jaxdeca import models
from jaxdeca.losses import consistency
from jaxdeca.train import deca_coarse, deca_common, deca_detail


def _detail_task():
    config = test_coarse.get_config("detail")
    config.init.coarse_checkpoint = "/nonexistent/coarse"  # only required to be set; a fresh start reads it
    return deca_detail.DetailTask(config)


def _detail_variables(task, key):
    """Random (params, batch_stats, frozen) of the detail stage; the frozen E_flame's running
    statistics moved away from a fresh net's (0, 1), as a trained encoder's are."""
    k1, k2, k3 = jax.random.split(key, 3)
    ef = task.init_net("E_flame", k1)
    ef = dict(ef, batch_stats=jax.tree.map(lambda x: x * 4.0 + 0.5, ef["batch_stats"]))
    enc, dec = task.init_net("E_detail", k2), task.init_net("D_detail", k3)
    params = {"E_detail": enc["params"], "D_detail": dec["params"]}
    stats = {"E_detail": enc["batch_stats"], "D_detail": dec["batch_stats"]}
    return params, stats, {"E_flame": ef}


def test_detail_stage_runs_the_frozen_coarse_encoder_in_eval_mode():
    """DECA freezes the coarse encoder in the detail stage (E_flame.eval()): its BatchNorms use the
    running statistics, so an image's codes are E_flame.apply(train=False)'s and do not depend on
    the other images of the batch (train-mode BN would normalise by the batch's statistics)."""
    task = _detail_task()
    _, _, frozen = _detail_variables(task, jax.random.key(0))
    images = jax.random.uniform(jax.random.key(1), (8, 48, 48, 3))
    codes8 = jax.jit(task.coarse_codes)(frozen, images)
    codes2 = jax.jit(task.coarse_codes)(frozen, images[:2])
    ef = frozen["E_flame"]
    raw = task.nets["E_flame"].apply({"params": ef["params"], "batch_stats": ef["batch_stats"]}, images, train=False)
    want = deca_common.camera_codes(models.decompose_code(raw), task.model)
    for name in ("shape", "exp", "pose", "cam", "tex", "light"):
        np.testing.assert_allclose(codes2[name], codes8[name][:2], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{name}: the codes of images 0-1 depend on the rest of the batch")
        np.testing.assert_allclose(codes8[name], want[name], rtol=1e-4, atol=1e-5,
                                   err_msg=f"{name}: not E_flame.apply(train=False)'s codes")


def _batch_spec(b, size=48):
    """The shapes of a training batch of b images of the test configs' size (for jax.eval_shape)."""
    return {"image": jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32),
            "landmarks": jax.ShapeDtypeStruct((b, 68, 3), jnp.float32),
            "mask": jax.ShapeDtypeStruct((b, size, size, 1), jnp.float32)}


def _spy(monkeypatch, module, name):
    """Replaces module.<name> (a consistency swap) by one recording (n_identities, k)."""
    calls, real = [], getattr(module, name)

    def spy(key, codes, n_identities, k):
        calls.append((n_identities, k))
        return real(key, codes, n_identities, k)
    monkeypatch.setattr(module, name, spy)
    return calls


def _sources_within_identity(n_identities, k):
    """The rows the swap gives rows 0..n-1 of the doubled batch, by the real swap with these
    arguments, as (source row, row) pairs."""
    n = n_identities * k
    rows = jnp.arange(n, dtype=jnp.float32)[:, None]
    swapped = consistency.swap_codes(jax.random.key(3), {"c": rows}, "c", n_identities, k)["c"][n:, 0]
    return [(int(s), i) for i, s in enumerate(np.asarray(swapped))]


@pytest.mark.parametrize("stage", ["coarse", "detail"])
def test_consistency_swap_permutes_within_each_identity_group(monkeypatch, stage):
    """A batch is identities x K images, identity-major; DECA's shape (coarse) and detail (detail)
    consistency permute the code within each identity's K images, so the swap is called with
    (batch // K, K): every swapped row's code comes from another image of the same person."""
    b = 8
    batch = _batch_spec(b)
    if stage == "coarse":
        config = test_coarse.get_config("coarse")
        config.loss.photo = 0.0  # landmarks only: the swap is reached all the same
        task = deca_coarse.CoarseTask(config)
        calls = _spy(monkeypatch, deca_coarse, "shape_consistency")
        t = task.net_template("E_flame")
        args = ({"E_flame": t["params"]}, {"E_flame": t["batch_stats"]}, {})
    else:
        task = _detail_task()
        calls = _spy(monkeypatch, deca_detail, "detail_consistency")
        t = {n: task.net_template(n) for n in ("E_flame", "E_detail", "D_detail")}
        args = ({n: t[n]["params"] for n in ("E_detail", "D_detail")},
                {n: t[n]["batch_stats"] for n in ("E_detail", "D_detail")}, {"E_flame": t["E_flame"]})
    k = task.k
    assert k == 2
    jax.eval_shape(task.loss_fn, *args, batch, jax.random.key(0))
    assert calls == [(b // k, k)], f"{stage} consistency swap called with {calls}, want [(batch // K, K)]"
    for src, row in _sources_within_identity(*calls[0]):
        assert src // k == row // k, f"row {row} got the code of row {src}, another identity's"


def _encoder_in_view(task):
    """Variables of a coarse encoder whose codes put the head in view: small random codes around
    the demo's initial camera scale (a random encoder's leave no pixel or texel covered)."""
    ef = task.init_net("E_flame", jax.random.key(0))
    ep = dict(ef["params"], layers_2=dict(ef["params"]["layers_2"], kernel=ef["params"]["layers_2"]["kernel"] * 0.1))
    return dict(ef, params=deca_coarse.init_cam_scale(ep, 8.0))


def _batch_of_four(task):
    """The first training batch of 4 images (image, mask, landmarks) as jax arrays."""
    batch = task.make_loader(4, 0, 1).next()
    return {name: jnp.asarray(batch[name]) for name in ("image", "mask", "landmarks")}


def test_detail_eval_uv_photo_l1_is_the_mean_abs_error_per_channel_over_visible_texels():
    """eval_fn's uv_photo_l1 = sum(vis * |texture - gt|) / (3 * sum(vis)): the mean absolute
    error of each colour channel over the visible texels (vis is one channel, the texture three)."""
    task = _detail_task()
    params, stats, frozen = _detail_variables(task, jax.random.key(0))
    frozen["E_flame"] = _encoder_in_view(task)
    batch = _batch_of_four(task)

    @jax.jit
    def run(params, stats, frozen, batch):
        ev = task.eval_fn(params, stats, frozen, batch)
        f, _ = task.forward(params, stats, frozen, batch, None, False)
        return ev["uv_photo_l1"], f["render"]["uv_texture"], f["uv_texture_gt"], f["uv_vis_mask"]
    got, tex, gt, vis = (np.asarray(x, np.float64) for x in run(params, stats, frozen, batch))
    assert vis.shape[-1] == 1 and tex.shape[-1] == 3 and vis.sum() > 0
    diff = np.abs(tex - gt)
    want = np.mean([np.sum(vis[..., 0] * diff[..., c]) / np.sum(vis) for c in range(3)])
    assert want > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_coarse_eval_photo_l1_is_the_mean_abs_error_per_channel_over_skin_coverage_and_face():
    """The coarse stage's eval_fn adds photo_l1 = the mean absolute error of each colour channel of
    the albedo x SH render against the photo over skin mask x hard coverage x UV face-eye mask;
    the pretrain stage (no albedo or light to fit) reports landmarks only."""
    config = test_coarse.get_config("coarse")
    task = deca_coarse.CoarseTask(config)
    ef = _encoder_in_view(task)
    params, stats = {"E_flame": ef["params"]}, {"E_flame": ef["batch_stats"]}
    batch = _batch_of_four(task)

    @jax.jit
    def run(params, stats, batch):
        ev = task.eval_fn(params, stats, {}, batch)
        codes, _ = task._encode(params, stats, batch["image"], False)
        out, _, trans = task.decode_flame(codes)
        r = task.render(out, trans, task.albedo(codes), codes["light"])
        return ev, r["images"], r["mask"], task.face_eye_mask_images(r["grid"])
    ev, rendered, cover, face = jax.tree.map(lambda x: np.asarray(x, np.float64), run(params, stats, batch))
    m = np.asarray(batch["mask"], np.float64)[..., 0] * cover * face[..., 0]
    assert set(np.unique(cover)) <= {0.0, 1.0} and m.sum() > 10
    diff = np.abs(rendered - np.asarray(batch["image"], np.float64))
    want = np.mean([np.sum(m * diff[..., c]) / np.sum(m) for c in range(3)])
    assert want > 1e-3
    np.testing.assert_allclose(ev["photo_l1"], want, rtol=1e-4)
    pretrain = deca_coarse.CoarseTask(test_coarse.get_config("pretrain"))
    assert set(jax.eval_shape(pretrain.eval_fn, params, stats, {}, batch)) == {"landmark_l1", "landmark_loss"}


def test_pretrain_stage_has_no_identity_term_whatever_loss_id_says(monkeypatch):
    """DECA's pretrain has no identity loss: a pretrain stage given --config.loss.id=0.2 keeps its
    id weight at 0, so it neither loads nor needs the VGGFace2 network (config.weights.vggface2
    unset here) and its loss is landmarks and regularisers alone."""
    config = test_coarse.get_config("pretrain")
    config.loss.id = 0.2
    assert not config.weights.get("vggface2")
    task = deca_coarse.CoarseTask(config)
    assert task.weights["id"] == 0.0
    assert "vggface2" not in task.frozen_features
    _, _, frozen = jax.eval_shape(task.resume_variables, jax.random.key(0))
    assert "vggface2" not in frozen
    batch = _batch_spec(4)
    t = task.net_template("E_flame")
    _, (terms, _) = jax.eval_shape(task.loss_fn, {"E_flame": t["params"]}, {"E_flame": t["batch_stats"]},
                                   dict(task.frozen_features), batch, jax.random.key(0))
    assert "identity" not in terms and "landmark" in terms, sorted(terms)


def _changed(value):
    """Another value of a loss field of the same type: a switch flipped, a weight moved (off ->
    on, on -> another weight)."""
    if isinstance(value, bool):
        return not value
    return value + 0.75 if value else 0.3


def loss_task(stage, loss=None):
    """`stage`'s task on the test-sized config (config.loss updated by `loss`) and the arguments
    of its loss_fn but the batch and rng: (params, batch_stats, frozen) of untrained networks."""
    config = test_coarse.get_config(stage)
    config.loss.update(loss or {})
    if stage == "detail":
        config.init.coarse_checkpoint = "/nonexistent/coarse"
        task = deca_detail.DetailTask(config)
        t = {n: task.net_template(n) for n in ("E_flame", "E_detail", "D_detail")}
        return task, ({n: t[n]["params"] for n in ("E_detail", "D_detail")},
                      {n: t[n]["batch_stats"] for n in ("E_detail", "D_detail")}, {"E_flame": t["E_flame"]})
    task = deca_coarse.CoarseTask(config)
    t = task.net_template("E_flame")
    return task, ({"E_flame": t["params"]}, {"E_flame": t["batch_stats"]}, {})


def _loss_program(stage, loss):
    """The traced program (jaxpr text and its constants) of `stage`'s training loss on a batch of
    4 test-sized images, with config.loss updated by `loss`: one program for each set of values
    the stage trains with."""
    task, args = loss_task(stage, loss)
    closed = jax.make_jaxpr(task.loss_fn)(*args, _batch_spec(4), jax.random.key(0))
    return str(closed.jaxpr), [np.asarray(c) for c in closed.consts]


def _same_program(a, b):
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a[1], b[1]))


@pytest.mark.parametrize("stage, loss", [("pretrain", {}), ("coarse", {}), ("coarse", {"photo": 0.0}),
                                         ("detail", {})])
def test_loss_fields_read_are_the_fields_the_stage_trains_with(stage, loss):
    """The demo records only the loss fields a stage reads (deca_common.loss_fields_read), so that
    a weight of another stage (--config.stage_defaults.loss.photo_D) leaves a finished pretrain
    and coarse finished; before, they were refused as trained with another config. Checked on the
    stage's traced loss: every other field changed at once leaves the program as it is, and each
    listed field changed alone changes it (but id and mrf, which load pretrained networks)."""
    from jaxdeca.losses.defaults import default_loss_config
    base_config = test_coarse.get_config(stage).loss
    base_config.update(loss)
    base = _loss_program(stage, loss)
    read = deca_common.loss_fields_read(stage, base_config)
    fields = default_loss_config().to_dict()
    unread = {k: _changed(base_config[k]) for k in fields if k not in read}
    assert unread, stage
    assert _same_program(base, _loss_program(stage, dict(loss, **unread))), \
        f"{stage}: one of {sorted(unread)} changes the loss; loss_fields_read should list it"
    for k in read:
        if k in ("id", "mrf"):
            continue
        assert not _same_program(base, _loss_program(stage, dict(loss, **{k: _changed(base_config[k])}))), \
            f"{stage}: {k} changes nothing; loss_fields_read should leave it out"
