"""`mode='demo'`: the main job on the embedded default, end to end, on CPU in minutes.

  1. build the synthetic demo-head dataset (tfds `synthetic_faces/demo`: identity groups with
     exact landmarks and skin masks, plus held-out identities) under WORKDIR/data, once;
  2. train DECA's three stages in turn with the same loop, losses and networks as a full run
     (narrow nets and small images, from config.model / config.data):
       pretrain  coarse encoder, landmarks + closures + regularisers
       coarse    from the pretrained encoder, + photometric render + shape consistency
       detail    coarse encoder frozen; detail encoder + decoder on the UV losses
     each in WORKDIR/<stage> (checkpoints, TensorBoard scalars and image grids);
  3. write pictures and OBJ exports of held-out faces to WORKDIR/heldout and the renderer
     showcase to WORKDIR/showcase, and print the held-out landmark loss at step 0 and at the end.

A killed demo re-run with the same WORKDIR resumes: the dataset is reused, the running stage
continues from its last checkpoint, and a finished stage is skipped when its record
(<stage>/eval_history.json) holds the config this run gives it and the identity of the stage it
started from (`check_finished`). A finished stage whose config or starting stage has changed since,
or one after a stage that trained in this run, stops the job with a ConfigError naming the fields
that differ (its checkpoints would be resumed, not retrained): remove WORKDIR/<stage> and the
stages after it, or use another WORKDIR. Only a larger train.num_steps goes on from a finished
stage (as a re-run of the loop does; the stages after it are then refused), and only with a
constant learning rate: the pretrain's cosine schedule is refused it, as the loop refuses it.
A second demo started on a WORKDIR in use is refused (`jaxdeca.train.workdir_lock`).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time

import cv2
import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from jaxdeca import atomic_file, flame, xla_options
from jaxdeca.train import config_ranges, deca_common, loop, paths, run as run_lib, workdir_lock
from jaxdeca.train.deca_common import composite

STAGES = ("pretrain", "coarse", "detail")


def stage_config(config, stage: str, workdir: str):
    """The full stage config: config.<stage> overrides on top of the shared fields."""
    c = copy.deepcopy(config.stage_defaults)
    with c.unlocked():
        c.seed = config.seed
        c.stage = stage
        c.task = stage
        c.update(config[stage].to_dict())
        c.data.data_dir = config.data_dir or os.path.join(workdir, "data")
        c.flame = ml_collections.ConfigDict(dict(path=config.flame_path))
        if stage == "coarse":
            c.init.checkpoint = os.path.join(workdir, "pretrain")
        if stage == "detail":
            c.init.coarse_checkpoint = os.path.join(workdir, "coarse")
    return c


def _history_path(workdir, stage):
    return os.path.join(workdir, stage, "eval_history.json")


def _record(workdir, stage) -> dict | None:
    """The record a finished stage wrote ({'num_steps', 'eval_history', 'seconds', 'config',
    'started_from', 'weights', 'id'}: `_write_record`), or None:
    also for a record that cannot be read (cut short by a kill or a full disk before records were
    written whole): the stage then counts as unfinished, resumes from its last checkpoint (which
    holds its eval history) and writes the record again."""
    path = _history_path(workdir, stage)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        logging.warning("%s cannot be read (%s): the stage resumes from its checkpoints", path, e)
        return None
    return record if isinstance(record, dict) else None


# fields that decide when the loop logs, saves, draws and evaluates (and how it crops the held-out
# faces), and how fast it reads data, not what it trains: left out of a stage's recorded config,
# so that changing them (more read threads on a bigger machine) does not stop a re-run at a
# finished stage. A finished stage's record keeps the eval history measured when it trained.
_CADENCE_FIELDS = {"train": ("log_every", "checkpoint_every", "keep_checkpoints", "async_checkpoints", "image_every",
                             "eval_every"),
                   "data": ("num_threads", "eval_batches", "eval_scale")}


# config fields added since records held their config, with the value the code used before
# them: a record that lacks one was trained with that value (a finished stage stays finished)
_ADDED_FIELDS = {"loss.render_sigma": 1.0}


def recorded_config(config, stage: str, workdir: str) -> dict:
    """The stage config (`stage_config`) as a finished stage's record holds it, to tell on a re-run
    whether the stage was trained with the config it is given now: JSON's types (tuples as lists),
    without the _CADENCE_FIELDS, and with the paths the demo derives from the workdir (the data
    dir, by default or when config.data_dir lies under the workdir; the previous stage's folder)
    written as WORKDIR/..., so that a workdir moved or named by another path is the same.
    Of config.loss and config.weights it holds the fields the stage reads
    (`deca_common.loss_fields_read`, `weights_fields_read`): a loss weight or a pretrained network
    of another stage (photo_D, weights.vgg19 for coarse) leaves a finished stage finished."""
    c = stage_config(config, stage, "WORKDIR").to_dict()
    if config.data_dir:
        c["data"]["data_dir"] = _portable_path(config.data_dir, workdir)
    for group, fields in _CADENCE_FIELDS.items():
        for field in fields:
            c[group].pop(field, None)
    read = deca_common.loss_fields_read(stage, c["loss"])
    networks = deca_common.weights_fields_read(stage, c["loss"])
    c["loss"] = {k: v for k, v in c["loss"].items() if k in read}
    c["weights"] = {k: v for k, v in c.get("weights", {}).items() if k in networks}
    if not c["weights"]:  # no group rather than an empty one, which an old record's fields would not match
        del c["weights"]
    return json.loads(json.dumps(c, sort_keys=True, default=repr))


def _portable_path(path: str, workdir: str) -> str:
    """`path` as WORKDIR/<relative path> when it lies in the workdir, else as an absolute path."""
    full, root = os.path.realpath(path), os.path.realpath(workdir)
    if os.path.commonpath([full, root]) == root:
        return os.path.normpath(os.path.join("WORKDIR", os.path.relpath(full, root)))
    return full


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def _flat(config: dict) -> dict:
    """A recorded config as {dotted key: value} (flax's flatten_dict; an empty dict is a value)."""
    return traverse_util.flatten_dict(config, keep_empty_nodes=True, sep=".")


def _shown(value) -> str:
    text = "(not set)" if value is KeyError else "{}" if value is traverse_util.empty_node else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def previous_stage(stage: str) -> str | None:
    """The stage `stage` starts from (its encoder): None for pretrain."""
    i = STAGES.index(stage)
    return STAGES[i - 1] if i else None


def _has_checkpoints(workdir: str, stage: str) -> bool:
    ckpts = os.path.join(workdir, stage, "checkpoints")
    return os.path.isdir(ckpts) and bool(os.listdir(ckpts))


def check_finished(workdir: str, stage: str, record: dict | None, config: dict, previous: dict | None,
                   trained_before: bool, flame_fp: dict | None = None) -> bool:
    """Whether `stage` is finished and is skipped (True) or is to be trained (False: started,
    resumed from its checkpoints or, with a larger train.num_steps only, continued), from its
    record in the workdir (None: none, or unreadable), the recorded config it is given now
    (`recorded_config`), the record of the stage it starts from as the workdir holds it now
    (None: pretrain, or that stage is gone), whether a stage before it trained in this run, and
    the fingerprint of the FLAME file it is given now (`stage_flame`).
    The FLAME is compared by its arrays (all of the file's, the albedo and UV masks too) when the
    record holds their fingerprint: the same file read from another path (a moved or converted
    copy) is the same, another model written over the file, or one with another albedo, is not.
    A record written before records held it is compared by config.flame_path.

    Before, a record with the config's num_steps was enough: a re-run with another learning rate,
    loss weight, seed, model or data dir, or after the stage before it had trained again, skipped
    the stage silently (and a changed model then failed with a traceback in export_heldout); a
    finished stage that does not match stops the job with a ConfigError instead, since training it
    again over its checkpoints would resume them. A record written before records held their
    config (no 'config') is refused too: nothing tells that it was trained with this one."""
    prev = previous_stage(stage)
    if record is None:
        if trained_before and _has_checkpoints(workdir, stage):
            _refuse(workdir, stage, [f"its checkpoints were started from the {prev} stage before it trained "
                                     "again in this run"], finished=False)
        return False
    if "config" not in record:
        _refuse(workdir, stage, [f"{_history_path(workdir, stage)} was written by an earlier jaxdeca that did not "
                                 "record the stage's config, so it cannot be told whether it was trained with "
                                 "this one"])
    reasons = []
    if trained_before:
        reasons.append(f"it was trained from the {prev} stage before that trained again in this run")
    elif previous is not None and (record.get("started_from") or {}).get("id") != previous.get("id"):
        reasons.append(f"it was trained from another {prev} stage than {os.path.join(workdir, prev)} holds now")
    old, new = dict(_ADDED_FIELDS, **_flat(record["config"])), _flat(config)
    saved_flame = record.get("flame_fingerprint")
    if isinstance(saved_flame, dict) and flame_fp is not None:
        path = new.pop("flame.path", None)
        old.pop("flame.path", None)
        differs = deca_common.flame_arrays_differ(saved_flame, flame_fp)
        if differs:
            now = f"config.flame_path={path!r}" if path else "the embedded demo head (config.flame_path unset)"
            reasons.append(f"it was trained with another FLAME than {now} ({', '.join(differs)} "
                           f"{'differs' if len(differs) == 1 else 'differ'})")
    # loss and weights fields the stage does not read (a record written before records held only
    # the read ones holds them all) are no part of what it trained
    old = {k: v for k, v in old.items() if k in new or not k.startswith(("loss.", "weights."))}
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k, KeyError) != new.get(k, KeyError))
    longer = diff == ["train.num_steps"] and int(new["train.num_steps"]) > int(old["train.num_steps"])
    cosine = old.get("optim.schedule") == "cosine"
    if longer and not reasons and not cosine:
        return False  # train for longer: the loop goes on from its last checkpoint
    if longer and cosine:  # the loop refuses it too, after the stage's start was printed
        reasons.append("its learning rate follows a cosine schedule over its num_steps, which a larger "
                       "num_steps would replace, not extend")
    if diff:
        shown = [f"{k} {_shown(old.get(k, KeyError))} -> {_shown(new.get(k, KeyError))}" for k in diff[:4]]
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        reasons.insert(0, f"it was trained with another config ({', '.join(shown)}{more}; config.stage_defaults "
                          f"with config.{stage} on top)")
    if reasons:
        _refuse(workdir, stage, reasons)
    if record.get("num_steps") != int(config["train"]["num_steps"]):  # a record edited by hand
        return False
    return True


