"""Identity-grouped training batches: K crops of one person per group, deterministic and resumable.

Why grain over a random-access source: DECA's shape-consistency loss needs K images of the same
identity in a group, so sampling is by identity, not a linear pass over records. Random access
(tfds array_record via `tfds_faces.data_source`, or any sequence of records) lets every group
be a pure function of (seed, global group index): no shuffle buffer, no hidden iterator state.
grain's MapDataset gives that random-access pipeline with threaded, ordered prefetch; resuming is
then only "start at group index step x groups_per_batch", so the loader state the trainer saves
in its orbax checkpoint is a two-integer dict {"step", "seed"}. tf.data would need its own
iterator checkpoints and a shuffle buffer that breaks identity grouping.

Sampling (global group g = step * N + j, N groups per global batch):
    epoch = g // G, identities visited in the permutation default_rng([seed, epoch]) of the G
    groups; the K images drawn by default_rng([seed, 1, g]) (without replacement; an identity
    with fewer than K images gives each of them once, the rest drawn again); each image's crop
    scale (and optional colour jitter) drawn by default_rng([seed, 2, g, k]).
DECA's datasets group otherwise, each its own way: vggface.py's list lines hold 5 images of one
person and a line gives K of them without replacement (permutation(5)[:K]); ethnicity.py gives
a line's first K; vox.py draws K frames of one face track (person/video/face) with replacement
(randint) and drops tracks with fewer than K; an epoch visits every line or track once, so a
person counts as often as it has lines or tracks. Here the group is the identity, each visited
once per epoch, its K images drawn without replacement (none of DECA's list files is public).
DECA's mix of datasets (a ConcatDataset of VGGFace2 and BUPT or VoxCeleb2) is their sources and
groups end to end (`concat`): the epoch's permutation runs over the groups of all of them.
Process p of P loads groups j in [p N/P, (p+1) N/P) of every global batch, so all processes
together see exactly the single-process sequence. Within a process, the batch is group-major
([N_local * K, ...], the K images of a group adjacent); with N_local divisible by the local
device count, every device gets whole groups.

A record that cannot be loaded (bytes OpenCV cannot decode, landmarks that cannot be
cropped, a read error) is skipped, never the batch: its slot takes another image of the same
identity, or, when none of the identity's images loads, the group takes the next identity of
the epoch's order (`load_group`). The substitute depends only on (seed, g) and the data, so a
resumed run sees the same batches; `FaceLoader.skipped` counts the skipped records and each
new one is logged with the running count.

Each crop follows DECA's training datasets: landmark box (w + h) / 2 x U[1.4, 1.8], centred
(trans_scale 0), similarity warp to image_size with OpenCV (bilinear, of the image / 255 in
float32 as DECA's float warp, `crop.crop_image`; the mask thresholded, then warped bilinearly too,
`crop_mask`), landmarks mapped and normalised as (p + 0.5) / S * 2 - 1 (`crop.normalise_points`:
where the renderer draws pixel p; DECA writes p / S * 2 - 1), with a confidence column of ones.

Batch: image [N*K, S, S, 3] float32 0..1, landmarks [N*K, 68, 3], mask [N*K, S, S, 1] float32
in [0, 1] (soft at the skin's edges), identity [N*K] int32.
"""
import dataclasses

import cv2
import numpy as np
from absl import logging

from jaxdeca.data import crop, preprocess
from jaxdeca.data import images as imageio

_SALT_GROUP, _SALT_IMAGE = 1, 2
MAX_FALLBACK_IDENTITIES = 8  # identities in a row without a loadable image before load_group gives up


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """groups_per_batch: N identities per global batch; k: images per identity; num_threads
    threads each build whole batches, at most max(prefetch, num_threads) batches ahead of the
    one consumed (with fewer, threads wait: grain warns, and 16 threads ran no faster than 8)."""
    groups_per_batch: int
    k: int = 4
    image_size: int = 224
    scale: tuple = crop.TRAIN_SCALE
    trans_scale: float = 0.0
    color_jitter: float = 0.0
    seed: int = 0
    num_threads: int = 4
    prefetch: int = 4


