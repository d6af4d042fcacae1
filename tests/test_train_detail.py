"""DECA detail stage and the stage chain: pretrain -> coarse -> detail with test-sized configs,
frozen coarse encoder, stage export, tfds data source, config path errors, the demo job."""
import json
import os
import re
import shutil
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from configs import demo as demo_config
from configs import test_coarse
from jaxdeca import main as jmain
from jaxdeca.train import deca_common, deca_detail, export, loop, paths, run


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The tiny demo job (the train_tiny_model notebook's config as it is) run once: the stage
    chain pretrain -> coarse -> detail in path/<stage>, and the state each loop.train returned
    (states[stage], the live state its last checkpoint was saved from). Its coarse stage is
    what the detail tests start from, its detail stage what the apps read."""
    tmp = tmp_path_factory.mktemp("demo")
    states, train = {}, loop.train

    def recording(config, workdir, task):
        out = train(config, workdir, task)
        states[str(config.stage)] = out["state"]
        return out
    with pytest.MonkeyPatch.context() as m:
        m.setattr(loop, "train", recording)
        jmain.run_mode(demo_config.get_config("tiny"), str(tmp))
    assert sorted(states) == ["coarse", "detail", "pretrain"]
    return SimpleNamespace(path=tmp, states=states)


@pytest.fixture(scope="module")
def coarse_dir(demo_run):
    """A workdir holding a trained pretrain/ and coarse/ stage (test-sized networks, the demo's
    config.model.cam_scale='abs')."""
    return demo_run.path


def detail_config(coarse_dir):
    """configs/test_coarse.py's detail stage started from coarse_dir's coarse stage, with that
    stage's camera scale (a stage is refused another one than the stage it starts from)."""
    config = test_coarse.get_config("detail")
    config.init.coarse_checkpoint = str(coarse_dir / "coarse")
    config.model.cam_scale = demo_config.get_config("tiny").stage_defaults.model.cam_scale
    return config


def test_coarse_starts_from_pretrain(coarse_dir):
    pre = export.inference_variables(str(coarse_dir / "pretrain"))["E_flame"]
    first = export.load_stage(str(coarse_dir / "coarse"))
    assert first["stage"] == "coarse" and first["step"] == demo_config.get_config("tiny").coarse.train.num_steps == 2
    # two Adam steps move the weights a little; a fresh init would be unrelated
    a = np.asarray(pre["params"]["layers_2"]["kernel"])
    b = np.asarray(first["params"]["E_flame"]["layers_2"]["kernel"])
    assert np.abs(a - b).max() < 0.05 < np.abs(a).max()


class _FixedBatch:
    """A loader that repeats one batch: the loss must fall when the step optimises it."""

    def __init__(self, batch):
        self.batch = batch

    def next(self):
        return self.batch

    def position(self):
        return {}

    def restore(self, position):
        pass


def test_detail_learns_with_frozen_coarse(coarse_dir, tmp_path):
    """On one fixed batch the detail networks lower the detail loss below that of their initial
    values (the first step's loss). Only ~2% of it is theirs to lower: the rest is the photometric
    error of the frozen, barely trained coarse stage's albedo and light. At lr 3e-3 the 40 steps
    fall about steadily, to 0.984 x the first loss with jax 0.10.2 (0.3191 -> 0.3140) and 0.984
    with 0.11.2 (0.4415 -> 0.4344). The test used to run 12 steps at lr 1e-2 and compare them with
    its first 3: those overshoot (0.319 -> 0.359 by step 5, back to 0.321 by step 12), and it passed
    at 0.9695 against its 0.97 with 0.10.2 and failed with 0.11.2 (1.017).
    Still fragile: it holds for the suite's build (conftest's XLA_FLAGS). With XLA's default
    optimisation (--xla_backend_optimization_level=3 --xla_cpu_use_fusion_emitters=true) the tiny
    demo's coarse stage comes out otherwise, and the detail networks start at a loss (0.1950) that
    none of the 40 steps goes below; the old form passed there at 0.9699. A coarse stage that
    leaves the detail networks more to learn is the fix (not done)."""
    config = detail_config(coarse_dir)
    config.train.update(dict(num_steps=40, eval_every=40))
    config.optim.learning_rate = 3e-3
    config.loss.detail_consistency = False  # a fixed objective: no random code swaps between steps
    task = run.make_task(config)
    fixed = task.make_loader(4, 0, 1).next()
    task.make_loader = lambda *a: _FixedBatch(fixed)
    out = loop.train(config, str(tmp_path / "detail"), task)
    losses = np.array([l for _, l in out["losses"]])
    assert np.all(np.isfinite(losses)) and losses[-3:].mean() < 0.99 * losses[0], losses
    st = out["state"]
    assert set(st.params) == {"E_detail", "D_detail"} and "E_flame" not in st.params
    coarse = export.inference_variables(str(coarse_dir / "coarse"))["E_flame"]
    np.testing.assert_array_equal(np.asarray(st.frozen["E_flame"]["params"]["layers_2"]["kernel"]),
                                  np.asarray(coarse["params"]["layers_2"]["kernel"]))
    (_, e0), (_, e1) = out["eval_history"][0], out["eval_history"][-1]
    assert e0["eval/landmark_l1"] == pytest.approx(e1["eval/landmark_l1"], rel=1e-5)  # coarse frozen
    assert e1["eval/displacement_abs"] > 0
    v = export.inference_variables(str(tmp_path / "detail"))
    assert set(v) == {"E_flame", "E_detail", "D_detail"}
    assert v["D_detail"]["params"]["l1_0"]["kernel"].shape == (181, 128 * 1 * 1)  # uv 32 -> 1 x 1 start


def test_id_mrf_runs_with_converted_vgg19_and_the_stage_draws_its_grids(coarse_dir, tmp_path):
    """photo_D * mrf > 0 with VGG19 weights from a `jaxdeca.convert`-style directory (random values
    here): the ID-MRF term is present, finite and gives both detail networks a gradient. And the
    stage's TensorBoard grids (config.train.image_every > 0), one per picture, finite, the size of
    the input (the displacement map that of the UV maps). No test ran either before (coverage)."""
    import jax.numpy as jnp
    from jaxdeca.convert import backbones
    from jaxdeca.convert.core import save_variables
    from jaxdeca.train import parallel, state as state_lib, steps
    rng = np.random.default_rng(0)
    vgg = jax.tree.map(lambda t: (rng.normal(size=t.shape) * 0.05).astype(t.dtype), backbones.vgg19_template())
    save_variables(vgg, str(tmp_path / "vgg19"))
    config = detail_config(coarse_dir)
    config.loss.mrf = 0.05
    config.loss.detail_consistency = False
    config.weights.vgg19 = str(tmp_path / "vgg19")
    task = run.make_task(config)
    state, _ = loop.fresh_state(task, state_lib.make_optimizer(config), 0)
    params, stats, frozen = state.params, state.batch_stats, state.frozen
    assert "vgg19" in frozen and "vgg19" in task.frozen_from_config  # read from the config, not checkpointed
    batch = task.make_loader(2, 0, 1).next()
    grad_fn = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True))
    (loss, (terms, _)), g = grad_fn(params, stats, frozen, batch, jax.random.key(1))
    assert np.isfinite(float(terms["photo_detail_mrf"])) and float(terms["photo_detail_mrf"]) > 0, terms
    for net in ("E_detail", "D_detail"):
        assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g[net])) > 0, net

    mesh = parallel.make_mesh()  # the grids as the loop draws them (image_every), its image step
    grids = loop.host_images(steps.make_image_step(task.images, mesh)(parallel.replicate(state, mesh),
                                                                      parallel.shard_batch(batch, mesh)))
    assert sorted(grids) == ["detail/albedo_render", "detail/coarse_shape", "detail/detail_shape",
                             "detail/displacement_uv", "detail/landmarks"]
    size, uv = batch["image"].shape[1], config.model.uv_size
    for name, picture in grids.items():
        want = (2, uv, uv, 3) if name == "detail/displacement_uv" else (2, size, size, 3)
        assert picture.shape == want and np.isfinite(np.asarray(picture)).all(), (name, picture.shape)


