"""The embedded default: the main job on the generated demo head, no downloads, CPU in minutes.

`launch/local.sh demo` runs `python -m jaxdeca.main --config=configs/demo.py --workdir=workdir/demo`:
build the synthetic demo-head dataset, train pretrain -> coarse -> detail (jaxdeca.train.demo),
write held-out pictures/OBJs and the renderer showcase. Everything a full run uses is used here;
only sizes shrink: 64 px images, 64 px UV maps, a narrow one-block-per-stage ResNet, batch
4 identities x K=4. Identity and ID-MRF losses are off (their pretrained VGGFace2 / VGG19 weights
are user-supplied files, not part of the package).

`get_config("tiny")` (`--config=configs/demo.py:tiny`) is the same job at toy size, a few
minutes on 2 CPU cores: the train-a-tiny-model notebook runs it, the end-to-end test starts from it.
"""
import ml_collections

from configs import coarse


def get_config(size: str = ""):
    """size: "" (the main job) or "tiny" (48 px, 1/8-width ResNet, 120 + 2 + 2 steps)."""
    config = ml_collections.ConfigDict()
    config.mode = "demo"
    config.seed = 0  # every stage's seed (jaxdeca.train.demo.stage_config)
    # FLAME model the stages train and the showcase renders: None = the embedded demo head
    # (jaxdeca/assets/demo_head.npz); otherwise a FLAME npz written by `python -m
    # jaxdeca.flame.convert`. The synthetic photos are always rendered from the demo head.
    config.flame_path = ml_collections.config_dict.placeholder(str)
    # components the showcase renders (training uses DECA's 100 shape, 50 expression, 50 albedo)
    config.n_shape = 100
    config.n_exp = 50
    config.n_tex = 50

    # --- training: fields shared by the three stages, then each stage's overrides -------------
    d = coarse.get_config("coarse")
    d.optim.learning_rate = 1e-3
    # |camera scale| and a positive initial scale keep the landmark-only pretrain out of the
    # mirrored (rolled by pi, negative scale) solution; see deca_common.camera_codes
    d.model.update(dict(width=0.25, blocks=(1, 1, 1, 1), hidden=256, uv_size=64, init_cam_scale=8.0,
                        cam_scale="abs"))
    d.data.update(dict(source="tfds", dataset="synthetic_faces", config="demo", image_size=64, k=4,
                       eval_batches=4, eval_split="test", num_threads=2))
    d.loss.id = 0.0
    d.loss.mrf = 0.0
    d.train.update(dict(batch_size=16, checkpoint_every=250, keep_checkpoints=2, log_every=50,
                        image_every=0, async_checkpoints=True))
    # fields the demo sets itself (jaxdeca.train.demo.stage_config), removed so that setting them
    # is an error rather than silently overwritten: the seed (config.seed), the stage, the FLAME
    # file (config.flame_path) and the data dir (config.data_dir). The demo runs in one process,
    # so the coarse config's jax.distributed fields go too.
    for field in ("seed", "mode", "task", "stage", "flame", "coordinator_address", "num_processes", "process_id"):
        del d[field]
    del d.data["data_dir"]
    config.stage_defaults = d
    config.stages = ("pretrain", "coarse", "detail")
    config.pretrain = ml_collections.ConfigDict(dict(
        train=dict(num_steps=4000, eval_every=1000), optim=dict(schedule="cosine"),
        # as configs/pretrain.py, but for its doubled reg_shape / reg_exp (DECA's duplicated batch)
        loss=dict(photo=0.0, id=0.0, use_seg=False, reg_tex=0.0, reg_light=0.0, shape_consistency=False)))
    # the photometric and shape-consistency terms join. The light and albedo codes start where
    # the landmark-only pretrain left them (a dim ambient light, near-zero albedo codes), so the
    # coarse stage needs steps to fit them. Measured on the held-out faces (after 4000 pretrain
    # steps; uv_photo_l1 = the detail stage's first evaluation, 0.031 with the true codes):
    #   150 steps, lr 1e-4 constant:   landmark loss 0.0413 -> 0.0463, uv_photo_l1 0.187
    #   600 steps, lr 3e-4 constant:   0.0425, 0.125      1200 steps, lr 3e-4: 0.0421, 0.114
    #   500 steps, lr 1e-3 cosine:     0.0411, 0.124      800 steps, lr 1e-3 cosine: 0.0407, 0.116
    # Mid-stage the photometric fit still costs some landmark accuracy (0.044 at step 400).
    config.coarse = ml_collections.ConfigDict(dict(train=dict(num_steps=800, eval_every=400, image_every=400),
                                                   optim=dict(learning_rate=1e-3, schedule="cosine")))
    config.detail = ml_collections.ConfigDict(dict(train=dict(num_steps=150, eval_every=150, image_every=150)))
    config.data_dir = ml_collections.config_dict.placeholder(str)  # default WORKDIR/data
    config.heldout_faces = 8  # held-out faces pictured and written as OBJs after the detail stage (0: none)

    # --- renderer showcase ------------------------------------------------------------------
    config.showcase = ml_collections.ConfigDict()
    config.showcase.image_size = 256
    config.showcase.identity_sigma = 2.0  # identity modes shown at +-sigma
    config.showcase.jaw_open = 0.35  # radians
    config.showcase.cam = (7.6, 0.0, 0.0)  # DECA orthographic camera (scale, tx, ty)
    # (sigma px^2, gamma) of the SoftRas colour-blend panels (render.soft_blend of the normals)
    config.showcase.blends = ((1.0, 1e-4), (4.0, 0.03))
    if size == "tiny":
        _shrink_to_tiny(config)
    elif size:
        raise ValueError(f"configs/demo.py: unknown size {size!r}; use '' or 'tiny'")
    return config


def _shrink_to_tiny(config):
    d = config.stage_defaults
    d.model.update(dict(width=0.125, hidden=64, uv_size=32))
    d.data.update(dict(config="tiny", image_size=48, k=2, eval_batches=1))
    d.train.update(dict(batch_size=4, checkpoint_every=20, log_every=20))
    d.optim.learning_rate = 2e-3
    config.pretrain.train.update(dict(num_steps=120, eval_every=60))
    config.coarse.train.update(dict(num_steps=2, eval_every=2, image_every=0))
    config.detail.train.update(dict(num_steps=2, eval_every=2, image_every=0))
    config.heldout_faces = 2
    config.showcase.image_size = 64
