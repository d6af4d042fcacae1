"""What the DECA stages share: the networks built from `config.model`, FLAME + renderer from
`config.flame`, the frozen pretrained feature networks, picture helpers for TensorBoard and checked loading of a previous stage's variables.

Variables are keyed by network like a converted official model: params {'E_flame': ...},
{'E_detail': ..., 'D_detail': ...}; frozen {'E_flame': ..., 'vggface2': ..., 'vgg19': ...}.

config.model: width (ResNet channel multiplier, 1.0 = DECA), blocks ((3, 4, 6, 3) = ResNet-50),
hidden (MLP head, 1024), uv_size (displacement map, 256), dtype ('float32' or 'bfloat16' compute
with float32 params), init_cam_scale (initial camera-scale output of a fresh coarse encoder;
None = DECA's init (a scale near 0), see deca_coarse.init_cam_scale), cam_scale ('raw' = DECA:
the code's scale is used as it is; 'abs': its absolute value, see `camera_codes`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdeca import flame, models, render
from jaxdeca.losses.defaults import as_weights
from jaxdeca.train import export, paths

DEFAULT_MODEL = dict(width=1.0, blocks=(3, 4, 6, 3), hidden=1024, uv_size=256, dtype="float32",
                     init_cam_scale=None, cam_scale="raw")


def model_config(config) -> dict:
    """config.model with DECA's defaults filled in (a plain dict), its architecture fields
    checked (`check_architecture`)."""
    m = dict(DEFAULT_MODEL)
    if "model" in config and config.model is not None:
        m.update(config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model))
    return check_architecture(m)


def check_architecture(m: dict) -> dict:
    """m with `blocks` as a tuple of ints, or one ConfigError naming the first bad field of
    config.model: blocks (bottlenecks per ResNet stage: four positive ints; a command-line
    override --config.model.blocks=abc arrives as the tuple ('abc',)), width (> 0), hidden
    (a positive int), uv_size (a positive multiple of 32, `models.detail_decoder`) and dtype.
    Without it these surface as a ValueError traceback from inside the first network build."""
    blocks = m["blocks"]
    try:
        parsed = tuple(int(b) for b in blocks) if isinstance(blocks, (tuple, list)) else None
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or len(parsed) != 4 or min(parsed) < 1 or any(
            isinstance(b, float) and b != int(b) for b in blocks):
        raise paths.ConfigError(f"config.model.blocks={blocks!r} must be four positive ints, the bottlenecks of "
                                "each ResNet stage (DECA's ResNet-50: 3,4,6,3)")
    checks = (("width", lambda v: float(v) > 0, "a number > 0 (the ResNet's channel multiplier; DECA: 1.0)"),
              ("hidden", lambda v: int(v) == v and v >= 1, "a positive int (the encoders' hidden layer; DECA: 1024)"),
              ("uv_size", lambda v: int(v) == v and v >= 32 and v % 32 == 0,
               "a positive multiple of 32 (the displacement map's side; DECA: 256)"))
    for name, ok, what in checks:
        try:
            good = not isinstance(m[name], bool) and ok(m[name])
        except (TypeError, ValueError):
            good = False
        if not good:
            raise paths.ConfigError(f"config.model.{name}={m[name]!r} must be {what}")
    dtype_of(m["dtype"])
    return dict(m, blocks=parsed)


def dtype_of(name: str):
    if name not in ("float32", "bfloat16"):
        raise paths.ConfigError(f"config.model.dtype={name!r} must be 'float32' or 'bfloat16'")
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def arch(m: dict) -> dict:  # the encoder/decoder constructor fields of a model config
    return dict(width=float(m["width"]), blocks=tuple(m["blocks"]), hidden=int(m["hidden"]))


def build_networks(m: dict) -> dict:
    """Flax modules of the three DECA networks for model config `m`."""
    dt = dtype_of(m["dtype"])
    return {"E_flame": models.coarse_encoder(dt, **arch(m)),
            "E_detail": models.detail_encoder(dt, **arch(m)),
            "D_detail": models.detail_decoder(dt, uv_size=int(m["uv_size"]))}


def camera_codes(codes: dict, model: dict) -> dict:
    """Applies config.model.cam_scale to decoded codes: 'raw' (DECA) returns them unchanged;
    'abs' takes |scale|. Landmarks alone cannot tell a head from the same head rolled by pi
    under a negative orthographic scale (the projections coincide), and a landmark-only
    pretrain from scratch often lands in that mirror, which every render then shows from
    behind; with |scale| the mirror no longer fits the landmarks. Identical to 'raw' for any
    trained DECA model (its scales are positive). codes['cam']: [B, 3] (scale, tx, ty)."""
    mode = model.get("cam_scale", "raw") or "raw"
    if mode == "raw":
        return codes
    if mode != "abs":
        raise paths.ConfigError(f"config.model.cam_scale={mode!r} must be 'raw' or 'abs'")
    cam = codes["cam"]
    return dict(codes, cam=cam.at[..., 0].set(jnp.abs(cam[..., 0])))


def resume_fields(info: dict) -> dict:
    """The config fields of a checkpoint_info dict that a resume must keep, by config name:
    {'model.cam_scale': 'raw', 'model.dtype': 'float32', ..., 'data.image_size': 224}: what the
    networks compute (config.model, data.image_size) and what their codes mean (cam_scale).
    Left out: model.init_cam_scale (only a fresh init reads it) and flame_path (the same FLAME
    file may lie elsewhere on another machine: the FLAME is compared by its arrays' fingerprint,
    `check_same_flame`). A field the checkpoint predates is absent."""
    out = {f"model.{k}": v for k, v in (info.get("model") or {}).items() if k != "init_cam_scale"}
    if "image_size" in info:
        out["data.image_size"] = info["image_size"]
    return out


def flame_path(config):
    return config.flame.get("path") if "flame" in config else None


# the arrays of a FLAME file that the stages read beside the model (FlameModel): the albedo the
# texture codes mean, the UV layout, the UV masks and the fixed displacement
FLAME_FILE_ARRAYS = ("albedo_mean", "albedo_basis", "uv_coords", "uv_faces", "uv_face_eye_mask", "uv_face_mask",
                     "fixed_displacement")


def flame_fingerprint(model, arrays: dict | None = None) -> dict:
    """{array name: loop.fingerprint} of a FlameModel's arrays (template, shape / expression
    basis, pose correctives, skinning, faces, landmark embedding) and, given the FLAME file's
    `arrays`, of the FLAME_FILE_ARRAYS it holds: what the codes a stage learns mean, whatever
    path the file was read from. One per array: a sum over all of them would hide a changed
    template (sum |v| ~ 1e3) under the faces' indices (~ 1e8)."""
    from jaxdeca.train import loop
    out = {p[-1].name: loop.fingerprint(x) for p, x in jax.tree_util.tree_flatten_with_path(model)[0]}
    out.update({k: loop.fingerprint(np.asarray(arrays[k])) for k in FLAME_FILE_ARRAYS if k in (arrays or {})})
    return out


