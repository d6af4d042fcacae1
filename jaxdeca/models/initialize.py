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
    static_kwargs: Python constants such as ``train=False``. Returns the variables dict."""
    return xla_options.jit(functools.partial(module.init, **static_kwargs))(rng, *inputs)
