"""jaxdeca.xla_options: the CPU compile option is accepted, takes effect, and changes no result."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdeca import xla_options


def _blend_grad(b, c):
    """Gradient of a broadcast blend: autodiff reduces over the 3-channel minor axis."""
    return jax.grad(lambda b, c: jnp.sum(jnp.sin(b[..., :1] * c + b[..., 1:2])), argnums=(0, 1))(b, c)


def _inputs():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return jax.random.uniform(k1, (2, 32, 32, 3)), jax.random.normal(k2, (2, 32, 32, 3))


def test_options_only_on_cpu_and_only_when_the_user_has_not_set_the_flag(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    assert xla_options.compiler_options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
    assert xla_options.compiler_options("cpu", ynn_reductions=True) == {
        "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    for backend in ("gpu", "tpu"):
        assert xla_options.compiler_options(backend) is None
        assert xla_options.compiler_options(backend, ynn_reductions=True) is None
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot,reduce")
    assert xla_options.compiler_options("cpu") is None
    assert xla_options.compiler_options("cpu", ynn_reductions=True) is None


def test_jit_compiles_reductions_without_ynnpack_and_gives_the_same_result(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    b, c = _inputs()
    ours = xla_options.jit(_blend_grad)
    hlo = ours.lower(b, c).compile().as_text()
    assert "__ynn_fusion" not in hlo  # every reduction is XLA's own loop
    ref = jax.jit(_blend_grad)(b, c)
    for x, y in zip(ours(b, c), ref):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def train_step_gradient_errors() -> dict:
    """{leaf: max |error| / max |float64 gradient|} of a training step (steps.make_train_step) of the
    demo's encoder trunk (ResNet-50 at width 0.25, one bottleneck per stage) at the demo's batch and
    image size: its gradient is one SGD step at learning rate 1, the reference float64 jax.grad."""
    import optax

    from jaxdeca.models.resnet import ResNet50
    from jaxdeca.train import parallel, state as state_lib, steps
    net = ResNet50(width=0.25, blocks=(1, 1, 1, 1))
    images = np.random.default_rng(0).uniform(size=(16, 64, 64, 3)).astype(np.float32)
    v = jax.device_get(net.init(jax.random.key(0), images[:1], train=True))

    def loss(params, batch_stats, x):
        features, _ = net.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
        return jnp.mean(features ** 2)

    def loss_fn(params, batch_stats, frozen, batch, rng):
        return loss(params, batch_stats, batch), ({}, batch_stats)

    mesh, opt = parallel.make_mesh(), optax.sgd(1.0)
    state = parallel.replicate(state_lib.create(jax.tree.map(jnp.asarray, v["params"]),
                                                jax.tree.map(jnp.asarray, v["batch_stats"]), {}, opt, 0), mesh)
    new, _ = steps.make_train_step(loss_fn, opt, mesh)(state, parallel.shard_batch(images, mesh))
    grads = jax.tree.map(lambda a, b: np.float64(a) - np.float64(b), v["params"], jax.device_get(new.params))
    with jax.enable_x64(True):
        wide = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
        ref = jax.jit(jax.grad(loss))(wide(v["params"]), wide(v["batch_stats"]), jnp.asarray(images, jnp.float64))
        ref = jax.device_get(ref)
    return {jax.tree_util.keystr(k): float(np.abs(g - r).max() / np.abs(r).max())
            for (k, g), r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(ref))}


def test_train_steps_give_the_batchnorm_networks_gradients_float64_gives(run_python):
    """The demo trunk's training step (`train_step_gradient_errors`), compiled as the package
    compiles it for its users, is the float64 gradient to 1e-3 relative in every leaf. With XLA's
    own reduction loops, which the other programs use on CPU (xla_options), its leaves were 0.4%
    off at the median and 3% at the worst: the step compiles with YNNPACK's reductions
    (ynn_reductions=True), which give 4e-6 and 6e-5.

    It runs in a subprocess with XLA's default flags: the suite's -O0 build with the fusion
    emitters off (tests/conftest.py) is not what users run, and there the same step came 2e-3 off
    at the median and 2% at the worst (with YNNPACK's convolutions too, XLA's own default, 3e-6
    and 5e-5)."""
    import json
    code = "import json, test_xla_options as t; print(json.dumps(t.train_step_gradient_errors()))"
    out = run_python(code, "", timeout=600)
    errors = json.loads(out.stdout.strip().splitlines()[-1])
    assert max(errors.values()) < 1e-3, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


def test_jit_as_decorator_keeps_jit_arguments(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "")

    @xla_options.jit(static_argnums=1)
    def scale(x, k):
        return jnp.sum(x * k, -1)

    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(scale(x, 2), [6.0, 24.0])
    user = xla_options.jit(lambda x: x + 1, compiler_options={"xla_cpu_enable_fast_math": False})
    np.testing.assert_allclose(user(x), x + 1)


def _bare_jits(files, root):
    """'path:line' of every bare `jax.jit` (call or decorator) outside comments in files, but for
    lines marked `# peer program`: a benchmark peer's code, run in the peer's own venv with its
    own jax (no jaxdeca there), compiled as that peer's users compile it."""
    import re
    bare = re.compile(r"@jax\.jit\b|\bjax\.jit\(")
    return [f"{p.relative_to(root)}:{i + 1}" for p in files
            for i, line in enumerate(p.read_text().splitlines())
            if bare.search(line.split("#")[0]) and not line.rstrip().endswith("# peer program")]