def test_resume_reads_neither_the_previous_stage_nor_imagenet_weights(coarse_dir, tmp_path):
    """A killed detail run could not resume once the coarse workdir it started from was gone
    (moved, or a cleaned scratch disk), though its own checkpoints hold that frozen encoder: the
    task required config.init.coarse_checkpoint to exist and read it again. A resume now reads
    only its checkpoint (the task's resume_variables), and ends bit-identical to a run that was
    not interrupted. A stage's init.checkpoint and init.imagenet are not read either."""
    import shutil
    shutil.copytree(coarse_dir / "coarse", tmp_path / "coarse")
    config = detail_config(coarse_dir)
    config.init.coarse_checkpoint = str(tmp_path / "coarse")
    config.train.update(dict(num_steps=1, eval_every=0))
    loop.train(config, str(tmp_path / "w"), run.make_task(config))
    shutil.rmtree(tmp_path / "coarse")
    config.train.num_steps = 2
    resumed = loop.train(config, str(tmp_path / "w"), run.make_task(config))
    assert resumed["losses"][0][0] == 2, "did not resume"
    ref_config = detail_config(coarse_dir)
    ref_config.train.update(dict(num_steps=2, eval_every=0))
    ref = loop.train(ref_config, str(tmp_path / "ref"), run.make_task(ref_config))
    assert resumed["losses"] == ref["losses"][1:]
    assert jax.tree.structure(resumed["state"]) == jax.tree.structure(ref["state"])
    for x, y in zip(jax.tree.leaves(resumed["state"]), jax.tree.leaves(ref["state"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the coarse stage resumed without its pretrain workdir or ImageNet weights: the same tree
    coarse = test_coarse.get_config("coarse")
    coarse.init.update(dict(checkpoint=str(tmp_path / "gone"), imagenet=str(tmp_path / "gone")))
    want = jax.eval_shape(run.make_task(test_coarse.get_config("coarse")).init_variables, jax.random.key(0))
    assert jax.eval_shape(run.make_task(coarse).resume_variables, jax.random.key(0)) == want


def test_detail_decode_shapes_and_grads(coarse_dir):
    config = detail_config(coarse_dir)
    task = deca_detail.DetailTask(config)
    params, stats, frozen = task.init_variables(jax.random.key(0))
    batch = task.make_loader(4, 0, 1).next()
    (loss, (terms, _)), g = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True))(
        params, stats, frozen, batch, jax.random.key(1))
    assert set(terms) == {"photo_detail", "z_reg", "z_diff", "z_sym"}  # mrf off in test config
    for name in ("E_detail", "D_detail"):
        norms = [float(np.abs(x).sum()) for x in jax.tree.leaves(g[name])]
        assert np.isfinite(norms).all() and sum(norms) > 0, name
    f, _ = jax.jit(lambda p, s, fr, b: task.forward(p, s, fr, b, None, False))(params, stats, frozen, batch)
    assert f["uv_z"].shape == (4, 32, 32, 1)
    assert f["uv_vis_mask"].shape == (4, 32, 32, 1) and 0 < float(f["uv_vis_mask"].mean()) < 1


def test_detail_config_errors(tmp_path):
    config = test_coarse.get_config("detail")
    with pytest.raises(paths.ConfigPathError, match="init.coarse_checkpoint"):
        deca_detail.DetailTask(config)
    config.init.coarse_checkpoint = str(tmp_path)
    config.loss.mrf = 0.05
    with pytest.MonkeyPatch.context() as m:  # refused before FLAME, the topology and the networks are built
        m.setattr(deca_common.DecaParts, "__init__", lambda *a: pytest.fail("built before weights.vgg19 was checked"))
        with pytest.raises(paths.ConfigPathError, match="weights.vgg19"):
            deca_detail.DetailTask(config)
    config.loss.mrf = 0.0
    task = deca_detail.DetailTask(config)  # an existing folder that holds no trained stage
    with pytest.raises(paths.ConfigPathError, match=r"config.init.coarse_checkpoint=.*no checkpoint found"):
        task.init_variables(jax.random.key(0))


def test_wrong_architecture_checkpoint_is_refused(coarse_dir):
    """The message names the config.model fields the checkpoint was trained with otherwise (it
    said only that the network differs from config.model: an extension review)."""
    config = detail_config(coarse_dir)
    config.model.hidden = 32
    with pytest.raises(paths.ConfigError, match=r"config.init.coarse_checkpoint=.*\['layers_0'\]\['bias'\] has shape "
                       r"\(64,\), expected \(32,\) \(the checkpoint's network differs: it was trained with "
                       r"model.hidden=64; this config has model.hidden=32\)$"):
        deca_detail.DetailTask(config).init_variables(jax.random.key(0))
    config = detail_config(coarse_dir)
    config.model.blocks = (2, 1, 1, 1)
    with pytest.raises(paths.ConfigError, match=r"\(E_flame\): missing variable .* \(the checkpoint's network "
                       r"differs: it was trained with model.blocks=\(1, 1, 1, 1\); this config has "
                       r"model.blocks=\(2, 1, 1, 1\)\)$"):
        deca_detail.DetailTask(config).init_variables(jax.random.key(0))


def test_architecture_hint_names_only_what_the_checkpoint_recorded():
    """A checkpoint that predates the recorded config.model gets DECA's defaults filled in by
    export.load_inference; the hint must not say it was trained at DECA's size (diff review)."""
    from jaxdeca.train.deca_common import _architecture_hint
    config = test_coarse.get_config("detail")
    info = {"model": {"width": 1.0, "blocks": (3, 4, 6, 3), "hidden": 1024}}  # as load_inference gives it
    assert _architecture_hint(info, config) is None
    info["model_recorded"] = ["blocks", "hidden", "width"]
    assert _architecture_hint(info, config) == (
        "the checkpoint's network differs: it was trained with model.width=1.0, model.blocks=(3, 4, 6, 3), "
        "model.hidden=1024; this config has model.width=0.125, model.blocks=(1, 1, 1, 1), model.hidden=64")
    info["model"] = {"width": 0.125, "blocks": (1, 1, 1, 1), "hidden": 64}
    assert _architecture_hint(info, config) is None


def test_stage_started_from_another_cam_scale_is_refused(coarse_dir):
    """A stage started from a previous one (init.checkpoint, init.coarse_checkpoint) with another
    config.model.cam_scale went on silently (only shapes were compared; a resume compares
    checkpoint_info, df1630a): the detail stage then read a raw-trained coarse encoder's camera
    scale as |s|, or an abs-trained one's as s. It is one ConfigError naming the field and both
    values. Another config.model.dtype is allowed (float32 parameters either way)."""
    from configs import test_coarse as tc
    assert export.load_inference(str(coarse_dir / "coarse"))[1]["model"]["cam_scale"] == "abs"
    detail = tc.get_config("detail")
    detail.init.coarse_checkpoint = str(coarse_dir / "coarse")
    detail.model.cam_scale = "raw"
    coarse = tc.get_config("coarse")
    coarse.init.checkpoint = str(coarse_dir / "pretrain")
    coarse.model.cam_scale = "raw"
    tiny = demo_config.get_config("tiny")  # coarse_dir's stages
    for config, field, stage, step in ((detail, "init.coarse_checkpoint", "coarse", tiny.coarse.train.num_steps),
                                       (coarse, "init.checkpoint", "pretrain", tiny.pretrain.train.num_steps)):
        with pytest.raises(paths.ConfigError) as e:
            run.make_task(config).init_variables(jax.random.key(0))
        assert str(e.value) == (f"config.{field}={str(coarse_dir / stage)!r} (checkpoint step {step}) was trained "
                                "with config.model.cam_scale='abs', but this stage has config.model.cam_scale='raw': "
                                "its camera codes would be read with another scale; start it with the cam_scale of "
                                "the stage it starts from"), str(e.value)
    detail.model.update(dict(cam_scale="abs", dtype="bfloat16"))
    _, _, frozen = run.make_task(detail).init_variables(jax.random.key(0))
    assert frozen["E_flame"]["params"]["layers_2"]["kernel"].dtype == np.float32


def test_detail_stage_with_another_image_size_than_its_frozen_coarse_encoder_is_refused(coarse_dir):
    """The detail stage runs the coarse encoder frozen (eval-mode BN, no updates): at another
    config.data.image_size than the coarse stage trained it at, it read every face at another
    scale than it learned, and its codes (the detail stage's whole geometry) were off, silently.
    It is one ConfigError naming both sizes. The coarse stage may start from a pretrain stage of
    another size (it trains the encoder further): landmarks and camera are in [-1, 1] units."""
    config = detail_config(coarse_dir)
    config.data.image_size = 32
    with pytest.raises(paths.ConfigError) as e:
        run.make_task(config).init_variables(jax.random.key(0))
    step = demo_config.get_config("tiny").coarse.train.num_steps
    assert str(e.value) == (f"config.init.coarse_checkpoint={str(coarse_dir / 'coarse')!r} (checkpoint step {step}) "
                            "was trained with config.data.image_size=48, but this stage has config.data.image_size=32: "
                            "its encoder, frozen here, would read faces at another scale than it learned; use the "
                            "image size of the stage it starts from"), str(e.value)
    coarse = test_coarse.get_config("coarse")
    coarse.init.checkpoint = str(coarse_dir / "pretrain")
    coarse.model.cam_scale = config.model.cam_scale
    coarse.data.image_size = 32
    run.make_task(coarse).init_variables(jax.random.key(0))


def test_checkpoint_with_more_layers_than_config_model_is_refused():
    """A ResNet with blocks (3, 4, 6, 3) holds every variable of one with (1, 1, 1, 1) at the same
    shapes (layerN_0); loading it into the smaller config must not silently drop the rest."""
    from jaxdeca.train.deca_common import checked_like
    template = {"params": {"layer1_0": {"kernel": np.zeros((2, 3), np.float32)}}}
    loaded = {"params": {"layer1_0": {"kernel": np.ones((2, 3))}, "layer1_1": {"kernel": np.ones((2, 3))}}}
    with pytest.raises(ValueError, match=r"ckpt: unexpected variable \['params'\]\['layer1_1'\]\['kernel'\]"):
        checked_like(template, loaded, "ckpt")
    out = checked_like(template, {"params": {"layer1_0": {"kernel": np.ones((2, 3))}}}, "ckpt")
    np.testing.assert_array_equal(np.asarray(out["params"]["layer1_0"]["kernel"]), np.ones((2, 3)))


def test_real_data_path_required():
    from configs import coarse
    config = coarse.get_config()
    config.model.update(dict(width=0.125, blocks=(1, 1, 1, 1), hidden=32, uv_size=32))
    config.loss.id = 0.0
    task = run.make_task(config)
    with pytest.raises(paths.ConfigPathError, match="data.data_dir"):
        task.make_loader(8, 0, 1)


def test_coarse_from_a_folder_without_checkpoints_is_a_config_error(tmp_path):
    """config.init.checkpoint naming an existing folder that holds no trained stage (pretrain was
    never run): one ConfigPathError naming the field, which jaxdeca.main prints as one line, not
    a FileNotFoundError traceback (the detail stage's case: test_detail_config_errors). A workdir
    of another task (no coarse encoder in its checkpoint) is one ConfigError too: it was a
    ValueError traceback."""
    (tmp_path / "pretrain").mkdir()
    config = test_coarse.get_config("coarse")
    config.init.checkpoint = str(tmp_path / "pretrain")
    with pytest.raises(paths.ConfigPathError, match=r"config.init.checkpoint=.*pretrain.*no checkpoint"):
        run.make_task(config).init_variables(jax.random.key(0))
    from configs import test_toy
    from jaxdeca.train.toy import ToyTask
    toy = test_toy.get_config()
    toy.train.update(dict(num_steps=2, eval_every=0, image_every=0))
    loop.train(toy, str(tmp_path / "toy"), ToyTask(toy))
    config.init.checkpoint = str(tmp_path / "toy")
    with pytest.raises(paths.ConfigError, match=r"config.init.checkpoint=.*toy' holds no trained DECA stage "
                       r"\(.*holds no coarse encoder \(E_flame\)"):
        run.make_task(config).init_variables(jax.random.key(0))


@pytest.mark.parametrize("source", ["synthetic", "tfds"])
def test_batch_not_a_multiple_of_k_is_a_config_error(source):
    """A batch of 6 images with K=4 images per identity: one ConfigError naming both config
    fields (jaxdeca.main prints it as one line), for the training stream and the eval batches."""
    from configs import coarse
    config = coarse.get_config()
    config.data.source, config.data.k = source, 4
    config.loss.id = 0.0  # no VGGFace2 weights needed
    task = run.make_task(config)
    for make in (task.make_loader, task.eval_batches):
        with pytest.raises(paths.ConfigError, match=r"config.train.batch_size.*config.data.k=4"):
            make(6, 0, 1)


def test_demo_job_end_to_end_tiny(demo_run):
    """The main job's code path on the tiny synthetic dataset: data build, three stages, held-out
    pictures + OBJs, showcase, summary with both landmark numbers; a re-run resumes and skips.
    The job is the demo_run fixture's: the notebook's config as it is, so the session's XLA
    cache shares the compiled programs with the notebook's kernel (its 120 pretrain steps take
    seconds; the coarse step is what is slow)."""
    tmp_path, config = demo_run.path, demo_config.get_config("tiny")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["landmark_loss_step0"] > 0 and summary["landmark_loss_final"] > 0
    for f in ("heldout/heldout_grid.png", "heldout/face_00.obj", "heldout/face_01.png", "showcase/head_views.png",
              "pretrain/eval_history.json", "detail/checkpoints"):
        assert (tmp_path / f).exists(), f
    assert len([p for p in os.listdir(tmp_path / "data" / "synthetic_faces" / "tiny")]) == 1
    from jaxdeca.train import demo
    head = demo.stage_flame(config)  # each record holds the FLAME file it trained with, by its arrays
    from jaxdeca import flame
    assert set(head) == set(flame.load_arrays(None)) and {"albedo_basis", "uv_face_eye_mask"} <= set(head)
    for stage in ("pretrain", "coarse", "detail"):
        assert json.loads((tmp_path / stage / "eval_history.json").read_text())["flame_fingerprint"] == head, stage
    before = (tmp_path / "detail" / "eval_history.json").stat().st_mtime
    jmain.run_mode(config, str(tmp_path))  # everything finished: stages are skipped
    assert (tmp_path / "detail" / "eval_history.json").stat().st_mtime == before


def test_heldout_export_decodes_faces_in_one_flame_program(demo_run):
    """export_heldout's OBJs: the held-out faces' FLAME vertices and albedos in one jitted
    program for the batch (with the networks' forward pass, a handful of compiles), not about
    170 eager operations each compiled on its own; the vertices are FLAME's op by op to float
    rounding."""
    from compile_count import compiles
    from jaxdeca import wavefront, xla_options
    from jaxdeca.train import demo
    config = demo_config.get_config("tiny")
    jax.clear_caches()  # the eager operations' compiled programs too
    with compiles() as n:
        paths_out = demo.export_heldout(config, str(demo_run.path))
    assert len(n) <= 8, len(n)
    c = demo.stage_config(config, "detail", str(demo_run.path))
    task = deca_detail.DetailTask(c)
    st = export.load_stage(str(demo_run.path / "detail"))
    batch = {k: v[:2] for k, v in task.eval_batches(int(c.train.batch_size), 0, 1)[0].items()}
    fwd = xla_options.jit(lambda p, bs, fr, b: task.forward(p, bs, fr, b, None, False)[0])  # export_heldout's
    f = jax.device_get(fwd(st["params"], st["batch_stats"], st["frozen"], batch))["codes"]
    for i in range(2):
        want = task.flame(f["shape"][i:i + 1], f["exp"][i:i + 1], f["pose"][i:i + 1])["vertices"][0]  # op by op
        got = wavefront.read(str(demo_run.path / "heldout" / f"face_{i:02d}.obj"))["vertices"]
        np.testing.assert_allclose(got, np.asarray(want), rtol=0, atol=1e-6)
    assert len(paths_out) == 3


def test_demo_seed_is_every_stages_seed():
    """The demo's config.seed did nothing: each stage took stage_defaults' own seed (0), so
    --config.seed=5 gave bit-identical runs. It is the one seed of every stage."""
    from jaxdeca.train import demo
    config = demo_config.get_config("tiny")
    assert "seed" not in config.stage_defaults
    with config.unlocked():
        config.seed = 5
    assert [demo.stage_config(config, s, "/w").seed for s in demo.STAGES] == [5, 5, 5]


def test_encoder_read_from_the_previous_stage_is_not_initialised(demo_run):
    """The coarse stage's E_flame (from pretrain) and the detail stage's frozen E_flame (from
    coarse) are the checkpoint's variables cast onto their shapes: no init program is compiled
    for them (on the tiny demo about 7 s of compile each); the detail networks still are."""
    from compile_count import compiled_functions
    from jaxdeca.train import demo
    config = demo_config.get_config("tiny")
    with compiled_functions() as names:
        for stage, previous, inits in (("coarse", "pretrain", 0), ("detail", "coarse", 2)):
            task = run.make_task(demo.stage_config(config, stage, str(demo_run.path)))
            names.clear()
            params, stats, frozen = task.init_variables(jax.random.key(0))
            assert names.count("jit(init)") == inits, (stage, names)
            got = {"params": params["E_flame"], "batch_stats": stats["E_flame"]} if stage == "coarse" \
                else frozen["E_flame"]
            want = export.load_inference(str(demo_run.path / previous))[0]["E_flame"]
            assert jax.tree.structure(got) == jax.tree.structure(want)
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_apps_pipeline_reads_training_workdir(demo_run, tmp_path):
    """`--checkpoint runs/detail` in the apps: same architecture and codes as the trained task
    (the demo job's detail stage, and the state its training loop ended with)."""
    from jaxdeca.apps import pipeline
    from jaxdeca.train import demo
    config = demo.stage_config(demo_config.get_config("tiny"), "detail", str(demo_run.path))
    state = demo_run.states["detail"]
    pipe = pipeline.load_pipeline(checkpoint=str(demo_run.path / "detail"))
    assert pipe.net_size == 48 and pipe.model["width"] == 0.125 and pipe.topo.uv_face_eye_mask.shape == (32, 32)
    task = run.make_task(config)
    batch = task.eval_batches(4, 0, 1)[0]
    codes, dec = pipe.run(batch["image"])
    want = task.coarse_codes(state.frozen, batch["image"])
    np.testing.assert_allclose(np.asarray(codes["shape"]), np.asarray(want["shape"]), rtol=1e-4, atol=1e-5)
    dcode, _ = task.encode_detail(state.params, state.batch_stats, batch["image"], False)
    np.testing.assert_allclose(np.asarray(codes["detail"]), np.asarray(dcode), rtol=1e-4, atol=1e-5)
    assert dec["uv_z"].shape == (4, 32, 32, 1) and dec["images"].shape == (4, 224, 224, 3)
    with pytest.raises(pipeline.CheckpointError, match="no such checkpoint directory"):
        pipeline.load_pipeline(checkpoint=str(tmp_path / "nope"))


def test_detail_encoder_starts_from_the_converted_imagenet_resnet50(tmp_path, monkeypatch):
    """config.init.imagenet fills the detail stage's E_detail ResNet with the converted ImageNet
    ResNet-50, as it does the E_flame one (the frozen coarse encoder still comes from
    init.coarse_checkpoint, here a stand-in)."""
    import torch
    from jaxdeca.convert import load_variables, save_variables
    from jaxdeca.convert.backbones import convert_resnet50
    from torch_refs import ResNet, randomize
    torch.save(randomize(ResNet(with_fc=True), 12).state_dict(), tmp_path / "resnet50.pth")
    save_variables(convert_resnet50(str(tmp_path / "resnet50.pth")), str(tmp_path / "resnet50"))
    config = test_coarse.get_config("detail")
    config.model.update(dict(width=1.0, blocks=(3, 4, 6, 3)))
    config.init.coarse_checkpoint = str(tmp_path)
    config.init.imagenet = str(tmp_path / "resnet50")
    monkeypatch.setattr(deca_common, "previous_stage_encoder",
                        lambda template, *a, **k: jax.tree.map(lambda t: np.zeros(t.shape, t.dtype), template))
    params, stats, frozen = deca_detail.DetailTask(config).init_variables(jax.random.key(0))
    want = load_variables(str(tmp_path / "resnet50"))
    for got, ref in ((params["E_detail"]["encoder"], want["params"]), (stats["E_detail"]["encoder"], want["batch_stats"])):
        assert jax.tree.structure(got) == jax.tree.structure(ref)
        for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(r))
    assert not np.any(np.asarray(frozen["E_flame"]["params"]["encoder"]["conv1"]["kernel"]))  # not the ImageNet one


