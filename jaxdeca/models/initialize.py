"""Network initialisation as one compiled program."""
import functools

from jaxdeca import xla_options


def jit_init(module, rng, *inputs, **static_kwargs):
    """`module.init(rng, *inputs, **static_kwargs)` run as one jitted XLA program
    (`xla_options.jit`, like every program of the package).

    Called outside jit, Flax's `init` dispatches every layer's operations one at a time, and each
    distinct shape is its own small XLA compilation (a ResNet-50 encoder: about 10 s on a 2-core
    CPU). As one program it compiles once, the persistent compilation cache can keep it, and
    the values are bitwise the same (the random streams do not depend on jit).

    inputs: example arrays (only their shapes and dtypes matter to `init`);
    static_kwargs: Python constants such as ``train=False``. Returns the variables dict.

    Called under a transformation (jax.eval_shape, a caller's jit, where compiler options are
    refused), `module.init` is traced into the caller's program as it is."""
    init = functools.partial(module.init, **static_kwargs)
    return (xla_options.jit(init) if xla_options.top_level() else init)(rng, *inputs)
