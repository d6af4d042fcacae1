"""Timing helper shared by the benchmark scripts (imported as `timing`: a script's own folder
is first on sys.path). Standard library only, so that the peers' subprocesses, which run in
venvs of their own, import it too."""
import statistics
import time


def median_ms(fn, repeats):
    """Median wall time of fn() in ms over `repeats` calls, after one warm-up call (which also
    compiles). fn must block until its work is done (e.g. `jax.block_until_ready`)."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)
