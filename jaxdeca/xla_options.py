"""XLA compile options for jaxdeca's own jitted programs, and `jit`, which applies them.

XLA's CPU backend in jaxlib 0.10 hands reductions to YNNPACK by default. For a reduction over a
short minor axis, such as the one autodiff makes of `x[..., None] * y`, YNNPACK's kernel runs
about 40x slower than XLA's own loop. The gradient of a [224, 224, 3] barycentric blend takes
6.4 ms against 0.16 ms on the 2-core CI machine. Such reductions run all through the renderer
and the losses, so on CPU this `jit` keeps YNNPACK to dot products
(`xla_cpu_experimental_ynn_fusion_type`), and XLA emits the reductions itself. On that machine
(2-core AMD EPYC, one process, old/new time of the same program) this makes the renderer's
forward+backward at 224 x 224 1.1-1.4x faster (10k-face sphere and demo head, batch 1 and 8) and
inference (encode+decode at 224, batch 1) 1.3x.

Training steps are the exception: `jit(..., ynn_reductions=True)` (`train.steps.make_train_step`)
hands reductions to YNNPACK too. Their gradients through the networks (ResNets with BatchNorm) come
out far from float64 with XLA's own reduction loops: the demo's encoder trunk (64 px, batch 16,
tests/test_xla_options.py) had its leaves 0.4% off a float64 reference at the median and 3% at the
worst, against 4e-6 and 6e-5 with YNNPACK's reductions. With Flax's initialisers, the package's
before `models.torch_init`, the demo's pretrain step was 1.2% off at the median and 12% at the
worst (coarse step: 1.2% and 9%), against about 1e-6 and at most 6e-6; the detail step's median
leaf 0.6% against 3e-4. (Neither is float64: with batch 8 at 96 or 128 px, the same trunk's
last-stage kernels were 12-16% off with YNNPACK too, a backward pass that cancels almost all of
its terms.) XLA's own default on CPU also hands YNNPACK the convolutions (`INDIVIDUAL_CONVOLUTION`
besides `DOT` and `REDUCE`); the training steps leave those to XLA. With YNNPACK's convolutions
`benchmarks/train.py` (ResNet-50 at 224 x 224, batch 8, two runs each, alternated) took 8.7-9.0 s
per coarse step against 6.65-6.68 s, and 33.4-34.6 s per detail step against 30.6-31.2 s; at the
demo's size the steps took the same time within noise. The demo trunk's jax.grad is about as close
to float64 either way (2e-6 against 5e-7 at the median).

With full-size networks YNNPACK's reductions are also faster: ResNet-50 at 224 x 224, batch 8,
the pretrain step's loss forward+backward took 2.38 s with them against 3.59 s without, coarse
2.68 s against 3.79 s, detail 5.57 s against 6.58 s. At the demo's size the pretrain step takes
32 ms against 42 ms, and the detail step about the same time. The coarse step was slower with
them (best of 6: 297-304 ms against 244-247 ms in one session, 254-265 against 221-231 in two
runs of another) while its renderer's reductions over 3 corners or xyz (face boxes, depths,
normals' lengths) went to YNNPACK too. Those are elementwise now (`render.interpolate.fold_last`):
234-239 ms with YNNPACK's reductions against 223-241 ms without (same two runs); at full size
the coarse step's time did not change (3.20 s against 3.07 s before, best of 3, within noise).

XLA:CPU's MLIR fusion emitters stay on (the test suite turns them off, `tests/conftest.py`, for
its thousands of small compiles): they emit faster code. `benchmarks/render.py --batches 1,8
--repeats 5` on a quiet 2-core AMD EPYC took 6.1-6.6 ms forward and 17.4-26.7 ms forward+backward
for one 10k-face 224 x 224 image with them, against 8.3-10.4 ms and 22.8-29.0 ms with
`--xla_cpu_use_fusion_emitters=false` (batch 8: forward+backward 157-167 ms against 172-245 ms).

The option is only passed on the CPU backend, and only when the user's XLA_FLAGS do not already
set it, so `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot,reduce` gives every program the
training steps' options (and `=dot` keeps YNNPACK to dot products in the training steps too).
jaxdeca's functions called inside the user's own `jax.jit` (or grad, vmap) are traced into the
user's program (`jit`), which can pass `compiler_options()` itself, or set the flag in XLA_FLAGS.
"""
from __future__ import annotations

import functools
import os

import jax

_FLAG = "xla_cpu_experimental_ynn_fusion_type"
_CPU_OPTIONS = {_FLAG: "LIBRARY_FUSION_TYPE_DOT"}
_TRAINING_CPU_OPTIONS = {_FLAG: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}  # XLA's default less convolutions


