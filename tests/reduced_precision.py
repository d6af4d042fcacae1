"""What a function computes where float32 matmuls run at reduced precision, emulated on the CPU.

At JAX's default precision a float32 `dot_general` on a TPU rounds both operands to bfloat16
(8 significant bits) and accumulates in float32; on NVIDIA GPUs from Ampere on it uses TF32
(11 significant bits). XLA:CPU computes every float32 product exactly whatever the precision,
so the tests emulate the accelerators: `emulate(fn, bits)` runs fn's traced program with the
operands of each float32 dot_general rounded to `bits` significant bits (round to nearest
even), except where the call asks for Precision.HIGHEST, in nested programs too (jit and
custom_jvp/custom_vjp calls are interpreted; the programs of cond, scan, while, checkpoint, ...
are traced again through the interpreter).
"""
import jax
import jax.numpy as jnp
from jax.extend import core as jcore

BFLOAT16_BITS = 8  # TPU default
TF32_BITS = 11     # GPU default (Ampere and newer)


def round_to_bits(x, bits):
    """float32 x rounded to `bits` significant bits (nearest, ties to even; NaN stays NaN);
    other dtypes as given."""
    if x.dtype != jnp.float32:
        return x
    drop = 24 - bits
    i = jax.lax.bitcast_convert_type(x, jnp.uint32)
    odd = (i >> drop) & 1
    i = (i + jnp.uint32((1 << (drop - 1)) - 1) + odd) & jnp.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
    return jnp.where(jnp.isnan(x), x, jax.lax.bitcast_convert_type(i, jnp.float32))


def _is_highest(precision):
    ps = precision if isinstance(precision, tuple) else (precision,)
    return precision is not None and all(p == jax.lax.Precision.HIGHEST for p in ps)


def _eval(jaxpr, consts, args, bits):
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "dot_general" and not _is_highest(eqn.params.get("precision")):
            outs = eqn.primitive.bind(*[round_to_bits(x, bits) for x in ins], **eqn.params)
        elif name in ("pjit", "jit"):
            inner = eqn.params["jaxpr"]
            outs = _eval(inner.jaxpr, inner.consts, ins, bits)
        elif name in ("custom_jvp_call", "custom_vjp_call"):
            inner = eqn.params["call_jaxpr"]
            outs = _eval(inner.jaxpr, inner.consts, ins, bits)
        elif _nested_products(eqn):  # cond, scan, while, checkpoint, ...: their programs rewritten
            outs = eqn.primitive.bind(*ins, **_rewritten_params(eqn, bits))
        else:
            outs = eqn.primitive.bind(*ins, **eqn.params)
        for v, x in zip(eqn.outvars, outs if eqn.primitive.multiple_results else [outs]):
            env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _rewritten(sub, bits):
    """A nested program (ClosedJaxpr, or a Jaxpr without constants) traced again through `_eval`,
    so that its products are rounded too."""
    closed = sub if isinstance(sub, jcore.ClosedJaxpr) else jcore.ClosedJaxpr(sub, [])
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed.in_avals]
    new = jax.make_jaxpr(lambda *a: _eval(closed.jaxpr, closed.consts, a, bits))(*avals)
    if isinstance(sub, jcore.ClosedJaxpr):
        return new
    assert not new.consts, "a rewritten open program needs no constants"
    return new.jaxpr


def _rewritten_params(eqn, bits):
    def one(p):
        return _rewritten(p, bits) if isinstance(p, (jcore.ClosedJaxpr, jcore.Jaxpr)) else p
    return {k: type(v)(one(x) for x in v) if isinstance(v, (tuple, list)) else one(v)
            for k, v in eqn.params.items()}


def _sub_jaxprs(eqn):
    for p in eqn.params.values():
        for sub in (p if isinstance(p, (tuple, list)) else (p,)):
            if isinstance(sub, jcore.ClosedJaxpr):
                yield sub.jaxpr
            elif isinstance(sub, jcore.Jaxpr):
                yield sub


def _nested_products(eqn):
    """Whether a program nested in eqn holds a dot_general that emulation would round."""
    return any(e.primitive.name == "dot_general" and not _is_highest(e.params.get("precision"))
               or _nested_products(e) for j in _sub_jaxprs(eqn) for e in j.eqns)


def emulate(fn, bits):
    """fn as an accelerator at default matmul precision would compute it (forward only)."""
    def run(*args):
        closed, shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        leaves = _eval(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args), bits)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), leaves)
    return run


def default_precision_products(fn, *args):
    """Source lines ('file:line') of the float32 dot_generals in fn's traced program that do not
    ask for Precision.HIGHEST, nested programs included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general" and not _is_highest(eqn.params.get("precision")) \
                    and any(v.aval.dtype == jnp.float32 for v in eqn.invars):
                tb = eqn.source_info.traceback
                frames = [f for f in (tb.frames if tb else []) if "/jaxdeca/" in f.file_name]
                found.append(f"{frames[0].file_name.split('/jaxdeca/')[-1]}:{frames[0].line_num}" if frames else "?")
            for sub in _sub_jaxprs(eqn):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found
