"""tfds builders for identity-grouped face datasets, written as array_record for random access.

`IdentityFaces` reads a folder made by `python -m jaxdeca.data.prepare` (pass it as the
manual_dir) with one BuilderConfig per source layout (vggface2, voxceleb2, bupt, celeba, folders);
`SyntheticFaces` renders the embedded demo head (`jaxdeca.data.synthetic`) and needs no input.
Both write the same features, one example per image, in identity order (shuffling disabled,
so example i of the split is the i-th record written), and store the identity groups in the
dataset metadata so the loader can sample K images of one identity without reading images:

    info.metadata["groups"]["train"] = [[identity_int, first_index, count], ...]

With 50 or more identities, about one in 50 goes to a 'test' split instead (held-out identities
for the trainer's eval pass), chosen by a hash of its name (`heldout_identities`), so that a
rebuild with more identities keeps the ones held out before; `synthetic_faces` configs name their
held-out count.

Features: image (JPEG bytes; original JPEG bytes when the file was a clean 8-bit RGB JPEG
stored upright, re-encoded otherwise), landmarks [68, 2] float32 pixels, mask (PNG, 255 = skin), identity
(int64 index into info.metadata["identities"]), identity_name, path, score (dlib score, NaN
for annotated or rendered landmarks).

    builder = tfds_faces.IdentityFaces(config="vggface2", data_dir=DATA)   # images_root=DIR if the images moved
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=PREPARED))
    source = tfds_faces.data_source(builder, "train")   # random access, image/mask left encoded
"""
import dataclasses
import hashlib
import json
import os
import sys
import uuid
import warnings

import numpy as np
import tensorflow_datasets as tfds

from jaxdeca import xla_options
from jaxdeca.data import images as imageio
from jaxdeca.data import DatasetError, prepare

FILE_FORMAT = tfds.core.FileFormat.ARRAY_RECORD


def _features():
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "landmarks": tfds.features.Tensor(shape=(68, 2), dtype=np.float32),
        "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        "identity": np.int64,
        "identity_name": tfds.features.Text(),
        "path": tfds.features.Text(),
        "score": np.float32,
    })


class _FileBytes:
    """A file-like object tfds' Image feature stores byte-for-byte (no re-encoding)."""

    def __init__(self, data: bytes):
        import io
        self._f = io.BytesIO(data)

    def read(self, *a):
        return self._f.read(*a)


def _upright_rgb_jpeg(data: bytes) -> bool:
    """Whether JPEG bytes hold 8-bit RGB (not grey, CMYK, ...) with no EXIF turn (orientation
    tag absent or 1), read from the header alone: such a file decodes the same with or without
    EXIF handling, so its bytes can be stored as they are."""
    import io
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format == "JPEG" and im.mode == "RGB" and im.getexif().get(0x0112, 1) == 1
    except Exception:  # noqa: BLE001 -- a header PIL cannot read: re-encode, as decode_image read it
        return False