def compiler_options(backend: str | None = None, *, ynn_reductions: bool = False) -> dict | None:
    """Options for `jax.jit(..., compiler_options=...)` on `backend` (default: jax's default).

    A dict on CPU: YNNPACK for dot products only, or with `ynn_reductions` for reductions too
    (the training steps', module docstring). None on accelerators, or when XLA_FLAGS already
    set the flag.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu" or _FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    return dict(_TRAINING_CPU_OPTIONS if ynn_reductions else _CPU_OPTIONS)


def jit(fn=None, *, ynn_reductions: bool = False, **kwargs):
    """`jax.jit` with `compiler_options(ynn_reductions=...)`. Use it as `jit(fn, **jit_kwargs)`
    or as `@jit`.

    Called inside a transformation (the user's own jax.jit, grad, vmap, eval_shape), where JAX
    refuses compiler options, `fn` is jitted without them and becomes part of the caller's
    program, compiled with the caller's options. Without options (accelerators, or the flag set
    in XLA_FLAGS) this is `jax.jit` itself.
    """
    if fn is None:
        return lambda f: jit(f, ynn_reductions=ynn_reductions, **kwargs)
    opts = compiler_options(ynn_reductions=ynn_reductions)
    given = kwargs.get("compiler_options") or {}
    if opts is None and not given:
        return jax.jit(fn, **kwargs)
    return _TopLevelOptions(fn, jax.jit(fn, **dict(kwargs, compiler_options={**(opts or {}), **given})),
                            jax.jit(fn, **{k: v for k, v in kwargs.items() if k != "compiler_options"}))


class _TopLevelOptions:
    """A jitted function that is compiled with its options when called outside any
    transformation, and without them (they are refused there) when called inside one. Its other
    attributes (lower, trace, eval_shape, ...) are the top-level program's."""

    def __init__(self, fn, top, nested):
        functools.update_wrapper(self, fn)
        self._top, self._nested = top, nested

    def __call__(self, *args, **kwargs):
        return (self._top if top_level() else self._nested)(*args, **kwargs)

    def __getattr__(self, name):
        if name in ("_top", "_nested"):  # not set yet (copy.copy makes an instance without __init__)
            raise AttributeError(name)
        return getattr(self._top, name)



# One-off setup programs (the UV rasterization of a topology, ...) run once, so their compile time
# is what counts. At LLVM -O0 with the fusion emitters on, XLA:CPU compiles the UV rasterization of
# the demo head at 256 px in about 1.0 s against 2.5-3.4 s optimised (op by op: ~90 compiles, 3.5 s),
# and gives the bits that running it op by op gives (at 32, 44, 48, 50, 64, 100 and 256 px; at 37
# and 41 px 3-7 pixels take another face): the optimised build contracts a * b - c * d into fused
# multiply-adds (barycentrics an ulp off), -O0 does not. Both options are set whatever XLA_FLAGS say, so the result does
# not depend on them (the test suite runs with -O0 and the emitters off, which rounds differently).
# "Op by op" means eager operations compiled as the test suite compiles them (-O0): under XLA's
# default flags (-O3, emitters on) a few of the eager UV rasterization's barycentrics differ from
# this program's in the last bits, so test_render_deca's op-by-op comparison holds in the suite only.
_SETUP_CPU_OPTIONS = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": True}


def setup_jit(fn=None, **kwargs):
    """`jit` for one-off setup programs called outside any transformation: on CPU also compiled
    at -O0 with the fusion emitters on (the comment above `_SETUP_CPU_OPTIONS`), which gives the
    bits that running `fn` op by op gives, in one compile instead of one per operation. Called
    under a transformation (inside a jit, grad or vmap, where compiler options are refused),
    `fn` is traced into the caller's program as it is. The options are chosen at the first call
    (choosing them starts JAX's backend)."""
    if fn is None:
        return lambda f: setup_jit(f, **kwargs)
    given = dict(kwargs.get("compiler_options") or {})
    state = {}  # 'fn': the jitted program, 'options': its setup options (chosen at the first call)

    def compile_with(options: dict) -> None:
        state["options"] = options
        state["fn"] = jit(fn, **dict(kwargs, compiler_options={**options, **given} or None))

    @functools.wraps(fn)
    def call(*args, **kw):
        if not top_level():
            return fn(*args, **kw)
        if not state:
            compile_with(dict(_SETUP_CPU_OPTIONS) if jax.default_backend() == "cpu" else {})
        while True:
            try:
                return state["fn"](*args, **kw)
            except jax.errors.JaxRuntimeError as e:
                # An XLA newer than the pinned one may have dropped one of _SETUP_CPU_OPTIONS
                # (jaxlib 0.11 knows no xla_cpu_use_fusion_emitters: its emitters are always on)
                # and refuses the whole compile: the option goes, as that XLA's default. An
                # option the caller passed is not dropped.
                unknown = _unknown_option(e, state["options"])
                if unknown is None or unknown in given:
                    raise
                compile_with({k: v for k, v in state["options"].items() if k != unknown})
    return call


def _unknown_option(error: Exception, options: dict) -> str | None:
    """The key of `options` that XLA's "No such compile option: 'NAME'" names, else None."""
    message = str(error)
    if "No such compile option" not in message:
        return None
    return next((k for k in options if f"'{k}'" in message), None)


def top_level() -> bool:
    """True outside any JAX transformation (False when that cannot be told: tracing inline is
    always right)."""
    try:
        from jax._src import core
        return bool(core.trace_state_clean())
    except Exception:  # noqa: BLE001 - a JAX without this private function
        return False


CACHE_MAX_BYTES = 2 * 1024 ** 3  # the default cache's size: least recently used programs go first


def use_compilation_cache() -> str | None:
    """Turns on JAX's persistent compilation cache for a command-line run, unless the user chose.

    Without it every run compiled every program again: the demo, the apps (on 2 CPU cores,
    `reconstruct` of 4 faces took 11 s, 6 s with the cache warm; the tiny demo 74 s, 23 s).
    The cache is `$XDG_CACHE_HOME/jaxdeca/xla` (default `~/.cache/jaxdeca/xla`), at most
    CACHE_MAX_BYTES, keeping programs that took 0.1 s or more to compile. A JAX_COMPILATION_CACHE_DIR
    in the environment (or a jax_compilation_cache_dir already set) is left as it is, and an
    empty one turns the cache off; so are the minimum compile time and size set by their own
    JAX_* variables. Call it before the first compile (the entry points do, first thing).
    Returns the cache folder, or None when it is off."""
    if jax.config.jax_compilation_cache_dir or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return jax.config.jax_compilation_cache_dir or None
    path = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                        "jaxdeca", "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return path
