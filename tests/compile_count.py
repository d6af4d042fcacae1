"""`compiles()`: counts the XLA backend compilations made inside a `with` block (a persistent
cache hit counts too: JAX reports its retrieval under the same event)."""
import contextlib

import jax


@contextlib.contextmanager
def _compile_events(record):
    """Appends record(seconds, event kwargs) for each XLA backend compilation inside the block."""
    found = []

    def listener(name, secs, **kwargs):
        if name.endswith("backend_compile_duration"):
            found.append(record(secs, kwargs))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield found
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def compiles():
    """with compiles() as n: ...; then len(n) is the number of compilations, n their seconds."""
    return _compile_events(lambda secs, kwargs: secs)


def compiled_functions():
    """with compiled_functions() as names: ...; then names lists the compiled functions'
    names ('jit(init)', ...), one per compilation, in order."""
    return _compile_events(lambda secs, kwargs: kwargs.get("fun_name"))