def test_demo_summary_reads_the_landmark_stages_it_did_not_run(demo_run, tmp_path, capsys):
    """The summary's held-out landmark loss comes from the pretrain and coarse records when this
    run trains only detail (it indexed this run's first stage: a KeyError after the detail stage
    had trained, summary.json not written). landmark_change gives None when no stage holds a
    landmark evaluation (eval_every=0: run says so, where it raised IndexError) and a rise as it
    is (run prints it as 'higher', where it said '0.9x lower')."""
    from jaxdeca.train import demo
    before = json.loads((demo_run.path / "summary.json").read_text())
    config = demo_config.get_config("tiny")
    config.stages = ("detail",)
    jmain.run_mode(config, str(demo_run.path))  # detail finished: skipped; export, showcase, summary
    after = json.loads((demo_run.path / "summary.json").read_text())
    for k in ("landmark_loss_step0", "landmark_loss_final"):
        assert after[k] == before[k]
    out = capsys.readouterr().out
    assert "held-out landmark loss" in out and "at the end of each stage: pretrain " in out, out
    ev = lambda v: {demo.LANDMARK_KEY: v}  # noqa: E731
    assert demo.landmark_change({"pretrain": [], "coarse": []}, str(tmp_path)) is None
    assert demo.landmark_change({"pretrain": [(0, ev(0.5)), (4, ev(0.3))], "detail": [(0, {})]},
                                str(tmp_path)) == (0.5, 0.3)
    assert demo.landmark_change({"coarse": [(0, ev(0.3)), (4, ev(0.4))]}, str(tmp_path)) == (0.3, 0.4)
    # each landmark stage's last figure too: the coarse stage can end above the pretrain's
    assert demo.stage_landmark_losses({"pretrain": [(0, ev(0.5)), (4, ev(0.3))], "coarse": [(0, ev(0.3)), (4, ev(0.4))]},
                                      str(tmp_path)) == {"pretrain": 0.3, "coarse": 0.4}
    assert set(after["landmark_loss_by_stage"]) == {"pretrain", "coarse"}