def _image_bytes(path: str, size: tuple | None = None, record: str | None = None,
                 sha256: str | None = None) -> bytes:
    """Original bytes of a clean 8-bit RGB JPEG, else the decoded image re-encoded as JPEG.
    size: (width, height) prepare recorded, sha256: the hex digest of the bytes it read (None in
    records written before it kept one); BadImage naming the file, and `record` to remove, when
    the image is no longer that size or those bytes: its landmarks and mask belong to the old one.

    A JPEG whose EXIF orientation turns it (phone photos) is re-encoded upright: prepare made
    its landmarks and mask on the upright image, and readers that ignore EXIF (tfds' and
    TensorFlow's own decoding) would otherwise see it sideways."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:  # gone, unreadable, a folder now
        raise imageio.BadImage(f"{path}: unreadable ({e.strerror})") from None
    try:
        img = imageio.decode_image(data)
    except imageio.BadImage as e:  # the file changed since prepare accepted it
        raise imageio.BadImage(f"{path}: {e}") from None
    changed = None  # how the file differs from the one prepare read
    if size is not None and tuple(size) != (img.shape[1], img.shape[0]):
        changed = (f"now {img.shape[1]}x{img.shape[0]} px, prepare recorded {size[0]}x{size[1]} px (the file changed "
                   "since; its landmarks and mask are the old image's)")
    elif sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        changed = ("changed since prepare read it (its bytes differ from the sha256 recorded; its landmarks and mask "
                   "are the old image's)")
    if changed:
        raise imageio.BadImage(f"{path}: {changed}: prepare it again (remove {record or 'its record'} and re-run "
                               "prepare)")
    if data[:3] == b"\xff\xd8\xff" and _upright_rgb_jpeg(data):  # decodes as img: keep its bytes
        return data
    return imageio.encode_jpeg(img)


def _mask_bytes(path: str, record: str) -> bytes:
    """The PNG bytes of a skin mask prepare wrote, checked to decode (a damaged one would be
    blamed on its image by the loader); BadImage naming it and `record` to remove otherwise."""
    import cv2
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise imageio.BadImage(f"{path}: unreadable mask ({e.strerror}): prepare it again (remove {record} and "
                               "re-run prepare)") from None
    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is None:
        raise imageio.BadImage(f"{path}: the mask does not decode as PNG: prepare it again (remove {record} and "
                               "re-run prepare)")
    return data


RECORD_KEYS = ("path", "identity", "landmarks", "mask")  # the index.jsonl fields the build reads


def index_digest(manual_dir: str) -> str:
    """sha256 (hex) of a prepared folder's index.jsonl: which records a dataset was built from."""
    h = hashlib.sha256()
    with open(os.path.join(manual_dir, "index.jsonl"), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _groups(identities):
    """Consecutive identity ints -> [[identity, first, count], ...]."""
    out = []
    for i, ident in enumerate(identities):
        if out and out[-1][0] == ident:
            out[-1][2] += 1
        else:
            out.append([int(ident), i, 1])
    return out


HELDOUT_EVERY = 50  # identity_faces: one identity in 50 (2%) forms the 'test' split


def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()[:8], "big")


def heldout_identities(names) -> set:
    """Names of the identities of the held-out 'test' split: those whose name hashes to 0 modulo
    HELDOUT_EVERY (about 2%), or, when none does, the one of the smallest hash; none below
    HELDOUT_EVERY identities. Chosen by name, not by rank: every 50th of the sorted names moved
    when one name was added before them (a re-prepare that recovered a file, then --rebuild), so
    a resumed run evaluated on identities it had trained on and trained on the held-out ones.
    Now an added identity can only join 'test' itself (or, in the fallback, take the place of
    the one held-out identity), but for the names that first bring the count to HELDOUT_EVERY:
    then about 2% of all are held out, trained ones too (the rebuild warns, naming them)."""
    names = list(names)
    if len(names) < HELDOUT_EVERY:
        return set()
    held = {n for n in names if _name_hash(n) % HELDOUT_EVERY == 0}
    return held or {min(names, key=_name_hash)}


@dataclasses.dataclass
class FacesConfig(tfds.core.BuilderConfig):
    layout: str = "folders"


class _LocalBuilder(tfds.core.GeneratorBasedBuilder):
    """A builder that writes its dataset from local files or renders it: nothing is downloaded.
    Subclasses say what a build writes in `_source()`."""

    def is_prepared(self) -> bool:
        """tfds' is_prepared without its warning for a dataset never built: tfds logs 'Variant
        folder ... has no dataset_info.json' for a version folder that does not exist (the demo's
        first run printed it twice before its dataset was rendered). A folder left without its
        info (a build cut short) is still warned about."""
        return self.data_path.exists() and super().is_prepared()

    # tfds' own lines, printed as a build starts and ends, read "Downloading and preparing dataset
    # Unknown size (download: Unknown size, ...)" and "Dataset ... downloaded and prepared to ..."
    # (tfds 4.9's hooks for them, overridden here).
    def _log_download_bytes(self):
        print(f"{self._name()}: {self._source()} into {self.data_dir} (nothing is downloaded)", flush=True)

    def _log_download_done(self):
        print(f"{self._name()}: written to {self.data_dir}; later runs read it from there", flush=True)

    def _name(self) -> str:
        return f"{self.name}/{self.builder_config.name} {self.version}"