def flame_arrays_differ(saved: dict, fingerprint: dict) -> list[str]:
    """The names of the arrays whose flame_fingerprint entries differ between two FLAMEs (or that
    one of them lacks), sorted; [] for the same FLAME."""
    differs = [k for k in fingerprint if k not in saved or not np.allclose(saved[k], fingerprint[k], rtol=1e-6, atol=0)]
    return sorted(differs + [k for k in saved if k not in fingerprint])


def flame_name(path: str | None) -> str:
    """How a message names a recorded or configured FLAME (None: the demo head)."""
    return repr(path) if path else "the embedded demo head"


def check_same_flame(info: dict, path: str | None, fingerprint: dict, where: str, start: bool = False) -> None:
    """Refuses (ConfigError) to go on from the checkpoint `where` (info: its checkpoint_info, or
    export.load_inference's) when it was trained with another FLAME than this run's (config.flame.path
    `path`, its arrays' `fingerprint`): a resume, or a stage started from it (`start`), would go on
    training the codes on other shapes, and record this run's FLAME as the one the workdir was
    trained with (the apps decode it with that one). The fingerprints are compared, not the
    paths: the same file moved or copied elsewhere goes on. A checkpoint written before the
    fingerprint was recorded is checked by the FLAME file it names, when it names one (the
    demo head, or no record of the file, is not checked): the file's fingerprint when it is still
    there; when it is gone, a run naming a FLAME file goes on (it may be the file, moved) and
    one without (the demo head) is refused. The albedo and UV arrays (FLAME_FILE_ARRAYS: the
    coarse stage learns its texture codes on that albedo) are compared too, but for a checkpoint
    written before they were recorded."""
    saved, trained = info.get("flame_fingerprint"), info.get("flame_path")
    now = f"config.flame.path={path!r}" if path else "the embedded demo head (config.flame.path unset)"
    if not isinstance(saved, dict):
        if not trained:
            return
        saved = _file_fingerprint(trained)
        if saved is None:
            if path:
                return
            flag = f"--config.flame.path=<{trained}, wherever it lies now>"
            raise paths.ConfigError(f"{where} was trained with FLAME {flame_name(trained)} (not readable there now), "
                                    f"but this {'stage' if start else 'run'} has {now}: its codes would mean other "
                                    f"shapes; {'start it' if start else 'resume'} with {flag}")
    if not any(k in saved for k in FLAME_FILE_ARRAYS):  # recorded before the albedo and UV arrays were
        fingerprint = {k: v for k, v in fingerprint.items() if k not in FLAME_FILE_ARRAYS}
    differs = flame_arrays_differ(saved, fingerprint)
    if not differs:
        return
    same_path = (paths.resolve(path) if path else None) == trained
    if same_path:
        fix = (f"{flame_name(trained)} has changed since: restore the file it was trained with" if trained else
               "the embedded demo head has changed since (another jaxdeca version)") + ", or use another workdir"
    else:
        flag = f"--config.flame.path={trained}" if trained else "config.flame.path unset (the embedded demo head)"
        fix = (f"start it with {flag}, the FLAME of the stage it starts from" if start
               else f"resume with {flag}, or use another workdir")
    arrays = ", ".join(differs) + (" differs" if len(differs) == 1 else " differ")
    meaning = "textures (albedo, UV maps)" if set(differs) <= set(FLAME_FILE_ARRAYS) else "shapes"
    raise paths.ConfigError(f"{where} was trained with FLAME {flame_name(trained)}, but this "
                            f"{'stage' if start else 'run'} has {now}, another FLAME ({arrays}): its codes "
                            f"would mean other {meaning}; {fix}")