def test_a_stage_record_cut_short_is_written_again_from_the_checkpoint(demo_run):
    """<stage>/eval_history.json, which a re-run trusts to skip a finished stage, was written in
    place: a kill or a full disk left it cut short, and every re-run of the demo then ended in a
    JSONDecodeError naming no file (interrupted-write review). It is written whole now, and one
    that cannot be read counts as no record: the stage resumes from its final checkpoint, which
    trains nothing and gives back its eval history, and the record is written again."""
    path = demo_run.path / "detail" / "eval_history.json"
    want = json.loads(path.read_text())
    path.write_text(path.read_text()[:42])  # what a SIGKILL in json.dump left
    config = demo_config.get_config("tiny")
    config.stages = ("detail",)
    jmain.run_mode(config, str(demo_run.path))
    got = json.loads(path.read_text())
    assert got["num_steps"] == want["num_steps"] and got["eval_history"] == want["eval_history"]


def test_demo_heldout_faces_zero_pictures_none_and_below_zero_is_refused(demo_run, capsys):
    """config.heldout_faces=0 (no held-out pictures) ended the job after the detail stage with a
    ZeroDivisionError from an empty batch, -1 with an IndexError, summary.json unwritten. 0 now
    skips the pictures; below 0 is a ConfigError before anything runs."""
    from jaxdeca.train import paths
    config = demo_config.get_config("tiny")
    config.stages = ("detail",)
    config.heldout_faces = 0
    (demo_run.path / "summary.json").unlink()
    jmain.run_mode(config, str(demo_run.path))  # detail finished: skipped; showcase, summary
    assert (demo_run.path / "summary.json").exists()
    assert "held-out faces:" not in capsys.readouterr().out
    config.heldout_faces = -1
    with pytest.raises(paths.ConfigError, match=r"config.heldout_faces=-1 must be 0"):
        jmain.run_mode(config, str(demo_run.path))