class IdentityFaces(_LocalBuilder):
    """Prepared in-the-wild faces grouped by identity (VGGFace2, VoxCeleb2 frames, CelebA, ...)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [FacesConfig(name=n, layout=n, description=f"{n} folder layout") for n in
                       ("vggface2", "voxceleb2", "bupt", "celeba", "folders")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = ("Run `python -m jaxdeca.data.prepare --images IMAGES --out PREPARED "
                                    "--layout LAYOUT` and pass PREPARED as manual_dir.")

    def __init__(self, *, images_root: str | None = None, **kwargs):
        """images_root: the images folder prepare read, where it is now (default: the one
        recorded in manual_dir's meta.json); records name images relative to it, so a moved
        folder, or a prepared folder copied to another machine, only needs its new path."""
        super().__init__(**kwargs)
        self._images_root = images_root

    def _info(self):
        return self.dataset_info_from_configs(features=_features(), disable_shuffling=True,
                                              metadata=tfds.core.MetadataDict())

    def _source(self):
        return "writing the faces of the folder jaxdeca.data.prepare made (manual_dir)"

    def _split_generators(self, dl_manager):
        root = str(dl_manager.manual_dir)
        index, meta_path = os.path.join(root, "index.jsonl"), os.path.join(root, "meta.json")
        for p in (index, meta_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p}: missing; manual_dir must be a folder made by jaxdeca.data.prepare")
        meta = prepare.read_meta(meta_path, "run jaxdeca.data.prepare again")
        if meta.get("layout") != self.builder_config.layout:
            raise ValueError(f"{root}: prepared with layout {meta.get('layout')!r}, builder config is "
                             f"{self.builder_config.layout!r}")
        entries = _index_entries(index)
        if not entries:
            raise ValueError(f"{index}: no usable images (every file was skipped); "
                             f"see the reasons in {os.path.join(root, 'summary.json')}")
        images_root = self._images_root or meta.get("images_root")
        if not (images_root and os.path.isdir(images_root)):
            where = ("given as --images" if self._images_root else
                     f"recorded in {meta_path} by prepare; if it moved, give its new path: --images DIR")
            raise FileNotFoundError(f"{images_root}: images folder not found ({where})")
        names = sorted({e[0] for e in entries})
        ids = {n: i for i, n in enumerate(names)}
        entries.sort(key=lambda e: (ids[e[0]], e[1]))
        self.info.metadata["identities"] = names
        self.info.metadata["index_sha256"] = index_digest(root)  # what `build` compares on a re-run
        held = heldout_identities(names)
        splits = {"train": [e for e in entries if e[0] not in held]}
        if held:  # identities never trained on, for the trainer's held-out landmark error
            splits["test"] = [e for e in entries if e[0] in held]
        del entries
        self.info.metadata["groups"] = {k: _groups([ids[e[0]] for e in v]) for k, v in splits.items()}
        return {k: self._generate_examples(root, images_root, index, v, ids) for k, v in splits.items()}

    def _generate_examples(self, root, images_root, index, entries, ids):
        """Each record is read again from its line of index.jsonl when its example is written:
        holding them all (68 landmarks each, as lists) took 13.5 KB an image, 42 GB for VGGFace2."""
        with open(index, "rb") as f:
            for i, (identity, path, k, offset) in enumerate(entries):
                f.seek(offset)
                r = _index_record(index, k, f.readline())
                if (r["identity"], r["path"]) != (identity, path):
                    raise ValueError(f"{index}:{k}: changed while the dataset was being built (prepare ran "
                                     "again?); build it again")
                record = os.path.join(root, "records", r["path"] + ".json")
                mask = _mask_bytes(os.path.join(root, r["mask"]), record)
                score = np.nan if r.get("score") is None else r["score"]
                size = (r["width"], r["height"]) if "width" in r and "height" in r else None
                image = _image_bytes(os.path.join(images_root, r["path"]), size, record, r.get("sha256"))
                yield i, {"image": _FileBytes(image),
                          "landmarks": np.asarray(r["landmarks"], np.float32), "mask": _FileBytes(mask),
                          "identity": ids[r["identity"]], "identity_name": r["identity"], "path": r["path"],
                          "score": np.float32(score)}


def _index_entries(index: str) -> list[tuple[str, str, int, int]]:
    """(identity, path, line number, byte offset) of each record of index.jsonl, not the record
    itself (`_generate_examples` reads it again from its line): one string per identity name,
    not one per image."""
    entries, shared = [], {}
    with open(index, "rb") as f:
        offset = 0
        for k, line in enumerate(f, 1):
            r = _index_record(index, k, line)
            entries.append((shared.setdefault(r["identity"], r["identity"]), r["path"], k, offset))
            offset += len(line)
    return entries


def _index_record(index: str, k: int, line: bytes) -> dict:
    """Line k of index.jsonl as a record dict; ValueError naming the line when it is not one."""
    try:
        r = json.loads(line)
    except json.JSONDecodeError:
        raise ValueError(f"{index}:{k}: not a JSON line") from None
    missing = [key for key in RECORD_KEYS if key not in r] if isinstance(r, dict) else list(RECORD_KEYS)
    if missing:
        raise ValueError(f"{index}:{k}: a record needs {', '.join(RECORD_KEYS)}; this one lacks "
                         f"{', '.join(missing)} (run jaxdeca.data.prepare again)")
    return r


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    identities: int = 64
    images_per_identity: int = 6
    image_size: int = 224
    seed: int = 0
    flame_path: str | None = None
    heldout_identities: int = 0  # > 0 adds a 'test' split of other identities (seed + 10**6)


class SyntheticFaces(_LocalBuilder):
    """Demo-head faces rendered with random identity, expression, pose, albedo, light and
    background; exact landmarks and face masks (see jaxdeca.data.synthetic)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [SyntheticConfig(name="default", description="64 identities x 6 images, 224 px"),
                       SyntheticConfig(name="tiny", identities=4, images_per_identity=4, image_size=64,
                                       heldout_identities=2,
                                       description="4 identities x 4 images, 64 px + 2 held-out identities (tests)"),
                       SyntheticConfig(name="demo", identities=160, images_per_identity=4, image_size=112,
                                       heldout_identities=16,
                                       description="160 identities x 4 images at 112 px + 16 held-out "
                                                   "identities (the demo main job)")]

    def _info(self):
        return self.dataset_info_from_configs(features=_features(), disable_shuffling=True,
                                              metadata=tfds.core.MetadataDict())

    def _source(self):
        c = self.builder_config
        return (f"rendering {c.identities} identities x {c.images_per_identity} images"
                + (f" (+ {c.heldout_identities} held-out)" if c.heldout_identities else "")
                + f" at {c.image_size} px from {c.flame_path or 'the demo head'}")

    def _split_generators(self, dl_manager):
        c = self.builder_config
        names = [f"synthetic_{i:05d}" for i in range(c.identities)]
        held = [f"heldout_{i:05d}" for i in range(c.heldout_identities)]
        self.info.metadata["identities"] = names + held
        groups = lambda n, first: [[first + i, i * c.images_per_identity, c.images_per_identity] for i in range(n)]
        self.info.metadata["groups"] = {"train": groups(len(names), 0)}
        splits = {"train": self._generate_examples(names, c.seed, 0)}
        if held:  # other identities from another seed stream: never seen in training
            self.info.metadata["groups"]["test"] = groups(len(held), len(names))
            splits["test"] = self._generate_examples(held, c.seed + 10 ** 6, len(names))
        return splits

    def _generate_examples(self, names, seed, first_identity):
        from jaxdeca.data import synthetic
        c = self.builder_config
        k = 0
        for i, name in enumerate(names):
            rng = np.random.default_rng([seed, i])
            out = synthetic.render_faces(synthetic.sample_codes(rng, c.images_per_identity), c.image_size,
                                         c.flame_path)
            for j in range(c.images_per_identity):
                yield k, {"image": _FileBytes(imageio.encode_jpeg(out["image"][j])),
                          "landmarks": out["landmarks"][j], "mask": _FileBytes(imageio.encode_png(out["mask"][j])),
                          "identity": first_identity + i, "identity_name": name, "path": f"{name}/{j:03d}.jpg",
                          "score": np.float32(np.nan)}
                k += 1


def build(builder: tfds.core.DatasetBuilder, manual_dir: str | None = None,
          rebuild: bool = False) -> tfds.core.DatasetBuilder:
    """download_and_prepare as array_record (manual_dir for IdentityFaces). Returns the builder
    to read it with.

    A dataset already built is reused, unless `rebuild` (it is written again) or, for
    IdentityFaces, manual_dir's index.jsonl is no longer the one it was built from (prepare ran
    again: new or fixed images): then ValueError naming the dataset folder, which `rebuild`
    replaces. A manual_dir that is not a folder prepare made is FileNotFoundError naming it.

    A rebuild writes the new dataset beside the old one (`_rebuild`: for a while the disk holds
    both) and replaces the old one only once the new one is complete: a build that fails (an
    image changed since prepare read it, a full disk) leaves the dataset built before as it was,
    readable by training. It returns a new builder reading the new dataset; the one given still
    describes the dataset it replaced. When another process finishes the same first build while
    this one runs, its dataset is used (and checked as one built before)."""
    if manual_dir is not None:
        index = os.path.join(manual_dir, "index.jsonl")
        if not os.path.isdir(manual_dir):
            raise FileNotFoundError(f"{manual_dir}: folder not found (the --out of jaxdeca.data.prepare)")
        if not os.path.isfile(index):
            raise FileNotFoundError(f"{index}: missing; manual_dir must be a folder made by jaxdeca.data.prepare")
    prepared = builder.is_prepared()
    if prepared and rebuild:
        return _rebuild(builder, manual_dir)
    if prepared and isinstance(builder, IdentityFaces) and manual_dir is not None:
        built = builder.info.metadata.get("index_sha256")
        if built != index_digest(manual_dir):
            how = ("an index.jsonl other than" if built else
                   "an index.jsonl it did not record (built by an older jaxdeca), maybe not")
            raise ValueError(f"{builder.data_dir}: built from {how} the one in {manual_dir} now (prepare ran "
                             "again since?); rebuild it: --rebuild (it replaces the dataset: stop training runs "
                             "that read it first)")
    cfg = tfds.download.DownloadConfig(manual_dir=manual_dir,
                                       download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    # a built dataset's info (read from it) already names its file format, and tfds refuses to set it again
    fmt = None if prepared else FILE_FORMAT
    try:
        builder.download_and_prepare(download_config=cfg, file_format=fmt)
    except FileExistsError:  # tfds' rename of its incomplete.* folder to the version folder
        again = _builder_at(builder, os.fspath(builder.data_dir_root))
        if prepared or not again.is_prepared():
            raise
        # another build of the same dataset (a second job) finished first: use it, checked as any
        # dataset built before is (before, this build ended in a traceback)
        print(f"{again.data_dir}: built meanwhile by another process; using that build", file=sys.stderr)
        return build(again, manual_dir)
    return builder


def _builder_at(builder: tfds.core.DatasetBuilder, data_dir: str) -> tfds.core.DatasetBuilder:
    """A new builder of the same dataset, config and version as `builder` (and, for IdentityFaces,
    images folder) over another tfds data dir."""
    kw = dict(config=builder.builder_config, version=str(builder.version), data_dir=data_dir)
    if isinstance(builder, IdentityFaces):
        kw["images_root"] = builder._images_root
    return type(builder)(**kw)


def _rebuild(builder: tfds.core.DatasetBuilder, manual_dir: str | None) -> tfds.core.DatasetBuilder:
    """Write the built dataset of `builder` again, replacing it only once the new one is complete.
    tfds' own overwrite (REUSE_CACHE_IF_EXISTS) deletes the version folder before it generates: a
    build that then stopped (an image changed since prepare read it, a full disk) left no dataset,
    and the training runs that read the old one could not start again. Instead the new dataset is
    built in a hidden folder of the same tfds data dir, `.<name>-<config>-rebuild-<pid>-<random>/`
    (the same filesystem: the moves below are renames), and then its version folder (shards,
    dataset_info.json, features and metadata; tfds reads the shards' paths relative to it) takes
    the old one's place: the old one is moved into the hidden folder, which is removed with the
    rest tfds wrote there (`<name>/.config`, downloads/), whether the build succeeded or not.
    Returns a builder reading the new dataset. When identities the old dataset trained on are held
    out in the new one (`moved_to_test`), a warning names them: a run trained on the old dataset
    and resumed on this one would evaluate on faces it trained on."""
    real = builder.data_path
    root = builder.data_dir_root
    tmp = root / f".{builder.name}-{builder.builder_config.name}-rebuild-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        new = build(_builder_at(builder, os.fspath(tmp)), manual_dir)  # a first build, there
        moved = moved_to_test(builder, new)
        if moved:
            print(f"warning: {real}: {len(moved)} identities held out ('test') in the rebuilt dataset were in its "
                  f"training split before ({', '.join(moved[:5])}{', ...' if len(moved) > 5 else ''}): a training "
                  "run on the old dataset resumed on this one would evaluate on faces it trained on; start such "
                  "runs again in another workdir (datasets built by jaxdeca before the split was chosen by name "
                  "move once)", file=sys.stderr)
        replaced = tmp / "replaced"
        real.rename(replaced)
        try:
            new.data_path.rename(real)
        except BaseException:
            replaced.rename(real)  # put the old dataset back
            raise
    finally:
        try:
            tmp.rmtree(missing_ok=True)
        except OSError as e:  # never hide the build's own error behind this one
            warnings.warn(f"{tmp}: could not remove this folder of the rebuild ({e}); remove it by hand")
    return _builder_at(builder, os.fspath(root))


def _split_names(builder: tfds.core.DatasetBuilder, split: str) -> set:
    """The identity names of a built identity_faces split (empty for other datasets)."""
    names = builder.info.metadata.get("identities") or []
    return {names[int(g[0])] for g in builder.info.metadata.get("groups", {}).get(split, [])} if names else set()


def moved_to_test(old: tfds.core.DatasetBuilder, new: tfds.core.DatasetBuilder) -> list[str]:
    """Sorted names of the identities in `new`'s 'test' split that were in `old`'s 'train' split."""
    return sorted(_split_names(new, "test") & _split_names(old, "train"))


def data_source(builder: tfds.core.DatasetBuilder, split: str = "train"):
    """Random-access source over the split's array_record files; image and mask stay encoded
    bytes (the loader decodes them with OpenCV in its worker threads). The files are checked
    first (`check_shards`)."""
    check_shards(builder, split)
    return builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding(),
                                                   "mask": tfds.decode.SkipDecoding()})


