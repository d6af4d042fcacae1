"""DECA pretrain/coarse tasks on synthetic demo heads: data layout, learning, determinism, errors."""
import numpy as np
import pytest

from configs import test_coarse
from jaxdeca.train import loop, paths, run
from jaxdeca.train.data import SyntheticFaceLoader, synthetic_group_batch
from jaxdeca.train.deca_coarse import CoarseTask
from tests.test_train_detail import _FixedBatch


# The synthetic batches here are 4 images at 48 px, as configs/test_coarse.py's (2 identities
# x K 2): the same compiled demo-head render as the stage tests' loaders, not one more.
def test_synthetic_batch_layout_and_determinism():
    b = synthetic_group_batch(3, 10, 2, 2, 48)
    assert b["image"].shape == (4, 48, 48, 3) and b["image"].dtype == np.float32
    assert 0 <= b["image"].min() and b["image"].max() <= 1
    assert b["landmarks"].shape == (4, 68, 3) and np.all(b["landmarks"][..., 2] == 1)
    assert np.all(np.abs(b["landmarks"][..., :2]) < 1)
    # y down: the chin (landmark 8) lies below the nose tip (landmark 30)
    assert np.all(b["landmarks"][:, 8, 1] > b["landmarks"][:, 30, 1])
    assert b["mask"].shape == (4, 48, 48, 1) and 0 < b["mask"].mean() < 1
    assert list(b["identity"]) == [10, 10, 11, 11]
    again = synthetic_group_batch(3, 10, 2, 2, 48)
    np.testing.assert_array_equal(b["image"], again["image"])
    assert not np.array_equal(b["image"][0], b["image"][1])  # same identity, different image


def test_loader_resume_position():
    a = SyntheticFaceLoader(4, 2, 48, seed=1)
    a.next()
    pos = a.position()
    want = a.next()
    b = SyntheticFaceLoader(4, 2, 48, seed=1)
    b.restore(pos)
    np.testing.assert_array_equal(b.next()["image"], want["image"])
    with pytest.raises(ValueError, match="multiple of K"):
        SyntheticFaceLoader(3, 2, 48, seed=1)


def fixed_batch_task(config):
    """The stage's task with a loader that repeats its first batch, so that the loss falls
    because the step optimises it: over fresh batches the loss of a run whose updates were
    dropped fell too (the last batches happened to be easier: 0.89 and 0.99 of the first)."""
    task = run.make_task(config)
    batch = task.make_loader(int(config.train.batch_size), 0, 1).next()
    task.make_loader = lambda *a: _FixedBatch(batch)
    return task


@pytest.mark.parametrize("stage", ["pretrain", "coarse"])
def test_stage_learns_and_is_deterministic(tmp_path, stage):
    config = test_coarse.get_config(stage)
    config.train.num_steps = 8 if stage == "coarse" else 10
    config.train.eval_every = config.train.num_steps
    if stage == "pretrain":
        # DECA's pretrain is landmarks + closures + shape/exp regularisers only; from DECA's zero
        # camera-scale init 10 steps barely move the landmarks, so start from a positive scale
        config.model.init_cam_scale = 8.0
    out = loop.train(config, str(tmp_path / "a"), fixed_batch_task(config))
    losses = np.array([l for _, l in out["losses"]])
    assert np.all(np.isfinite(losses))
    assert losses[-3:].mean() < 0.9 * losses[:3].mean(), losses  # 0.44 (pretrain), 0.65 (coarse)
    (s0, e0), (s1, e1) = out["eval_history"][0], out["eval_history"][-1]
    assert s0 == 0 and s1 == config.train.num_steps and "eval/landmark_l1" in e1
    # eval uses running BN statistics, which 10 steps at batch 4 do not settle: only reported here
    assert np.isfinite(e0["eval/landmark_l1"]) and np.isfinite(e1["eval/landmark_l1"])
    if stage == "pretrain":
        out2 = loop.train(config, str(tmp_path / "b"), fixed_batch_task(config))
        np.testing.assert_allclose([l for _, l in out2["losses"]], losses, rtol=1e-5)


