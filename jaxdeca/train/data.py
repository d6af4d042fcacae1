"""Training data for the DECA stages, chosen by `config.data.source`.

  'tfds'       identity-grouped faces from a tfds dataset built by `jaxdeca.data.tfds_faces`
               (`identity_faces` from prepared VGGFace2/VoxCeleb2/CelebA folders, or
               `synthetic_faces`), through `jaxdeca.data.loader.FaceLoader`: DECA's landmark-box
               crop at a random scale, K images per identity, deterministic and resumable.
               Fields: dataset, config, data_dir (None = tfds' default; a synthetic dataset
               that is missing is built there), eval_split ('test': held-out identities;
               falls back to 'train' with a warning for a dataset too small to have them; any
               other split the dataset lacks is a ConfigError). A wrong dataset, config or data
               dir is a ConfigError naming the field (`tfds_builders`). config may name several
               configs of the dataset ('vggface2,bupt', on the command line or in a file), each
               built on its own in data_dir: DECA's mix of datasets (its dataset.training_data),
               read as one concatenation (`loader.concat`); the eval split is each one's own
               choice, concatenated.
  'synthetic'  demo heads rendered on the fly (`SyntheticFaceLoader` below), no files at
               all; used by the tests. It draws its own poses and crops: the augmentation
               fields (scale_min/max, trans_scale, color_jitter, eval_scale) are for 'tfds'.

Both give batches of numpy arrays: image [N, S, S, 3] float32 in [0, 1], landmarks [N, 68, 3]
([-1, 1], y down, confidence), mask [N, S, S, 1] float32 in [0, 1] ({0, 1} for 'synthetic';
soft at the skin's edges for 'tfds', bilinearly cropped as DECA's), identity [N] int32,
identity-major (the K images of one person adjacent), N = identities x K.
"""
from __future__ import annotations

import numpy as np
from absl import logging

from jaxdeca.data import crop, synthetic
from jaxdeca.train import paths
from jaxdeca.train.deca_common import flame_path

BATCH_KEYS = ("image", "landmarks", "mask", "identity")
EVAL_SCALE = sum(crop.TRAIN_SCALE) / 2  # default data.eval_scale: the centre of DECA's training range


def tfds_defaults() -> dict:
    """The config.data fields that choose what source 'tfds' reads (its num_threads, a speed
    setting, aside) and that source 'synthetic' does not read, at the defaults configs/coarse.py
    gives them (it takes them from here). DECA's training crop (its dataset.scale_min/max, trans_scale):
    size = landmark box x U[scale_min, scale_max], centre shifted by up to trans_scale x the box
    size; the held-out batches' crop: eval_scale x the landmark box, centred, no jitter."""
    return dict(dataset="identity_faces", config="vggface2", data_dir=None, eval_split="test",
                color_jitter=0.0, scale_min=crop.TRAIN_SCALE[0], scale_max=crop.TRAIN_SCALE[1],
                trans_scale=0.0, eval_scale=EVAL_SCALE)


def ignored_by_synthetic(config) -> dict:
    """{field: value} of the tfds-only fields (`tfds_defaults`) that config.data sets to other
    than their defaults: a source 'synthetic' run does not read them."""
    d = config.data
    return {k: d[k] for k, v in tfds_defaults().items() if k in d and d[k] != v}


def synthetic_group_batch(seed: int, first_identity: int, n_identities: int, k: int, image_size: int,
                          flame_path: str | None = None) -> dict:
    """Identities first_identity .. +n_identities, K images each, identity-major order.

    Returns numpy dict: image [N,S,S,3] float32 0..1, landmarks [N,68,3] ([-1,1], y down, conf 1),
    mask [N,S,S,1] float32 (rendered alpha x face region), identity [N] int32; N = n_identities*k.
    """
    groups = [synthetic.sample_codes(np.random.default_rng([int(seed), int(first_identity + i)]), k)
              for i in range(n_identities)]
    codes = {key: np.concatenate([g[key] for g in groups], 0) for key in groups[0]}
    out = synthetic.render_faces(codes, image_size=image_size, flame_path=flame_path)
    xy = (out["landmarks"] + 0.5) * (2.0 / image_size) - 1.0  # pixel centres (j) -> [-1, 1]
    lmk = np.concatenate([xy, np.ones(xy.shape[:2] + (1,), np.float32)], -1).astype(np.float32)
    ident = np.repeat(np.arange(first_identity, first_identity + n_identities), k).astype(np.int32)
    return dict(image=out["image"].astype(np.float32) / 255.0, landmarks=lmk,
                mask=(out["mask"][..., None] > 127).astype(np.float32), identity=ident)