def check_shards(builder: tfds.core.DatasetBuilder, split: str = "train") -> None:
    """DatasetError naming the first of the split's array_record files that is missing, cannot be
    read as one, or holds another number of records than the dataset's info counts. tfds reads
    such a file (cut short by a full disk or an interrupted copy, say) as records whose every
    field is None, without an error; the loader then skipped every record of it and stopped
    with a message that named none of the files. Reads each file's footer (its index of records,
    which the data source reads too when it first opens the file), not its records."""
    from array_record.python.array_record_module import ArrayRecordReader
    info = builder.info.splits[split]
    advice = "rebuild the dataset (python -m jaxdeca.data.tfds_faces ... --rebuild) or copy the file again"
    for path, want in zip(info.filepaths, info.shard_lengths):
        if not path.exists():
            raise DatasetError(f"{path}: missing ({builder.name} split {split!r} has {len(info.filepaths)} "
                               f"file(s)); {advice}")
        reader = ArrayRecordReader(str(path))
        ok, got, why = reader.ok(), reader.num_records(), ""
        try:
            reader.close()
        except RuntimeError as e:  # a reader that failed to open says why when it is closed
            ok, why = False, f": {e}" if str(e) else ""
        if not ok:
            raise DatasetError(f"{path}: not a readable array_record file (cut short or damaged{why}); {advice}")
        if got != want:
            raise DatasetError(f"{path}: holds {got} records where the dataset's info counts {want}; {advice}")


