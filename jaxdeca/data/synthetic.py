"""Synthetic identity-grouped faces rendered from a FLAME model (by default the demo head).

Each identity has its own shape and albedo code; each of its images draws a new expression,
head pose (yaw/pitch/roll), jaw opening, SH light, camera jitter and background. The 68
landmarks are exact (FLAME's landmarks2d through the same camera), and the mask is the
rendered face region (rendered coverage x DECA's UV face-and-eye mask). This is the embedded
default dataset: every training path runs on it with no download.

Pixel convention: the renderer puts pixel column j's centre at x = j + 0.5; the stored
landmarks use the prepare/dlib convention (centre at x = j), so 0.5 is subtracted.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdeca import flame, render, xla_options


@functools.lru_cache(maxsize=4)
def _model(flame_path):
    arrays = flame.load_arrays(flame_path)
    model = flame.from_arrays(arrays)
    topo = render.make_topology(arrays)
    # one program (op by op, FLAME is about 165 eager compiles); the same bits here
    zeros = [np.zeros((1, n), np.float32) for n in (100, 50, 6)]
    neutral = xla_options.jit(lambda m, *codes: m(*codes))(model, *zeros)
    lmk = np.asarray(neutral["landmarks2d"])[0, :, :2]
    extent = float(((lmk.max(0) - lmk.min(0)).sum()) / 2)
    centre = (lmk.max(0) + lmk.min(0)) / 2
    return arrays, model, topo, extent, centre


def sample_codes(rng: np.random.Generator, n_images: int, n_tex: int = 50) -> dict:
    """Random codes for one identity's n_images: shape/albedo shared, the rest per image.
    Returns dict of float32 arrays: shape [n,100], expression [n,50], pose [n,6], tex [n,n_tex],
    light [n,9,3], cam_jitter [n,3], background [n,2,3] (two corner colours)."""
    n = n_images
    shape = np.repeat(rng.normal(0, 1.0, (1, 100)), n, 0)
    tex = np.repeat(rng.normal(0, 1.0, (1, n_tex)), n, 0)
    expression = rng.normal(0, 0.5, (n, 50)) * (rng.random((n, 1)) < 0.8)
    angles = np.deg2rad(np.stack([rng.uniform(-15, 15, n), rng.uniform(-40, 40, n), rng.uniform(-10, 10, n)], 1))
    jaw = np.stack([np.deg2rad(rng.uniform(0, 15, n)), np.zeros(n), np.zeros(n)], 1)
    light = np.zeros((n, 9, 3))
    light[:, 0] = rng.uniform(2.2, 3.4, (n, 1)) * rng.uniform(0.85, 1.15, (n, 3))
    light[:, 1:4] = rng.normal(0, 0.5, (n, 3, 1)) + rng.normal(0, 0.05, (n, 3, 3))
    light[:, 4:] = rng.normal(0, 0.15, (n, 5, 1))
    cam_jitter = np.stack([rng.uniform(0.8, 1.1, n), rng.normal(0, 0.05, n), rng.normal(0, 0.05, n)], 1)
    background = rng.uniform(0, 1, (n, 2, 3))
    f32 = lambda a: np.asarray(a, np.float32)
    return dict(shape=f32(shape), expression=f32(expression), pose=f32(np.concatenate([angles, jaw], 1)),
                tex=f32(tex), light=f32(light), cam_jitter=f32(cam_jitter), background=f32(background))


def render_faces(codes: dict, image_size: int = 224, flame_path: str | None = None) -> dict:
    """Render the codes of `sample_codes`. Returns numpy dict: image [n,S,S,3] uint8,
    landmarks [n,68,2] float32 pixels (centre of pixel j at j), mask [n,S,S] uint8 (255 face)."""
    fn = _renderer(flame_path, image_size)
    out = jax.device_get(fn({k: jnp.asarray(v) for k, v in codes.items()}))
    return dict(image=np.asarray(np.round(np.clip(out["image"], 0, 1) * 255), np.uint8),
                landmarks=np.asarray(out["landmarks"], np.float32),
                mask=np.asarray(out["mask"] > 0.5, np.uint8) * 255)


@functools.lru_cache(maxsize=4)
def _renderer(flame_path, image_size):
    """A jitted codes -> dict(image [n,S,S,3] 0..1, landmarks [n,68,2] px, mask [n,S,S])."""
    arrays, model, topo, extent, centre = _model(flame_path)
    s0 = 0.7 / extent  # landmark box about a third of the image
    face_uv = topo.uv_face_eye_mask[None, ..., None]

    @xla_options.jit
    def fn(c):
        n = c["shape"].shape[0]
        out = model(c["shape"], c["expression"], c["pose"])
        j = c["cam_jitter"]
        cam = jnp.stack([s0 * j[:, 0], -centre[0] + j[:, 1] / s0, -centre[1] + (j[:, 2] - 0.1) / s0], 1)
        trans = render.orth_proj(out["vertices"], cam)
        lmk = render.orth_proj(out["landmarks2d"], cam)[..., :2]
        albedo = flame.texture.albedo_from_arrays(arrays, c["tex"], size=256)
        r = render.render(out["vertices"], trans, albedo, c["light"], topo, (image_size, image_size))
        u = jnp.linspace(0.0, 1.0, image_size)
        w = (u[None, :, None] + u[None, None, :])[..., None] / 2  # diagonal gradient [1, S, S, 1]
        bg = c["background"][:, 0, None, None, :] * (1 - w) + c["background"][:, 1, None, None, :] * w
        m = r["mask"][..., None]
        face = render.grid_sample(jnp.broadcast_to(face_uv, (n,) + face_uv.shape[1:]), r["grid"])[..., 0]
        return dict(image=r["images"] * m + bg * (1 - m), landmarks=(lmk + 1.0) * image_size / 2 - 0.5,
                    mask=r["mask"] * face)

    return fn