def _file_fingerprint(path: str) -> dict | None:
    """flame_fingerprint of the FLAME file `path` (read as DecaParts reads config.flame.path), or
    None when it cannot be read (moved, removed)."""
    try:
        arrays = flame.load_arrays(path)
        return flame_fingerprint(flame.from_arrays(arrays, where=path), arrays)
    except (flame.FlameFileError, OSError):
        return None


class DecaParts:
    """FLAME, topology, albedo and networks of a stage (shared by CoarseTask / DetailTask)."""

    def __init__(self, config):
        self.config = config
        self.model = model_config(config)
        self.k = int(config.data.k)
        self.size = int(config.data.image_size)
        self.uv_size = int(self.model["uv_size"])
        self.flame_path = flame_path(config)
        where = self.flame_path or flame.DEMO_HEAD
        try:
            self.arrays = flame.load_arrays(self.flame_path)
            self.flame = flame.from_arrays(self.arrays, where=where)
            flame.texture.check_components(self.arrays, dict(models.CODE_SIZES)["tex"], where)
        except flame.FlameFileError as e:
            if self.flame_path is None:
                raise
            raise flame.FlameFileError(f"config.flame.path={self.flame_path!r}: {e}") from None
        self.topo = render.make_topology(self.arrays, uv_size=self.uv_size)
        self.nets = build_networks(self.model)

    def checkpoint_info(self) -> dict:
        """What a reader of the checkpoint needs to rebuild the networks (saved in 'extra')."""
        return {"model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.model.items()},
                # absolute: the apps read it from wherever they run (a relative path named another file there)
                "image_size": self.size, "flame_path": paths.resolve(self.flame_path) if self.flame_path else None,
                # the FLAME itself, wherever its file lies: a resume or a later stage checks it (check_same_flame)
                "flame_fingerprint": self.flame_fingerprint}

    @functools.cached_property
    def flame_fingerprint(self) -> dict:
        """flame_fingerprint of this stage's FLAME and its file's albedo and UV arrays (computed
        once: every checkpoint records it)."""
        return flame_fingerprint(self.flame, self.arrays)

    def check_resume(self, extra: dict, where: str) -> None:
        """Refuses (ConfigError) to resume the checkpoint `where` whose `extra` (the checkpoint_info
        it was saved with) holds other values of the fields that make the model (resume_fields),
        or was trained with another FLAME (check_same_flame): the run would go on training, and
        its checkpoints record, another model."""
        saved, now = resume_fields(extra), resume_fields(self.checkpoint_info())
        diffs = [f"config.{k}={now[k]!r} (the checkpoint's {saved[k]!r})"
                 for k in now if k in saved and saved[k] != now[k]]
        if diffs:
            raise paths.ConfigError(f"{where} was trained with other values of the model's fields: {', '.join(diffs)}; "
                                    "resume with the values it was trained with, or use another workdir")
        check_same_flame(extra, self.flame_path, self.flame_fingerprint, where)

    @property
    def frozen_from_config(self) -> tuple:
        """Frozen variables read from config.weights at every start and left out of
        checkpoints: the loss networks (VGGFace2 ResNet-50, 90 MiB; VGG19 features, 13 MiB),
        fixed files. The detail stage's coarse encoder is saved: it is part of the exported model."""
        return tuple(getattr(self, "frozen_features", {}))

    def example_input(self, name: str) -> jax.ShapeDtypeStruct:
        """Shape and dtype of network `name`'s input at batch 2 (what init traces it with)."""
        shape = (2, models.DETAIL_LATENT_SIZE) if name == "D_detail" else (2, self.size, self.size, 3)
        return jax.ShapeDtypeStruct(shape, jnp.float32)

    def init_net(self, name: str, rng):
        x = self.example_input(name)
        v = models.jit_init(self.nets[name], rng, jnp.zeros(x.shape, x.dtype), train=False)
        return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}

    def net_template(self, name: str) -> dict:
        """`init_net(name, ...)`'s variables as shapes and dtypes (jax.ShapeDtypeStruct leaves),
        nothing compiled or run: the template a previous stage's checkpoint is cast onto
        (previous_stage_encoder). Initialising a network only to overwrite it costs a compile
        of its forward pass (about 7 s for the tiny demo's encoder on a 2-core CPU)."""
        # the key made under the trace, by jax.random.key: the default PRNG's layout (rbg's is
        # uint32[4]), and no eager seed program compiled
        v = jax.eval_shape(lambda x: self.nets[name].init(jax.random.key(0), x, train=False), self.example_input(name))
        return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}

    def net_zeros(self, name: str) -> dict:
        """net_template(name) as zeros: the variables a resume_variables returns for a network
        its checkpoint restores (under the loop's jax.eval_shape only shapes and dtypes count;
        nothing is read, initialised or compiled)."""
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self.net_template(name))

    def apply(self, name, params, batch_stats, x, train: bool):
        """Runs network `name`; returns (output, new batch_stats)."""
        variables = {"params": params, "batch_stats": batch_stats}
        if train:
            y, mut = self.nets[name].apply(variables, x, train=True, mutable=["batch_stats"])
            return y, mut["batch_stats"]
        return self.nets[name].apply(variables, x, train=False), batch_stats

    def decode_flame(self, codes):
        """codes -> (flame output dict, landmarks [B, 68, 2] in [-1, 1] image space, trans verts)."""
        out = self.flame(codes["shape"], codes["exp"], codes["pose"])
        lmk = render.orth_proj(out["landmarks2d"], codes["cam"])[..., :2]
        trans = render.orth_proj(out["vertices"], codes["cam"])
        return out, lmk, trans

    def albedo(self, codes):
        return flame.texture.albedo_from_arrays(self.arrays, codes["tex"], size=self.uv_size)

    def render(self, out, trans, albedo, light, uv_z=None, sigma=0.0):
        """`render.render` of a FLAME output at the stage's image size and UV topology. sigma: its
        soft coverage's (a Python number; 0, the default: `alpha` is the hard mask, and the
        soft pass is not run)."""
        return render.render(out["vertices"], trans, albedo, light, self.topo,
                             image_size=(self.size, self.size), uv_z=uv_z, sigma=sigma)

    def face_eye_mask_images(self, grid):
        """UV face-eye mask sampled into the image: grid [B, H, W, 2] -> [B, H, W, 1]."""
        m = jnp.broadcast_to(self.topo.uv_face_eye_mask[None, ..., None],
                             (grid.shape[0],) + self.topo.uv_face_eye_mask.shape + (1,))
        return render.grid_sample(m, grid)