# ----------------------------------------------------------------------------- sampling

def _group_picks(groups, seed: int, g: int, k: int, shift: int = 0):
    """(first, count, picks [k]) of global group g; shift > 0 takes the identity `shift` places
    further in the epoch's order (the fallback of a group whose identity has no loadable image)."""
    groups = np.asarray(groups)
    G = len(groups)
    epoch, pos = divmod(int(g), G)
    ident, first, count = groups[np.random.default_rng([seed, epoch]).permutation(G)[(pos + shift) % G]]
    rng = np.random.default_rng([seed, _SALT_GROUP, int(g)])
    if count >= k:
        picks = rng.choice(count, size=k, replace=False)
    else:  # every image once before any repeats
        picks = np.concatenate([rng.permutation(count), rng.choice(count, size=k - count)])
    return int(first), int(count), picks


def group_records(groups, seed: int, g: int, k: int) -> np.ndarray:
    """Record indices [k] of global group g. groups: [G, 3] (identity, first, count)."""
    first, _, picks = _group_picks(groups, seed, g, k)
    return first + picks


def global_group(step: int, j: int, groups_per_batch: int, process_index: int = 0, process_count: int = 1) -> int:
    """Global group index of local group j of this process at `step`."""
    if groups_per_batch % process_count:
        raise ValueError(f"groups_per_batch {groups_per_batch} is not divisible by {process_count} processes")
    local = groups_per_batch // process_count
    return step * groups_per_batch + process_index * local + j


# ----------------------------------------------------------------------------- one image

def _decode(data, flags):
    """Encoded bytes -> uint8 array (RGB for colour); uint8 arrays pass through, bool ones become
    0 / 255 (a float array's scale is unknown: ValueError)."""
    if not isinstance(data, bytes):
        arr = np.asarray(data)
        if arr.dtype == bool:
            return arr.astype(np.uint8) * 255
        if arr.dtype != np.uint8:
            raise ValueError(f"record holds a {arr.dtype} array {arr.shape}, need uint8 (0..255)")
        return arr
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise ValueError("record holds bytes OpenCV cannot decode")
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def colour_jitter(image, rng, strength: float):
    """Brightness, contrast and saturation factors in [1 - s, 1 + s]. image: [H, W, 3] 0..1."""
    b, c, s = 1 + rng.uniform(-strength, strength, 3)
    grey = image.mean(-1, keepdims=True)
    out = grey + (image - grey) * s
    out = (out - out.mean()) * c + out.mean()
    return np.clip(out * b, 0.0, 1.0).astype(np.float32)


def crop_example(record: dict, rng: np.random.Generator, cfg: LoaderConfig) -> dict:
    """One record (image/mask encoded bytes or arrays, landmarks [68, 2] pixels) -> training
    sample: image [S,S,3] f32, landmarks [68,3], mask [S,S,1], identity, tform [3,3]."""
    S = cfg.image_size
    data = record["image"]
    # bytes: prepare's decoder (images.decode_image), so the image is oriented and its 16-bit
    # levels rounded as they were when its landmarks and mask were made
    img = imageio.decode_image(data, min_side=1) if isinstance(data, bytes) else \
        preprocess.as_rgb_uint8(_decode(data, cv2.IMREAD_COLOR))
    mask = _decode(record["mask"], cv2.IMREAD_GRAYSCALE)
    mask = mask[..., 0] if mask.ndim == 3 else mask
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W] (or [H, W, C]: first channel), got {mask.shape}")
    if mask.shape != img.shape[:2]:  # warped with the image's crop it would cover other pixels
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} px, its image {img.shape[1]}x{img.shape[0]} px")
    lmk = np.asarray(record["landmarks"], np.float64)
    t = crop.train_transform(lmk, S, rng, cfg.scale, cfg.trans_scale)
    image = crop.crop_image(img, t, S)
    if cfg.color_jitter > 0:
        image = colour_jitter(image, rng, cfg.color_jitter)
    pts = crop.normalise_points(crop.apply_points(t, lmk), S)
    return dict(image=image, landmarks=np.concatenate([pts, np.ones((68, 1))], 1).astype(np.float32),
                mask=crop_mask(mask, t, S)[..., None], identity=np.int32(record["identity"]),
                tform=t.astype(np.float32))


