"""Pictures of the FLAME model (by default the embedded demo head) and of the renderer.

Writes to `<workdir>/showcase/`:
  head_views.png       grey shape renders with the 68 landmarks drawn: neutral, jaw open,
                       identity modes 0 and 1 at +-sigma, two expressions, yaw -30 / +30
                       (the contour landmarks follow the silhouette).
  render_outputs.png   albedo x SH light, shape, detailed shape (a synthetic wrinkle
                       displacement on the UV face region), depth, UV position map, UV
                       detail normals, SoftRas's soft coverage (alpha), and SoftRas's colour
                       blend (`render.soft_blend`) of the normals at each (sigma, gamma) of
                       config.showcase.blends (sharp; blurred and see-through).
  head_neutral.obj     the neutral head with its UVs and mean albedo texture.
"""
from __future__ import annotations

import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxdeca import flame, render, xla_options
from jaxdeca.apps import export
from jaxdeca.apps import visualize as vis
from jaxdeca.train import paths


def _draw_landmarks(image: np.ndarray, lmk_img: np.ndarray, color=(255, 60, 60)) -> np.ndarray:
    """image: [H, W, 3] float 0..1; lmk_img: [68, 2] in [-1, 1] image space (y down). Drawn by
    the apps' `visualize.draw_landmarks` (pixel k's centre at k, `visualize.image_to_pixels`;
    NaN and far-off points left out), the 17 contour points in light blue. Returns float 0..1."""
    h, w = image.shape[:2]
    px = np.stack([vis.image_to_pixels(lmk_img, w)[:, 0], vis.image_to_pixels(lmk_img, h)[:, 1]], 1)
    radius = max(1, w // 128)
    out = vis.draw_landmarks(image, px[:17], (60, 200, 255), radius)
    out = vis.draw_landmarks(out, px[17:], color, radius)
    return out.astype(np.float32) / 255.0


def _label(image: np.ndarray, text: str) -> np.ndarray:
    out = (np.clip(image, 0, 1) * 255).astype(np.uint8).copy()
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out.astype(np.float32) / 255.0


def _grid(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    canvas = np.zeros((rows * h, cols * w, 3), np.float32)
    for k, t in enumerate(tiles):
        t = t if t.ndim == 3 else np.repeat(t[..., None], 3, -1)
        r, c = divmod(k, cols)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = t[..., :3]
    return canvas


def _wrinkles(size: int) -> jnp.ndarray:
    """A synthetic displacement map: horizontal forehead-like ridges over the UV square."""
    v = jnp.linspace(0.0, 1.0, size)[:, None]
    u = jnp.linspace(0.0, 1.0, size)[None, :]
    ridges = jnp.sin(2 * jnp.pi * 14 * v) * jnp.exp(-((u - 0.5) / 0.25) ** 2)
    return (0.002 * ridges)[None, :, :, None]


def head_batch(model: flame.FlameModel, sigma: float, jaw_open: float):
    """Codes for the head_views panels: (names, shape, expression, pose)."""
    names = ["neutral", "jaw open", "id0 +", "id0 -", "id1 +", "id1 -", "exp0 +", "exp1 +", "yaw -30", "yaw +30"]
    n = len(names)
    shape = np.zeros((n, model.n_shape), np.float32)
    exp = np.zeros((n, model.n_exp), np.float32)
    pose = np.zeros((n, 6), np.float32)
    pose[1, 3] = jaw_open
    shape[2, 0], shape[3, 0], shape[4, 1], shape[5, 1] = sigma, -sigma, sigma, -sigma
    exp[6, 0], exp[7, 1] = 2.0, 2.0
    pose[8, 1], pose[9, 1] = np.deg2rad(-30.0), np.deg2rad(30.0)
    return names, shape, exp, pose


def _check_int(field: str, value, least: int, why: str) -> None:
    """ConfigError naming config.<field> unless value is an int (not a bool) >= least."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        what = "a positive int" if least == 1 else f"an int of at least {least}"
        raise paths.ConfigError(f"config.{field}={value!r} must be {what} ({why})")


def check_config(config) -> dict:
    """The showcase's fields checked before anything is rendered (the demo checks them before it
    trains): ConfigError naming a field, FlameFileError when the FLAME file (config.flame_path,
    None = demo head) has fewer components than n_shape, n_exp or n_tex. Returns its arrays."""
    _check_int("showcase.image_size", config.showcase.image_size, 1, "pixels")
    for field in ("n_shape", "n_exp"):  # the panels vary the first two components of each
        _check_int(field, config.get(field), 2, "the showcase varies components 0 and 1")
    blends = config.showcase.get("blends", ())
    try:
        ok = all(len(b) == 2 and all(not isinstance(x, bool) and render.sharpness_ok(float(x)) for x in b)
                 for b in blends)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise paths.ConfigError(f"config.showcase.blends={blends!r} must be (sigma, gamma) pairs of finite "
                                f"numbers >= {render.SMALLEST_SHARPNESS:.3g} (render.soft_blend's)")
    arrays = flame.load_arrays(config.flame_path)
    where = config.flame_path or flame.DEMO_HEAD
    flame.model.check_components(arrays, config.n_shape, config.n_exp, where)
    flame.texture.check_components(arrays, config.n_tex, where)
    return arrays


def run(config, workdir: str) -> None:
    """Writes the showcase pictures for `config.flame_path` (None = demo head)."""
    cfg = config.showcase
    arrays = check_config(config)
    out_dir = os.path.join(workdir, "showcase")
    os.makedirs(out_dir, exist_ok=True)
    size = (cfg.image_size, cfg.image_size)
    where = config.flame_path or flame.DEMO_HEAD
    model = flame.from_arrays(arrays, n_shape=config.n_shape, n_exp=config.n_exp, where=where)
    topo = render.make_topology(arrays)

    names, shape, exp, pose = head_batch(model, cfg.identity_sigma, cfg.jaw_open)
    n = len(names)
    out = xla_options.jit(model.__call__)(shape, exp, pose)
    tex_size = topo.uv_face_eye_mask.shape[0]

    # outside the setup program, which would hold the albedo basis as a constant (1 s more to compile)
    albedo = flame.texture.albedo_from_arrays(arrays, np.zeros((n, config.n_tex), np.float32), size=tex_size)

    def setup(vertices, landmarks2d):  # one program instead of about 45 eager compiles; the same bits
        cams = jnp.broadcast_to(jnp.asarray(cfg.cam, jnp.float32), (n, 3))
        light = jnp.zeros((n, 9, 3)).at[:, 0, :].set(2.6).at[:, 2, :].set(-0.6).at[:, 3, :].set(1.0)
        uv_z = jnp.broadcast_to(_wrinkles(tex_size), (n, tex_size, tex_size, 1))
        return render.orth_proj(vertices, cams), render.orth_proj(landmarks2d, cams), light, uv_z

    trans, lmk, light, uv_z = xla_options.setup_jit(setup)(out["vertices"], out["landmarks2d"])
    rendered = xla_options.jit(lambda v, tv, a, l, z: render.render(v, tv, a, l, topo, size, uv_z=z))(
        out["vertices"], trans, albedo, light, uv_z)
    # SoftRas's colour blend of the first head's vertex normals (as colours): sharp, see-through
    z = np.asarray(trans[:1, :, 2])
    z_range = (float(z.min()) - 0.1, float(z.max()) + 0.1)
    colours = (rendered["normals"][:1] + 1.0) / 2.0
    pairs = [(float(s), float(g)) for s, g in cfg.get("blends", ())]

    def blend(sigma, gamma):
        fn = lambda tv, c: render.soft_blend(tv, topo.faces, c, size, sigma=sigma, gamma=gamma,  # noqa: E731
                                             z_range=z_range, background=0.0)
        return xla_options.jit(fn)(trans[:1], colours)

    blends = [blend(s, g) for s, g in pairs]
    rendered, lmk, vertices, albedo, blends = jax.device_get((rendered, lmk, out["vertices"], albedo, blends))

    tiles = [_label(_draw_landmarks(rendered["shape_images"][k], lmk[k, :, :2]), names[k]) for k in range(n)]
    p1 = export.save_image(os.path.join(out_dir, "head_views.png"), _grid(tiles, 5))

    k = 0
    depth = rendered["depth_images"][k]
    uvpos = rendered["uv_coarse_vertices"][k]
    lo, hi = uvpos.min(axis=(0, 1)), uvpos.max(axis=(0, 1))
    uvpos = (uvpos - lo) / np.maximum(hi - lo, 1e-9)
    uv_n = (rendered["uv_detail_normals"][k] + 1.0) / 2.0
    panels = [
        _label(rendered["images"][k], "albedo x SH"),
        _label(rendered["shape_images"][k], "shape"),
        _label(rendered["shape_detail_images"][k], "detailed shape"),
        _label(np.repeat(depth[..., None], 3, -1), "depth"),
        _label(cv2.resize(uvpos, size), "UV positions"),
        _label(cv2.resize(uv_n, size), "UV detail normals"),
        _label(np.repeat(rendered["alpha"][k][..., None], 3, -1), "SoftRas alpha"),
    ] + [_label(b[0], f"blend s={s:g} g={g:g}") for b, (s, g) in zip(blends, pairs)]
    p2 = export.save_image(os.path.join(out_dir, "render_outputs.png"), _grid(panels, 3))

    p3 = export.write_obj(os.path.join(out_dir, "head_neutral.obj"), vertices[0],
                          arrays["faces"], uv_coords=arrays["uv_coords"], uv_faces=arrays["uv_faces"],
                          texture=albedo[0])
    for p in (p1, p2, p3):
        logging.info("wrote %s", p)
    print(f"showcase written to {out_dir}:\n  {p1}\n  {p2}\n  {p3}")