def frozen_feature_paths(config, weights: dict) -> dict:
    """The pretrained feature networks the loss weights need: {name: path}, checked to exist
    (ConfigPathError naming the field otherwise). A task calls it first, before it builds FLAME,
    the topology and the networks, so a missing file stops the run at once.

    id > 0 needs config.weights.vggface2 (a directory from `python -m jaxdeca.convert vggface2`);
    the detail stage's photo_D * mrf > 0 needs config.weights.vgg19 (`... convert vgg19`).
    """
    read = weights_fields_read(config.get("stage"), weights)
    out = {}
    if "vggface2" in read:
        out["vggface2"] = paths.require_path(config, "weights.vggface2", "the converted VGGFace2 ResNet-50 "
                                             "(python -m jaxdeca.convert vggface2 --src resnet50_ft_weight.pkl --out DIR)")
    if "vgg19" in read:
        out["vgg19"] = paths.require_path(config, "weights.vgg19", "the converted torchvision VGG19 "
                                          "(python -m jaxdeca.convert vgg19 --src vgg19.pth --out DIR)")
    return out


def weights_fields_read(stage: str | None, loss) -> tuple[str, ...]:
    """The config.weights fields (pretrained feature networks) `stage` reads, given its loss config
    (ConfigDict / dict; missing fields take their defaults): vggface2 for the coarse stage's identity
    term (id > 0), vgg19 for the detail stage's ID-MRF (photo_D * mrf > 0); none for pretrain."""
    w = as_weights(loss)
    if stage == "coarse" and w["id"] > 0:
        return ("vggface2",)
    if stage == "detail" and w["photo_D"] * w["mrf"] > 0:
        return ("vgg19",)
    return ()


