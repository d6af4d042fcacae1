"""DECA's detail stage as a task for `jaxdeca.train.loop` (DECA ``trainer.py``, train_detail).

The coarse encoder is frozen (eval-mode BN). A fresh start loads it from config.init.coarse_checkpoint
(a coarse stage workdir); checkpoints hold it, so a resume does not read that folder again. The
detail encoder and the detail decoder train. Step:

  images -> frozen E_flame -> codes (shape, tex, exp, pose, cam, light)
         -> E_detail -> detail code [B, 128]
         -> (detail consistency) batch doubled, detail codes permuted within identity groups
         -> FLAME -> orth_proj -> render with uv_z = D_detail(cat(jaw, exp, detail)):
            uv_detail_normals, uv_shading = SH(normals, light), uv_texture = albedo x shading
         -> ground truth in UV: the photo and its skin mask sampled at the projected vertices
         -> uv_vis_mask = skin mask in UV x (image-space normal z < -0.05) x UV face-eye mask
         -> `detail_losses` (UV photometric on the face crop, ID-MRF on VGG19, displacement L1,
            shading smoothness, soft symmetry).

ID-MRF needs the converted VGG19 (config.weights.vgg19) whenever photo_D * mrf > 0.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdeca import models, render
from jaxdeca.losses import detail_consistency, detail_losses, tile_batch
from jaxdeca.losses.defaults import as_weights
from jaxdeca.losses.detail import uv_visibility_mask
from jaxdeca.train import data as data_lib
from jaxdeca.train import deca_common, paths
from jaxdeca.train.deca_common import composite, draw_points, masked_l1


COARSE_WHY = "the workdir of the trained coarse stage (its encoder is frozen here)"


class DetailTask(deca_common.DecaParts):
    """DECA detail stage; config.stage 'detail'. Config as CoarseTask plus
    init.coarse_checkpoint (required) and weights.vgg19 (when ID-MRF is on)."""

    def __init__(self, config):
        if str(config.stage) != "detail":
            raise paths.ConfigError(f"config.stage={config.stage!r}: DetailTask trains the 'detail' stage")
        self.stage = "detail"
        paths.require_set(config, "init.coarse_checkpoint", COARSE_WHY)  # read by a fresh start only
        self.weights = as_weights(config.get("loss"))
        features = deca_common.frozen_feature_paths(config, self.weights)  # checked before anything is built
        self.frozen_features = deca_common.load_frozen_features(features)
        super().__init__(config)
        self.use_dc = bool(self.weights["detail_consistency"])

    # --- variables -----------------------------------------------------------------------------
    def init_variables(self, rng):
        """A fresh start: the frozen E_flame from config.init.coarse_checkpoint; E_detail (its
        ResNet from config.init.imagenet when set) and D_detail initialised from `rng`."""
        _, k2, k3 = jax.random.split(rng, 3)  # the first key was the frozen encoder's, now read, not initialised
        paths.require_path(self.config, "init.coarse_checkpoint", COARSE_WHY)
        coarse = deca_common.previous_stage_encoder(self.net_template("E_flame"), self.config,
                                                    "init.coarse_checkpoint", frozen=True,
                                                    flame_fingerprint=self.flame_fingerprint)
        enc = deca_common.with_imagenet_backbone(self.init_net("E_detail", k2), deca_common.imagenet_path(self.config))
        return self._variables(coarse, enc, self.init_net("D_detail", k3))

    def resume_variables(self, rng):
        """init_variables' tree for a resume (`loop`): the checkpoint holds all three networks, the
        frozen E_flame included, so the coarse workdir and config.init.imagenet are not read (the
        coarse stage's folder may be gone by then)."""
        return self._variables(*(self.net_zeros(n) for n in ("E_flame", "E_detail", "D_detail")))

    def _variables(self, coarse, enc, dec):
        params = {"E_detail": enc["params"], "D_detail": dec["params"]}
        stats = {"E_detail": enc["batch_stats"], "D_detail": dec["batch_stats"]}
        return params, stats, dict(self.frozen_features, E_flame=coarse)

    def coarse_codes(self, frozen, images):
        e = frozen["E_flame"]
        code, _ = self.apply("E_flame", e["params"], e["batch_stats"], images, False)
        codes = deca_common.camera_codes(models.decompose_code(code), self.model)
        return jax.tree.map(jax.lax.stop_gradient, codes)

    def encode_detail(self, params, batch_stats, images, train: bool):
        """images [B, S, S, 3] -> (detail code [B, 128], {'E_detail': new batch_stats})."""
        dcode, bs_e = self.apply("E_detail", params["E_detail"], batch_stats["E_detail"], images, train)
        return dcode, {"E_detail": bs_e}

    def decode_detail(self, params, batch_stats, codes, dcode, train: bool):
        """-> (uv_z [B, R, R, 1], new D_detail batch_stats)."""
        latent = models.detail_latent(codes["pose"], codes["exp"], dcode)
        uv_z, bs_d = self.apply("D_detail", params["D_detail"], batch_stats["D_detail"], latent, train)
        return uv_z, bs_d

    def forward(self, params, batch_stats, frozen, batch, rng, train: bool):
        """Everything the loss and the pictures need. Returns (dict, new batch_stats)."""
        images, mask = batch["image"], batch["mask"]
        codes = self.coarse_codes(frozen, images)
        dcode, bs = self.encode_detail(params, batch_stats, images, train)
        codes = dict(codes, detail=dcode)
        if train and self.use_dc:
            n = images.shape[0]
            codes = detail_consistency(rng, codes, n // self.k, self.k)
            images, mask = tile_batch((images, mask))
        uv_z, bs_d = self.decode_detail(params, batch_stats, codes, codes["detail"], train)
        bs = dict(bs, D_detail=bs_d)
        out, lmk, trans = self.decode_flame(codes)
        r = self.render(out, trans, jax.lax.stop_gradient(self.albedo(codes)),
                        jax.lax.stop_gradient(codes["light"]), uv_z=uv_z)
        # ground truth in UV at the projected vertices (DECA: grid_sample of [images, masks])
        uv_pverts = jax.lax.stop_gradient(r["uv_pverts"])
        uv_gt = render.extract_texture(jnp.concatenate([images, mask], -1), uv_pverts)
        tnormals_uv = render.world2uv(r["trans_normals"], self.topo.faces, self.topo.uv_raster)
        vis = uv_visibility_mask(uv_gt[..., 3:], tnormals_uv[..., 2:3], self.topo.uv_face_eye_mask)
        return dict(codes=codes, lmk=lmk, uv_z=uv_z, render=r, uv_texture_gt=uv_gt[..., :3], uv_vis_mask=vis,
                    images=images), bs

    def _vgg_fn(self, frozen):
        net = models.VGG19Features(layers=("relu3_2", "relu4_2"))
        return lambda x: net.apply(frozen["vgg19"], x)

    # --- loss ------------------------------------------------------------------------------------
    def loss_fn(self, params, batch_stats, frozen, batch, rng):
        f, new_bs = self.forward(params, batch_stats, frozen, batch, rng, True)
        r = f["render"]
        vgg = self._vgg_fn(frozen) if "vgg19" in frozen else None
        total, terms = detail_losses(uv_texture=r["uv_texture"], uv_texture_gt=f["uv_texture_gt"],
                                     uv_vis_mask=f["uv_vis_mask"], uv_z=f["uv_z"], uv_shading=r["uv_shading"],
                                     weights=self.weights, vgg_features_fn=vgg)
        return total, (terms, new_bs)

    def eval_fn(self, params, batch_stats, frozen, batch):
        """Held-out: landmark error of the frozen coarse encoder, UV photometric error of the
        detailed texture on visible skin, mean |displacement|."""
        f, _ = self.forward(params, batch_stats, frozen, batch, None, False)
        r, vis = f["render"], f["uv_vis_mask"]
        return {"landmark_l1": jnp.mean(jnp.abs(f["lmk"] - batch["landmarks"][..., :2])),
                "uv_photo_l1": masked_l1(r["uv_texture"], f["uv_texture_gt"], vis),
                "displacement_abs": jnp.mean(jnp.abs(f["uv_z"]))}

    # --- data ------------------------------------------------------------------------------------
    def make_loader(self, local_bs, process_index, process_count):
        return data_lib.make_loader(self.config, local_bs, process_index, process_count)

    def eval_batches(self, local_bs, process_index, process_count):
        return data_lib.eval_batches(self.config, local_bs, process_index, process_count)

    def images(self, state, batch):
        """Grids: input + landmarks, coarse shape, detailed shape, albedo render, displacement map."""
        f, _ = self.forward(state.params, state.batch_stats, state.frozen, batch, None, False)
        r, img = f["render"], batch["image"]
        z = f["uv_z"]
        z = (z - z.min()) / jnp.maximum(z.max() - z.min(), 1e-8)
        return {"detail/landmarks": draw_points(img, f["lmk"], (1.0, 0.0, 0.0)),
                "detail/coarse_shape": composite(r["shape_images"], r["mask"], img),
                "detail/detail_shape": composite(r["shape_detail_images"], r["mask"], img),
                "detail/albedo_render": composite(r["images"], r["mask"], img),
                "detail/displacement_uv": jnp.repeat(z, 3, axis=-1)}