class SyntheticFaceLoader:
    """Resumable stream of identity-grouped synthetic batches.

    Batch i of process p holds identities (i * process_count + p) * n_id ... + n_id - 1 of `seed`,
    so it is a pure function of (seed, i, p); position() = {'index': i} (JSON-able).
    """

    def __init__(self, local_bs: int, k: int, image_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, flame_path: str | None = None):
        if local_bs % k:
            raise ValueError(f"local batch size {local_bs} is not a multiple of K={k} (identities x K)")
        self.n_id, self.k, self.size, self.seed = local_bs // k, k, image_size, seed
        self.pi, self.pc, self.flame_path, self.i = process_index, process_count, flame_path, 0

    def next(self) -> dict:
        first = (self.i * self.pc + self.pi) * self.n_id
        self.i += 1
        return synthetic_group_batch(self.seed, first, self.n_id, self.k, self.size, self.flame_path)

    def position(self):
        return {"index": self.i}

    def restore(self, position):
        self.i = int(position["index"])


class _TfdsStream:
    """Adapts FaceLoader to the loop's loader interface (next / position / restore)."""

    def __init__(self, loader):
        self.loader = loader

    def next(self) -> dict:
        return _select(next(self.loader))

    def position(self) -> dict:
        return self.loader.state()

    def restore(self, position) -> None:
        self.loader.restore(position)


def _tfds_loader(config, local_bs: int, process_index: int, process_count: int, split, seed: int,
                 builder=None, augment=True):
    """FaceLoader over `builder` (one, or a list: their concatenation), by default
    tfds_builders(config) (config.data checked, a missing synthetic dataset built); split: one for
    all, or one per builder. augment=False (the held-out batches): the crop of size
    data.eval_scale x the landmark box, centred, no colour jitter, whatever the training
    augmentation (data.scale_min/max, trans_scale, color_jitter) is."""
    from jaxdeca.data import loader as loader_lib
    d = config.data
    k = check_k(config, local_bs)
    builder = builder or tfds_builders(config)
    if augment:
        scale = (float(d.get("scale_min", crop.TRAIN_SCALE[0])), float(d.get("scale_max", crop.TRAIN_SCALE[1])))
        trans_scale, color_jitter = float(d.get("trans_scale", 0.0)), float(d.get("color_jitter", 0.0))
    else:
        scale, trans_scale, color_jitter = (float(d.get("eval_scale", EVAL_SCALE)),) * 2, 0.0, 0.0
    cfg = loader_lib.LoaderConfig(groups_per_batch=local_bs // k * process_count, k=k,
                                  image_size=int(d.image_size), seed=seed, scale=scale,
                                  trans_scale=trans_scale, color_jitter=color_jitter,
                                  num_threads=int(d.get("num_threads", 4)))
    return loader_lib.tfds_loader(builder, cfg, split, process_index=process_index, process_count=process_count)


def _build_command(dataset: str, name: str, data_dir: str | None) -> str:
    manual = " --manual-dir PREPARED" if dataset == "identity_faces" else ""
    return (f"python -m jaxdeca.data.tfds_faces --dataset {dataset} --config {name}{manual} "
            f"--data-dir {data_dir if data_dir is not None else 'DIR'}")


def _built_in(data_dir: str | None) -> str:
    """'; built in DIR: dataset/config, ...' (or 'nothing is built in DIR') for a data dir that
    exists, else ''; looks for each known config's dataset_info.json, no listing of the folder."""
    from jaxdeca.data import tfds_faces
    if data_dir is None or not paths.isdir(data_dir):
        return ""
    built = [f"{name}/{c.name}" for name, cls in sorted(tfds_faces.BUILDERS.items()) for c in cls.BUILDER_CONFIGS
             if paths.exists(f"{str(data_dir).rstrip('/')}/{name}/{c.name}/{cls.VERSION}/dataset_info.json")]
    return f"; built in {data_dir}: {', '.join(built)}" if built else f"; nothing is built in {data_dir}"