def _refuse(workdir: str, stage: str, reasons: list[str], finished: bool = True):
    """The ConfigError of check_finished: the stage, why, and what to remove."""
    later = [os.path.join(workdir, s) for s in STAGES[STAGES.index(stage) + 1:]
             if os.path.exists(os.path.join(workdir, s))]
    also = f" and the stages after it ({', '.join(later)})" if later else ""
    state = "is finished" if finished else "is not finished"
    raise paths.ConfigError(f"stage {stage} in {os.path.join(workdir, stage)} {state} but {'; '.join(reasons)}: "
                            f"training it would resume its checkpoints, not start it over; remove "
                            f"{os.path.join(workdir, stage)}{also}, or use another --workdir")


def stage_flame(config) -> dict:
    """{array name: loop.fingerprint} of every array of the FLAME npz layout in the FLAME file the
    stages train with (config.flame_path; unset: the embedded demo head) as flame.load_arrays
    reads it: the model and what the stages read beside it (albedo basis, UV layout and masks,
    fixed displacement), whatever path it is read from; a FlameFileError naming
    config.flame_path when it cannot be read as a FLAME."""
    path = config.get("flame_path") or None
    try:
        arrays = flame.load_arrays(path)
        flame.from_arrays(arrays, where=path or flame.DEMO_HEAD)  # checked as the stages read it
    except flame.FlameFileError as e:
        if path is None:
            raise
        raise flame.FlameFileError(f"config.flame_path={path!r}: {e}") from None
    # the FLAME npz layout's arrays (flame.io.REQUIRED, OPTIONAL), checked finite on load; an npz
    # may hold other keys (a note), which no stage reads
    keys = sorted(k for k in arrays if k in flame.io.REQUIRED or k in flame.io.OPTIONAL)
    return {k: loop.fingerprint(np.asarray(arrays[k])) for k in keys}


