"""A tiny task (a BatchNorm MLP regressing 2-D points) that exercises the whole loop.

It has everything a DECA stage has -- trainable params, BN statistics, a frozen sub-network,
RNG use (dropout-like noise), a resumable deterministic loader and a held-out eval set -- at a
size that trains in seconds on CPU, so the loop's behaviour (resume, sharding, multi-process)
is tested independently of the heavy stages.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class _Net(nn.Module):
    width: int = 16

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(self.width, use_bias=False)(x)  # a bias before BN has zero gradient (noise under Adam)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(2)(nn.relu(x))


class ToyLoader:
    """Deterministic stream: batch i of process p is a pure function of (seed, i, p)."""

    def __init__(self, local_bs: int, process_index: int, seed: int, dim: int):
        self.local_bs, self.pi, self.seed, self.dim, self.i = local_bs, process_index, seed, dim, 0

    def next(self):
        rs = np.random.default_rng([self.seed, self.i, self.pi])
        self.i += 1
        x = rs.normal(size=(self.local_bs, self.dim)).astype(np.float32)
        return {"x": x, "y": np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], -1).astype(np.float32)}

    def position(self):
        return {"index": self.i}

    def restore(self, position):
        self.i = int(position["index"])


class ToyTask:
    def __init__(self, config):
        self.config = config
        self.dim = int(config.toy.dim)
        self.net = _Net(int(config.toy.width))

    def init_variables(self, rng):
        k1, k2 = jax.random.split(rng)
        v = self.net.init(k1, jnp.zeros((2, self.dim)), train=False)
        frozen = {"proj": jax.random.normal(k2, (self.dim, self.dim)) / np.sqrt(self.dim) + jnp.eye(self.dim)}
        return v["params"], v["batch_stats"], frozen

    def _apply(self, params, batch_stats, frozen, x, train):
        x = x @ frozen["proj"]
        if train:
            return self.net.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
        return self.net.apply({"params": params, "batch_stats": batch_stats}, x, train=False), {"batch_stats": batch_stats}

    def loss_fn(self, params, batch_stats, frozen, batch, rng):
        x = batch["x"] + float(self.config.toy.noise) * jax.random.normal(rng, batch["x"].shape)
        pred, mut = self._apply(params, batch_stats, frozen, x, True)
        mse = jnp.mean((pred - batch["y"]) ** 2)
        l2 = 1e-4 * sum(jnp.sum(p ** 2) for p in jax.tree.leaves(params))
        return mse + l2, ({"mse": mse, "reg": l2}, mut["batch_stats"])

    def eval_fn(self, params, batch_stats, frozen, batch):
        pred, _ = self._apply(params, batch_stats, frozen, batch["x"], False)
        return {"mse": jnp.mean((pred - batch["y"]) ** 2)}

    def make_loader(self, local_bs, process_index, process_count):
        return ToyLoader(local_bs, process_index, int(self.config.seed), self.dim)

    def eval_batches(self, local_bs, process_index, process_count):
        loader = ToyLoader(local_bs, process_index, int(self.config.seed) + 1000, self.dim)
        return [loader.next() for _ in range(2)]

    def images(self, state, batch):
        """A [1, 8, B, 3] strip: predicted vs true targets as colours (exercises the image writer)."""
        pred, _ = self._apply(state.params, state.batch_stats, state.frozen, batch["x"], False)
        rows = [jnp.clip(0.5 + 0.25 * jnp.concatenate([v, v[:, :1]], -1), 0, 1) for v in (pred, batch["y"])]
        return {"toy/pred_vs_true": jnp.repeat(jnp.stack(rows, 0), 4, axis=0)[None]}
