"""Official FLAME files -> one jaxdeca FLAME npz.

    python -m jaxdeca.flame.convert --flame generic_model.pkl --landmarks landmark_embedding.npy \\
        --obj head_template.obj [--albedo FLAME_albedo_from_BFM.npz | FLAME_texture.npz] \\
        [--uv-face-eye-mask uv_face_eye_mask.png --uv-face-mask uv_face_mask.png] \\
        [--fixed-displacement fixed_displacement_256.npy] --out flame.npz

Reads the pickles without chumpy or torch. A bad file stops the conversion with one line
naming the file and the problem.
"""
from __future__ import annotations

import argparse
import sys

from jaxdeca.apps.export import WriteError
from jaxdeca.flame import io


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxdeca.flame.convert", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--flame", required=True, help="generic_model.pkl (FLAME 2020 or 2023)")
    p.add_argument("--landmarks", required=True, help="DECA's landmark_embedding.npy")
    p.add_argument("--obj", required=True, help="head_template.obj with the UV layout")
    p.add_argument("--albedo", help="FLAME_albedo_from_BFM.npz or FLAME_texture.npz")
    p.add_argument("--uv-face-eye-mask")
    p.add_argument("--uv-face-mask")
    p.add_argument("--fixed-displacement")
    p.add_argument("--out", required=True, help="output .npz")
    a = p.parse_args(argv)
    try:
        arrays = io.assemble(a.flame, a.landmarks, a.obj, a.albedo, a.uv_face_eye_mask, a.uv_face_mask,
                             a.fixed_displacement)
        io.save_npz(a.out, arrays)
    except (io.FlameFileError, WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.out}: V={arrays['v_template'].shape[0]} F={arrays['faces'].shape[0]} "
          f"shape={arrays['shapedirs'].shape[2]} exp={arrays['exprdirs'].shape[2]}"
          + (f" albedo={arrays['albedo_basis'].shape[3]}" if "albedo_basis" in arrays else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