def crop_mask(mask, tform, out_size: int):
    """DECA's skin-mask crop: threshold, then the image's bilinear warp. mask: [H, W] uint8
    (0..255); tform [3, 3]. Returns [S, S] float32 in [0, 1].

    DECA's datasets (vggface.py, vox.py, ethnicity.py) binarise the segmentation first
    (load_mask: mask[seg > 0.5] = 1.; here > 127, i.e. above half of 255) and crop it with
    skimage's warp(mask, tform.inverse) at its default order=1, mode='constant', cval=0: soft
    values along the mask's edges and where the crop leaves the image. OpenCV's bilinear warp of
    a float32 array is that to float32 rounding of the source positions (about 2e-5 at 300 px)."""
    binary = (np.asarray(mask) > 127).astype(np.float32)
    return np.clip(crop.warp_image(binary, tform, out_size), 0.0, 1.0)  # skimage's clip=True


def _record_name(record, i: int, source=None) -> str:
    """How a skipped record is named: its index (in a mix, its dataset's name and index there,
    `ConcatSource.locate`) and path."""
    path = (record.get("path") or b"") if isinstance(record, dict) else b""  # None: an empty record
    path = path.decode() if isinstance(path, bytes) else str(path)
    where = f"record {i}"
    if isinstance(source, ConcatSource):
        name, j = source.locate(i)
        where = f"{name} record {j}"
    return f"{where} ({path or 'no path'})"


def _load_one(source, candidates, cfg: LoaderConfig, g: int, k: int, skipped: dict, bad: list):
    """(sample, record index) of slot k of group g from the first candidate record that loads
    (each with the slot's own crop draw), or None. Records that fail go into `skipped` (new ones
    logged) and `bad`."""
    for i in candidates:
        if i in skipped:  # failed before: it would again
            bad.append(i)
            continue
        record = None
        try:
            record = source[i]
            return crop_example(record, np.random.default_rng([cfg.seed, _SALT_IMAGE, int(g), k]), cfg), i
        except Exception as e:  # noqa: BLE001 -- whatever is wrong with one record, skip it and say why
            reason = f"{_record_name(record, i, source)}: {type(e).__name__}: {e}"
            if skipped.setdefault(i, reason) is reason:
                logging.warning("skipped %s; %d record(s) skipped so far", reason, len(skipped))
            bad.append(i)
    return None


def _slot_order(p: int, count: int, taken: set):
    """Images of an identity of `count` in the order a slot tries them: its pick p, then the
    others from p + 1 on (wrapping), those not `taken` by the group before those that are.
    Lazy: a slot whose pick loads takes one element, whatever the identity's size (lists of them
    all made every image cost O(count): a group of 4 took 146 ms at 100k images per identity
    against 28 ms at 350, VGGFace2's mean; VoxCeleb2's frames give ~35k an identity)."""
    yield p
    yield from (o for o in _after(p, count) if o not in taken)
    yield from (o for o in _after(p, count) if o in taken)


def _after(p: int, count: int):
    return ((p + d) % count for d in range(1, count))