def test_package_code_jits_through_xla_options():
    """Every jitted program of the package gets the CPU options: no bare jax.jit in jaxdeca/."""
    import pathlib
    root = pathlib.Path(xla_options.__file__).parent
    found = _bare_jits([p for p in sorted(root.rglob("*.py")) if p.name != "xla_options.py"], root)
    assert not found, f"use jaxdeca.xla_options.jit instead of jax.jit at {found}"


def test_benchmarks_jit_through_xla_options():
    """The benchmarks time jaxdeca's programs as jaxdeca compiles them (README: the benchmarks compile
    through xla_options.jit); a bare jax.jit on CPU times YNNPACK's slow reductions instead, e.g.
    grid_sample's texture gradient in benchmarks/texture.py ran 2.4x slower than the package's."""
    import pathlib
    root = pathlib.Path(xla_options.__file__).parent.parent
    found = _bare_jits(sorted((root / "benchmarks").glob("*.py")), root)
    assert not found, f"use jaxdeca.xla_options.jit instead of jax.jit at {found}"


def test_setup_jit_gives_the_op_by_op_bits_and_traces_inline_under_transformations():
    """A setup program compiles once (at -O0 on CPU, whatever XLA_FLAGS say) and rounds as its
    operations run one by one do: a * b - c * d is not contracted into fused multiply-adds."""
    from compile_count import compiles
    rng = np.random.default_rng(0)
    a, b, c, d = (jnp.asarray(rng.uniform(0, 64, 8192), jnp.float32) for _ in range(4))
    f = lambda a, b, c, d: a * b - c * d  # noqa: E731
    eager = f(a, b, c, d)
    setup = xla_options.setup_jit(f)
    with compiles() as n:
        got = setup(a, b, c, d)
    assert len(n) == 1
    np.testing.assert_array_equal(np.asarray(got), np.asarray(eager))
    np.testing.assert_allclose(jax.jit(setup)(a, b, c, d), eager, rtol=1e-5)  # no options in a jit
    np.testing.assert_allclose(jax.vmap(setup)(a, b, c, d), eager, rtol=1e-5)
    np.testing.assert_allclose(jax.grad(lambda a: setup(a, b, c, d).sum())(a), b)
    static = xla_options.setup_jit(lambda x, k: x * k, static_argnums=1)
    np.testing.assert_allclose(static(a, 2), a * 2)


_FMA_CHECK = """
import os, numpy as np, jax, jax.numpy as jnp
from jaxdeca import xla_options
a, b, c, d = (jnp.asarray(r, jnp.float32) for r in np.random.default_rng(0).uniform(0, 64, (4, 8192)))
f = lambda a, b, c, d: a * b - c * d
eager = np.asarray(f(a, b, c, d))
print(np.count_nonzero(np.asarray(xla_options.setup_jit(f)(a, b, c, d)) != eager), "OK")
"""


def test_setup_jit_gives_the_op_by_op_bits_under_xla_default_flags():
    """The test above runs under this suite's XLA_FLAGS (-O0 everywhere), where the bits match
    whatever options setup_jit passes; with XLA's default flags, as users run, its own -O0 is
    what keeps a * b - c * d from fused multiply-adds (without it 2896 of 8192 differ)."""
    import os
    import subprocess
    import sys
    if jax.default_backend() != "cpu":
        pytest.skip("the setup options are CPU options")
    root = os.path.dirname(os.path.dirname(os.path.abspath(xla_options.__file__)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p]))
    out = subprocess.run([sys.executable, "-c", _FMA_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["0", "OK"], (out.stdout, out.stderr[-3000:])


def test_setup_jit_drops_a_setup_option_an_xla_no_longer_knows(monkeypatch):
    """An XLA newer than the pinned one that has dropped one of the setup options (jaxlib 0.11.2
    knows no xla_cpu_use_fusion_emitters) refused every setup program, so make_topology, the
    apps and training could not start: "INVALID_ARGUMENT: No such compile option". The option
    is dropped and the program compiles with the others; an unknown option the caller passed
    itself is still an error."""
    if jax.default_backend() != "cpu":
        pytest.skip("the setup options are CPU options")
    monkeypatch.setitem(xla_options._SETUP_CPU_OPTIONS, "xla_cpu_option_no_xla_has", True)
    x = jnp.arange(4.0)
    np.testing.assert_array_equal(xla_options.setup_jit(lambda x: x * 2 + 1)(x), x * 2 + 1)
    with pytest.raises(jax.errors.JaxRuntimeError, match="xla_cpu_caller_option_no_xla_has"):
        xla_options.setup_jit(lambda x: x + 1, compiler_options={"xla_cpu_caller_option_no_xla_has": True})(x)


def _run(code_or_args, env_extra, cwd=None):
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")
           and k != "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"}
    env.update(PYTHONPATH=repo, JAX_PLATFORMS="cpu", **env_extra)
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd or repo, capture_output=True, text=True,
                          timeout=600)


