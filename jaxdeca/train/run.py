"""`mode='train'` job: picks the task named by `config.task` and runs the loop on it."""
from __future__ import annotations

from absl import logging

from jaxdeca.train import config_ranges, loop, parallel, paths

TASKS = {"toy": "jaxdeca.train.toy:ToyTask", "pretrain": "jaxdeca.train.deca_coarse:CoarseTask",
         "coarse": "jaxdeca.train.deca_coarse:CoarseTask", "detail": "jaxdeca.train.deca_detail:DetailTask"}


def make_task(config):
    if config.task not in TASKS:
        raise paths.ConfigError(f"config.task={config.task!r} is not one of {sorted(TASKS)}")
    stage = config.get("stage")
    if config.task != "toy" and stage != config.task:  # DECA's tasks train the stage config.stage names
        raise paths.ConfigError(f"config.task={config.task!r} but config.stage={stage!r}: a DECA stage is named "
                                "by both; set them to the same stage (--config=configs/coarse.py:<stage> sets both)")
    import importlib
    mod, cls = TASKS[config.task].split(":")
    return getattr(importlib.import_module(mod), cls)(config)


def run(config, workdir: str) -> None:
    config_ranges.check_ranges(config)  # before the task reads its loss weights
    parallel.maybe_initialize_distributed(config.get("coordinator_address"), config.get("num_processes"),
                                          config.get("process_id"))
    out = loop.train(config, workdir, make_task(config))
    for step, ev in out["eval_history"]:
        logging.info("eval step %d: %s", step, ev)
    if out["losses"]:
        print(f"final train loss {out['losses'][-1][1]:.6f}; checkpoints in {workdir}/checkpoints", flush=True)
    else:
        print(f"no steps trained: the run in {workdir}/checkpoints is complete", flush=True)
