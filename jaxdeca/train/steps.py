"""One jitted optimisation step over the device mesh, for any stage.

A stage supplies `loss_fn(params, batch_stats, frozen, batch, rng) -> (loss, (terms, new_batch_stats))`;
`make_train_step` turns it into `step(state, batch) -> (state, terms)` compiled with the state
replicated and the batch split over the mesh axis `data`. Gradients of a sharded batch mean are
all-reduced by XLA automatically (GSPMD), so the same function is exact on 1 or N devices.
BatchNorm's batch statistics are those of the global batch likewise (synchronised BatchNorm):
N devices train as one device with the whole batch, as DECA's single-GPU training does.
Steps are traced with the mesh as the context mesh, so that per-image work that XLA cannot
split by itself (the rasterizer's data-dependent windows) runs on each device's own images
(`jaxdeca.render.rasterize`) instead of on the whole batch everywhere.
"""
from __future__ import annotations

from typing import Callable

import jax
import optax

from jaxdeca import xla_options
from jaxdeca.train import parallel
from jaxdeca.train.state import TrainState


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, mesh) -> Callable:
    """Returns jitted `step(state: TrainState, batch) -> (TrainState, terms: dict of scalars)`."""
    repl = parallel.replicated(mesh)
    data = parallel.batch_sharding(mesh)

    def step(state: TrainState, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            (loss, (terms, new_bs)), grads = grad_fn(state.params, state.batch_stats, state.frozen, batch, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        terms = dict(terms, loss=loss, grad_norm=optax.tree.norm(grads))
        return state.replace(step=state.step + 1, params=params, batch_stats=new_bs, opt_state=opt_state), terms

    # On CPU, XLA's own reduction loops put the networks' gradients percents off float64;
    # YNNPACK's come far closer and, with full-size networks, run faster (jaxdeca.xla_options).
    return xla_options.jit(step, ynn_reductions=True, in_shardings=(repl, data), out_shardings=(repl, repl),
                           donate_argnums=(0,))


def make_eval_step(metric_fn: Callable, mesh) -> Callable:
    """Jitted `eval(state, batch) -> dict of scalars` with `metric_fn(params, batch_stats, frozen, batch)`."""
    def ev(state: TrainState, batch):
        return metric_fn(state.params, state.batch_stats, state.frozen, batch)

    return _jit_under_mesh(ev, mesh, out_shardings=parallel.replicated(mesh))


def make_image_step(images_fn: Callable, mesh) -> Callable:
    """Jitted `images(state, batch) -> dict of image grids (or None)` with the task's
    `images_fn(state, batch)`: one program, compiled at its first call, instead of the grids'
    operations run one by one at every due step; traced under the mesh like the steps, so the
    renderer rasterizes each device's own images. The grids keep the layout XLA gives them
    (split by image); `loop.host_images` gathers them."""
    return _jit_under_mesh(images_fn, mesh)


def _jit_under_mesh(fn: Callable, mesh, **kwargs) -> Callable:
    """fn(state, batch) jitted with the state replicated and the batch split over the mesh,
    traced with the mesh as the context mesh (module docstring); kwargs go to the jit."""
    def run(state: TrainState, batch):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(state, batch)
    run.__name__ = getattr(fn, "__name__", "run")  # its name in compile logs and profiles

    return xla_options.jit(run, in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)), **kwargs)
