"""DECA's pretrain and coarse stages as tasks for `jaxdeca.train.loop`.

Step (DECA's ``training_step`` for the coarse model): images -> coarse encoder (train-mode BN)
-> decompose_code -> (coarse stage) shape consistency, which doubles the batch by swapping
shape codes within an identity -> FLAME -> orth_proj -> render (when the photometric or the
identity term is on) -> `coarse_losses`; the identity term runs the frozen VGGFace2 ResNet-50
(config.weights.vggface2) on the render pasted into the photo. Only the coarse encoder trains. The pretrain stage is the same
step with photo = 0, id = 0 and no shape consistency (landmark, eye, lip and regularisers).

Data (`jaxdeca.train.data`, by config.data.source): identity-grouped tfds datasets through the
grain loader, or `SyntheticFaceLoader` below, which renders identity groups of the FLAME model
(by default the demo head) on the fly with `jaxdeca.data.synthetic` -- deterministic from
(seed, identity index), K images per identity (same shape + albedo, new expression / pose /
light / camera / background). Landmarks are in DECA's [-1, 1] image space (y down), conf 1.

Initialisation: config.init.checkpoint (optional) names a previous stage's workdir whose coarse
encoder starts this one (DECA's coarse stage starts from the pretrained encoder).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdeca import models
from jaxdeca.data import synthetic
from jaxdeca.losses import coarse_losses, shape_consistency
from jaxdeca.losses.defaults import as_weights
from jaxdeca.render import grid_sample, sh_shading
from jaxdeca.train import data as data_lib
from jaxdeca.train import deca_common, export, paths
from jaxdeca.train.deca_common import draw_points  # noqa: F401 (re-exported)


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


class CoarseTask(deca_common.DecaParts):
    """DECA pretrain / coarse stage (config.stage 'pretrain' or 'coarse'); see the module docstring.

    Config fields: seed, stage, train.batch_size (identities x K), data.* (`jaxdeca.train.data`),
    model.* (`deca_common`), flame.path (None = demo head), loss (weights, `default_loss_config`),
    weights.vggface2 (needed only when loss.id > 0), init.checkpoint (optional previous stage).
    """

    def __init__(self, config):
        self.stage = str(config.stage)
        if self.stage not in ("pretrain", "coarse"):
            raise ValueError(f"config.stage={self.stage!r} must be 'pretrain' or 'coarse'")
        self.weights = as_weights(config.get("loss"))
        if self.stage == "pretrain":
            self.weights["id"] = 0.0  # DECA's pretrain has no identity term
        if "init" in config and config.init.get("checkpoint"):
            paths.require_path(config, "init.checkpoint", "the workdir of the stage this one starts from")
        super().__init__(config)
        self.frozen_features = deca_common.load_frozen_features(config, self.weights)
        self.use_sc = self.stage == "coarse" and bool(self.weights["shape_consistency"])

    # --- variables -----------------------------------------------------------------------------
    def init_variables(self, rng):
        v = self.init_net("E_flame", rng)
        init = self.config.init.get("checkpoint") if "init" in self.config else None
        if init:
            prev = export.inference_variables(init)["E_flame"]
            v = _checked_like(v, prev, f"config.init.checkpoint={init!r} (E_flame)")
        elif self.model.get("init_cam_scale"):
            v = dict(v, params=init_cam_scale(v["params"], float(self.model["init_cam_scale"])))
        return {"E_flame": v["params"]}, {"E_flame": v["batch_stats"]}, dict(self.frozen_features)

    def _encode(self, params, batch_stats, images, train: bool):
        code, bs = self.apply("E_flame", params["E_flame"], batch_stats["E_flame"], images, train)
        return deca_common.camera_codes(models.decompose_code(code), self.model), {"E_flame": bs}

    def _landmarks(self, codes):
        out, lmk, _ = self.decode_flame(codes)
        return out, lmk

    def _id_features(self, frozen):
        net = models.vggface2_resnet50()
        return lambda x: net.apply(frozen["vggface2"], x, train=False)

    # --- loss ------------------------------------------------------------------------------------
    def loss_fn(self, params, batch_stats, frozen, batch, rng):
        """batch: image [B,S,S,3], landmarks [B,68,3], mask [B,S,S,1]. Returns (loss, (terms, bs))."""
        images, lmk_gt, mask = batch["image"], batch["landmarks"], batch["mask"]
        codes, new_bs = self._encode(params, batch_stats, images, True)
        if self.use_sc:
            n = images.shape[0]
            codes = shape_consistency(rng, codes, n // self.k, self.k)
            tile = lambda x: jnp.concatenate([x, x], 0)
            images, lmk_gt, mask = tile(images), tile(lmk_gt), tile(mask)
        out, lmk, trans = self.decode_flame(codes)
        extra = {}
        if self.weights["photo"] > 0 or self.weights["id"] > 0:
            r = self.render(out, trans, codes)
            fem = self.face_eye_mask_images(r["grid"])
            # DECA multiplies by the hard coverage; the soft SoftRas alpha (0.94-0.99 inside a mesh
            # of sub-pixel triangles) only lends its gradient, so silhouettes still move.
            alpha = r["mask"] + r["alpha"] - jax.lax.stop_gradient(r["alpha"])
            extra = dict(images=images, rendered_images=r["images"], alpha_images=alpha,
                         face_eye_mask=fem, skin_mask=mask)
            if self.weights["id"] > 0:
                albedo_images = grid_sample(self.albedo(codes), r["grid"])
                shading = sh_shading(r["normal_images"], jax.lax.stop_gradient(codes["light"]))
                extra.update(albedo_images=jax.lax.stop_gradient(albedo_images), shading_images=shading,
                             id_features_fn=self._id_features(frozen))
        total, terms = coarse_losses(landmarks_pred=lmk, landmarks_gt=lmk_gt, codes=codes,
                                     weights=self.weights, **extra)
        return total, (terms, new_bs)

    def eval_fn(self, params, batch_stats, frozen, batch):
        """Landmark error on held-out faces (eval-mode BN), [-1, 1] image space:
        landmark_l1 = mean |pred - gt| over x and y; landmark_loss = DECA's weighted landmark term."""
        codes, _ = self._encode(params, batch_stats, batch["image"], False)
        _, lmk = self._landmarks(codes)
        _, terms = coarse_losses(landmarks_pred=lmk, landmarks_gt=batch["landmarks"], codes=codes,
                                 weights=dict(lmk=1.0, eyed=0.0, lipd=0.0, photo=0.0, id=0.0, reg_shape=0.0,
                                              reg_exp=0.0, reg_tex=0.0, reg_light=0.0))
        return {"landmark_l1": jnp.mean(jnp.abs(lmk - batch["landmarks"][..., :2])),
                "landmark_loss": terms["landmark"]}

    # --- data ------------------------------------------------------------------------------------
    def make_loader(self, local_bs, process_index, process_count):
        return data_lib.make_loader(self.config, local_bs, process_index, process_count)

    def eval_batches(self, local_bs, process_index, process_count):
        return data_lib.eval_batches(self.config, local_bs, process_index, process_count)

    def images(self, state, batch):
        """Grids: input with true (green) and predicted (red) landmarks, coarse shape, albedo render."""
        codes, _ = self._encode(state.params, state.batch_stats, batch["image"], False)
        out, lmk, trans = self.decode_flame(codes)
        r = self.render(out, trans, codes)
        img = batch["image"]
        marked = draw_points(draw_points(img, batch["landmarks"][..., :2], (0.0, 1.0, 0.0)), lmk, (1.0, 0.0, 0.0))
        a = r["mask"][..., None]
        return {"coarse/landmarks": marked,
                "coarse/shape": r["shape_images"] * a + img * (1 - a),
                "coarse/albedo_render": r["images"] * a + img * (1 - a)}