def train_stage(config, workdir: str, stage: str, trained_before: bool = False,
                flame_fp: dict | None = None) -> tuple[list, bool]:
    """Trains one stage (or reads a finished one's record, `check_finished`); returns its eval
    history and whether it trained any step in this run. trained_before: whether a stage before it
    trained in this run (a finished record of this one is then refused); flame_fp: `stage_flame`
    (computed when None)."""
    c = stage_config(config, stage, workdir)
    hist_file = _history_path(workdir, stage)
    record, want = _record(workdir, stage), recorded_config(config, stage, workdir)
    prev = previous_stage(stage)
    previous = _record(workdir, prev) if prev else None
    flame_fp = stage_flame(config) if flame_fp is None else flame_fp
    if check_finished(workdir, stage, record, want, previous, trained_before, flame_fp):
        print(f"[demo] stage {stage} already finished with this config ({hist_file}); skipping", flush=True)
        return record["eval_history"], False
    t = time.time()
    print(f"[demo] stage {stage}: {c.train.num_steps} steps of batch {c.train.batch_size} at "
          f"{c.data.image_size} px", flush=True)
    out = loop.train(c, os.path.join(workdir, stage), run_lib.make_task(c))
    hist = [(int(s), {k: float(v) for k, v in ev.items()}) for s, ev in out["eval_history"]]
    if jax.process_index() == 0:
        _write_record(hist_file, int(c.train.num_steps), hist, time.time() - t, want, prev, previous,
                      out["state"], flame_fp)
    print(f"[demo] stage {stage} done in {time.time() - t:.0f} s; held-out {_fmt(hist[-1][1]) if hist else '-'}",
          flush=True)
    # the loop logs the last step of any training (loop.due), so no loss logged = no step trained
    # (a record cut short, written again from the final checkpoint)
    return hist, bool(out["losses"])