def test_stage_configs_are_decas_release():
    """decalib/utils/config.py defaults, overridden by configs/release_version/deca_pretrain.yml
    (photo 0, id 0, useSeg False, reg_tex 0, reg_light 0, shape_consistency False; reg_shape and
    reg_exp doubled for the batch DECA's pretrain duplicates, see the next test) and each
    stage's yml's dataset.batch_size (identities), dataset.K and train.max_steps."""
    from configs import coarse, detail, pretrain
    deca = dict(lmk=1.0, use_wlmk=True, eyed=1.0, lipd=0.5, photo=2.0, use_seg=True, id=0.2,
                reg_shape=1e-4, reg_exp=1e-4, reg_tex=1e-4, reg_light=1.0, shape_consistency=True,
                photo_D=2.0, mrf=5e-2, reg_sym=0.005, reg_z=0.005, reg_diff=0.005,
                detail_consistency=True,
                render_sigma=0.0)  # ours: the soft alpha's sigma; 0 is DECA's hard mask alone
    pre = dict(deca, photo=0.0, id=0.0, use_seg=False, reg_tex=0.0, reg_light=0.0,
               shape_consistency=False, reg_shape=2e-4, reg_exp=2e-4)  # 2x: DECA's duplicated batch, see below
    assert coarse.get_config().loss.to_dict() == deca
    assert detail.get_config().loss.to_dict() == deca
    assert pretrain.get_config().loss.to_dict() == pre
    for config, (identities, k, steps) in ((pretrain.get_config(), (64, 1, 100_000)),
                                           (coarse.get_config(), (8, 2, 200_000)),
                                           (detail.get_config(), (6, 3, 1_000_000))):
        assert (config.train.batch_size, config.data.k, config.train.num_steps) == (identities * k, k, steps)


def test_pretrain_objective_is_decas_on_its_duplicated_batch():
    """DECA's training_step runs its consistency branch when shape_consistency OR
    detail_consistency is set; deca_pretrain.yml turns off only shape_consistency
    (detail_consistency keeps config.py's True), so with K=1 DECA's pretrain appends every
    image and code to itself ([x; x], the permutation of one image is the identity), which
    doubles its batch-summed shape / expression regularisers (the landmark and closure terms
    are means). configs/pretrain.py on the undoubled batch must give DECA's loss and gradients
    (the release weights on the tiled batch); at the release weights the regularisers were half."""
    import jax
    import jax.numpy as jnp
    from configs import pretrain
    from jaxdeca.losses import coarse_losses, shape_consistency, tile_batch
    rng = np.random.default_rng(0)
    b = 5
    lmk_pred = jnp.asarray(rng.uniform(-0.8, 0.8, (b, 68, 2)), jnp.float32)
    lmk_gt = jnp.asarray(np.concatenate([rng.uniform(-0.8, 0.8, (b, 68, 2)), np.ones((b, 68, 1))], -1),
                         jnp.float32)
    codes = {"shape": rng.normal(size=(b, 100)), "exp": rng.normal(size=(b, 50)),
             "tex": rng.normal(size=(b, 50)), "light": rng.normal(size=(b, 9, 3))}
    codes = {k: jnp.asarray(v, jnp.float32) for k, v in codes.items()}
    yml = dict(photo=0.0, id=0.0, use_seg=False, reg_tex=0.0, reg_light=0.0, shape_consistency=False)

    def deca(pred, c):  # DECA: the K=1 swap and tiling, then the yml's weights
        c2 = shape_consistency(jax.random.PRNGKey(3), c, b, 1)
        return coarse_losses(landmarks_pred=tile_batch(pred), landmarks_gt=tile_batch(lmk_gt),
                             codes=c2, weights=yml)

    def ours(pred, c):
        return coarse_losses(landmarks_pred=pred, landmarks_gt=lmk_gt, codes=c,
                             weights=pretrain.get_config().loss)

    (want, want_terms), want_g = jax.value_and_grad(deca, argnums=(0, 1), has_aux=True)(lmk_pred, codes)
    (got, got_terms), got_g = jax.value_and_grad(ours, argnums=(0, 1), has_aux=True)(lmk_pred, codes)
    assert sorted(got_terms) == sorted(want_terms)
    for name in want_terms:
        np.testing.assert_allclose(got_terms[name], want_terms[name], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-8)