def load_group(source, groups, cfg: LoaderConfig, g: int, skipped: dict | None = None) -> dict:
    """The K samples of global group g, stacked: image [K,S,S,3], ...

    A record that cannot be loaded is skipped: its slot takes another image of the identity
    (those not already in the group first, each with the slot's crop draw), and when none of the
    identity's images loads, the whole group takes the next identity of the epoch's order. So a
    group always holds K images of one identity, decided by (seed, g) and the data alone.
    skipped: {record index: reason}, shared by the loader's threads, collects the skipped records
    (each new one logged). ValueError naming a failed record when MAX_FALLBACK_IDENTITIES
    identities in a row have no loadable image (then the data, not a few files, is broken)."""
    skipped = {} if skipped is None else skipped
    bad = []
    tries = min(len(groups), MAX_FALLBACK_IDENTITIES)
    for shift in range(tries):
        first, count, picks = _group_picks(groups, cfg.seed, g, cfg.k, shift)
        taken = {int(p) for p in picks}
        samples = []
        for k, p in enumerate(picks):
            loaded = _load_one(source, (first + o for o in _slot_order(int(p), count, taken)), cfg, g, k,
                               skipped, bad)
            if loaded is None:
                break
            samples.append(loaded[0])
            taken.add(loaded[1] - first)  # a substitute is in the group now: the next slot's goes elsewhere
        else:
            return {key: np.stack([s[key] for s in samples]) for key in samples[0]}
    raise ValueError(f"group {g}: no image of {tries} identities in a row could be loaded; "
                     f"{skipped.get(bad[0], bad[0])}")


# ----------------------------------------------------------------------------- the loader