def loss_fields_read(stage: str, loss) -> tuple[str, ...]:
    """The config.loss fields whose values `stage` ('pretrain', 'coarse' or 'detail') trains
    with, given its loss config (ConfigDict / dict; missing fields take their defaults): the
    fields a change of which changes what the stage trains. The rest it never reads, e.g. the
    detail weights in pretrain and coarse, the coarse ones in detail, render_sigma with no
    photometric term (pretrain's photo = 0; the identity term reads no alpha), use_wlmk with no
    landmark term.

    CoarseTask / DetailTask and coarse_losses / detail_losses read them so; the demo records these
    alone of a finished stage's loss config (jaxdeca.train.demo.recorded_config), so that a
    weight of another stage leaves it finished."""
    w = as_weights(loss)
    if stage == "detail":
        return ("photo_D", "reg_sym", "reg_z", "reg_diff", "detail_consistency") + \
            (("mrf",) if w["photo_D"] > 0 else ())
    if stage not in ("pretrain", "coarse"):
        raise ValueError(f"loss_fields_read: unknown stage {stage!r}")
    fields = ["lmk", "eyed", "lipd", "photo", "reg_shape", "reg_exp", "reg_tex", "reg_light"]
    if w["lmk"] > 0:
        fields.append("use_wlmk")
    if w["photo"] > 0:
        fields.append("use_seg")
    if stage == "coarse":  # pretrain has no identity term (CoarseTask) and no shape consistency
        fields += ["id", "shape_consistency"]
    if w["photo"] > 0:  # the photometric term multiplies by the render's alpha
        fields.append("render_sigma")
    return tuple(fields)


