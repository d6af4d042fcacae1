"""`python -m jaxdeca.apps.reconstruct --input IMG|DIR|VIDEO --out DIR [--checkpoint DIR] [--flame FLAME]`

Detect and crop each face (DECA's test crop; from --landmarks files instead of dlib's where given),
encode and decode a batch in one jitted call
(the last batch padded), and write per face: coarse OBJ with texture and normal map, dense
detailed OBJ, 2D landmarks in original pixels, 3D landmarks (FLAME world) with visibility,
depth, a visualisation grid and the codes; with --save-decoded also DECA's decoded arrays
(`pipeline.decoded_arrays`, its demo's --saveMat: DECA's keys and frames, the displacement map
among them), with --vis-original also the grid on the original frame (its demo's --render_orig),
with --save-images also each panel as a picture of its own (its demo's --saveImages). Bad inputs (unreadable image, undecodable video in a folder,
no face) are skipped with one message naming the file; a summary ends the run. Exit status: 0
when at least one face was written, 1 when none was, 2 when the input as a whole is unusable
(missing path, empty folder, lone undecodable video or image, bad checkpoint) or an output
file cannot be written (a full disk: one line naming the file and the OS error, and how many
faces were written before it; those are kept, and no half-written file is left under the
failed file's name).
"""
from __future__ import annotations

import argparse
import sys

from jaxdeca import xla_options
from jaxdeca.apps import inputs, pipeline
from jaxdeca.argtypes import positive_int


def reconstruct(input_path: str, out_dir: str, checkpoint: str | None = None, flame_path: str | None = None,
                batch: int = 8, crop: str = "detect", extract_tex: bool = True, random_seed: int | None = None,
                pipe: pipeline.Pipeline | None = None, save_decoded: bool = False,
                vis_original: bool = False, landmarks: str | None = None, save_images: bool = False) -> dict:
    """Runs the app; returns {'written': [names], 'skipped': [(name, reason)]}."""
    if pipe is None:
        if checkpoint is None and random_seed is None:
            raise pipeline.CheckpointError("reconstruct needs --checkpoint (a converted or trained DECA model dir)")
        pipe = pipeline.load_pipeline(checkpoint, flame_path, random_seed)
    written, skipped = [], []
    with pipeline.stop_on_write_error("reconstruct", written, skipped, out_dir):
        faces = pipeline.face_crops(input_path, crop, skipped, "reconstruct", landmarks=landmarks,
                                    keep_original=vis_original)
        for chunk in pipeline.chunks(faces, batch):
            codes, out = pipe.run(pipeline.padded_batch([c.image for _, c in chunk], batch))
            for k, (name, c) in enumerate(chunk):
                pipeline.write_outputs(out_dir, name, out, k, c, codes, pipe.arrays, extract_tex, pipe.lmk_convention,
                                       decoded=save_decoded, vis_original=vis_original, images=save_images)
                written.append(name)
    inputs.report("reconstruct", len(written), skipped, out_dir)
    return {"written": written, "skipped": [(s.name, s.reason) for s in skipped]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxdeca.apps.reconstruct", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--input", required=True, help="an image, a folder of images/videos, or a video")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", help="converted (jaxdeca.convert deca) or trained model directory")
    p.add_argument("--flame", default=None, help="FLAME npz or DECA's data/ folder (default: the one a training "
                   "workdir records, else the embedded demo head)")
    p.add_argument("--batch", type=positive_int, default=8, help="faces encoded together")
    p.add_argument("--crop", choices=["detect", "none"], default="detect",
                   help="detect: dlib's 68 landmarks (the data extra); none: the images are face crops")
    p.add_argument("--albedo", action="store_true", help="texture = FLAME albedo instead of extracted")
    p.add_argument("--landmarks", default=None,
                   help="crop from these 68 points instead of dlib's (as DECA takes a landmark file beside an "
                        "image): an iBUG .pts (1-based) or a .txt of x y rows (0-based, like *_kpt2d.txt) for one "
                        "image, or a folder of <stem>.pts/.txt (frames without one: dlib)")
    p.add_argument("--random-weights", type=int, default=None, metavar="SEED",
                   help="use randomly initialised networks (no checkpoint; for demos and tests)")
    p.add_argument("--save-decoded", action="store_true",
                   help="also write <name>_decoded.npz: DECA's decoded arrays under its names and in its frames "
                        "(its demo's --saveMat): verts, trans_verts, landmarks2d/3d, landmarks3d_world, normals, "
                        "albedo, uv_texture_gt, uv_detail_normals, displacement_map")
    p.add_argument("--save-images", action="store_true",
                   help="also write each panel of the grid as a picture of its own, unlabelled (its demo's "
                        "--saveImages): <name>_{inputs,landmarks2d,landmarks3d,shape_images,shape_detail_images,"
                        "rendered_images}.png; landmarks3d: visible points green, hidden red")
    p.add_argument("--vis-original", action="store_true",
                   help="also write <name>_vis_original.png: the grid on the original frame at its size (its "
                        "demo's --render_orig; renders warped back from the 224 px crop)")
    a = p.parse_args(argv)
    xla_options.use_compilation_cache()
    try:
        pipeline.check_out_dir(a.out)
        res = reconstruct(a.input, a.out, a.checkpoint, a.flame, a.batch, a.crop, not a.albedo, a.random_weights,
                          save_decoded=a.save_decoded, vis_original=a.vis_original, landmarks=a.landmarks,
                          save_images=a.save_images)
    except pipeline.CLI_ERRORS as e:
        print(f"reconstruct: {e}", file=sys.stderr)
        return 2
    return 0 if res["written"] else 1


if __name__ == "__main__":
    sys.exit(main())
