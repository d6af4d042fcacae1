"""DECA's pretrain and coarse stages as tasks for `jaxdeca.train.loop` (synthetic demo heads).

Step (DECA's ``training_step`` for the coarse model): images -> coarse encoder (train-mode BN)
-> decompose_code -> (coarse stage) shape consistency, which doubles the batch by swapping
shape codes within an identity -> FLAME -> orth_proj -> render (only when the photometric term
is on) -> `coarse_losses`. Only the coarse encoder is trained. The pretrain stage is the same
step with photo = 0, id = 0 and no shape consistency (landmark, eye, lip and regularisers).

Data: `SyntheticFaceLoader` renders identity groups of the FLAME model (by default the demo
head) on the fly with `jaxdeca.data.synthetic` -- deterministic from (seed, identity index),
K images per identity (same shape + albedo, new expression/pose/light/camera/background).
Landmarks are converted to DECA's [-1, 1] image space (y down) with confidence 1.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdeca import flame, models, render
from jaxdeca.data import synthetic
from jaxdeca.losses import coarse_losses, default_loss_config, shape_consistency
from jaxdeca.losses.defaults import as_weights
from jaxdeca.train import paths


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


class CoarseTask:
    """DECA pretrain / coarse stage (config.stage 'pretrain' or 'coarse'); see the module docstring.

    Config fields: seed, stage, train.batch_size (identities x K), data.k, data.image_size,
    data.eval_identities, flame.path (None = demo head), loss (weights, `default_loss_config`),
    weights.vggface2 (needed only when loss.id > 0).
    """

    def __init__(self, config):
        self.config = config
        self.stage = str(config.stage)
        if self.stage not in ("pretrain", "coarse"):
            raise ValueError(f"config.stage={self.stage!r} must be 'pretrain' or 'coarse'")
        self.k = int(config.data.k)
        self.size = int(config.data.image_size)
        self.flame_path = config.flame.get("path") if "flame" in config else None
        self.weights = as_weights(config.get("loss"))
        if self.weights["id"] > 0:
            paths.require_path(config, "weights.vggface2", "the VGGFace2 ResNet-50 weights for the identity loss")
            raise ValueError("config.loss.id > 0: the identity loss is not wired into CoarseTask yet; "
                             "set --config.loss.id=0")
        self.use_sc = self.stage == "coarse" and bool(self.weights["shape_consistency"])
        arrays = flame.load_arrays(self.flame_path)
        self.arrays = arrays
        self.flame = flame.from_arrays(arrays)
        self.topo = render.make_topology(arrays)
        self.encoder = models.coarse_encoder()

    # --- variables -----------------------------------------------------------------------------
    def init_variables(self, rng):
        v = self.encoder.init(rng, jnp.zeros((2, self.size, self.size, 3)), train=False)
        return v["params"], v["batch_stats"], {}

    def _encode(self, params, batch_stats, images, train: bool):
        variables = {"params": params, "batch_stats": batch_stats}
        if train:
            code, mut = self.encoder.apply(variables, images, train=True, mutable=["batch_stats"])
            return models.decompose_code(code), mut["batch_stats"]
        return models.decompose_code(self.encoder.apply(variables, images, train=False)), batch_stats

    def _landmarks(self, codes):
        out = self.flame(codes["shape"], codes["exp"], codes["pose"])
        return out, render.orth_proj(out["landmarks2d"], codes["cam"])[..., :2]

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
        out, lmk = self._landmarks(codes)
        extra = {}
        if self.weights["photo"] > 0:
            trans = render.orth_proj(out["vertices"], codes["cam"])
            albedo = flame.texture.albedo_from_arrays(self.arrays, codes["tex"], size=256)
            r = render.render(out["vertices"], trans, albedo, codes["light"], self.topo,
                              image_size=(self.size, self.size))
            fem_uv = jnp.broadcast_to(self.topo.uv_face_eye_mask[None, ..., None],
                                      (images.shape[0],) + self.topo.uv_face_eye_mask.shape + (1,))
            extra = dict(images=images, rendered_images=r["images"], alpha_images=r["alpha"],
                         face_eye_mask=render.grid_sample(fem_uv, r["grid"]), skin_mask=mask)
        total, terms = coarse_losses(landmarks_pred=lmk, landmarks_gt=lmk_gt, codes=codes,
                                     weights=self.weights, **extra)
        return total, (terms, new_bs)

    def eval_fn(self, params, batch_stats, frozen, batch):
        """Mean absolute landmark error in [-1, 1] image space (eval-mode BN)."""
        codes, _ = self._encode(params, batch_stats, batch["image"], False)
        _, lmk = self._landmarks(codes)
        return {"landmark_l1": jnp.mean(jnp.abs(lmk - batch["landmarks"][..., :2]))}

    # --- data ------------------------------------------------------------------------------------
    def make_loader(self, local_bs, process_index, process_count):
        return SyntheticFaceLoader(local_bs, self.k, self.size, int(self.config.seed), process_index,
                                   process_count, self.flame_path)

    def eval_batches(self, local_bs, process_index, process_count):
        """Held-out faces: a different seed stream (seed + 10**6), hence different identities."""
        n = int(self.config.data.get("eval_batches", 1))
        loader = SyntheticFaceLoader(local_bs, self.k, self.size, int(self.config.seed) + 10 ** 6,
                                     process_index, process_count, self.flame_path)
        return [loader.next() for _ in range(n)]

    def images(self, state, batch):
        """Input images with predicted (red) and true (green) landmarks: [N, S, S, 3]."""
        codes, _ = self._encode(state.params, state.batch_stats, batch["image"], False)
        _, lmk = self._landmarks(codes)
        return {"coarse/landmarks": draw_points(draw_points(batch["image"], batch["landmarks"][..., :2],
                                                            (0.0, 1.0, 0.0)), lmk, (1.0, 0.0, 0.0))}


def draw_points(images, points, colour):
    """images [B,H,W,3], points [B,P,2] in [-1,1] -> images with one pixel per point coloured."""
    b, h, w, _ = images.shape
    x = jnp.clip(jnp.round((points[..., 0] + 1) * w / 2 - 0.5), 0, w - 1).astype(jnp.int32)
    y = jnp.clip(jnp.round((points[..., 1] + 1) * h / 2 - 0.5), 0, h - 1).astype(jnp.int32)
    bi = jnp.broadcast_to(jnp.arange(b)[:, None], x.shape)
    return images.at[bi, y, x].set(jnp.asarray(colour, images.dtype))