def _write_record(hist_file, num_steps, hist, seconds, want, prev, previous, state, flame_fp) -> None:
    """The finished stage's record, whole or not at all (a re-run trusts it): with the config it
    was trained with, its FLAME file's fingerprint (`stage_flame`), the id of the stage it
    started from, and its own id, a digest of those and
    of its weights (`loop.fingerprint`: one stage record written again from the same checkpoint
    keeps its id, one trained again gets another, and the stages started from it are refused)."""
    started_from = {"stage": prev, "id": (previous or {}).get("id")} if prev else None
    weights = loop.fingerprint({"params": state.params, "batch_stats": state.batch_stats})
    record = {"num_steps": num_steps, "eval_history": hist, "seconds": seconds, "config": want,
              "flame_fingerprint": flame_fp, "started_from": started_from, "weights": weights,
              "id": _digest([_digest(want), started_from, weights])}
    with atomic_file.open_replacing(hist_file) as f:
        json.dump(record, f, indent=1)


def _fmt(ev: dict) -> str:
    return ", ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in sorted(ev.items()))


def build_data(config, workdir: str) -> None:
    """Render the synthetic dataset(s) config.data.config names (several: a mix) not built yet."""
    from jaxdeca.data import tfds_faces
    from jaxdeca.train import data as data_lib
    c = stage_config(config, "pretrain", workdir)
    for name in data_lib.data_configs(c):
        builder = tfds_faces.get_builder(c.data.dataset, name, c.data.data_dir)
        if builder.is_prepared():
            continue
        t = time.time()
        tfds_faces.build(builder)  # prints what it renders, and where
        print(f"[demo] dataset ready in {time.time() - t:.0f} s", flush=True)