def data_configs(config) -> tuple:
    """The builder configs config.data.config names: one (a string), or DECA's mix of datasets,
    several of config.data.dataset (one string of comma-separated names, as
    `--config.data.config=vggface2,bupt` gives, or a tuple or list: a config field declared so,
    whose command-line override is a tuple of that one string, split too). A name
    repeated, none at all or one that is not a string is a ConfigError naming the field."""
    given = config.data.config
    if isinstance(given, str):
        names = tuple(n.strip() for n in given.split(",")) if "," in given else (given,)
    elif isinstance(given, (list, tuple)):  # ml_collections makes '--config.data.config=a,b' a 1-tuple
        names = tuple(n.strip() if isinstance(n, str) else n  # a non-string is refused below
                      for part in given for n in (part.split(",") if isinstance(part, str) else [part]))
    else:
        names = None
    if not names or not all(isinstance(n, str) for n in names):
        raise paths.ConfigError(f"config.data.config={given!r} must name a config of config.data.dataset, or "
                                "several (a tuple, or 'vggface2,bupt') to train on their mix")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise paths.ConfigError(f"config.data.config={given!r} names {', '.join(map(repr, repeated))} more than "
                                "once; a mix holds each dataset once (each is sampled by its number of identities)")
    return names


def _config_field(config, name: str) -> str:
    """How an error names config.data.config's element `name`: the field, and the element too
    when it names several."""
    given = config.data.config
    return f"config.data.config={name!r}" if given == name else f"config.data.config={given!r}: {name!r}"


def tfds_builders(config) -> list:
    """The tfds builders of config.data (source 'tfds'), one per builder config it names
    (`data_configs`): dataset, configs and data_dir checked, one ConfigError naming the field (and
    the element of a mix) for an unknown dataset or config, a data dir that does not exist or a
    dataset that is not built there (with the build command and what is built there).
    A single process builds a missing synthetic_faces dataset itself (creating data_dir);
    identity_faces must be built beforehand, so its data dir is never created here (a mistyped
    one would be an empty folder)."""
    import jax
    from jaxdeca.data import tfds_faces
    d = config.data
    dataset, data_dir = d.dataset, d.get("data_dir")
    if dataset not in tfds_faces.BUILDERS:
        raise paths.ConfigError(
            f"config.data.dataset={dataset!r} is not a dataset of jaxdeca.data.tfds_faces; choose one of "
            f"{sorted(tfds_faces.BUILDERS)}{_built_in(data_dir)} (build one with "
            f"{_build_command('DATASET', 'CONFIG', data_dir)}, --manual-dir PREPARED for identity_faces)")
    names = data_configs(config)
    known = [c.name for c in tfds_faces.BUILDERS[dataset].BUILDER_CONFIGS]
    for name in names:
        if name not in known:
            raise paths.ConfigError(
                f"{_config_field(config, name)} is not a config of {dataset}; choose one of {known}"
                f"{_built_in(data_dir)} (build one with {_build_command(dataset, 'CONFIG', data_dir)})")
    builds_itself = dataset == "synthetic_faces" and jax.process_count() == 1
    what = (f"the tfds data dir holding {' and '.join(f'{dataset}/{n}' for n in names)} (build "
            f"{'it' if len(names) == 1 else 'each'} with "
            f"{'; '.join(_build_command(dataset, n, None) for n in names)})")
    if data_dir is None and dataset != "synthetic_faces":
        paths.require_path(config, "data.data_dir", what)
    if data_dir is not None:
        if builds_itself:
            paths.makedirs(data_dir)
        elif not paths.isdir(paths.require_path(config, "data.data_dir", what)):
            raise paths.ConfigPathError(f"config.data.data_dir={data_dir!r} is not a folder; it must name {what}")
    return [_built_builder(config, name, builds_itself) for name in names]


def _built_builder(config, name: str, builds_itself: bool):
    """The builder of config.data.dataset/name in config.data.data_dir, built first when it is a
    synthetic dataset this process builds itself, else a ConfigPathError naming it when not built."""
    from jaxdeca.data import tfds_faces
    dataset, data_dir = config.data.dataset, config.data.get("data_dir")
    builder = tfds_faces.get_builder(dataset, name, data_dir)
    if not builder.is_prepared():
        if not builds_itself:
            where = f"config.data.data_dir={data_dir!r}" if data_dir is not None else \
                "tfds' default data dir (config.data.data_dir is unset)"
            raise paths.ConfigPathError(
                f"config.data.config={config.data.config!r}: {dataset}/{name} is not built in {where}"
                f"{_built_in(data_dir)}; build it with {_build_command(dataset, name, data_dir)}, or set "
                "config.data.config / config.data.data_dir to a dataset built")
        tfds_faces.build(builder)
    return builder


def check_k(config, local_bs: int) -> int:
    """config.data.k (images per identity) if it divides the process's batch local_bs, else a
    ConfigError naming config.train.batch_size and config.data.k (one line from jaxdeca.main)."""
    k = int(config.data.k)
    if k <= 0 or local_bs % k:
        raise paths.ConfigError(
            f"config.train.batch_size={int(config.train.batch_size)} gives {local_bs} images per process, "
            f"not a multiple of config.data.k={k} (a batch holds whole identities of K images each)")
    return k