def test_a_finished_stage_is_skipped_only_with_its_config_and_its_starting_stage(tmp_path):
    """A finished stage counted as finished whenever its record's num_steps was the config's: a
    re-run with another learning rate, loss weight, seed, model or data dir skipped it silently
    (a changed model then failed with a flax traceback in export_heldout), and one after its
    starting stage had trained again kept the stage trained from the old one. check_finished
    skips a stage only when its recorded config (workdir paths as WORKDIR/..., the logging and
    checkpoint cadence left out) and the id of the stage it started from are the ones of now, and
    refuses a finished one that differs with a ConfigError naming the fields, since training it
    again would resume its checkpoints; a record without a config (written before records held
    one) is refused too."""
    from jaxdeca.train import demo
    w = str(tmp_path / "w")
    base = demo_config.get_config("tiny")
    want = demo.recorded_config(base, "coarse", w)
    pre = {"id": "p1"}
    record = {"num_steps": 2, "eval_history": [], "config": want, "started_from": {"stage": "pretrain", "id": "p1"}}

    def check(config, rec=record, previous=pre, trained_before=False):
        return demo.check_finished(w, "coarse", rec, demo.recorded_config(config, "coarse", w), previous,
                                   trained_before)

    def changed(**fields):
        c = demo_config.get_config("tiny")
        with c.unlocked():
            for dotted, v in fields.items():
                *parent, leaf = dotted.split("__")
                node = c
                for p in parent:
                    node = node[p]
                node[leaf] = v
        return c

    assert check(base) is True
    assert check(changed(stage_defaults__train__log_every=7, stage_defaults__train__checkpoint_every=1)) is True
    # read threads and evaluation cadence change nothing trained (more threads on a bigger machine)
    assert check(changed(stage_defaults__data__num_threads=8, stage_defaults__data__eval_batches=3,
                         stage_defaults__data__eval_scale=2.0, coarse__train__eval_every=1)) is True
    assert check(base, previous=None) is True  # the starting stage's folder is gone: nothing to compare
    # a record written before loss.render_sigma was a field: trained with the 1.0 it was then
    # (DECA's 0, the default since, is refused for it)
    older = dict(record, config=json.loads(json.dumps(want)))
    del older["config"]["loss"]["render_sigma"]
    assert check(changed(stage_defaults__loss__render_sigma=1.0), rec=older) is True
    with pytest.raises(paths.ConfigError, match=r"loss.render_sigma 1.0 -> 0.0"):
        check(base, rec=older)
    # pretrain renders nothing: a render_sigma for the stages leaves its recorded config as it is
    assert demo.recorded_config(changed(stage_defaults__loss__render_sigma=1.0), "pretrain", w) == \
        demo.recorded_config(base, "pretrain", w)
    # a stage records the loss fields it reads alone: a detail weight leaves coarse finished (it
    # was refused as trained with another config), and a record that holds every loss field (as
    # records did before) is still this config's
    assert "photo_D" not in want["loss"] and "render_sigma" in want["loss"]
    assert check(changed(stage_defaults__loss__photo_D=1.0, stage_defaults__loss__mrf=0.5)) is True
    # and a pretrained network only another stage reads (ID-MRF's VGG19; VGGFace2 with id = 0)
    assert "weights" not in want
    assert check(changed(stage_defaults__loss__mrf=0.5, stage_defaults__weights__vgg19="/vgg19",
                         stage_defaults__weights__vggface2="/vggface2")) is True
    assert demo.recorded_config(changed(stage_defaults__loss__id=0.2, stage_defaults__weights__vggface2="/v"),
                                "coarse", w)["weights"] == {"vggface2": "/v"}
    every = dict(record, config=json.loads(json.dumps(want)))
    every["config"]["loss"] = dict(demo_config.get_config("tiny").stage_defaults.loss.to_dict(), photo_D=7.0)
    every["config"]["weights"] = {"vggface2": None, "vgg19": "/vgg19"}
    assert check(base, rec=every) is True
    for fields, named in [({"coarse__optim__learning_rate": 1e-2}, "optim.learning_rate 0.001 -> 0.01"),
                          ({"stage_defaults__loss__photo": 0.0}, "loss.photo 2.0 -> 0.0"),
                          ({"seed": 5}, "seed 0 -> 5"),
                          ({"stage_defaults__model__hidden": 32}, "model.hidden 64 -> 32"),
                          ({"data_dir": str(tmp_path / "other")}, "data.data_dir \"WORKDIR/data\" -> "),
                          ({"coarse__train__num_steps": 1}, "train.num_steps 2 -> 1")]:
        with pytest.raises(paths.ConfigError, match=r"^stage coarse in .*w/coarse is finished but it was trained "
                           r"with another config \(.*" + re.escape(named) + r".*remove .*w/coarse, or use another "
                           r"--workdir$"):
            check(changed(**fields))
    # with a constant learning rate (the detail stage's) a larger num_steps goes on from the checkpoint
    constant = dict(record, config=demo.recorded_config(changed(coarse__optim__schedule="constant"), "coarse", w))
    assert check(changed(coarse__optim__schedule="constant", coarse__train__num_steps=5), rec=constant) is False
    # not for a cosine schedule (the pretrain's and the coarse stage's): the loop would refuse it
    # after the stage's start was printed
    pre_record = {"num_steps": 120, "eval_history": [], "config": demo.recorded_config(base, "pretrain", w)}
    assert pre_record["config"]["optim"]["schedule"] == "cosine"
    assert demo.check_finished(w, "pretrain", pre_record, demo.recorded_config(base, "pretrain", w), None, False)
    with pytest.raises(paths.ConfigError, match=r"stage pretrain .*train.num_steps 120 -> 240.*; its learning rate "
                       r"follows a cosine schedule over its num_steps, which a larger num_steps would replace"):
        demo.check_finished(w, "pretrain", pre_record,
                            demo.recorded_config(changed(pretrain__train__num_steps=240), "pretrain", w), None, False)
    with pytest.raises(paths.ConfigError, match=r"from another pretrain stage than .*w/pretrain holds now"):
        check(base, previous={"id": "p2"})
    with pytest.raises(paths.ConfigError, match=r"from the pretrain stage before that trained again in this run"):
        check(base, trained_before=True)
    with pytest.raises(paths.ConfigError, match=r"written by an earlier jaxdeca that did not record the stage's "
                       r"config"):
        check(base, rec={"num_steps": 2, "eval_history": []})  # the previous version's record
    assert check(base, rec=None) is False and check(base, rec=None, trained_before=True) is False
    (tmp_path / "w" / "coarse" / "checkpoints" / "2").mkdir(parents=True)
    (tmp_path / "w" / "detail").mkdir()
    with pytest.raises(paths.ConfigError, match=r"its checkpoints were started from the pretrain stage before it "
                       r"trained again in this run.*remove .*w/coarse and the stages after it \(.*w/detail\)"):
        check(base, rec=None, trained_before=True)
    # the workdir's own paths are recorded relative to it: a moved workdir is the same
    for data_dir in (None, "DATA"):
        got = []
        for root in (tmp_path / "a", tmp_path / "b"):
            c = demo_config.get_config("tiny")
            with c.unlocked():
                c.data_dir = data_dir and str(root / "w" / data_dir)
            got.append(demo.recorded_config(c, "detail", str(root / "w")))
        assert got[0] == got[1] and got[0]["init"]["coarse_checkpoint"] == "WORKDIR/coarse"


