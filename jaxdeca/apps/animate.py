"""`python -m jaxdeca.apps.animate --identity IMG --expression IMG|DIR|VIDEO --out DIR --checkpoint DIR`

Reenactment as DECA does it: the identity image gives shape, albedo, light, camera, global
pose and its DETAIL CODE; each driver frame gives expression and jaw pose. The displacement is
decoded as D_detail(jaw_driver, exp_driver, detail_identity), so the person's own wrinkles
change with the new expression. Writes per-frame OBJ and render, and an MP4 (or GIF).
Driver files that cannot be used (unreadable, undecodable video in a folder, no face) are
skipped with one message naming the file; an unusable identity image or expression input as a
whole stops the run with one message (exit status 2); no frame written: exit status 1.
"""
from __future__ import annotations

import argparse
import os
import sys

import cv2
import imageio
import jax.numpy as jnp
import numpy as np

from jaxdeca.apps import export, inputs, pipeline
from jaxdeca.apps import visualize as vis


def animate_codes(identity: dict, driver: dict) -> dict:
    """Identity codes (batch 1) with the driver's expression and jaw pose (batch B).
    identity: codes dict with [1, ...] arrays; driver: codes dict with [B, ...] arrays.
    Returns a [B, ...] codes dict; its 'detail' is the identity's, 'exp' and pose[:, 3:] the driver's."""
    B = driver["exp"].shape[0]
    out = {k: jnp.broadcast_to(v, (B,) + v.shape[1:]) for k, v in identity.items()}
    out["exp"] = driver["exp"]
    out["pose"] = jnp.concatenate([out["pose"][:, :3], driver["pose"][:, 3:]], 1)
    return out


def write_video(path: str, frames) -> str:
    """Frames [H, W, 3] uint8 RGB -> .mp4 (cv2 mp4v) or .gif (imageio), by extension."""
    frames = [vis.to_uint8(f) for f in frames]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".gif"):
        imageio.mimsave(path, frames, duration=0.1, loop=0)
        return path
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    if not vw.isOpened():
        raise OSError(f"{path}: cv2 cannot open an mp4v writer")
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    return path


def animate(identity_path: str, expression_path: str, out_dir: str, pipe: pipeline.Pipeline,
            crop: str = "detect", video: str = "animation.mp4", batch: int = 8) -> dict:
    """Runs the app; returns {'frames': [names], 'skipped': [(name, reason)], 'video': path}."""
    if os.path.isdir(identity_path):
        raise inputs.InputError(f"{identity_path}: --identity must be one image, not a folder")
    img = inputs.read_image(identity_path)
    c = pipeline.crop_face(img, crop)
    if c is None:
        raise inputs.InputError(f"{identity_path}: no face detected in the identity image")
    ident = pipe.encode(c.image[None])
    frames, skipped, strips = [], [], []
    items = list(pipeline.face_crops(expression_path, crop, skipped, "animate", unit="frame"))
    for s in range(0, len(items), batch):
        chunk = items[s:s + batch]
        drv = pipe.encode(pipeline.padded_batch([d.image for _, d in chunk], batch))
        codes = animate_codes(ident, drv)
        out = pipe.decode(codes)
        for k, (name, d) in enumerate(chunk):
            export.write_obj(os.path.join(out_dir, name, f"{name}.obj"), np.asarray(out["vertices"][k]), pipe.arrays["faces"],
                             uv_coords=pipe.arrays["uv_coords"], uv_faces=pipe.arrays["uv_faces"],
                             texture=np.asarray(out["albedo"][k]), normal_map=np.asarray(out["uv_detail_normals"][k]))
            tile = vis.grid([vis.label(d.image, "driver"), vis.label(out["shape_detail_images"][k], "detail shape"),
                             vis.label(out["images"][k], "render")], 3)
            export.save_image(os.path.join(out_dir, name, f"{name}_render.png"), tile)
            strips.append(tile)
            frames.append(name)
    result = {"frames": frames, "skipped": [(s.name, s.reason) for s in skipped], "video": None}
    if strips:
        result["video"] = write_video(os.path.join(out_dir, video), strips)
    inputs.report("animate", len(frames), skipped, out_dir, "frame(s)")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--identity", required=True)
    p.add_argument("--expression", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--flame", default=None)
    p.add_argument("--crop", choices=["detect", "none"], default="detect")
    p.add_argument("--video", default="animation.mp4", help="output name; .gif for a GIF")
    p.add_argument("--random-weights", type=int, default=None, metavar="SEED")
    a = p.parse_args(argv)
    try:
        if a.checkpoint is None and a.random_weights is None:
            raise pipeline.CheckpointError("animate needs --checkpoint (a converted or trained DECA model dir)")
        pipe = pipeline.load_pipeline(a.checkpoint, a.flame, a.random_weights)
        res = animate(a.identity, a.expression, a.out, pipe, a.crop, a.video)
    except (inputs.InputError, pipeline.CheckpointError) as e:
        print(f"animate: {e}", file=sys.stderr)
        return 2
    return 0 if res["frames"] else 1


if __name__ == "__main__":
    sys.exit(main())