def frozen_feature_template(name: str) -> dict:
    """Variable shapes of what `python -m jaxdeca.convert <name>` writes ('vggface2' or 'vgg19'):
    the converter's own template."""
    from jaxdeca.convert import backbones
    return backbones.vggface2_template() if name == "vggface2" else backbones.vgg19_template()


def load_frozen_features(feature_paths: dict) -> dict:
    """{name: path} (frozen_feature_paths) -> {name: frozen variables}, each checked against its
    network (checked_like). A path that is not a converted directory (e.g. the official file
    itself) or holds another network (the other converter's output) is one ConfigError naming
    config.weights.<name>."""
    return {name: load_converted(p, f"weights.{name}", name, frozen_feature_template(name))
            for name, p in feature_paths.items()}


def load_converted(path: str, field: str, kind: str, template: dict, hint: str | None = None) -> dict:
    """The variables `python -m jaxdeca.convert <kind>` wrote at `path` (config.<field>), cast
    onto `template` (checked_like). A path that is not a converted directory, or holds another
    network, is one ConfigError naming the field (hint: the mismatch's closing remark, by
    default that it is not the network the converter writes)."""
    from jaxdeca.convert.core import load_variables
    from jaxdeca.convert.torch_io import ConversionError
    where, how = f"config.{field}={path!r}", f"python -m jaxdeca.convert {kind}"
    try:
        v = load_variables(path)
    except ConversionError as e:
        raise paths.ConfigError(f"{where}: {e}; it must name a directory written by {how}") from None
    return checked_like(template, v, where, hint=hint or f"not the network {how} writes")


IMAGENET_WHY = ("the converted torchvision ImageNet ResNet-50 the encoders start from "
                "(python -m jaxdeca.convert resnet50 --src resnet50.pth --out DIR)")


def imagenet_path(config) -> str | None:
    """config.init.imagenet checked to exist (ConfigPathError naming it), or None when unset."""
    if "init" not in config or not config.init.get("imagenet"):
        return None
    return paths.require_path(config, "init.imagenet", IMAGENET_WHY)


def with_imagenet_backbone(v: dict, path: str | None) -> dict:
    """An encoder's {'params', 'batch_stats'} with its ResNet-50 (the 'encoder' sub-tree) replaced
    by the converted ImageNet weights at `path` (config.init.imagenet), running statistics
    included; the MLP head keeps its initial values. An option, not DECA's start: its
    resnet.load_ResNet50Model copies an untrained torchvision resnet50 (pretrained=False) into
    E_flame and E_detail, which the random init (`models.torch_init`) draws as. v unchanged
    when path is None. Another network, or a config.model width/blocks other than ResNet-50's,
    is one ConfigError naming the field."""
    if path is None:
        return v
    template = {"params": v["params"]["encoder"], "batch_stats": v["batch_stats"]["encoder"]}
    enc = load_converted(path, "init.imagenet", "resnet50", template,
                         hint="not the ResNet-50 python -m jaxdeca.convert resnet50 writes, "
                              "or config.model's width/blocks are not ResNet-50's (1.0; 3,4,6,3)")
    return {"params": dict(v["params"], encoder=enc["params"]),
            "batch_stats": dict(v["batch_stats"], encoder=enc["batch_stats"])}


