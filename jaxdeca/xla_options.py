"""XLA compile options for jaxdeca's own jitted programs, and `jit`, which applies them.

XLA's CPU backend in jaxlib 0.10 hands reductions to YNNPACK by default. For a reduction over a
short minor axis, such as the one autodiff makes of `x[..., None] * y`, YNNPACK's kernel runs
about 40x slower than XLA's own loop. The gradient of a [224, 224, 3] barycentric blend takes
6.4 ms against 0.16 ms on the 2-core CI machine. Such reductions run all through the renderer,
the losses and the networks' backward passes, so on CPU this `jit` keeps YNNPACK to dot
products (`xla_cpu_experimental_ynn_fusion_type`), and XLA emits the reductions itself. The
effect on that machine, from the scripts in `benchmarks/` (old/new time, same session):
  - a full-size training step: coarse 1.2x faster, detail 1.5x;
  - encode+decode inference: 1.8-1.9x faster;
  - render forward+backward at batch 32, 10k faces at 224 x 224: 1.1-1.3x faster.
Results agree to float rounding.

XLA:CPU's MLIR fusion emitters stay on (the test suite turns them off, `tests/conftest.py`, for
its thousands of small compiles): they emit faster code. `benchmarks/render.py --batches 1,8
--repeats 5` on a quiet 2-core AMD EPYC took 6.1-6.6 ms forward and 17.4-26.7 ms forward+backward
for one 10k-face 224 x 224 image with them, against 8.3-10.4 ms and 22.8-29.0 ms with
`--xla_cpu_use_fusion_emitters=false` (batch 8: forward+backward 157-167 ms against 172-245 ms).

The option is only passed on the CPU backend, and only when the user's XLA_FLAGS do not already
set it, so `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot,reduce` restores XLA's default.
Code that calls jaxdeca's functions inside its own `jax.jit` can pass `compiler_options()`
itself, or set the flag in XLA_FLAGS.
"""
from __future__ import annotations

import os

import jax

_FLAG = "xla_cpu_experimental_ynn_fusion_type"
_CPU_OPTIONS = {_FLAG: "LIBRARY_FUSION_TYPE_DOT"}


def compiler_options(backend: str | None = None) -> dict | None:
    """Options for `jax.jit(..., compiler_options=...)` on `backend` (default: jax's default).

    A dict on CPU; None on accelerators, or when XLA_FLAGS already set the flag.
    """
    backend = backend or jax.default_backend()
    if backend != "cpu" or _FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    return dict(_CPU_OPTIONS)


def jit(fn=None, **kwargs):
    """`jax.jit` with `compiler_options()`. Use it as `jit(fn, **jit_kwargs)` or as `@jit`."""
    if fn is None:
        return lambda f: jit(f, **kwargs)
    opts = compiler_options()
    if opts is not None:
        kwargs["compiler_options"] = {**opts, **(kwargs.get("compiler_options") or {})}
    return jax.jit(fn, **kwargs)