def export_heldout(config, workdir: str) -> list[str]:
    """Pictures and OBJs of held-out faces decoded by the trained coarse + detail networks."""
    from jaxdeca.apps import export, visualize as vis
    from jaxdeca.train import deca_detail, export as stage_export

    c = stage_config(config, "detail", workdir)
    task = deca_detail.DetailTask(c)
    st = stage_export.load_stage(os.path.join(workdir, "detail"))
    batch = task.eval_batches(int(c.train.batch_size), 0, 1)[0]
    n = min(int(config.heldout_faces), batch["image"].shape[0])
    batch = {k: v[:n] for k, v in batch.items()}
    # one program for the pictures' decode and the OBJs' vertices and albedos (FLAME op by op is
    # about 170 eager compiles; the vertices differ from it by float rounding)
    def decode(p, bs, fr, b):
        f = task.forward(p, bs, fr, b, None, False)[0]
        return f, _flame_and_albedo(task, f["codes"])

    f, (verts, albedos) = jax.device_get(xla_options.jit(decode)(st["params"], st["batch_stats"], st["frozen"], batch))
    r, size = f["render"], task.size
    out_dir = os.path.join(workdir, "heldout")
    os.makedirs(out_dir, exist_ok=True)
    paths, tiles = [], []
    labels = ("input, landmarks", "coarse shape", "detailed shape", "albedo x SH")
    overlays = [composite(r[k], r["mask"], batch["image"]) for k in ("shape_images", "shape_detail_images", "images")]
    for i in range(n):
        gt = vis.image_to_pixels(batch["landmarks"][i][:, :2], size)
        pred = vis.image_to_pixels(f["lmk"][i], size)
        marked = vis.draw_landmarks(vis.draw_landmarks(batch["image"][i], gt, (60, 220, 60), 1), pred,
                                    (255, 60, 60), 1)
        row = [vis.to_uint8(marked)] + [vis.to_uint8(o[i]) for o in overlays]
        row = [cv2.resize(t, (128, 128), interpolation=cv2.INTER_LINEAR) for t in row]
        tiles += [vis.label(t, lab) for t, lab in zip(row, labels)] if i == 0 else row
        paths.append(export.write_obj(os.path.join(out_dir, f"face_{i:02d}.obj"), verts[i],
                                      task.arrays["faces"], uv_coords=task.arrays["uv_coords"],
                                      uv_faces=task.arrays["uv_faces"], texture=albedos[i],
                                      normal_map=np.asarray(r["uv_detail_normals"][i])))
    paths.insert(0, export.save_image(os.path.join(out_dir, "heldout_grid.png"), vis.grid(tiles, 4)))
    return paths


def _flame_and_albedo(task, codes):
    """codes (shape [B, 100], exp [B, 50], pose [B, 6], tex [B, n_tex], ...) -> (FLAME vertices
    [B, V, 3], albedo [B, R, R, 3]) of `task`'s model."""
    return task.flame(codes["shape"], codes["exp"], codes["pose"])["vertices"], task.albedo(codes)


def check_config(config) -> None:
    """ConfigError naming the field, before the dataset is rendered: config.stages must be a
    non-empty tuple of STAGES, each once, in their order; config.heldout_faces a count >= 0 (0:
    no held-out pictures; below 0 it ended the job after training with a traceback);
    config.flame_path, when set, a FLAME file the job can use (FlameFileError naming it otherwise);
    every stage's numeric fields in range (`config_ranges.check_ranges`);
    the showcase's fields (`showcase.check_config`: n_shape above the model's components was
    refused only after training, at the showcase)."""
    stages = tuple(config.stages)
    if not stages or any(s not in STAGES for s in stages) or list(stages) != sorted(set(stages), key=STAGES.index):
        raise paths.ConfigError(f"config.stages={stages!r} must name some of {STAGES}, each once and in that order "
                                "(a stage starts from the one before it)")
    if int(config.heldout_faces) < 0:
        raise paths.ConfigError(f"config.heldout_faces={config.heldout_faces} must be 0 (no held-out pictures) or "
                                "the number of held-out faces to picture")
    if config.get("flame_path"):
        paths.require_path(config, "flame_path", "a FLAME npz written by python -m jaxdeca.flame.convert")
    for stage in stages:  # a bad value in a later stage would otherwise end the job after the earlier ones
        try:
            config_ranges.check_ranges(stage_config(config, stage, "WORKDIR"))
        except paths.ConfigError as e:
            raise paths.ConfigError(f"stage {stage} (config.stage_defaults, then config.{stage} on top): {e}") from None
    from jaxdeca.apps import showcase
    showcase.check_config(config)  # loads the FLAME file too


