"""Test-sized config for the training loop on the toy task (seconds on CPU)."""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.mode = "train"
    c.task = "toy"
    c.stage = "toy"
    c.seed = 0
    c.optim = ml_collections.ConfigDict(dict(learning_rate=1e-2, clip_norm=0.0))
    c.train = ml_collections.ConfigDict(dict(num_steps=40, batch_size=8, checkpoint_every=10, keep_checkpoints=3,
                                             log_every=5, eval_every=20, image_every=0, async_checkpoints=True))
    c.toy = ml_collections.ConfigDict(dict(dim=4, width=16, noise=0.01))
    # multi-process (None = single process)
    c.coordinator_address = ml_collections.config_dict.placeholder(str)
    c.num_processes = ml_collections.config_dict.placeholder(int)
    c.process_id = ml_collections.config_dict.placeholder(int)
    return c