def groups(builder: tfds.core.DatasetBuilder, split: str = "train") -> np.ndarray:
    """[G, 3] int64 (identity, first, count) of the split from the builder's metadata."""
    g = builder.info.metadata.get("groups", {}).get(split)
    if g is None:
        raise DatasetError(f"{builder.name}/{builder.builder_config.name}: no identity groups in metadata for "
                           f"split {split!r}; rebuild it with jaxdeca.data.tfds_faces")
    return np.asarray(g, np.int64).reshape(-1, 3)


def identity_count(builder: tfds.core.DatasetBuilder) -> int:
    """How many identity ints the dataset uses, over all its splits: the length of its
    metadata["identities"] (each record's identity indexes it), else the largest group identity
    + 1. A mix of datasets shifts the next dataset's identities by this (loader.concat)."""
    names = builder.info.metadata.get("identities")
    if names is not None:
        return len(names)
    groups = [g for split in builder.info.metadata.get("groups", {}).values() for g in split]
    return max((int(g[0]) for g in groups), default=-1) + 1


BUILDERS = {"identity_faces": IdentityFaces, "synthetic_faces": SyntheticFaces}


def get_builder(dataset: str, config: str, data_dir: str | None = None, **kw) -> tfds.core.DatasetBuilder:
    """Builder instance by name: dataset in BUILDERS, config one of its BuilderConfig names;
    kw go to the builder (IdentityFaces: images_root)."""
    if dataset not in BUILDERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(BUILDERS)}")
    names = [c.name for c in BUILDERS[dataset].BUILDER_CONFIGS]
    if config not in names:
        raise ValueError(f"{dataset}: unknown config {config!r}; choose one of {names}")
    return BUILDERS[dataset](config=config, data_dir=data_dir, **kw)


