"""Test-sized coarse config: 48 px, batch 4 = 2 identities x K 2, a few steps (CPU)."""
from configs import coarse


def get_config(stage: str = "coarse"):
    c = coarse.get_config(stage)
    c.optim.learning_rate = 1e-3
    c.data.update(dict(k=2, image_size=48, eval_batches=1))
    c.train.update(dict(num_steps=10, batch_size=4, checkpoint_every=5, log_every=1, eval_every=10, image_every=0))
    return c