def test_identity_loss_needs_weights(monkeypatch):
    """A missing config.weights.vggface2 is refused before the task builds FLAME, the topology
    and the networks (it came after them, seconds into the run)."""
    from jaxdeca.train import deca_common

    def built(*a):
        raise AssertionError("FLAME and the networks were built before weights.vggface2 was checked")
    monkeypatch.setattr(deca_common.DecaParts, "__init__", built)
    config = test_coarse.get_config()
    config.loss.id = 0.2
    with pytest.raises(paths.ConfigPathError, match="weights.vggface2"):
        CoarseTask(config)


def test_identity_loss_runs_with_converted_vggface2(tmp_path):
    """loss.id > 0 with weights from a `jaxdeca.convert`-style directory (random values here):
    the term is present, finite and gives the encoder a gradient."""
    import jax
    import jax.numpy as jnp
    from jaxdeca import models
    from jaxdeca.convert.core import save_variables
    net = models.vggface2_resnet50()
    v = net.init(jax.random.key(3), jnp.zeros((1, 224, 224, 3)), train=False)
    save_variables(jax.tree.map(np.asarray, v), str(tmp_path / "vggface2"))
    config = test_coarse.get_config("coarse")
    config.loss.id = 0.2
    config.loss.shape_consistency = False  # half the images through ResNet-50 at 224 (CPU time)
    config.weights.vggface2 = str(tmp_path / "vggface2")
    task = CoarseTask(config)
    params, stats, frozen = task.init_variables(jax.random.key(0))
    assert "vggface2" in frozen and task.frozen_from_config == ("vggface2",)  # not checkpointed
    batch = task.make_loader(2, 0, 1).next()
    grad_fn = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True))
    (loss, (terms, _)), g = grad_fn(params, stats, frozen, batch, jax.random.key(1))
    assert "identity" in terms and np.isfinite(float(terms["identity"])) and float(terms["identity"]) > 0
    assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(g)) > 0


def test_wrong_converted_weights_are_refused_naming_the_field(tmp_path, monkeypatch):
    """config.weights.vggface2 naming the official .pkl instead of the converted directory, or
    the converted VGG19 (the other `jaxdeca.convert` output), is one ConfigError naming the
    field, before FLAME and the networks are built (it was a ConversionError traceback, or a
    Flax scope error from inside the first jitted train step)."""
    from jaxdeca.convert.core import save_variables
    from jaxdeca.train import deca_common

    def built(*a):
        raise AssertionError("FLAME and the networks were built before weights.vggface2 was checked")
    monkeypatch.setattr(deca_common.DecaParts, "__init__", built)
    config = test_coarse.get_config("coarse")
    config.loss.id = 0.2
    pkl = tmp_path / "resnet50_ft_weight.pkl"
    pkl.write_bytes(b"pickled arrays")
    config.weights.vggface2 = str(pkl)
    with pytest.raises(paths.ConfigError, match=r"config.weights.vggface2=.*resnet50_ft_weight.pkl.*"
                                                r"python -m jaxdeca.convert vggface2"):
        CoarseTask(config)
    vgg = {"params": {"features_0": {"kernel": np.zeros((3, 3, 3, 64), np.float32),
                                     "bias": np.zeros(64, np.float32)}}}
    save_variables(vgg, str(tmp_path / "vgg19"))
    config.weights.vggface2 = str(tmp_path / "vgg19")
    with pytest.raises(paths.ConfigError, match=r"config.weights.vggface2=.*vgg19.*: (unexpected|missing) variable"):
        CoarseTask(config)