def test_a_finished_stage_is_matched_by_its_flame_arrays_not_by_the_flame_path(tmp_path):
    """check_finished compared config.flame_path as text: the same FLAME read from another path
    (the folder by its absolute path, the converted npz) refused every finished stage, and another
    FLAME written over the same file skipped them all (the held-out OBJs were then decoded with
    it). A record now holds its FLAME's fingerprint (stage_flame) and is compared by it, as a
    resume compares it; a record without one is compared by the path, as before."""
    from jaxdeca import flame
    from jaxdeca.flame import io as flame_io
    from jaxdeca.train import demo
    w = str(tmp_path / "w")
    arrays = flame.load_arrays(None)
    copy = str(tmp_path / "demo_head_copy.npz")
    np.savez(copy, **arrays)
    other = str(tmp_path / "other.npz")
    np.savez(other, **dict(arrays, v_template=arrays["v_template"] * 1.5))
    albedo = str(tmp_path / "other_albedo.npz")  # the same geometry with another albedo (FLAME_texture)
    np.savez(albedo, **dict(arrays, albedo_mean=arrays["albedo_mean"][..., ::-1] * 0.3))
    noted = str(tmp_path / "noted.npz")  # keys outside the FLAME layout load and are not read
    np.savez(noted, **dict(arrays, note=np.array("converted by me"), scale=np.array(np.nan)))
    assert flame_io.load_npz(copy).keys() == arrays.keys()

    def config(path):
        c = demo_config.get_config("tiny")
        c.flame_path = path
        return c

    head = demo.stage_flame(config(None))
    assert demo.stage_flame(config(copy)) == head  # the same arrays wherever they are read from
    assert demo.stage_flame(config(noted)) == head
    assert demo.stage_flame(config(other)) != head
    record = {"num_steps": 120, "eval_history": [], "config": demo.recorded_config(config(None), "pretrain", w),
              "flame_fingerprint": head}

    def check(path, rec=record):
        c = config(path)
        return demo.check_finished(w, "pretrain", rec, demo.recorded_config(c, "pretrain", w), None, False,
                                   demo.stage_flame(c))

    assert check(None) is True and check(copy) is True
    with pytest.raises(paths.ConfigError, match=r"another FLAME than config.flame_path='.*other_albedo.npz' "
                       r"\(albedo_mean differs\)"):
        check(albedo)  # the coarse stage learnt its texture codes on the albedo basis
    with pytest.raises(paths.ConfigError, match=r"stage pretrain .* is finished but it was trained with another "
                       r"FLAME than config.flame_path='.*other.npz' \(v_template differs\)"):
        check(other)
    record_other = dict(record, config=demo.recorded_config(config(other), "pretrain", w),
                        flame_fingerprint=demo.stage_flame(config(other)))
    np.savez(other, **arrays)  # the file trained with is overwritten by another FLAME
    with pytest.raises(paths.ConfigError, match=r"another FLAME than config.flame_path='.*other.npz' "
                       r"\(v_template differs\)"):
        check(other, record_other)
    older = {k: v for k, v in record.items() if k != "flame_fingerprint"}  # written before records held it
    assert check(None, older) is True
    with pytest.raises(paths.ConfigError, match=r"another config \(flame.path null -> \"/"):
        check(copy, older)


