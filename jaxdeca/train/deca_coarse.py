"""DECA's pretrain and coarse stages as tasks for `jaxdeca.train.loop`.

Step (DECA's ``training_step`` for the coarse model): images -> coarse encoder (train-mode BN)
-> decompose_code -> (coarse stage) shape consistency, which doubles the batch by swapping
shape codes within an identity -> FLAME -> orth_proj -> render (when the photometric or the
identity term is on) -> `coarse_losses`; the identity term runs the frozen VGGFace2 ResNet-50
(config.weights.vggface2) on the render pasted into the photo. Only the coarse encoder trains. The pretrain stage is the same
step with photo = 0, id = 0 and no shape consistency (landmark, eye, lip, shape and expression
regularisers; configs/pretrain.py also zeroes reg_tex and reg_light as DECA's deca_pretrain.yml,
and doubles reg_shape and reg_exp: DECA's trainer duplicates the pretrain batch, see configs/coarse.py).

Data (`jaxdeca.train.data`, by config.data.source): identity-grouped tfds datasets through the
grain loader, or demo heads rendered on the fly. Landmarks are in [-1, 1] image space (y down).

Initialisation: config.init.checkpoint (optional) names a previous stage's workdir whose coarse
encoder starts this one (DECA's coarse stage starts from the pretrained encoder).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdeca import models, render
from jaxdeca.losses import coarse_losses, shape_consistency, tile_batch, weighted_landmark_loss
from jaxdeca.losses.defaults import as_weights
from jaxdeca.train import data as data_lib
from jaxdeca.train import deca_common, paths
from jaxdeca.train.deca_common import composite, draw_points, masked_l1


class CoarseTask(deca_common.DecaParts):
    """DECA pretrain / coarse stage (config.stage 'pretrain' or 'coarse'); see the module docstring.

    Config fields: seed, stage, train.batch_size (identities x K), data.* (`jaxdeca.train.data`),
    model.* (`deca_common`), flame.path (None = demo head), loss (weights, `default_loss_config`),
    weights.vggface2 (needed only when loss.id > 0), init.checkpoint (optional previous stage).
    """

    def __init__(self, config):
        self.stage = str(config.stage)
        if self.stage not in ("pretrain", "coarse"):
            raise paths.ConfigError(f"config.stage={self.stage!r} must be 'pretrain' or 'coarse'")
        self.weights = as_weights(config.get("loss"))
        if self.stage == "pretrain":
            self.weights["id"] = 0.0  # DECA's pretrain has no identity term
        features = deca_common.frozen_feature_paths(config, self.weights)  # checked before anything is built
        self.frozen_features = deca_common.load_frozen_features(features)
        super().__init__(config)
        self.use_sc = self.stage == "coarse" and bool(self.weights["shape_consistency"])

    # --- variables -----------------------------------------------------------------------------
    def init_variables(self, rng):
        """A fresh start: E_flame from config.init.checkpoint (the previous stage's workdir) when
        set, else initialised from `rng` (its ResNet from config.init.imagenet when set)."""
        if "init" in self.config and self.config.init.get("checkpoint"):
            paths.require_path(self.config, "init.checkpoint", "the workdir of the stage this one starts from")
            v = deca_common.previous_stage_encoder(self.net_template("E_flame"), self.config, "init.checkpoint",
                                                     flame_fingerprint=self.flame_fingerprint)
        else:
            v = deca_common.with_imagenet_backbone(self.init_net("E_flame", rng), deca_common.imagenet_path(self.config))
            if self.model.get("init_cam_scale"):
                v = dict(v, params=init_cam_scale(v["params"], float(self.model["init_cam_scale"])))
        return {"E_flame": v["params"]}, {"E_flame": v["batch_stats"]}, dict(self.frozen_features)

    def resume_variables(self, rng):
        """init_variables' tree for a resume (`loop`): the checkpoint holds E_flame, so neither
        config.init.checkpoint nor config.init.imagenet is read (either may be gone by then)."""
        v = self.net_zeros("E_flame")
        return {"E_flame": v["params"]}, {"E_flame": v["batch_stats"]}, dict(self.frozen_features)

    def _encode(self, params, batch_stats, images, train: bool):
        code, bs = self.apply("E_flame", params["E_flame"], batch_stats["E_flame"], images, train)
        return deca_common.camera_codes(models.decompose_code(code), self.model), {"E_flame": bs}

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
            images, lmk_gt, mask = tile_batch((images, lmk_gt, mask))
        out, lmk, trans = self.decode_flame(codes)
        extra = {}
        if self.weights["photo"] > 0 or self.weights["id"] > 0:
            albedo = self.albedo(codes)
            r = self.render(out, trans, albedo, codes["light"], sigma=float(self.weights["render_sigma"]))
            fem = self.face_eye_mask_images(r["grid"])
            # DECA multiplies by the hard coverage (loss.render_sigma = 0, the default). With a
            # sigma > 0 the soft SoftRas alpha (0.94-0.99 inside a mesh of sub-pixel triangles)
            # lends its gradient alone: the render is 0 outside the hard mask, so that gradient
            # comes from the pixels just inside the outline and moves it where their colours pull.
            alpha = r["mask"] + r["alpha"] - jax.lax.stop_gradient(r["alpha"])
            extra = dict(images=images, rendered_images=r["images"], alpha_images=alpha,
                         face_eye_mask=fem, skin_mask=mask)
            if self.weights["id"] > 0:
                # DECA: grid_sample(albedo.detach(), grid) -- the albedo is frozen, the grid is live
                albedo_images = render.grid_sample(jax.lax.stop_gradient(albedo), r["grid"])
                shading = render.sh_shading(r["normal_images"], jax.lax.stop_gradient(codes["light"]))
                extra.update(albedo_images=albedo_images, shading_images=shading,
                             id_features_fn=self._id_features(frozen))
        total, terms = coarse_losses(landmarks_pred=lmk, landmarks_gt=lmk_gt, codes=codes,
                                     weights=self.weights, **extra)
        return total, (terms, new_bs)

    def eval_fn(self, params, batch_stats, frozen, batch):
        """Landmark error on held-out faces (eval-mode BN), [-1, 1] image space:
        landmark_l1 = mean |pred - gt| over x and y; landmark_loss = DECA's weighted landmark term.
        The coarse stage (which fits albedo and light) adds photo_l1, the mean absolute error of
        each colour channel of the albedo x SH render against the photo, over skin mask x hard
        coverage x UV face-eye mask (the photometric loss's pixels with DECA's default use_seg)."""
        codes, _ = self._encode(params, batch_stats, batch["image"], False)
        out, lmk, trans = self.decode_flame(codes)
        metrics = {"landmark_l1": jnp.mean(jnp.abs(lmk - batch["landmarks"][..., :2])),
                   "landmark_loss": weighted_landmark_loss(lmk, batch["landmarks"])}
        if self.stage == "coarse":
            r = self.render(out, trans, self.albedo(codes), codes["light"])
            mask = batch["mask"] * r["mask"][..., None] * self.face_eye_mask_images(r["grid"])
            metrics["photo_l1"] = masked_l1(r["images"], batch["image"], mask)
        return metrics

    # --- data ------------------------------------------------------------------------------------
    def make_loader(self, local_bs, process_index, process_count):
        return data_lib.make_loader(self.config, local_bs, process_index, process_count)

    def eval_batches(self, local_bs, process_index, process_count):
        return data_lib.eval_batches(self.config, local_bs, process_index, process_count)

    def images(self, state, batch):
        """Grids: input with true (green) and predicted (red) landmarks, coarse shape, albedo render."""
        codes, _ = self._encode(state.params, state.batch_stats, batch["image"], False)
        out, lmk, trans = self.decode_flame(codes)
        r = self.render(out, trans, self.albedo(codes), codes["light"])
        img = batch["image"]
        marked = draw_points(draw_points(img, batch["landmarks"][..., :2], (0.0, 1.0, 0.0)), lmk, (1.0, 0.0, 0.0))
        return {"coarse/landmarks": marked,
                "coarse/shape": composite(r["shape_images"], r["mask"], img),
                "coarse/albedo_render": composite(r["images"], r["mask"], img)}


def init_cam_scale(params, scale: float):
    """Sets the bias of the camera-scale output of a fresh coarse encoder to `scale`.

    Landmarks alone cannot tell a head from the same head rolled by pi and seen with a negative
    orthographic scale (the projections coincide); from DECA's init (a scale near 0) the pretrain
    stage may fall into that mirror solution, which the renders of later stages show from behind.
    A positive initial scale keeps the encoder in the right basin. None / 0 = DECA's init.
    """
    start = sum(n for name, n in models.CODE_SIZES[:[k for k, _ in models.CODE_SIZES].index("cam")])
    bias = params["layers_2"]["bias"]
    return dict(params, layers_2=dict(params["layers_2"], bias=bias.at[start].set(scale)))
