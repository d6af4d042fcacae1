"""Metric writing and console progress for training loops.

TensorBoard scalars and image grids go through clu's metric writers (only process 0
writes); the console gets one progress line per report with steps/s, images/s and ETA, counted
from the end of the run's first step (XLA compiles the train step there; its time is reported
apart: the loop writes it as the scalar first_step_sec).
"""
from __future__ import annotations

import time

import jax
import numpy as np


def make_writer(workdir: str):
    """TensorBoard + logging writer (clu.metric_writers.MetricWriter) on process 0, logging only
    (no files) elsewhere.

    clu's writers import TensorFlow (6 of the 10 s a config error took to be reported), so they
    are imported here, once a run has its config checked, not with this module."""
    from clu import metric_writers
    return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


def to_scalars(terms: dict) -> dict[str, float]:
    """Device scalars (a dict of loss terms) -> python floats."""
    return {k: float(np.asarray(v)) for k, v in jax.device_get(terms).items()}


class Progress:
    """Tracks throughput between reports and formats a progress line with ETA.

    The clock starts at construction (just before the run's first step); the loop calls
    `first_step_done` once that step has finished, and rates count from there.

    Args:
      total_steps: the step at which training ends.
      images_per_step: global batch size (after any consistency doubling is *not* counted:
        the images the loader delivers per step).
      start_step: the step training (re)starts from.
    """

    def __init__(self, total_steps: int, images_per_step: int, start_step: int = 0):
        self.total_steps = total_steps
        self.images_per_step = images_per_step
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self.first_step_sec = None

    def first_step_done(self, step: int) -> float:
        """Marks the end of the run's first step `step` (block on its outputs first); returns its
        seconds (loading, XLA compiling, running), which steps/s leaves out."""
        now = time.perf_counter()
        self.first_step_sec = now - self._last_time
        self._last_step, self._last_time = step, now
        return self.first_step_sec

    def report(self, step: int) -> tuple[dict[str, float], str]:
        """Returns (rates for the writer, a console line) for the steps since the last report;
        a report at the first step itself gives that step's time instead (no steady rate yet)."""
        now = time.perf_counter()
        pct = f"step {step}/{self.total_steps} ({100.0 * step / max(self.total_steps, 1):.0f}%)"
        if step == self._last_step and self.first_step_sec is not None:
            self._last_time = now
            return {}, f"{pct} first step {self.first_step_sec:.1f} s (XLA compile included)"
        steps = max(step - self._last_step, 1)
        sps = steps / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        remaining = max(self.total_steps - step, 0) / max(sps, 1e-9)
        rates = {"steps_per_sec": sps, "images_per_sec": sps * self.images_per_step}
        line = f"{pct} {sps:.2f} steps/s {rates['images_per_sec']:.1f} img/s ETA {format_seconds(remaining)}"
        return rates, line


def format_seconds(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"
