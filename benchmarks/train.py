"""Training throughput: images/s of one jitted DECA train step (coarse and detail stages).

    python benchmarks/train.py                       # 224 px, ResNet-50, UV 256, batch 8 (DECA's 2 x K=4)
    python benchmarks/train.py --batch 32 --dtype bfloat16 --steps 10
    python benchmarks/train.py --size 64 --width 0.25 --blocks 1,1,1,1 --uv 64 --hidden 256 \
        --batch 16 --no-id --no-mrf                  # the demo config (no pretrained feature nets)

What one step does is exactly the trainer's (`jaxdeca.train.steps.make_train_step` over all
local devices): coarse = encoder (train-mode BN) -> shape consistency (batch doubled) -> FLAME
-> render -> landmark / eye / lip / photometric / VGGFace2 identity / regularisers, backward,
Adam; detail = frozen coarse encoder -> detail encoder -> detail consistency (doubled) -> detail
decoder -> UV render, texture extraction -> UV photometric / ID-MRF on VGG19 / displacement
regularisers, backward, Adam. Pretrained feature nets (VGGFace2, VGG19) and the FLAME model
get random / demo-head values: speed does not depend on them. Images/s counts loader images
(before consistency doubling), as DECA's logs do.

Peer: the PyTorch DECA training step needs PyTorch3D or DECA's CUDA rasterizer extension, neither
of which installs here (no wheels; no GPU); the script says so instead of printing a number.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/

from jaxdeca import models  # noqa: E402
from jaxdeca.train import deca_coarse, deca_detail, parallel, state as state_lib, steps  # noqa: E402


def stage_config(stage: str, a) -> ml_collections.ConfigDict:
    from configs import coarse
    c = coarse.get_config("coarse" if stage == "coarse" else "detail")
    c.stage = stage
    c.model.update(dict(width=a.width, blocks=tuple(int(b) for b in a.blocks.split(",")), hidden=a.hidden,
                        uv_size=a.uv, dtype=a.dtype))
    c.data.update(dict(source="synthetic", image_size=a.size, k=a.k))
    c.loss.id = 0.0    # switched on below with random VGGFace2 weights (no path needed)
    c.loss.mrf = 0.0
    c.init.coarse_checkpoint = "."
    return c


def random_batch(n: int, size: int, k: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lmk = np.concatenate([rng.uniform(-0.6, 0.6, (n, 68, 2)), np.ones((n, 68, 1))], -1)
    return dict(image=rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32),
                landmarks=lmk.astype(np.float32),
                mask=(rng.uniform(0, 1, (n, size, size, 1)) > 0.3).astype(np.float32),
                identity=np.repeat(np.arange(n // k), k).astype(np.int32))


def build(stage: str, a):
    c = stage_config(stage, a)
    keys = jax.random.split(jax.random.key(0), 4)
    if stage == "coarse":
        task = deca_coarse.CoarseTask(c)
        v = task.init_net("E_flame", keys[0])
        params, stats, frozen = {"E_flame": v["params"]}, {"E_flame": v["batch_stats"]}, {}
        if a.id:
            task.weights["id"] = 0.2
            net = models.vggface2_resnet50()
            frozen["vggface2"] = net.init(keys[1], jnp.zeros((1, 224, 224, 3)), train=False)
    else:
        task = deca_detail.DetailTask(c)
        enc, dec = task.init_net("E_detail", keys[0]), task.init_net("D_detail", keys[1])
        params = {"E_detail": enc["params"], "D_detail": dec["params"]}
        stats = {"E_detail": enc["batch_stats"], "D_detail": dec["batch_stats"]}
        frozen = {"E_flame": task.init_net("E_flame", keys[2])}
        if a.mrf:
            task.weights["mrf"] = 0.05
            net = models.VGG19Features(layers=("relu3_2", "relu4_2"))
            frozen["vgg19"] = {"params": net.init(keys[3], jnp.zeros((1, 64, 64, 3)))["params"]}
    return c, task, params, stats, frozen


def bench(stage: str, a) -> dict:
    c, task, params, stats, frozen = build(stage, a)
    mesh = parallel.make_mesh()
    opt = state_lib.make_optimizer(c)
    state = parallel.replicate(state_lib.create(params, stats, frozen, opt, 0), mesh)
    step = steps.make_train_step(task.loss_fn, opt, mesh)
    batch = parallel.shard_batch(random_batch(a.batch, a.size, a.k), mesh)
    t = time.perf_counter()
    state, terms = step(state, batch)
    jax.block_until_ready(terms)
    first_s = time.perf_counter() - t  # compile and one step (on CPU the step is no small part)
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        state, terms = step(state, batch)
        jax.block_until_ready(terms)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return dict(stage=stage, ms=med * 1e3, ips=a.batch / med, first_s=first_s,
                terms=sorted(k for k in terms if k not in ("loss", "grad_norm")))


def check_batch(p: argparse.ArgumentParser, batch: int, k: int) -> None:
    """--batch must split over the devices, as the trainer's config.train.batch_size must
    (parallel.local_batch_size), and each process's share must hold whole identities of --k
    images, as the trainer's config.data.k must (data.check_k): otherwise argparse's error line
    (exit 2) before anything is built."""
    try:
        local = parallel.local_batch_size(batch, parallel.make_mesh())
    except ValueError as e:
        p.error(f"argument --batch: {batch} (the global batch) must be a multiple of the number of devices: {e}")
    if k < 1:
        p.error(f"argument --k: must be a positive integer, got {k}")
    if local % k:
        p.error(f"argument --batch: {batch} gives {local} images per process, not a multiple of --k={k} "
                "(a batch holds whole identities of K images each)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", default="coarse,detail")
    p.add_argument("--batch", type=int, default=8, help="images per step (identities x K), global")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--uv", type=int, default=256)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--blocks", default="3,4,6,3")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--no-id", dest="id", action="store_false", help="coarse: skip the VGGFace2 identity loss")
    p.add_argument("--no-mrf", dest="mrf", action="store_false", help="detail: skip ID-MRF (VGG19)")
    a = p.parse_args()
    check_batch(p, a.batch, a.k)
    dev = jax.devices()
    print(f"devices: {len(dev)} x {dev[0].device_kind} ({jax.default_backend()}); image {a.size}, UV {a.uv}, "
          f"batch {a.batch} (K={a.k}), ResNet width {a.width} blocks {a.blocks}, {a.dtype}")
    print(f"{'stage':<8}{'ms/step':>10}{'img/s':>9}{'1st call s':>11}  terms")
    for stage in a.stages.split(","):
        r = bench(stage, a)
        print(f"{r['stage']:<8}{r['ms']:>10.1f}{r['ips']:>9.2f}{r['first_s']:>11.1f}  {','.join(r['terms'])}",
              flush=True)
    why = "and no GPU on this machine" if jax.default_backend() == "cpu" else "and neither is built here"
    print("peer: PyTorch DECA training step not run -- it needs PyTorch3D or DECA's CUDA rasterizer "
          f"extension (no wheels for this Python/torch, {why})")


if __name__ == "__main__":
    main()