def make_loader(config, local_bs: int, process_index: int, process_count: int):
    """The training stream of this process: `next()`, `position()`, `restore(position)`."""
    d = config.data
    check_k(config, local_bs)
    source = d.get("source", "synthetic")
    if source == "tfds":
        return _TfdsStream(_tfds_loader(config, local_bs, process_index, process_count, "train", int(config.seed)))
    if source == "synthetic":
        ignored = ignored_by_synthetic(config)
        if ignored:  # e.g. a data dir of the user's own faces, on a test config: say so at the start
            logging.warning("config.data.source='synthetic' renders demo heads on the fly and does not read %s; "
                            "set config.data.source='tfds' to train on a tfds dataset",
                            ", ".join(f"config.data.{k}={v!r}" for k, v in ignored.items()))
        return SyntheticFaceLoader(local_bs, int(d.k), int(d.image_size), int(config.seed), process_index,
                                   process_count, flame_path(config))
    raise paths.ConfigError(f"config.data.source={source!r} must be 'tfds' or 'synthetic'")


def eval_batches(config, local_bs: int, process_index: int, process_count: int) -> list[dict]:
    """`config.data.eval_batches` held-out batches (identities never trained on).

    tfds: the dataset's `config.data.eval_split` (default 'test'); synthetic: another seed stream.
    Which held-out images (and crops) they hold is `config.data.eval_seed`'s (default 0), not
    `config.seed`'s: runs of several seeds are scored on the same faces. (They took config.seed:
    one model scored 0.304 / 0.269 / 0.298 landmark L1 on the batches of seeds 0 / 1 / 2.)
    Nor do they follow the training augmentation: tfds crops are data.eval_scale x the landmark
    box, centred, without colour jitter, so runs that differ in data.scale_min/max, trans_scale
    or color_jitter are scored on the same pixels too (they were cropped and jittered as the
    training batches were).
    """
    d = config.data
    n = int(d.get("eval_batches", 1))
    if n <= 0:
        return []
    check_k(config, local_bs)
    eval_seed = int(d.get("eval_seed", 0))  # offsets as when it was config.seed: seed 0's batches kept
    if d.get("source", "synthetic") == "tfds":
        builders = tfds_builders(config)
        # a mix: each dataset's own split ('test', or 'train' for one holding no identities out)
        splits = [choose_eval_split(b, d.get("eval_split", "test")) for b in builders]
        # on the training split (a dataset, or one of a mix, holding no identities out) a hash of
        # eval_seed, far from the seeds runs are given: with eval_seed + 1, a run of seed 1 was
        # scored on its own first training batch
        seed = eval_seed + 1 if "train" not in splits else \
            int(np.random.SeedSequence([eval_seed, 1]).generate_state(1)[0])
        stream = _tfds_loader(config, local_bs, process_index, process_count, splits, seed, builders, augment=False)
        return [_select(stream.batch_at(i)) for i in range(n)]
    loader = SyntheticFaceLoader(local_bs, int(d.k), int(d.image_size), eval_seed + 10 ** 6,
                                 process_index, process_count, flame_path(config))
    return [loader.next() for _ in range(n)]


def choose_eval_split(builder, wanted: str) -> str:
    """`wanted` (config.data.eval_split) if the built dataset has that split; for the default
    'test', 'train' with a warning when the dataset holds no identities out (fewer than 50
    identities: see tfds_faces.heldout_identities). Any other split it lacks (a typo) is a
    ConfigError naming config.data.eval_split and the dataset's splits."""
    splits = sorted(builder.info.metadata.get("groups", {}))
    if wanted in splits:
        return wanted
    name = f"{builder.name}/{builder.builder_config.name}"
    if wanted == "test" and not [s for s in splits if s != "train"]:
        logging.warning("%s has no %r split (identities held out); evaluating on 'train'", name, wanted)
        return "train"
    held = ("'test' holds the identities never trained on" if "test" in splits else
            "it holds no identities out, so the default 'test' evaluates on 'train'")
    raise paths.ConfigError(
        f"config.data.eval_split={wanted!r} is not a split of {name}; it has {', '.join(map(repr, splits)) or 'none'}"
        f" (set config.data.eval_split to one of them; {held})")


def _select(batch: dict) -> dict:
    """The trainer's fields of a FaceLoader batch (drops e.g. crop transforms)."""
    return {k: batch[k] for k in BATCH_KEYS}