def draw_points(images, points, colour):
    """images [B,H,W,3], points [B,P,2] in [-1,1] -> images with one pixel per point coloured."""
    b, h, w, _ = images.shape
    x = jnp.clip(jnp.round((points[..., 0] + 1) * w / 2 - 0.5), 0, w - 1).astype(jnp.int32)
    y = jnp.clip(jnp.round((points[..., 1] + 1) * h / 2 - 0.5), 0, h - 1).astype(jnp.int32)
    bi = jnp.broadcast_to(jnp.arange(b)[:, None], x.shape)
    return images.at[bi, y, x].set(jnp.asarray(colour, images.dtype))


def composite(render_images, mask, images):
    """A render over the input where it covers it: [B,H,W,C], mask [B,H,W] -> [B,H,W,C]."""
    a = mask[..., None]
    return render_images * a + images * (1 - a)


def masked_l1(pred, target, mask):
    """Mean absolute error of each colour channel over the masked pixels (the stages' held-out
    photometric metrics): sum(mask * |pred - target|) / (3 * sum(mask)), 0 for an empty mask.
    pred, target: [B, H, W, 3]; mask: [B, H, W, 1], weights in [0, 1]."""
    return jnp.sum(jnp.abs(pred - target) * mask) / jnp.maximum(3 * jnp.sum(mask), 1.0)


def checked_like(template: dict, loaded: dict, where: str, hint: str | None = None) -> dict:
    """`loaded` variables cast onto `template`'s structure; a missing, unexpected or misshapen
    variable is one clear ConfigError (a deeper network's checkpoint holds every variable of a
    shallower one at the same shapes: its extra layers must not be dropped silently). `hint`
    replaces the messages' closing remark (by default about config.model)."""
    differs = hint or "the checkpoint's network differs from config.model"
    reshaped = hint or "config.model must match the checkpoint's"
    flat_t = jax.tree_util.tree_flatten_with_path(template)[0]
    flat_l = dict((jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_flatten_with_path(loaded)[0])
    extra = sorted(set(flat_l) - {jax.tree_util.keystr(p) for p, _ in flat_t})
    if extra:
        more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
        raise paths.ConfigError(f"{where}: unexpected variable {', '.join(extra[:3])}{more} ({differs})")
    leaves = []
    for p, t in flat_t:
        key = jax.tree_util.keystr(p)
        if key not in flat_l:
            raise paths.ConfigError(f"{where}: missing variable {key} ({differs})")
        v = np.asarray(flat_l[key])
        if v.shape != t.shape:
            raise paths.ConfigError(f"{where}: variable {key} has shape {v.shape}, expected {tuple(t.shape)} "
                                    f"({reshaped})")
        leaves.append(jnp.asarray(v, t.dtype))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)


def previous_stage_encoder(template: dict, config, field: str, frozen: bool = False,
                           flame_fingerprint: dict | None = None) -> dict:
    """The E_flame variables of the stage workdir config.<field> names (e.g. 'init.checkpoint'),
    cast onto `template` (checked_like). A folder that holds no trained stage (the previous stage
    never ran, or another folder), another network, another config.model.cam_scale or another
    FLAME than this stage's (fingerprint `flame_fingerprint`, DecaParts.flame_fingerprint; the
    checkpoint's checkpoint_info; see check_start_fields), or for an encoder `frozen` in this
    stage another config.data.image_size, is one ConfigError naming the field."""
    path = config
    for part in field.split("."):
        path = path[part]
    try:
        variables, info = export.load_inference(path)
    except FileNotFoundError as e:
        raise paths.ConfigPathError(f"config.{field}={path!r} holds no trained stage ({e})") from None
    except ValueError as e:  # a checkpoint of another task (no coarse encoder)
        raise paths.ConfigError(f"config.{field}={path!r} holds no trained DECA stage ({e})") from None
    check_start_fields(info, config, f"config.{field}={path!r} (checkpoint step {info['step']})", frozen,
                       flame_fingerprint)
    return checked_like(template, variables["E_flame"], f"config.{field}={path!r} (E_flame)",
                        _architecture_hint(info, config))


