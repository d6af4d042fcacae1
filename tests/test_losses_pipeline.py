"""The coarse total through the real pipeline: codes -> demo-head FLAME -> albedo -> camera ->
renderer -> DECA's coarse losses. Every code group a term depends on gets a gradient."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxdeca import flame, render
from jaxdeca.losses import coarse_losses


def test_coarse_total_gradient_reaches_every_code_group():
    arrays = flame.load_arrays()
    model = flame.from_arrays(arrays)
    topo = render.make_topology(arrays)
    size = (32, 32)
    rng = np.random.default_rng(0)
    B = 2
    codes = dict(shape=rng.normal(size=(B, 100)) * 0.3, exp=rng.normal(size=(B, 50)) * 0.3,
                 pose=rng.normal(size=(B, 6)) * 0.05, tex=rng.normal(size=(B, 50)) * 0.3,
                 cam=np.tile([7.0, 0.01, -0.02], (B, 1)),
                 light=np.concatenate([np.full((B, 1, 3), 2.5), rng.normal(size=(B, 8, 3)) * 0.3], 1))
    codes = {k: jnp.asarray(v, jnp.float32) for k, v in codes.items()}
    images = jnp.asarray(rng.random((B, 32, 32, 3)), jnp.float32)
    lmk_gt = jnp.concatenate([jnp.asarray(rng.uniform(-0.6, 0.6, (B, 68, 2)), jnp.float32), jnp.ones((B, 68, 1))], -1)

    def total(codes):
        out = model(codes["shape"], codes["exp"], codes["pose"])
        trans = render.orth_proj(out["vertices"], codes["cam"])
        lmk = render.orth_proj(out["landmarks2d"], codes["cam"])[..., :2]
        albedo = flame.texture.albedo_from_arrays(arrays, codes["tex"])
        r = render.render(out["vertices"], trans, albedo, codes["light"], topo, size)
        fem = render.grid_sample(jnp.broadcast_to(topo.uv_face_eye_mask[None, ..., None], (B, 256, 256, 1)), r["grid"])
        t, terms = coarse_losses(landmarks_pred=lmk, landmarks_gt=lmk_gt, codes=codes,
                                 weights=dict(id=0.0, use_seg=False), images=images,
                                 rendered_images=r["images"], alpha_images=r["alpha"], face_eye_mask=fem)
        return t, terms

    (t, terms), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(codes)
    assert np.isfinite(float(t)) and "photometric_texture" in terms and "landmark" in terms
    for name, g in grads.items():
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), name
        assert np.abs(g).sum() > 0, f"no gradient reaches the {name} codes"
