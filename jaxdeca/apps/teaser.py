"""`python -m jaxdeca.apps.teaser [--input IMG --checkpoint DIR] [--flame FLAME] --out teaser.gif`

A short animation of a head: a yaw sweep, jaw opening, then expression transfer (expression
codes swept along the first components). With no input, the embedded demo head (zero codes).
With --input, the codes come from the network (--checkpoint) or from `fit` (no checkpoint).
Exit status 0, or 2 with one message when an input, the model or --out cannot be used or the
video cannot be written (a full disk: the file and the OS error).
"""
from __future__ import annotations

import argparse
import os
import sys

import jax.numpy as jnp
import numpy as np

from jaxdeca import xla_options
from jaxdeca.apps import animate, inputs, pipeline
from jaxdeca.apps import visualize as vis
from jaxdeca.argtypes import positive_int


def demo_codes() -> dict:
    """Zero codes with a frontal camera and a soft white light (batch 1)."""
    z = lambda n: jnp.zeros((1, n))  # noqa: E731
    return dict(shape=z(100), exp=z(50), pose=z(6), tex=z(50), detail=z(128), cam=jnp.array([[7.0, 0.0, 0.0]]),
                light=jnp.zeros((1, 9, 3)).at[:, 0, :].set(2.6).at[:, 3, :].set(1.0))


def teaser_codes(base: dict, n: int = 12) -> dict:
    """[3n] codes, n frames each: yaw -40 -> 40 degrees; jaw 0 -> 0.35 -> 0 rad; expression exp 0
    0 -> 2 -> 0 with exp 1 0 -> -1.5 -> 0 (half sines)."""
    B = 3 * n
    c = {k: jnp.broadcast_to(v, (B,) + v.shape[1:]) for k, v in base.items()}
    t = jnp.linspace(0.0, 1.0, n)
    yaw = jnp.deg2rad(-40.0 + 80.0 * t)
    pose = c["pose"].at[:n, 1].set(yaw).at[n:2 * n, 3].set(0.35 * jnp.sin(jnp.pi * t))
    exp = c["exp"].at[2 * n:, 0].set(2.0 * jnp.sin(jnp.pi * t)).at[2 * n:, 1].set(-1.5 * jnp.sin(jnp.pi * t))
    c.update(pose=pose, exp=exp)
    return c


BATCH = 16  # frames decoded together (the last batch padded): one program, whatever --frames


def teaser(pipe: pipeline.Pipeline, base: dict, out_path: str, n: int = 12, batch: int = BATCH) -> str:
    """Render the teaser frames (shape | detail shape | render) and write the GIF/MP4, `batch`
    frames at a time into the video (decoding all 3n at once took 23 MB a frame: 18 GB for
    --frames 250, and a compile for every n)."""
    codes = teaser_codes(base, n)
    with animate.VideoWriter(out_path) as video:
        for start in range(0, 3 * n, batch):
            rows = min(batch, 3 * n - start)
            chunk = {k: jnp.asarray(pipeline.pad_rows(v[start:start + rows], batch)) for k, v in codes.items()}
            out = pipe.decode(chunk)
            out = {key: np.asarray(out[key][:rows]) for key in ("shape_images", "shape_detail_images", "images")}
            for k in range(rows):
                video.append(vis.grid([out["shape_images"][k], out["shape_detail_images"][k], out["images"][k]], 3))
    return video.close()


def identity_codes(pipe: pipeline.Pipeline, path: str) -> dict:
    """The codes of the face in the image at `path` (batch 1): encoded by the pipeline's networks
    from the test-time crop, or fitted to the image (`fit.fit_image`) when it has none. An image
    without a face, or one that cannot be read, is an InputError naming the file."""
    img = inputs.read_image(path)
    if pipe.variables is not None:
        c = pipeline.crop_face(img)
        if c is None:
            raise inputs.InputError(f"{path}: no face detected")
        return pipe.encode(c.image[None])
    from jaxdeca.apps import fit
    res = fit.fit_image(pipe, img)
    if res is None:
        raise inputs.InputError(f"{path}: no face detected")
    return res[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxdeca.apps.teaser", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--input", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--flame", default=None)
    p.add_argument("--out", default="teaser.gif", help=f"the video ({', '.join(animate.VIDEO_OUT_EXTS)})")
    p.add_argument("--frames", type=positive_int, default=12, help="frames per segment")
    a = p.parse_args(argv)
    xla_options.use_compilation_cache()
    try:
        animate.check_video_path(a.out)
        pipeline.check_out_dir(os.path.dirname(os.path.abspath(a.out)), file=a.out)
        pipe = pipeline.load_pipeline(a.checkpoint, a.flame)
        base = identity_codes(pipe, a.input) if a.input else demo_codes()
        path = teaser(pipe, base, a.out, a.frames)
    except pipeline.CLI_ERRORS as e:
        print(f"teaser: {e}", file=sys.stderr)
        return 2
    print(f"teaser: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