def _architecture_hint(info: dict, config) -> str | None:
    """checked_like's closing remark for a checkpoint whose network differs: the config.model
    shape fields it records otherwise than `config` ('it was trained with model.width=0.25,
    model.blocks=(2, 1, 1, 1); this config has model.width=0.125, model.blocks=(1, 1, 1, 1)'), or
    None (the default remark) when it records none that differ (DECA's defaults filled in for a
    checkpoint that predates them are not its record). info: export.load_inference's (blocks a
    tuple), compared with model_config(config), which the template was built from."""
    saved, ours = info["model"], model_config(config)
    keys = [k for k in ("width", "blocks", "hidden") if k in info.get("model_recorded", ()) and saved[k] != ours[k]]
    if not keys:
        return None
    saved_text = ", ".join(f"model.{k}={saved[k]}" for k in keys)
    ours_text = ", ".join(f"model.{k}={ours[k]}" for k in keys)
    return f"the checkpoint's network differs: it was trained with {saved_text}; this config has {ours_text}"


def check_start_fields(info: dict, config, where: str, frozen: bool = False,
                       flame_fingerprint: dict | None = None) -> None:
    """Refuses (ConfigError) to start a stage from the previous stage's checkpoint `where`
    (info: export.load_inference's, the checkpoint's model fields with DECA's defaults where it
    predates them) when it was trained with another config.model.cam_scale: the encoder's scale
    output means |s| under 'abs' and s under 'raw', so a later stage would read its cameras
    wrongly (a raw-trained mirror solution's negative scale flipped, or an abs-trained one's
    sign taken as it is). config.model.dtype may differ: checkpoints hold float32 parameters
    whatever the compute dtype, and a bfloat16 stage may start from float32 weights (or the
    reverse); the codes mean the same at either precision. Shapes (width, blocks, hidden) are
    checked_like's. When this stage keeps the encoder `frozen` (the detail stage's coarse
    encoder), config.data.image_size must be the checkpoint's too: the encoder would read faces
    at another scale than it learned and never adapt. A stage that trains it further (coarse
    from pretrain) may change the size: landmarks and camera are in [-1, 1] image units. The
    FLAME (config.flame.path, its arrays' `flame_fingerprint` when given) must be the checkpoint's
    (check_same_flame): the encoder's codes mean shapes of that head. Only the path was
    recorded and, as the same file may lie elsewhere, not compared, so a stage started without
    config.flame.path trained the previous stage's codes on the demo head and recorded that one."""
    saved = info["model"].get("cam_scale") or "raw"
    now = model_config(config).get("cam_scale") or "raw"
    if saved != now:
        raise paths.ConfigError(f"{where} was trained with config.model.cam_scale={saved!r}, but this stage has "
                                f"config.model.cam_scale={now!r}: its camera codes would be read with another scale; "
                                "start it with the cam_scale of the stage it starts from")
    saved_size, size = int(info["image_size"]), int(config.data.image_size)  # load_inference: 224 if unrecorded
    if frozen and saved_size != size:
        raise paths.ConfigError(f"{where} was trained with config.data.image_size={saved_size}, but this stage has "
                                f"config.data.image_size={size}: its encoder, frozen here, would read faces at another "
                                "scale than it learned; use the image size of the stage it starts from")
    if flame_fingerprint is not None:
        check_same_flame(info, flame_path(config), flame_fingerprint, where, start=True)