LANDMARK_KEY = "eval/landmark_loss"


def _landmark_histories(hist: dict, workdir: str) -> dict:
    """{stage: [held-out landmark losses in step order]} of the landmark stages (pretrain, coarse)
    that hold one, from `hist` ({stage: eval history} of this run) or, for a stage not run this
    time, its record in the workdir."""
    out = {}
    for stage in ("pretrain", "coarse"):
        h = hist.get(stage)
        if h is None:
            h = (_record(workdir, stage) or {}).get("eval_history")
        found = [ev[LANDMARK_KEY] for _, ev in h or [] if LANDMARK_KEY in ev]
        if found:
            out[stage] = found
    return out


def landmark_change(hist: dict, workdir: str):
    """(first, last) held-out landmark loss of the landmark stages (pretrain, coarse): the first
    evaluation of the earliest and the last of the latest (`_landmark_histories`). None when no
    evaluation holds it (the stages ran with eval_every=0, or only detail ran on a workdir
    without records)."""
    found = [v for h in _landmark_histories(hist, workdir).values() for v in h]
    return (found[0], found[-1]) if found else None


def stage_landmark_losses(hist: dict, workdir: str) -> dict:
    """{stage: its last held-out landmark loss} of the landmark stages that hold one. The coarse
    stage's photometric term can trade some landmark accuracy for the photometric fit
    (configs/demo.py), so the pretrain's figure is reported beside the final one."""
    return {stage: h[-1] for stage, h in _landmark_histories(hist, workdir).items()}


def run(config, workdir: str) -> None:
    with workdir_lock.hold(workdir, take=jax.process_index() == 0):  # one demo at a time in workdir
        _run(config, workdir)


def _run(config, workdir: str) -> None:
    t0 = time.time()
    check_config(config)
    build_data(config, workdir)
    hist, trained, flame_fp = {}, False, stage_flame(config)
    for stage in config.stages:  # a stage after one that trained is never skipped (check_finished)
        hist[stage], trained_now = train_stage(config, workdir, stage, trained, flame_fp)
        trained = trained or trained_now
    files = export_heldout(config, workdir) if "detail" in hist and int(config.heldout_faces) else []
    from jaxdeca.apps import showcase
    showcase.run(config, workdir)
    change = landmark_change(hist, workdir)
    summary = {"minutes": (time.time() - t0) / 60.0, "stages": {s: h[-1] if h else None for s, h in hist.items()}}
    if change:
        l0, l1 = change
        by_stage = stage_landmark_losses(hist, workdir)
        summary.update(landmark_loss_step0=l0, landmark_loss_final=l1, ratio=l0 / max(l1, 1e-12),
                       landmark_loss_by_stage=by_stage)
        trend = f"{l0 / max(l1, 1e-12):.1f}x lower" if l1 <= l0 else f"{l1 / max(l0, 1e-12):.1f}x higher"
        stages = ", ".join(f"{k} {v:.4f}" for k, v in by_stage.items())
        print(f"\n[demo] held-out landmark loss (DECA's weighted landmark L1 on held-out identities): "
              f"step 0 {l0:.4f} -> final {l1:.4f} ({trend}; at the end of each stage: {stages})")
    else:
        print("\n[demo] no held-out landmark loss to report: the pretrain and coarse stages were not evaluated "
              "(config.<stage>.train.eval_every=0)")
    with atomic_file.open_replacing(os.path.join(workdir, "summary.json")) as f:
        json.dump(summary, f, indent=1)
    print(f"[demo] wall time this run {(time.time() - t0) / 60:.1f} min")
    n_obj = sum(f.endswith(".obj") for f in files)
    if files:
        print(f"[demo] held-out faces: {os.path.join(workdir, 'heldout')} (a grid PNG and {n_obj} OBJs, each with "
              "its MTL, texture and normal map)")
    print(f"[demo] TensorBoard: tensorboard --logdir {workdir}")
