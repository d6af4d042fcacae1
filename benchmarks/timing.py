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


def interleaved_ms(calls, repeats, rounds):
    """{name: [ms, ...]} for {name: [fn, ...]} (each fn blocking until its work is done): every
    round times each fn in turn (`median_ms`), the implementations alternately, and a figure is
    the median over the rounds. Timed one after the other instead, a phase of the 2-vCPU CI
    machines' slow speed (benchmarks/render.py's docstring) could fall on one implementation's
    figures and not the other's: two runs of benchmarks/texture.py so gave batch-1 ratios of
    0.38 and 0.95 for one column."""
    times = {k: [[] for _ in fns] for k, fns in calls.items()}
    for _ in range(rounds):
        for k, fns in calls.items():
            for t, fn in zip(times[k], fns):
                t.append(median_ms(fn, repeats))
    return {k: [statistics.median(t) for t in ts] for k, ts in times.items()}