def test_init_cam_scale_sets_the_camera_scale_output():
    import jax
    config = test_coarse.get_config("pretrain")
    config.model.init_cam_scale = 8.0
    task = CoarseTask(config)
    params, stats, _ = task.init_variables(jax.random.key(0))
    codes, _ = task._encode(params, stats, np.zeros((2, 48, 48, 3), np.float32), False)
    base = test_coarse.get_config("pretrain")
    p0, s0, _ = CoarseTask(base).init_variables(jax.random.key(0))
    codes0, _ = task._encode(p0, s0, np.zeros((2, 48, 48, 3), np.float32), False)
    # the camera-scale output's bias is set to 8 (DECA's init draws it near 0, nn.Linear's)
    start = 206  # the coarse code's cam[206:209] (DESIGN 5)
    b0 = float(p0["E_flame"]["layers_2"]["bias"][start])
    assert 0 < abs(b0) < 0.1
    np.testing.assert_allclose(np.asarray(codes["cam"][:, 0] - codes0["cam"][:, 0]), 8.0 - b0, atol=1e-5)
    np.testing.assert_array_equal(np.delete(np.asarray(params["E_flame"]["layers_2"]["bias"]), start),
                                  np.delete(np.asarray(p0["E_flame"]["layers_2"]["bias"]), start))
    np.testing.assert_allclose(np.asarray(codes["pose"]), np.asarray(codes0["pose"]), atol=1e-6)


def test_camera_codes_abs_scale_removes_the_mirror():
    import jax.numpy as jnp
    from jaxdeca.train.deca_common import camera_codes
    codes = {"cam": jnp.array([[-7.0, 0.1, -0.2], [5.0, 0.0, 0.3]]), "pose": jnp.zeros((2, 6))}
    assert camera_codes(codes, {"cam_scale": "raw"}) is codes
    out = camera_codes(codes, {"cam_scale": "abs"})
    np.testing.assert_allclose(np.asarray(out["cam"]), [[7.0, 0.1, -0.2], [5.0, 0.0, 0.3]])
    with pytest.raises(ValueError, match="cam_scale"):
        camera_codes(codes, {"cam_scale": "softplus"})


def test_resume_with_other_model_fields_is_refused(tmp_path):
    """A workdir resumed with another config.model.cam_scale, compute dtype or data.image_size
    (same parameter shapes, so the checkpoint restored) went on silently, training and recording
    another model than the one it started; it is one ConfigError naming each field with both
    values, the checkpoints left as they were. Fields that do not change the model (num_steps,
    cadences) and init_cam_scale (only a fresh init reads it) still resume."""
    config = test_coarse.get_config("pretrain")
    config.train.update(dict(num_steps=1, eval_every=0))
    loop.train(config, str(tmp_path / "w"), run.make_task(config))
    other = test_coarse.get_config("pretrain")
    other.train.update(dict(num_steps=2, eval_every=0))
    other.model.update(dict(cam_scale="abs", dtype="bfloat16"))
    other.data.image_size = 64
    with pytest.raises(paths.ConfigError) as e:
        loop.train(other, str(tmp_path / "w"), run.make_task(other))
    msg = str(e.value)
    assert "checkpoint step 1" in msg and "config.model.cam_scale='abs' (the checkpoint's 'raw')" in msg, msg
    assert "config.model.dtype='bfloat16' (the checkpoint's 'float32')" in msg, msg
    assert "config.data.image_size=64 (the checkpoint's 48)" in msg and "another workdir" in msg, msg
    same = test_coarse.get_config("pretrain")
    same.train.update(dict(num_steps=1, eval_every=0, log_every=7))
    same.model.init_cam_scale = 8.0
    assert loop.train(same, str(tmp_path / "w"), run.make_task(same))["losses"] == []