class FaceLoader:
    """Iterator of this process's identity-grouped batches (numpy), resumable from `state()`.

        loader = FaceLoader(source, groups, LoaderConfig(groups_per_batch=8, k=4))
        loader.restore(saved_state)          # optional: {"step": int, "seed": int}
        batch = next(loader)                 # image [N_local*K, S, S, 3], ...
        saved_state = loader.state()         # the step of the next batch
        loader.skipped                       # {record index: reason} skipped so far (see load_group)

    After an error from next() (e.g. load_group's), the next call tries the same batch again.
    """

    def __init__(self, source, groups, cfg: LoaderConfig, process_index: int | None = None,
                 process_count: int | None = None, keep_tform: bool = False):
        import jax
        self.source, self.cfg, self.keep_tform = source, cfg, keep_tform
        self.groups = np.asarray(groups, np.int64).reshape(-1, 3)
        if len(self.groups) == 0:
            raise ValueError("no identity groups: the dataset is empty")
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        global_group(0, 0, cfg.groups_per_batch, self.process_index, self.process_count)  # checks divisibility
        self.local_groups = cfg.groups_per_batch // self.process_count
        self._step = 0
        self._it = None
        self.skipped = {}

    def batch_at(self, step: int) -> dict:
        """This process's batch number `step`, computed directly (no iterator)."""
        groups = [load_group(self.source, self.groups, self.cfg, self._global(step, j), self.skipped)
                  for j in range(self.local_groups)]
        return self._collate(groups)

    def _global(self, step, j):
        return global_group(step, j, self.cfg.groups_per_batch, self.process_index, self.process_count)

    def _collate(self, groups):
        keys = [k for k in groups[0] if self.keep_tform or k != "tform"]
        return {k: np.concatenate([g[k] for g in groups]) for k in keys}

    def _dataset(self, start_step):
        import grain
        n = self.local_groups
        ds = grain.MapDataset.range(start_step * n, 2 ** 40)
        ds = ds.map(lambda t: load_group(self.source, self.groups, self.cfg, self._global(t // n, t % n), self.skipped))
        ds = ds.batch(n, batch_fn=self._collate)
        # each thread builds a whole batch: a buffer shorter than the threads leaves some idle
        return ds.to_iter_dataset(grain.ReadOptions(num_threads=self.cfg.num_threads,
                                                    prefetch_buffer_size=max(self.cfg.prefetch, self.cfg.num_threads)))

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._it is None:
            self._it = iter(self._dataset(self._step))
        try:
            batch = next(self._it)
        except BaseException:
            # grain's prefetching iterator has moved past the failed batch: the next call starts a
            # new one at this step, so a caller that goes on gets this batch, and state() stays true
            self._close()
            raise
        self._step += 1
        return batch

    def _close(self):
        it, self._it = self._it, None
        if hasattr(it, "close"):
            it.close()

    def state(self) -> dict:
        """{"step": next batch, "seed": seed}: save it with the model checkpoint."""
        return {"step": int(self._step), "seed": int(self.cfg.seed)}

    def restore(self, state: dict) -> None:
        """Continue from a `state()` dict; the seed must match the config's."""
        if int(state["seed"]) != self.cfg.seed:
            raise ValueError(f"loader state has seed {state['seed']}, config has {self.cfg.seed}")
        self._step = int(state["step"])
        self._close()


class ConcatSource:
    """Several random-access sources end to end, as torch's ConcatDataset: record i of source s is
    index record_offsets[s] + i, and its identity int is shifted by identity_offsets[s], so the
    identities of different datasets never share an int (the trainer groups a batch's images by
    it). Built by `concat`; the loader needs only len() and source[i]. names: how a skipped
    record's dataset is named (default 'source <s>')."""

    def __init__(self, sources, identity_offsets, names=None):
        self.sources = list(sources)
        self.record_offsets = np.cumsum([0] + [len(s) for s in self.sources])
        self.identity_offsets = [int(o) for o in identity_offsets]
        self.names = list(names) if names is not None else [f"source {s}" for s in range(len(self.sources))]

    def _part(self, i: int) -> tuple[int, int]:
        """(source s holding record i, its index there)."""
        s = int(np.searchsorted(self.record_offsets, int(i), side="right")) - 1
        return s, int(i) - int(self.record_offsets[s])

    def locate(self, i: int) -> tuple[str, int]:
        """(the name of the dataset holding record i, its index there)."""
        s, j = self._part(i)
        return self.names[s], j

    def __len__(self) -> int:
        return int(self.record_offsets[-1])

    def __getitem__(self, i: int):
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} of a concatenation of {len(self)} records")
        s, j = self._part(i)
        record = self.sources[s][j]
        if not isinstance(record, dict) or not self.identity_offsets[s]:
            return record  # the first source's identities, or a record crop_example will skip
        return dict(record, identity=record["identity"] + self.identity_offsets[s])


def concat(parts, names=None) -> tuple:
    """(ConcatSource, groups [sum G_s, 3]) of parts [(source, groups [G_s, 3], identity count)]
    (names: the datasets', for messages):
    DECA's mix of datasets (build_datasets.build_train's ConcatDataset). Source s's groups have
    their identity shifted by the identity counts of the sources before it and their first record
    by the records before it, so the loader samples groups uniformly over all datasets together:
    each in proportion to its number of identities, as DECA's uniform draw over the concatenated
    items (identities or tracks) is."""
    sources, groups, counts = zip(*parts)
    identity_offsets = np.cumsum([0] + [int(n) for n in counts[:-1]])
    source = ConcatSource(sources, identity_offsets, names)
    shifted = [np.asarray(g, np.int64).reshape(-1, 3) + [int(i), int(r), 0]
               for g, i, r in zip(groups, identity_offsets, source.record_offsets)]
    return source, np.concatenate(shifted)


def tfds_loader(builder, cfg: LoaderConfig, split="train", **kw) -> FaceLoader:
    """FaceLoader over a prepared tfds builder (tfds_faces.IdentityFaces / SyntheticFaces), or over
    a list of them (DECA's mix of datasets: their splits concatenated, `concat`; a list of one is
    read as that builder); split: one for all, or a list of one per builder."""
    from jaxdeca.data import tfds_faces
    builders = list(builder) if isinstance(builder, (list, tuple)) else [builder]
    splits = [split] * len(builders) if isinstance(split, str) else list(split)
    if len(splits) != len(builders):
        raise ValueError(f"{len(splits)} splits for {len(builders)} builders")
    if len(builders) == 1:
        return FaceLoader(tfds_faces.data_source(builders[0], splits[0]), tfds_faces.groups(builders[0], splits[0]),
                          cfg, **kw)
    source, groups = concat([(tfds_faces.data_source(b, s), tfds_faces.groups(b, s), tfds_faces.identity_count(b))
                             for b, s in zip(builders, splits)],
                            names=[f"{b.name}/{b.builder_config.name} {s}" for b, s in zip(builders, splits)])
    return FaceLoader(source, groups, cfg, **kw)
