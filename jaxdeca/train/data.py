"""Training data for the DECA stages, chosen by `config.data.source`.

  'tfds'       identity-grouped faces from a tfds dataset built by `jaxdeca.data.tfds_faces`
               (`identity_faces` from prepared VGGFace2/VoxCeleb2/CelebA folders, or
               `synthetic_faces`), through `jaxdeca.data.loader.FaceLoader`: DECA's landmark-box
               crop at a random scale, K images per identity, deterministic and resumable.
               Fields: dataset, config, data_dir (None = tfds' default; a synthetic dataset
               that is missing is built there), eval_split ('test': held-out identities;
               falls back to 'train' with a warning for a dataset too small to have them).
  'synthetic'  demo heads rendered on the fly (`SyntheticFaceLoader` below), no files at
               all; used by the tests.

Both give batches of numpy arrays: image [N, S, S, 3] float32 in [0, 1], landmarks [N, 68, 3]
([-1, 1], y down, confidence), mask [N, S, S, 1] float32 in [0, 1] ({0, 1} for 'synthetic';
soft at the skin's edges for 'tfds', bilinearly cropped as DECA's), identity [N] int32,
identity-major (the K images of one person adjacent), N = identities x K.
"""
from __future__ import annotations

import numpy as np
from absl import logging

from jaxdeca.data import synthetic
from jaxdeca.train import paths
from jaxdeca.train.deca_common import flame_path

BATCH_KEYS = ("image", "landmarks", "mask", "identity")


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


def _tfds_loader(config, local_bs: int, process_index: int, process_count: int, split: str, seed: int):
    from jaxdeca.data import loader as loader_lib
    d = config.data
    k = check_k(config, local_bs)
    data_dir = d.get("data_dir")
    if data_dir is None and d.dataset != "synthetic_faces":
        paths.require_path(config, "data.data_dir", f"the tfds data dir holding {d.dataset}/{d.config} "
                           "(build it with python -m jaxdeca.data.tfds_faces)")
    if data_dir is not None:
        paths.makedirs(data_dir)
    cfg = loader_lib.LoaderConfig(groups_per_batch=local_bs // k * process_count, k=k,
                                  image_size=int(d.image_size), seed=seed,
                                  color_jitter=float(d.get("color_jitter", 0.0)),
                                  num_threads=int(d.get("num_threads", 4)))
    return loader_lib.make_loader(d.dataset, d.config, cfg, data_dir=data_dir, split=split,
                                  process_index=process_index, process_count=process_count)


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
        return SyntheticFaceLoader(local_bs, int(d.k), int(d.image_size), int(config.seed), process_index,
                                   process_count, flame_path(config))
    raise paths.ConfigError(f"config.data.source={source!r} must be 'tfds' or 'synthetic'")


def eval_batches(config, local_bs: int, process_index: int, process_count: int) -> list[dict]:
    """`config.data.eval_batches` held-out batches (identities never trained on).

    tfds: the dataset's `config.data.eval_split` (default 'test'); synthetic: another seed stream.
    """
    d = config.data
    n = int(d.get("eval_batches", 1))
    if n <= 0:
        return []
    check_k(config, local_bs)
    if d.get("source", "synthetic") == "tfds":
        from jaxdeca.data import tfds_faces
        builder = tfds_faces.get_builder(d.dataset, d.config, d.get("data_dir"))
        split = choose_eval_split(builder, d.get("eval_split", "test"))
        stream = _tfds_loader(config, local_bs, process_index, process_count, split, int(config.seed) + 1)
        return [_select(stream.batch_at(i)) for i in range(n)]
    loader = SyntheticFaceLoader(local_bs, int(d.k), int(d.image_size), int(config.seed) + 10 ** 6,
                                 process_index, process_count, flame_path(config))
    return [loader.next() for _ in range(n)]


def choose_eval_split(builder, wanted: str) -> str:
    """`wanted` if the built dataset has that split, else 'train' with a warning (a dataset with
    fewer than 50 identities holds none out)."""
    splits = builder.info.metadata.get("groups", {})
    if wanted in splits:
        return wanted
    logging.warning("%s/%s has no %r split (identities held out); evaluating on 'train'",
                    builder.name, builder.builder_config.name, wanted)
    return "train"


def _select(batch: dict) -> dict:
    """The trainer's fields of a FaceLoader batch (drops e.g. crop transforms)."""
    return {k: batch[k] for k in BATCH_KEYS}
