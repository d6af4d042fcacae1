"""The shared inference pipeline of the apps: load a model, crop faces, encode+decode in one
jitted function, and write every per-face output.

    model = load_pipeline(checkpoint=None, flame_path=None)   # random-free: needs a checkpoint to encode
    crop = crop_face(image_uint8)                              # DECA's test crop (data.preprocess)
    codes = model.encode(images [B,224,224,3])                 # dict of codes
    out = model.decode(codes)                                  # vertices, landmarks, renders, uv maps
    write_outputs(out_dir, name, out, k, crop, codes, model.arrays)  # OBJ, textures, landmarks, grid, npz

A checkpoint is a directory holding `E_flame`, `E_detail`, `D_detail` sub-directories of
orbax variables (what `python -m jaxdeca.convert deca` writes), a single orbax directory
whose top level has those three keys (a trained model saved with `save_variables`), or the
workdir of a detail-stage training run (`python -m jaxdeca.main --config=configs/detail.py`),
whose newest checkpoint is read together with the architecture and input size it was trained
with (a coarse-stage workdir gives coarse results with a zero displacement map).

Landmark convention (`Pipeline.lmk_convention`, `jaxdeca.data.crop.LANDMARK_CONVENTIONS`): the
image-space landmarks of a decode are turned into pixels the way the networks were trained.
Models trained by jaxdeca (a training workdir) use (p + 0.5) / S * 2 - 1, the renderer's pixel
centres: 'jaxdeca'. A model directory (what `python -m jaxdeca.convert deca` writes) is taken to
be DECA's released model, trained on p / S * 2 - 1: 'deca', so that its landmarks in pixels
(*_kpt2d.txt, the drawn ones) are DECA's and not half a crop pixel up-left of
them; `load_pipeline(..., lmk_convention=)` overrides it (e.g. 'jaxdeca' for a jaxdeca-trained
model saved with `save_variables`). Codes, vertices and renders do not depend on it, nor does
`apps.fit`, whose landmark and photometric terms use the renderer's convention.

Devices: encode/decode/run split each batch over all local devices (`Pipeline.devices`): the
network variables are replicated, the batch is padded to a multiple of the device count by
repeating its last item and split along its first axis, each device runs its share (the
rasterizer included, see `render.rasterize`), and the outputs are cut back to the batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxdeca import flame, models, render, xla_options
from jaxdeca.apps import export, inputs
from jaxdeca.convert.core import load_variables
from jaxdeca.data import crop as crop_lib
from jaxdeca.data import detect, preprocess
from jaxdeca.render import deca as render_deca
from jaxdeca.train import parallel
from jaxdeca.train.paths import resolve as resolve_path
from jaxdeca.train.deca_common import DEFAULT_MODEL, build_networks, camera_codes, checked_like

IMAGE_SIZE = 224
NETS = ("E_flame", "E_detail", "D_detail")


class CheckpointError(ValueError):
    """A --checkpoint path that is not a DECA model directory."""


class OutputError(ValueError):
    """An --out folder that cannot be created or written."""


# What the apps' command lines report as one message (exit status 2) instead of a traceback;
# export.WriteError: an output file that could not be written (`stop_on_write_error`).
CLI_ERRORS = (inputs.InputError, CheckpointError, OutputError, detect.DetectorUnavailable, flame.FlameFileError,
              export.WriteError)


@contextlib.contextmanager
def stop_on_write_error(app: str, written: list, skipped: list, out_dir: str, what: str = "face(s)"):
    """Around an app's loop that writes its outputs: an output file that cannot be written (a
    full disk, a folder that became unwritable after `check_out_dir`; `export.WriteError`)
    stops the run. The skipped inputs found so far are reported (`inputs.report`'s lines on
    stderr) and the error, re-raised for the command line's one line (CLI_ERRORS, exit status
    2), says how many of `what` were written before it: '<file>: cannot write: <OS error>;
    3 face(s) written to <out_dir> before it'. The files written before it are kept; the one
    that failed is not left half written (`atomic_file.replacing`)."""
    try:
        yield
    except export.WriteError as e:
        inputs.report_skipped(app, skipped)
        e.done = f"{len(written)} {what} written to {out_dir} before it"
        raise


def check_out_dir(path: str, file: str | None = None) -> str:
    """Checks before any work that the output folder `path` can be made and written, so that an
    unusable --out stops an app at once with one message instead of an OSError traceback at its
    first write, after detection and the networks have run. Nothing is created (an app stopped
    by a later error leaves no empty folder). OutputError naming --out and the culprit when a
    file (or a dangling link) stands at `path` or in place of one of its missing parents, or
    the folder that would hold it is not writable. `file`: the one file an app writes into
    `path` when its --out names that file (teaser's video): the message names it, and a folder
    standing at `file`, or a file there that is not writable, is refused too. Returns path."""
    head = f"--out {path}: cannot be the output folder" if file is None else f"--out {file}: cannot be written"
    if file is not None and os.path.isdir(file):
        raise OutputError(f"{head}: {file} is a folder")
    if file is not None and os.path.isfile(file) and not os.access(file, os.W_OK):
        raise OutputError(f"{head}: {file} is not writable")
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):  # the deepest existing entry (a dangling link too), which makedirs extends
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise OutputError(f"{head}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{head}: {probe} is not writable")
    return path


def load_checkpoint(path: str) -> dict:
    """{'E_flame', 'E_detail', 'D_detail'} Flax variables from a converted/trained model dir,
    as stored (`load_model_dir` checks them against the networks)."""
    if os.path.isfile(path):
        raise CheckpointError(f"{path}: a file, not a model directory; a DECA release file (deca_model.tar) is "
                              f"converted first: python -m jaxdeca.convert deca --src {path} --out DIR")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    parts = [n for n in NETS if os.path.isdir(os.path.join(path, n))]
    if parts:  # the converted layout: one orbax directory per network
        if len(parts) < len(NETS):
            raise CheckpointError(f"{path}: converted DECA model lacks {[n for n in NETS if n not in parts]}; "
                                  f"expected the sub-directories {list(NETS)} (python -m jaxdeca.convert deca)")
        out = {}
        for n in NETS:
            try:
                out[n] = load_variables(os.path.join(path, n))
            except Exception as e:  # noqa: BLE001 - re-raised with the path
                raise CheckpointError(f"{path}: {n} is not readable ({e})") from None
        return out
    try:
        v = load_variables(path)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise CheckpointError(f"{path}: not a DECA model directory ({e})") from e
    if not isinstance(v, dict):
        raise CheckpointError(f"{path}: not a DECA model directory (it holds a {type(v).__name__})")
    missing = [n for n in NETS if n not in v]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}; expected keys {list(NETS)}")
    return {n: v[n] for n in NETS}


def is_training_workdir(path: str) -> bool:
    """True for a `jaxdeca.main` workdir (or its checkpoints/ folder) with numbered steps."""
    from jaxdeca.train import export as train_export  # orbax: imported only when a checkpoint is read
    ckpt = train_export.checkpoint_dir(path)
    return os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt))


def load_model_dir(path: str) -> tuple[dict, dict]:
    """(variables, model info) of any checkpoint kind in the module docstring. Model info:
    'model' (config.model fields: width, blocks, hidden, uv_size, dtype), 'image_size' and
    'lmk_convention' ('jaxdeca' for a training workdir, 'deca' for a model directory). The
    variables are checked against the networks that info builds (`checked_variables`), so a
    model of another architecture is refused here, before any image is read."""
    if is_training_workdir(path):
        from jaxdeca.train import export as train_export
        try:
            variables, info = train_export.load_inference(path)
        except Exception as e:  # noqa: BLE001 - one message naming the path
            raise CheckpointError(f"{path}: training checkpoint could not be read ({e})") from e
        info = dict(info, lmk_convention="jaxdeca")
        hint = "the checkpoint's networks differ from the config.model it records"
    else:
        variables = load_checkpoint(path)
        info = {"model": dict(DEFAULT_MODEL), "image_size": IMAGE_SIZE, "lmk_convention": "deca"}
        hint = "not DECA's networks, which python -m jaxdeca.convert deca writes"
    return checked_variables(variables, info["model"], int(info["image_size"]), path, hint), info


def checked_variables(variables: dict, model: dict, image_size: int, where: str, hint: str | None = None) -> dict:
    """{network name: variables} cast onto the networks `build_networks(model)` makes for
    `image_size` inputs (`deca_common.checked_like`, shapes only: nothing is run). A missing,
    unexpected or misshapen variable is one CheckpointError naming `where`, the network, the
    variable and its expected shape; without this check Flax stops at the first jitted call
    with a scope error (after detection and cropping), or silently ignores extra variables."""
    from jaxdeca.train.paths import ConfigError
    templates = network_templates(model, image_size, names=tuple(variables))
    out = {}
    for n, v in variables.items():
        try:
            out[n] = checked_like(templates[n], v, f"{where} ({n})", hint)
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
    return out


def network_templates(model: dict, image_size: int = IMAGE_SIZE, names=NETS) -> dict:
    """{network name: variable shapes} of the networks `names` of `build_networks(model)` for
    `image_size` inputs (nothing is run)."""
    from jaxdeca.convert.core import init_template
    nets = build_networks(model)
    img = jnp.zeros((1, image_size, image_size, 3))
    example = {"E_flame": img, "E_detail": img, "D_detail": jnp.zeros((1, models.DETAIL_LATENT_SIZE))}
    return {n: init_template(nets[n], example[n]) for n in names}


def random_variables(seed: int = 0) -> dict:
    """Randomly initialised DECA networks (tests, demos with no trained model)."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    img = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3))
    return {"E_flame": models.jit_init(models.coarse_encoder(), k1, img),
            "E_detail": models.jit_init(models.detail_encoder(), k2, img),
            "D_detail": models.jit_init(models.detail_decoder(), k3, jnp.zeros((1, models.DETAIL_LATENT_SIZE)))}


# ----------------------------------------------------------------------------- cropping
# One implementation for apps and data: DECA's test-time crop lives in jaxdeca.data.preprocess.

@dataclasses.dataclass(frozen=True)
class Crop:
    """A face crop and the similarity that made it: crop pixels = tform @ [x, y, 1] (original)."""
    image: np.ndarray  # [224, 224, 3] float32 in [0, 1]
    tform: np.ndarray  # [3, 3] original pixels -> crop pixels (jaxdeca.data.preprocess convention)
    original: np.ndarray | None = None  # [H, W, 3] uint8 RGB: the frame it was cropped from

    @property
    def matrix(self) -> np.ndarray:
        """Alias of `tform` (older name)."""
        return self.tform


def detect_landmarks(image: np.ndarray, box=None):
    """68 dlib landmarks [68, 2] in pixels for the largest face of an RGB uint8 image, or None.
    box: (left, top, right, bottom) of a face found otherwise: the landmarks inside it, with no
    detection (`preprocess.detect_landmarks`)."""
    try:
        return np.asarray(preprocess.detect_landmarks(image, bbox=box), np.float64)
    except preprocess.NoFaceError:
        return None


def crop_face(image: np.ndarray, mode: str = "detect", landmarks=None, keep_original: bool = True) -> Crop | None:
    """DECA's test crop of an RGB uint8 image [H, W, 3] (`preprocess.crop_for_inference`).

    mode='detect': landmark box of the given landmarks [68, 2] (pixels) or, when None, of dlib's;
    None when no face is found. mode='none': the image is already a face crop; its centred
    square is resized to 224 with the same warp (pixel centres 0 and max(H, W) - 1 map to 0
    and 223, so a 224 x 224 input passes through unchanged; DECA's iscrop=False fits a
    similarity to the corners (0, 0), (0, H-1), (W-1, 0), which for a non-square image also
    rotates it: 5.7 degrees at 200 x 300). Grey and RGBA uint8 images are
    converted (`preprocess.as_rgb_uint8`); other dtypes raise ValueError in both modes.
    keep_original: the Crop holds the image (`Crop.original`, for `write_outputs`' vis_original).
    """
    if mode == "none":
        try:
            image = preprocess.as_rgb_uint8(image)
        except ValueError as e:
            raise ValueError(f"crop_face: {e}") from None
        h, w = image.shape[:2]
        t = crop_lib.square_transform(((w - 1) / 2.0, (h - 1) / 2.0), max(h, w, 2) - 1, IMAGE_SIZE)
        return Crop(image=crop_lib.crop_image(image, t, IMAGE_SIZE), tform=t, original=image if keep_original else None)
    if mode != "detect":
        raise ValueError(f"crop mode must be 'detect' or 'none', got {mode!r}")
    try:
        img, t = preprocess.crop_for_inference(image, landmarks=landmarks, size=IMAGE_SIZE)
    except preprocess.NoFaceError:
        return None
    return Crop(image=img, tform=t, original=image if keep_original else None)


def found_faces(path: str, find, skipped: list, app: str, unit: str = "img", quiet: bool = False,
                exclude=()) -> Iterator[tuple]:
    """(name, find(frame)) of every frame of an image, folder or video (`inputs.iter_frames`; a
    folder's files `exclude` names left out). find returns None when the frame has no face, or an
    `inputs.Skipped` when it cannot be used for another reason; those frames and the unreadable
    ones are appended to `skipped`. Shows a progress bar labelled `app` (unless quiet)."""
    for item in tqdm(inputs.iter_frames(path, exclude=exclude), desc=app, unit=unit,
                     disable=True if quiet else None):
        found = item if isinstance(item, inputs.Skipped) else find(item)
        if found is None:
            skipped.append(inputs.no_face(item))
        elif isinstance(found, inputs.Skipped):
            skipped.append(found)
        else:
            yield item.name, found


def face_crops(path: str, crop: str, skipped: list, app: str, unit: str = "img",
               landmarks: str | None = None, keep_original: bool = False, exclude=()) -> Iterator[tuple[str, Crop]]:
    """(name, Crop) of every frame of an image, folder or video in which a face is found
    (`found_faces` with `crop_face`). landmarks: --landmarks (`landmark_files`), the 68 points
    the detect crop is made from instead of dlib's, as DECA's test data takes a <stem>.txt or
    .mat beside an image; frames it has no file for use dlib's. keep_original: each Crop holds
    its frame (reconstruct's --vis-original); off, a batch of crops does not keep its photos
    (8 faces of 8000 x 6000 photos held 1.1 GB)."""
    from jaxdeca.apps import landmark_files
    single = landmark_files.check_arg(landmarks, path)
    if landmarks is not None and crop != "detect":
        raise inputs.InputError(f"{landmarks}: --landmarks places the crop, so it needs --crop detect")

    def find(frame):
        lmk = landmark_files.for_frame(frame, landmarks, single)  # None: dlib's, in crop_face
        if isinstance(lmk, inputs.Skipped):
            return lmk
        return crop_face(frame.image, crop, landmarks=lmk, keep_original=keep_original)
    return found_faces(path, find, skipped, app, unit, exclude=exclude)


def chunks(items: Iterable, n: int) -> Iterator[list]:
    """Consecutive lists of n items (the last may be shorter), drawn lazily from `items`."""
    it = iter(items)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def pad_rows(x, n: int) -> np.ndarray:
    """x [B, ...] -> numpy [max(B, n), ...]: rows B .. n - 1 repeat row B - 1. ValueError for
    an empty x (B = 0) when rows are asked for: there is no row to repeat."""
    x = np.asarray(x)
    if len(x) >= n:
        return x
    if len(x) == 0:
        raise ValueError(f"pad_rows: empty batch (0 rows of shape {x.shape[1:]}): no row to repeat up to {n}")
    return np.concatenate([x, np.repeat(x[-1:], n - len(x), 0)])


def padded_batch(images: list, batch: int) -> np.ndarray:
    """Stacks 1 to `batch` images [224, 224, 3], repeating the last to `batch` so that the
    jitted functions always see one shape. Returns [batch, 224, 224, 3]; ValueError for no images."""
    if len(images) == 0:
        raise ValueError("padded_batch: empty batch (no images)")
    return pad_rows(np.stack(images), batch)


def to_original(points, tform, normalized: bool = True, convention: str = "jaxdeca") -> np.ndarray:
    """Crop points [..., 2] ([-1, 1] image space in landmark `convention` if normalized, else crop
    pixels) -> original pixels."""
    return preprocess.to_original(np.asarray(points)[..., :2], tform, IMAGE_SIZE, normalized, convention)


# ----------------------------------------------------------------------------- model

@dataclasses.dataclass
class Pipeline:
    """FLAME arrays, topology and network variables with jitted encode/decode, run over
    `devices` (default: all local devices; each call splits its batch over them)."""
    arrays: dict
    flame: flame.FlameModel
    topo: render.Topology
    variables: dict | None
    model: dict | None = None     # architecture (config.model fields); None = DECA's
    net_size: int = IMAGE_SIZE    # the encoders' input size; crops are resized to it
    devices: list | None = None   # None: jax.local_devices()
    lmk_convention: str = "jaxdeca"  # image-space landmarks <-> pixels (module docstring)

    def __post_init__(self):
        crop_lib.pixel_centre(self.lmk_convention)  # ValueError for an unknown name
        self.model = dict(DEFAULT_MODEL, **(self.model or {}))
        self.nets = build_networks(self.model)
        self.mesh = parallel.make_mesh(jax.local_devices() if self.devices is None else self.devices)
        self.variables = parallel.replicate(self.variables, self.mesh)
        self._encode = self.jit(self._encode_impl)
        self._decode = self.jit(self._decode_impl)
        self._both = self.jit(self._both_impl)

    @property
    def n_devices(self) -> int:
        return self.mesh.devices.size

    def jit(self, fn):
        """fn jitted; with several devices, traced under the mesh so that the rasterizer splits
        the batch over them (XLA alone would rasterize the whole batch on every device)."""
        if self.n_devices == 1:
            return xla_options.jit(fn)

        def in_mesh(*args):
            with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):
                return fn(*args)
        return xla_options.jit(in_mesh)

    def split_batch(self, tree):
        """Batch arrays [B, ...] -> (arrays padded to a multiple of the device count by
        repeating item B - 1 and split along the first axis, B). ValueError for an empty batch
        (B = 0 or no arrays): encode, decode, run and fit need at least one item."""
        leaves = jax.tree.leaves(tree)
        if not leaves or np.shape(leaves[0])[0] == 0:
            raise ValueError("empty batch (0 items): the pipeline needs at least one image or code row")
        B = np.shape(leaves[0])[0]
        n = self.n_devices
        if n == 1:  # placed on the pipeline's device, which need not be the default one
            return jax.device_put(tree, self.mesh.devices.item()), B
        size = -(-B // n) * n
        return parallel.shard_batch(jax.tree.map(lambda x: pad_rows(x, size), tree), self.mesh), B

    def cut_batch(self, tree, B):
        """Outputs of a padded batch back to its first B items."""
        return jax.tree.map(lambda x: x[:B], tree) if jax.tree.leaves(tree)[0].shape[0] != B else tree

    def _both_impl(self, v, images):
        codes = self._encode_impl(v, images)
        return codes, self._decode_impl(codes, v.get("D_detail"), images)

    def _encode_impl(self, v, images):
        if images.shape[1] != self.net_size:
            images = jax.image.resize(images, (images.shape[0], self.net_size, self.net_size, 3), "linear")
        codes = camera_codes(models.decompose_code(self.nets["E_flame"].apply(v["E_flame"], images)), self.model)
        if "E_detail" in v:
            codes["detail"] = self.nets["E_detail"].apply(v["E_detail"], images)
        return codes

    def _decode_impl(self, codes, d_vars, images=None):
        B = codes["shape"].shape[0]
        out = self.flame(codes["shape"], codes["exp"], codes["pose"])
        cam = codes["cam"]
        trans = render.orth_proj(out["vertices"], cam)
        R = self.topo.uv_face_eye_mask.shape[0]
        albedo = flame.texture.albedo_from_arrays(self.arrays, codes["tex"], size=R)
        if d_vars is not None and "detail" in codes:
            uv_z = self.nets["D_detail"].apply(d_vars, models.detail_latent(codes["pose"], codes["exp"], codes["detail"]))
        else:
            uv_z = jnp.zeros((B, R, R, 1))
        r = render.render(out["vertices"], trans, albedo, codes["light"], self.topo, (IMAGE_SIZE, IMAGE_SIZE), uv_z=uv_z)
        lmk2 = render.orth_proj(out["landmarks2d"], cam)
        lmk3 = render.orth_proj(out["landmarks3d"], cam)
        n = r["uv_detail_normals"]
        uv_detail_vertices = render.detail_vertices(uv_z, r["uv_coarse_vertices"], r["uv_coarse_normals"],
                                                    self.topo.fixed_displacement)  # DECA's upsample_mesh
        res = dict(vertices=out["vertices"], trans_vertices=trans, landmarks2d=lmk2, landmarks3d=lmk3,
                   landmarks3d_world=out["landmarks3d"], albedo=albedo, uv_z=uv_z,
                   # DECA's visofp: the transformed normals at the landmarks face the camera
                   landmarks3d_visible=render.vertex_visibility(self.flame.select_3d68(r["trans_normals"])),
                   uv_detail_vertices=uv_detail_vertices, uv_detail_normals=n,
                   normals=r["normals"], trans_normals=r["trans_normals"],
                   images=r["images"], mask=r["mask"], shape_images=r["shape_images"],
                   shape_detail_images=r["shape_detail_images"], depth_images=r["depth_images"],
                   uv_pverts=r["uv_pverts"])
        if images is not None:  # DECA's extract_tex: the photo inside the face-eye mask only
            res["uv_texture_extracted"] = render_deca.face_texture(
                render.extract_texture(images, r["uv_pverts"]), r["uv_texture"], self.topo.uv_face_eye_mask)
        return res

    def _needs_networks(self):
        if self.variables is None or "E_flame" not in self.variables:
            raise ValueError("this pipeline has no encoder to encode images with: load one with "
                             "load_pipeline(checkpoint=...) (or random_seed=... for random networks)")

    def encode(self, images):
        """images: [B, 224, 224, 3] in [0, 1] -> codes dict (shape, tex, exp, pose, cam, light, detail)."""
        self._needs_networks()
        x, B = self.split_batch(images)
        return self.cut_batch(self._encode(self.variables, x), B)

    def decode(self, codes, images=None):
        """codes -> dict of decoded arrays (see `_decode_impl`); images adds the extracted texture."""
        d = None if self.variables is None else self.variables.get("D_detail")
        if images is None:
            c, B = self.split_batch(codes)
            return self.cut_batch(self._decode(c, d), B)
        (c, x), B = self.split_batch((codes, images))
        return self.cut_batch(self._decode(c, d, x), B)

    def run(self, images):
        """One jitted encode+decode. images: [B, 224, 224, 3] -> (codes, decoded)."""
        self._needs_networks()
        x, B = self.split_batch(images)
        return self.cut_batch(self._both(self.variables, x), B)


def load_pipeline(checkpoint: str | None = None, flame_path: str | None = None, random_seed: int | None = None,
                  lmk_convention: str | None = None) -> Pipeline:
    """A Pipeline for `checkpoint` (None: no networks, or random ones with random_seed).

    flame_path: the FLAME file (None: the one a training workdir was trained with, or the demo
    head with no checkpoint; a model directory needs one). A training workdir records its FLAME
    file; an explicit flame_path that differs from it is used only with the same mesh topology
    (`trained_flame_arrays`).
    lmk_convention: None takes the checkpoint's (module docstring; 'jaxdeca' with no checkpoint)."""
    info = {"model": None, "image_size": IMAGE_SIZE, "lmk_convention": "jaxdeca"}
    if checkpoint:
        variables, info = load_model_dir(checkpoint)
    else:
        variables = random_variables(random_seed) if random_seed is not None else None
    arrays, where = trained_flame_arrays(checkpoint, info, flame_path)
    flame.texture.check_components(arrays, dict(models.CODE_SIZES)["tex"], where)
    uv_size = int((info["model"] or {}).get("uv_size", 256))
    return Pipeline(arrays=arrays, flame=flame.from_arrays(arrays, where=where),
                    topo=render.make_topology(arrays, uv_size=uv_size, where=where),
                    variables=variables, model=info["model"], net_size=int(info["image_size"]),
                    lmk_convention=lmk_convention or info["lmk_convention"])


TOPOLOGY_KEYS = ("v_template", "faces", "uv_coords", "uv_faces")  # what trained networks depend on


def flame_name(path: str | None) -> str:
    return "the embedded demo head" if path is None else path


def trained_flame_arrays(checkpoint: str | None, info: dict, flame_path: str | None) -> tuple[dict, str]:
    """(FLAME arrays, their name for messages) for a model with info from `load_model_dir`.

    A training workdir's info holds 'flame_path' (None: the demo head). With no flame_path
    given, that file is read (CheckpointError when it is gone). A flame_path that differs is
    kept if its mesh has the trained one's topology (TOPOLOGY_KEYS' shapes, the same faces),
    else CheckpointError naming both. A model directory (a converted DECA model) records no
    FLAME file: flame_path must name one (CheckpointError otherwise: its codes decoded on the
    demo head's bases would be a wrong face with no other sign), unchecked; with no checkpoint,
    flame_path or the demo head."""
    if checkpoint and "flame_path" not in info and flame_path is None:
        raise CheckpointError(
            f"{checkpoint}: a model directory records no FLAME model, so its codes need one: pass --flame "
            "(flame_path=) naming DECA's data/ folder, its generic_model.pkl or a python -m jaxdeca.flame.convert "
            f"npz ({flame.DEMO_HEAD} for the embedded demo head)")
    # the workdir records the path as resolved here (DecaParts.checkpoint_info)
    if "flame_path" not in info or flame_path == info["flame_path"] or \
            (flame_path and resolve_path(flame_path) == info["flame_path"]):
        return flame.load_arrays(flame_path), flame_name(flame_path)
    trained = info["flame_path"]
    try:
        trained_arrays = flame.load_arrays(trained)
    except flame.FlameFileError as e:
        if flame_path is not None:  # the user's choice; nothing left to compare it with
            return flame.load_arrays(flame_path), flame_path
        raise CheckpointError(f"{checkpoint}: trained with the FLAME model {trained}, which cannot be read "
                              f"({e}); pass --flame") from None
    if flame_path is None:
        return trained_arrays, flame_name(trained)
    arrays = flame.load_arrays(flame_path)
    diff = topology_difference(trained_arrays, arrays)
    if diff:
        raise CheckpointError(f"{flame_path}: not the FLAME topology {checkpoint} was trained with "
                              f"({flame_name(trained)}): {diff}")
    return arrays, flame_path


def topology_difference(a: dict, b: dict) -> str | None:
    """How two FLAME dicts' meshes differ (TOPOLOGY_KEYS), or None when they do not."""
    for k in TOPOLOGY_KEYS:
        sa, sb = np.shape(a[k]), np.shape(b[k])
        if sa != sb:
            return f"'{k}' has shape {sb}, expected {sa}"
    for k in ("faces", "uv_faces"):
        if not np.array_equal(a[k], b[k]):
            return f"'{k}' differ"
    return None


# ----------------------------------------------------------------------------- outputs

def landmarks_original(lmk_img, tform, convention: str = "jaxdeca") -> np.ndarray:
    """DECA image-space landmarks [K, >=2] of a crop -> original-image pixels [K, 2]
    (`convention`: the model's, `Pipeline.lmk_convention`)."""
    return to_original(lmk_img, tform, convention=convention)


def write_outputs(out_dir: str, name: str, out: dict, k: int, crop: Crop, codes: dict,
                  arrays: dict, extract_tex: bool = True, lmk_convention: str = "jaxdeca",
                  decoded: bool = False, vis_original: bool = False, images: bool = False) -> list[str]:
    """Write every output of face k of a decoded batch under out_dir/name/; returns paths (the
    detailed OBJ is left out, with a message on stderr, when its mesh has no faces:
    `export.write_detail_obj`). lmk_convention: how the decode's image-space landmarks become
    pixels (`Pipeline.lmk_convention`). A file that cannot be written: export.WriteError naming it.
    decoded: also `<name>_decoded.npz`, DECA's decoded outputs (`decoded_arrays`; its demo's
    --saveMat). vis_original: also `<name>_vis_original.png`, the grid on the original frame
    (`original_grid`; its demo's --render_orig), when `crop.original` holds it. images: also each
    panel as a picture of its own, unlabelled (`panel_images`; its demo's --saveImages)."""
    from jaxdeca.apps import visualize as vis
    d = os.path.join(out_dir, name)
    with export.writing(d):
        os.makedirs(d, exist_ok=True)
    # the batch's array to the host (a jax.Array keeps that copy for the batch's other faces),
    # then face k: not one device slice per key and face
    g = lambda key: np.asarray(out[key])[k]  # noqa: E731
    paths = []
    tex = g("uv_texture_extracted") if extract_tex and "uv_texture_extracted" in out else g("albedo")
    paths.append(export.write_obj(os.path.join(d, f"{name}.obj"), g("vertices"), arrays["faces"],
                                  uv_coords=arrays["uv_coords"], uv_faces=arrays["uv_faces"], texture=tex,
                                  normal_map=g("uv_detail_normals")))
    # DECA's upsample_mesh: a vertex at every texel inside a UV triangle (the whole head, not only
    # the face-eye mask), coloured by the texture as its PNG holds it (clipped to [0, 1], NaN as 0)
    cover = np.linalg.norm(g("uv_detail_vertices"), axis=-1) > 0
    detail = export.write_detail_obj(os.path.join(d, f"{name}_detail.obj"), g("uv_detail_vertices"),  # None: no faces
                                     g("uv_detail_normals"), cover, np.nan_to_num(np.clip(tex, 0.0, 1.0)))
    paths += [detail] if detail else []
    lmk2 = landmarks_original(g("landmarks2d"), crop.tform, lmk_convention)
    paths.append(export.save_landmarks(os.path.join(d, f"{name}_kpt2d.txt"), lmk2, "x y (original image pixels)"))
    paths.append(export.save_landmarks(os.path.join(d, f"{name}_kpt3d.txt"),
                                       np.concatenate([g("landmarks3d_world"), g("landmarks3d_visible")[:, None]], 1),
                                       "x y z visible (FLAME world, metres)"))
    paths.append(export.save_image(os.path.join(d, f"{name}_depth.png"), g("depth_images")))
    panels = panel_images(g, crop, lmk_convention)  # the grid's tiles before their labels
    tiles = [vis.label(panels[key], text) for key, text in
             (("inputs", "input"), ("landmarks2d", "landmarks"), ("shape_images", "shape"),
              ("shape_detail_images", "detail shape"), ("rendered_images", "render"))]
    tiles.append(vis.label(vis.overlay(crop.image, g("shape_images"), g("mask")), "overlay"))
    paths.append(export.save_image(os.path.join(d, f"{name}_vis.png"), vis.grid(tiles, len(tiles))))
    if images:
        paths += [export.save_image(os.path.join(d, f"{name}_{key}.png"), img) for key, img in panels.items()]
    paths.append(export.save_npz(os.path.join(d, f"{name}_codes.npz"),
                                 {**{kk: v[k] for kk, v in codes.items()}, "crop_tform": crop.tform}))
    if decoded:
        paths.append(export.save_npz(os.path.join(d, f"{name}_decoded.npz"), decoded_arrays(g, arrays)))
    if vis_original and crop.original is not None:
        paths.append(export.save_image(os.path.join(d, f"{name}_vis_original.png"),
                                       original_grid(g, crop, lmk2)))
    return paths


def panel_images(g, crop: Crop, lmk_convention: str = "jaxdeca") -> dict:
    """The result panels of one face as pictures of their own, unlabelled, under the names DECA's
    demo gives them with --saveImages: inputs (the crop), landmarks2d, landmarks3d (its
    plot_kpts: visible points green, hidden ones red), shape_images, shape_detail_images,
    rendered_images (albedo x SH light). Each [224, 224, 3] uint8 RGB.
    g: key -> the face's array of a decoded batch (write_outputs)."""
    from jaxdeca.apps import visualize as vis
    lmk2 = vis.image_to_pixels(g("landmarks2d"), IMAGE_SIZE, lmk_convention)
    lmk3 = vis.image_to_pixels(g("landmarks3d"), IMAGE_SIZE, lmk_convention)
    seen = np.asarray(g("landmarks3d_visible")) > 0.5
    on3 = vis.draw_landmarks(vis.draw_landmarks(crop.image, lmk3[seen], (0, 255, 0)), lmk3[~seen], (255, 0, 0))
    return {"inputs": vis.to_uint8(crop.image), "landmarks2d": vis.draw_landmarks(crop.image, lmk2),
            "landmarks3d": on3, "shape_images": vis.to_uint8(g("shape_images")),
            "shape_detail_images": vis.to_uint8(g("shape_detail_images")), "rendered_images": vis.to_uint8(g("images"))}


def decoded_arrays(g, arrays: dict) -> dict:
    """DECA's decoded outputs (`DECA.decode`'s opdict, which its demo saves with --saveMat) of one
    face, under DECA's names and in DECA's frames, images as [H, W, C] (DECA's are [C, H, W]):
      verts [V, 3] FLAME world; trans_verts [V, 3] image space (x, y in [-1, 1] of the 224 crop,
      y down); landmarks2d [68, 2] image space; landmarks3d [68, 4] image space + visibility
      (DECA's visofp); landmarks3d_world [68, 3]; normals [V, 3]; albedo, uv_texture_gt
      [R, R, 3] (the FLAME albedo; the extracted texture, albedo-shaded outside the face-eye
      mask); uv_detail_normals [R, R, 3]; displacement_map [R, R, 1] (the detail decoder's
      uv_z plus the model's fixed displacement).
    g: key -> the face's array of a decoded batch (write_outputs)."""
    R = g("uv_z").shape[0]
    fixed = render_deca.fixed_displacement(arrays, R)
    out = dict(verts=g("vertices"), trans_verts=g("trans_vertices"), landmarks2d=g("landmarks2d")[:, :2],
               landmarks3d=np.concatenate([g("landmarks3d"), g("landmarks3d_visible")[:, None]], 1),
               landmarks3d_world=g("landmarks3d_world"), normals=g("normals"), albedo=g("albedo"),
               uv_detail_normals=g("uv_detail_normals"), displacement_map=g("uv_z") + fixed[..., None])
    try:
        out["uv_texture_gt"] = g("uv_texture_extracted")
    except KeyError:  # decoded without the photo
        pass
    return out


def original_grid(g, crop: Crop, lmk_original) -> np.ndarray:
    """The visualisation grid on the original frame, at its size (DECA's render_orig): the frame,
    its landmarks (original pixels), and the shape, detailed shape and render warped back from
    the crop (`preprocess.paste_to_original`: at the crop's 224 px resolution) over it."""
    from jaxdeca.apps import visualize as vis
    photo = crop.original
    h, w = photo.shape[:2]
    back = lambda img: preprocess.paste_to_original(np.asarray(img, np.float32), crop.tform, h, w)  # noqa: E731
    mask = back(g("mask"))
    tiles = [vis.label(photo, "input"), vis.label(vis.draw_landmarks(photo, lmk_original), "landmarks")]
    tiles += [vis.label(vis.overlay(photo, back(g(key)), mask, alpha=1.0), text)
              for key, text in (("shape_images", "shape"), ("shape_detail_images", "detail shape"),
                                ("images", "render"))]
    return vis.grid(tiles, len(tiles))
