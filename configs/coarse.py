"""DECA coarse stage on synthetic demo heads (DECA's released defaults, decalib/utils/config.py).

Image 224, Adam 1e-4, batch = 2 identities x K=4 images (cfg.dataset.batch_size=2, K=4),
loss weights from `default_loss_config()` with shape consistency. The identity loss needs
VGGFace2 weights (config.weights.vggface2); it is 0 here because none ship with the demo.
"""
import ml_collections

from jaxdeca.losses import default_loss_config


def get_config(stage: str = "coarse"):
    c = ml_collections.ConfigDict()
    c.mode = "train"
    c.task = stage
    c.stage = stage
    c.seed = 0
    c.optim = ml_collections.ConfigDict(dict(learning_rate=1e-4, clip_norm=0.0))
    c.data = ml_collections.ConfigDict(dict(k=4, image_size=224, eval_batches=2))
    c.train = ml_collections.ConfigDict(dict(num_steps=500000, batch_size=2 * 4, checkpoint_every=1000,
                                             keep_checkpoints=3, log_every=50, eval_every=1000,
                                             image_every=1000, async_checkpoints=True))
    c.flame = ml_collections.ConfigDict(dict(path=ml_collections.config_dict.placeholder(str)))
    c.weights = ml_collections.ConfigDict(dict(vggface2=ml_collections.config_dict.placeholder(str)))
    c.loss = default_loss_config()
    c.loss.id = 0.0
    if stage == "pretrain":
        c.loss.photo = 0.0
        c.loss.shape_consistency = False
    c.coordinator_address = ml_collections.config_dict.placeholder(str)
    c.num_processes = ml_collections.config_dict.placeholder(int)
    c.process_id = ml_collections.config_dict.placeholder(int)
    return c