def main(argv=None):
    """python -m jaxdeca.data.tfds_faces --dataset identity_faces --config vggface2 --manual-dir PREPARED
    [--images DIR] [--data-dir DIR]: write the array_record dataset (run once, before training)."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m jaxdeca.data.tfds_faces", description=(main.__doc__ or "").split("\n")[0])
    p.add_argument("--dataset", default="synthetic_faces", choices=sorted(BUILDERS))
    p.add_argument("--config", default=None, help="vggface2|voxceleb2|bupt|celeba|folders, or default|tiny|demo")
    p.add_argument("--manual-dir", default=None, help="folder made by jaxdeca.data.prepare (identity_faces)")
    p.add_argument("--images", default=None,
                   help="identity_faces: the images folder prepare read, if it has moved since (default: the "
                        "path in PREPARED/meta.json)")
    p.add_argument("--data-dir", default=None, help="tfds data dir (default ~/tensorflow_datasets)")
    p.add_argument("--rebuild", action="store_true",
                   help="write the dataset again if it is built (needed after prepare ran again on --manual-dir)")
    a = p.parse_args(argv)
    xla_options.use_compilation_cache()
    config = a.config or ("default" if a.dataset == "synthetic_faces" else "folders")
    if a.images is not None and a.dataset != "identity_faces":
        p.error("--images is for --dataset identity_faces")
    if a.dataset == "identity_faces" and a.manual_dir is None:
        p.error("--dataset identity_faces needs --manual-dir PREPARED, the folder python -m jaxdeca.data.prepare wrote")
    kw = {} if a.images is None else dict(images_root=a.images)
    try:
        b = build(get_builder(a.dataset, config, a.data_dir, **kw), a.manual_dir, a.rebuild)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    groups = b.info.metadata["groups"]
    splits = ", ".join(f"{k} {b.info.splits[k].num_examples} examples of {len(groups[k])} identities"
                       for k in ("train", "test") if k in groups)
    print(f"{b.name}/{config}: {splits} in {b.data_dir}")
    return 0


if __name__ == "__main__":
    # `python -m` runs this file as the module '__main__', and tfds looks a builder's package up
    # by its class's module ('__main__' is none: TypeError before anything is built). Build with
    # the classes of the module imported under its own name, as training and the tests do; tfds'
    # registry already holds their names, from this file's classes.
    with tfds.core.registered.skip_registration():
        from jaxdeca.data import tfds_faces as _module
    raise SystemExit(_module.main())