def test_demo_rerun_refuses_a_finished_stage_trained_otherwise(demo_run, tmp_path, capsys):
    """The demo re-run on a finished workdir with --config.coarse.optim.learning_rate=1e-2 exited 0
    having skipped every stage (logged at INFO only, not on the console). The skip is a console
    line now, and the changed stage a ConfigError before anything trains. A workdir moved
    elsewhere still skips its stages; a starting stage whose record is written again from its
    final checkpoint (a cut-short record) keeps the stages after it finished, one that trained
    again does not."""
    from jaxdeca.train import demo
    config = demo_config.get_config("tiny")
    config.stages = ("pretrain", "coarse")
    config.coarse.optim.learning_rate = 1e-2
    with pytest.raises(paths.ConfigError, match=r"stage coarse in .* is finished but it was trained with another "
                       r"config \(optim.learning_rate 0.001 -> 0.01; .*remove .*coarse and the stages after it"):
        jmain.run_mode(config, str(demo_run.path))
    assert "[demo] stage pretrain already finished with this config" in capsys.readouterr().out
    w = tmp_path / "moved"
    shutil.copytree(demo_run.path, w, ignore=shutil.ignore_patterns("detail", "heldout", "showcase"))
    (w / "pretrain" / "eval_history.json").unlink()  # written again from its final checkpoint
    config = demo_config.get_config("tiny")
    config.stages = ("pretrain", "coarse")
    jmain.run_mode(config, str(w))
    out = capsys.readouterr().out
    assert "stage pretrain: 120 steps" in out and "[demo] stage coarse already finished" in out, out
    train = loop.train

    def trains_a_step(c, workdir, task):  # as a pretrain trained again: a step logged
        return {**train(c, workdir, task), "losses": [(120, 0.5)]}
    (w / "pretrain" / "eval_history.json").unlink()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(loop, "train", trains_a_step)
        with pytest.raises(paths.ConfigError, match=r"stage coarse .* trained from the pretrain stage before that "
                           r"trained again in this run"):
            jmain.run_mode(config, str(w))
    assert json.loads((w / "coarse" / "eval_history.json").read_text())["started_from"]["stage"] == "pretrain"
    assert demo.previous_stage("detail") == "coarse"