def test_compilation_cache_defaults_to_the_user_cache_folder_unless_the_user_chose(tmp_path):
    """Command-line runs compiled every program again each time (reconstruct of 4 faces: 11 s,
    6 s with a warm cache; the tiny demo 74 s, 23 s). use_compilation_cache turns JAX's cache
    on in $XDG_CACHE_HOME/jaxdeca/xla, and leaves a JAX_COMPILATION_CACHE_DIR (empty: off) and
    the other JAX_* cache settings as the user set them."""
    show = ("import jax; from jaxdeca import xla_options; d = xla_options.use_compilation_cache(); "
            "print(d, jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs, "
            "jax.config.jax_compilation_cache_max_size)")
    cache = tmp_path / "cache"
    r = _run(show, dict(XDG_CACHE_HOME=str(cache)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(cache / "jaxdeca" / "xla")] * 2 + ["0.1", str(xla_options.CACHE_MAX_BYTES)]
    r = _run(show, dict(XDG_CACHE_HOME=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="3",
                        JAX_COMPILATION_CACHE_MAX_SIZE="1000"))
    assert r.stdout.split()[2:] == ["3.0", "1000"], r.stdout
    r = _run(show, dict(XDG_CACHE_HOME=str(cache), JAX_COMPILATION_CACHE_DIR=""))
    assert r.stdout.split()[0] == "None" and str(cache) not in r.stdout, r.stdout  # off
    r = _run(show, dict(XDG_CACHE_HOME=str(cache), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine")))
    assert r.stdout.split()[:2] == [str(tmp_path / "mine")] * 2, r.stdout
    assert not cache.exists()  # nothing compiled in these runs


def test_the_training_job_and_the_apps_fill_the_cache(tmp_path):
    """The entry points turn the cache on before their first compile: a toy training run and
    the teaser app each leave compiled programs in it."""
    for name, args in (("main", ["-m", "jaxdeca.main", "--config=configs/test_toy.py",
                                 f"--workdir={tmp_path / 'w'}", "--config.train.num_steps=2"]),
                       ("teaser", ["-m", "jaxdeca.apps.teaser", "--out", str(tmp_path / "t.gif"), "--frames", "1"])):
        cache = tmp_path / f"cache_{name}"
        r = _run(args, dict(XDG_CACHE_HOME=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"))
        assert r.returncode == 0, (name, r.stderr[-2000:])
        assert "persistent compilation cache" not in r.stderr, r.stderr[-2000:]  # e.g. filelock missing
        assert len(list((cache / "jaxdeca" / "xla").iterdir())) > 2, name


def test_jitted_functions_run_inside_the_users_own_transformations(monkeypatch):
    """JAX refuses compiler options below the top level: a function jitted by xla_options.jit,
    called inside the user's grad, jit (with or without the README's compiler_options), vmap or
    eval_shape, is traced into the user's program instead of stopping with a ValueError."""
    monkeypatch.setenv("XLA_FLAGS", "")
    f = xla_options.jit(lambda x: jnp.sum(jnp.sin(x) ** 2))
    x = jnp.arange(4.0)
    want = 2 * jnp.sin(x) * jnp.cos(x)
    np.testing.assert_allclose(f(x), jnp.sum(jnp.sin(x) ** 2), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(f)(x), want, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(x), want, rtol=1e-5)
    users = jax.jit(jax.grad(f), compiler_options=xla_options.compiler_options())
    np.testing.assert_allclose(users(x), want, rtol=1e-5)
    np.testing.assert_allclose(jax.vmap(f)(x[:, None]), jnp.sin(x) ** 2, rtol=1e-5)
    assert jax.eval_shape(f, x).shape == ()
    assert "__ynn_fusion" not in f.lower(x).compile().as_text()  # the top level keeps its options


def test_jitted_functions_can_be_copied(monkeypatch):
    """copy.deepcopy of an object holding one (a Pipeline) recursed without end in the wrapper's
    attribute lookup."""
    import copy
    monkeypatch.setenv("XLA_FLAGS", "")
    f = xla_options.jit(lambda x: x * 2)
    for g in (copy.copy(f), copy.deepcopy(f), copy.deepcopy({"f": f})["f"]):
        np.testing.assert_allclose(g(jnp.arange(3.0)), [0.0, 2.0, 4.0])
