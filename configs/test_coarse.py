"""Test-sized stage config: 48 px, narrow 1-block ResNet, UV 32, batch 4 = 2 identities x K 2,
demo heads rendered on the fly, a few steps (CPU, seconds)."""
from configs import coarse


def get_config(stage: str = "coarse"):
    c = coarse.get_config(stage)
    c.task = stage
    c.optim.learning_rate = 1e-3
    c.model.update(dict(width=0.125, blocks=(1, 1, 1, 1), hidden=64, uv_size=32))
    c.data.update(dict(source="synthetic", k=2, image_size=48, eval_batches=1, num_threads=2))
    c.loss.id = 0.0
    c.loss.mrf = 0.0
    c.train.update(dict(num_steps=10, batch_size=4, checkpoint_every=5, log_every=1, eval_every=10, image_every=0))
    return c