def test_resume_initialises_nothing_and_continues_bit_identically(tmp_path):
    """A resumed stage compiled and ran its encoder's init (jit(init): a compile of the forward
    pass, seconds on CPU for this tiny network) and the optimiser's zeros (jit(fresh)) only to
    overwrite them with the checkpoint; it restores onto the state's shapes instead, compiling
    neither, and a 1-step run resumed to 2 steps ends bit-identical to an uninterrupted 2-step run."""
    import jax
    from compile_count import compiled_functions
    config = test_coarse.get_config("pretrain")
    config.train.update(dict(num_steps=1, eval_every=0))
    loop.train(config, str(tmp_path / "w"), run.make_task(config))
    config.train.num_steps = 2
    task = run.make_task(config)
    with compiled_functions() as names:
        resumed = loop.train(config, str(tmp_path / "w"), task)
    assert resumed["losses"][0][0] == 2, "did not resume"
    assert "jit(init)" not in names and "jit(fresh)" not in names, names
    ref = loop.train(config, str(tmp_path / "ref"), run.make_task(config))
    assert resumed["losses"] == ref["losses"][1:]
    assert jax.tree.structure(resumed["state"]) == jax.tree.structure(ref["state"])
    for x, y in zip(jax.tree.leaves(resumed["state"]), jax.tree.leaves(ref["state"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("field,value,expected", [
    ("blocks", ("abc",), r"config.model.blocks=\('abc',\) must be four positive ints"),  # --config.model.blocks=abc
    ("blocks", (1, 1, 1), r"config.model.blocks=\(1, 1, 1\) must be four positive ints"),
    ("blocks", (1, 0, 1, 1), r"config.model.blocks=\(1, 0, 1, 1\) must be four positive ints"),
    ("width", -1.0, r"config.model.width=-1.0 must be a number > 0"),
    ("hidden", 0, r"config.model.hidden=0 must be a positive int"),
    ("uv_size", 50, r"config.model.uv_size=50 must be a positive multiple of 32"),
])
def test_bad_architecture_fields_are_one_config_error(field, value, expected):
    """A config.model architecture field the networks cannot be built from (a command-line
    --config.model.blocks=abc arrives as ('abc',)) was a ValueError traceback from int() or
    from inside the first network build; it is one ConfigError naming the field, checked when
    the task is made, before FLAME, the topology or any data."""
    config = test_coarse.get_config("pretrain")
    config.model[field] = value
    with pytest.raises(paths.ConfigError, match=expected):
        CoarseTask(config)


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    """torchvision's resnet50.pth layout (random weights, fc included) converted as the README
    says: python -m jaxdeca.convert resnet50 --src resnet50.pth --out DIR."""
    import torch
    from jaxdeca.convert import __main__ as convert_cli
    from torch_refs import ResNet, randomize
    d = tmp_path_factory.mktemp("imagenet")
    torch.save(randomize(ResNet(with_fc=True), 11).state_dict(), d / "resnet50.pth")
    assert convert_cli.main(["resnet50", "--src", str(d / "resnet50.pth"), "--out", str(d / "resnet50")]) == 0
    return str(d / "resnet50")


def test_encoders_start_from_the_converted_imagenet_resnet50(imagenet_dir, tmp_path):
    """`convert resnet50` writes torchvision's ImageNet ResNet-50 (running statistics included)
    for the encoders to start from (DECA's own load_ResNet50Model copies an untrained one), but
    no config field read it, so every stage began from random weights. config.init.imagenet fills
    the E_flame ResNet of a stage that creates its encoder (its MLP head as without it); a
    network of another width is one ConfigError naming the field, a missing directory one
    ConfigPathError."""
    import jax
    from jaxdeca.convert import load_variables
    config = test_coarse.get_config("pretrain")
    config.model.update(dict(width=1.0, blocks=(3, 4, 6, 3)))
    plain = CoarseTask(config).init_variables(jax.random.key(0))
    config.init.imagenet = imagenet_dir
    params, stats, _ = CoarseTask(config).init_variables(jax.random.key(0))
    want = load_variables(imagenet_dir)
    for got, ref in ((params["E_flame"]["encoder"], want["params"]), (stats["E_flame"]["encoder"], want["batch_stats"])):
        assert jax.tree.structure(got) == jax.tree.structure(ref)
        for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(r))
    for g, r in zip(jax.tree.leaves(params["E_flame"]["layers_0"]), jax.tree.leaves(plain[0]["E_flame"]["layers_0"])):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(r))
    narrow = test_coarse.get_config("pretrain")  # width 0.125, one bottleneck per stage
    narrow.init.imagenet = imagenet_dir
    with pytest.raises(paths.ConfigError, match=r"config.init.imagenet=.*: unexpected variable .* \(not the ResNet-50 "
                       r"python -m jaxdeca.convert resnet50 writes, or config.model's width/blocks are not ResNet-50's"):
        CoarseTask(narrow).init_variables(jax.random.key(0))
    narrow.init.imagenet = str(tmp_path / "missing")
    with pytest.raises(paths.ConfigPathError, match=r"config.init.imagenet=.* does not exist; it must name the "
                       "converted torchvision ImageNet ResNet-50"):
        CoarseTask(narrow).init_variables(jax.random.key(0))


def test_net_template_follows_the_default_prng_implementation():
    """net_template (the shapes a previous stage's encoder is cast onto: coarse from pretrain,
    the detail stage's frozen coarse encoder) traced the network's init with a raw uint32[2] key,
    threefry's layout, so under jax_default_prng_impl='rbg' (JAX's faster TPU generator, whose
    keys are uint32[4]) flax refused it (InvalidRngError) and neither stage could start, while
    init_net and the training loop, which make their keys with jax.random.key, run under it."""
    import jax
    old = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    try:
        task = CoarseTask(test_coarse.get_config("pretrain"))
        template = task.net_template("E_flame")
        want = jax.eval_shape(lambda: task.init_net("E_flame", jax.random.key(0)))
    finally:
        jax.config.update("jax_default_prng_impl", old)
    assert jax.tree.structure(template) == jax.tree.structure(want)
    for t, w in zip(jax.tree.leaves(template), jax.tree.leaves(want)):
        assert (t.shape, t.dtype) == (w.shape, w.dtype)


def test_flame_file_with_too_few_albedo_components_is_refused(tmp_path):
    """A FLAME npz whose albedo basis has fewer components than the texture code (50) is one
    FlameFileError naming it when the task is built, not an error from inside the first step."""
    from jaxdeca import flame
    demo = dict(np.load(flame.DEMO_HEAD))
    few = str(tmp_path / "few_albedo.npz")
    np.savez(few, **dict(demo, albedo_basis=demo["albedo_basis"][..., :10]))
    config = test_coarse.get_config("coarse")
    config.flame.path = few
    with pytest.raises(flame.FlameFileError, match=f"{few}: the albedo basis has 10 components, the texture code 50"):
        CoarseTask(config)
    # a FLAME file the task cannot use names the config field too (as the weights' fields do)
    config.flame.path = "no_such_flame.npz"
    with pytest.raises(flame.FlameFileError, match=r"^config.flame.path='no_such_flame.npz': no_such_flame.npz: "):
        CoarseTask(config)


def test_checkpoints_record_the_flame_file_as_an_absolute_path(tmp_path, monkeypatch):
    """A workdir recorded config.flame.path as typed ('flame.npz'), so reconstruct run from any
    other folder read no file there or, silently, another flame.npz; it is recorded absolute."""
    import shutil
    from jaxdeca import flame
    shutil.copy(flame.DEMO_HEAD, tmp_path / "flame.npz")
    monkeypatch.chdir(tmp_path)
    config = test_coarse.get_config("coarse")
    config.flame.path = "flame.npz"
    assert CoarseTask(config).checkpoint_info()["flame_path"] == str(tmp_path / "flame.npz")


@pytest.fixture(scope="module")
def other_flame_pretrain(tmp_path_factory):
    """(FLAME npz, workdir): a 1-step pretrain trained with another FLAME file than the demo
    head (its template 20% larger)."""
    from jaxdeca import flame
    d = tmp_path_factory.mktemp("other_flame")
    demo = dict(np.load(flame.DEMO_HEAD))
    np.savez(d / "other_flame.npz", **dict(demo, v_template=demo["v_template"] * 1.2))
    config = test_coarse.get_config("pretrain")
    config.train.update(dict(num_steps=1, eval_every=0))
    config.flame.path = str(d / "other_flame.npz")
    loop.train(config, str(d / "pretrain"), run.make_task(config))
    return d / "other_flame.npz", d / "pretrain"


def test_resume_with_another_flame_is_refused_and_a_moved_copy_resumes(other_flame_pretrain, tmp_path, monkeypatch):
    """A workdir trained with config.flame.path and resumed without it (or with another file)
    went on silently: the later steps trained the codes on the demo head and the workdir's
    record then named the demo head, so the apps decoded it with that one (flame_path was left
    out of the resume check as a path, since the same file may lie elsewhere). The FLAME's arrays
    are fingerprinted: another FLAME is one ConfigError naming the checkpoint, the FLAME it was
    trained with and the flag to pass, the checkpoints left as they were; the same file moved
    elsewhere resumes, and a checkpoint saved without the fingerprint (before it was recorded)
    resumes as before."""
    import shutil
    from jaxdeca.train import deca_common, export
    other, pre = other_flame_pretrain
    w = shutil.copytree(pre, tmp_path / "w")
    trained = export.load_inference(str(w))[1]["flame_path"]
    assert trained == str(other)
    config = test_coarse.get_config("pretrain")
    config.train.update(dict(num_steps=2, eval_every=0))
    with pytest.raises(paths.ConfigError) as e:
        loop.train(config, str(w), run.make_task(config))
    assert str(e.value) == (f"{w / 'checkpoints'}: checkpoint step 1 was trained with FLAME {trained!r}, but this run "
                            "has the embedded demo head (config.flame.path unset), another FLAME (v_template differs): "
                            f"its codes would mean other shapes; resume with --config.flame.path={trained}, or use "
                            "another workdir"), str(e.value)
    assert sorted(d for d in (w / "checkpoints").iterdir() if d.name.isdigit()) == [w / "checkpoints" / "1"]
    moved = tmp_path / "moved.npz"
    moved.write_bytes(other.read_bytes())
    config.flame.path = str(moved)
    info = deca_common.DecaParts.checkpoint_info
    with monkeypatch.context() as m:  # step 2 saved as before the fingerprint was recorded
        m.setattr(deca_common.DecaParts, "checkpoint_info",
                  lambda self: {k: v for k, v in info(self).items() if k != "flame_fingerprint"})
        assert [s for s, _ in loop.train(config, str(w), run.make_task(config))["losses"]] == [2]
    assert export.load_inference(str(w))[1]["flame_path"] == str(moved)
    # a checkpoint without a fingerprint (an earlier jaxdeca's) is checked by the file it names:
    # resumed on the demo head, it trained on it and recorded it (the apps then decoded with it)
    config.flame.path = None
    with pytest.raises(paths.ConfigError, match=r"step 2 was trained with FLAME .*moved.npz', but this run has the "
                       r"embedded demo head .*v_template differs"):
        loop.train(config, str(w), run.make_task(config))
    moved.rename(tmp_path / "elsewhere.npz")  # gone from where it was recorded: the demo head is refused,
    with pytest.raises(paths.ConfigError, match=r"moved.npz' \(not readable there now\), but this run has the "
                       r"embedded demo head"):
        loop.train(config, str(w), run.make_task(config))
    config.flame.path = str(tmp_path / "elsewhere.npz")  # and a FLAME file named goes on
    assert loop.train(config, str(w), run.make_task(config))["losses"] == []


def test_stage_started_from_another_flame_is_refused(other_flame_pretrain):
    """A coarse stage started from a pretrain workdir (config.init.checkpoint), or a detail stage
    from a coarse one (config.init.coarse_checkpoint), without the config.flame.path it was
    trained with went on silently: it trained (or, detail, read) the previous stage's codes on
    the demo head, and recorded the demo head as its FLAME. It is one ConfigError naming the
    field, the FLAME the checkpoint was trained with and the flag to pass; the same FLAME starts."""
    import jax
    other, pre = other_flame_pretrain
    for stage, field in (("coarse", "init.checkpoint"), ("detail", "init.coarse_checkpoint")):
        config = test_coarse.get_config(stage)
        config.init[field.split(".")[1]] = str(pre)
        with pytest.raises(paths.ConfigError) as e:
            run.make_task(config).init_variables(jax.random.key(0))
        assert str(e.value) == (f"config.{field}={str(pre)!r} (checkpoint step 1) was trained with FLAME "
                                f"{str(other)!r}, but this stage has the embedded demo head (config.flame.path "
                                "unset), another FLAME (v_template differs): its codes would mean other shapes; "
                                f"start it with --config.flame.path={other}, the FLAME of the stage it starts "
                                "from"), str(e.value)
    config = test_coarse.get_config("coarse")
    config.init.checkpoint = str(pre)
    config.flame.path = str(other)
    params, _, _ = run.make_task(config).init_variables(jax.random.key(0))
    assert "E_flame" in params


def test_resume_or_start_with_another_albedo_is_refused(other_flame_pretrain, tmp_path):
    """A checkpoint's FLAME fingerprint held the model's geometry alone: a resume, or a stage
    started from it, with a FLAME file of the same geometry and another albedo (the same
    generic_model.pkl converted with FLAME_texture.npz instead of the BFM albedo) went on, its
    texture codes then meaning other colours. The file's albedo and UV arrays are compared too; a
    checkpoint recorded before them compares the geometry alone."""
    import shutil
    import jax
    from jaxdeca.train import deca_common
    other, pre = other_flame_pretrain
    d = dict(np.load(other))
    albedo = tmp_path / "other_albedo.npz"
    np.savez(albedo, **dict(d, albedo_mean=d["albedo_mean"][..., ::-1] * 0.3))
    w = shutil.copytree(pre, tmp_path / "w")
    config = test_coarse.get_config("pretrain")
    config.train.update(dict(num_steps=2, eval_every=0))
    config.flame.path = str(albedo)
    with pytest.raises(paths.ConfigError, match=r"checkpoint step 1 was trained with FLAME '.*other_flame.npz', but this "
                       r"run has config.flame.path='.*other_albedo.npz', another FLAME \(albedo_mean differs\): its "
                       r"codes would mean other textures \(albedo, UV maps\)"):
        loop.train(config, str(w), run.make_task(config))
    coarse = test_coarse.get_config("coarse")
    coarse.init.checkpoint, coarse.flame.path = str(pre), str(albedo)
    with pytest.raises(paths.ConfigError, match=r"config.init.checkpoint=.*another FLAME \(albedo_mean differs\)"):
        run.make_task(coarse).init_variables(jax.random.key(0))
    task = run.make_task(config)
    assert {"albedo_mean", "albedo_basis", "uv_face_eye_mask"} <= set(task.flame_fingerprint)
    geometry = {k: v for k, v in task.flame_fingerprint.items() if k not in deca_common.FLAME_FILE_ARRAYS}
    deca_common.check_same_flame({"flame_fingerprint": geometry, "flame_path": str(other)}, str(albedo),
                                 task.flame_fingerprint, "a checkpoint of stop 41")  # goes on


def test_resume_with_another_model_names_it_before_the_schedule(other_flame_pretrain, tmp_path):
    """A resume with another config.model.width and another learning-rate schedule (or a cosine
    schedule's num_steps) was refused for the schedule alone, checked before the checkpoint was
    restored, while the model's fields were checked after it (a changed width: a mismatch of
    the state's shapes): fixing the schedule only led to the next error. The model's fields are
    checked first, and named."""
    import shutil
    other, pre = other_flame_pretrain
    w = shutil.copytree(pre, tmp_path / "w")
    config = test_coarse.get_config("pretrain")
    config.train.update(dict(num_steps=2, eval_every=0))
    config.flame.path = str(other)
    config.optim.schedule = "cosine"
    config.model.width = 0.25
    with pytest.raises(paths.ConfigError) as e:
        loop.train(config, str(w), run.make_task(config))
    assert str(e.value) == (f"{w / 'checkpoints'}: checkpoint step 1 was trained with other values of the model's "
                            "fields: config.model.width=0.25 (the checkpoint's 0.125); resume with the values it was "
                            "trained with, or use another workdir"), str(e.value)