def init_cam_scale(params, scale: float):
    """Sets the bias of the camera-scale output of a fresh coarse encoder to `scale`.

    Landmarks alone cannot tell a head from the same head rolled by pi and seen with a negative
    orthographic scale (the projections coincide); from DECA's zero init the pretrain stage may
    fall into that mirror solution, which the renders of later stages show from behind. A
    positive initial scale keeps the encoder in the right basin. None / 0 = DECA's init.
    """
    start = sum(n for name, n in models.CODE_SIZES[:[k for k, _ in models.CODE_SIZES].index("cam")])
    bias = params["layers_2"]["bias"]
    return dict(params, layers_2=dict(params["layers_2"], bias=bias.at[start].set(scale)))


def _checked_like(template: dict, loaded: dict, where: str) -> dict:
    """`loaded` variables cast onto `template`'s structure; a shape mismatch is one clear error."""
    flat_t = jax.tree_util.tree_flatten_with_path(template)[0]
    flat_l = dict((jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_flatten_with_path(loaded)[0])
    leaves = []
    for p, t in flat_t:
        key = jax.tree_util.keystr(p)
        if key not in flat_l:
            raise ValueError(f"{where}: missing variable {key} (the checkpoint's network differs from "
                             "config.model)")
        v = np.asarray(flat_l[key])
        if v.shape != t.shape:
            raise ValueError(f"{where}: variable {key} has shape {v.shape}, expected {tuple(t.shape)} "
                             "(config.model must match the checkpoint's)")
        leaves.append(jnp.asarray(v, t.dtype))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)
