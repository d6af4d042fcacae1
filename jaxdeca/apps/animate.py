"""`python -m jaxdeca.apps.animate --identity IMG --expression IMG|DIR|VIDEO --out DIR --checkpoint DIR [--flame FLAME]`

Reenactment as DECA does it: the identity image gives shape, albedo, light, camera, global pose and
its DETAIL CODE; each driver frame gives expression and jaw pose. The displacement is decoded as
D_detail(jaw_driver, exp_driver, detail_identity), so the person's own wrinkles change with the new
expression. Writes per-frame OBJ and render, and an MP4 (or GIF) at the driving video's frame rate
(10 fps for images), batch by batch: with an MP4, memory does not grow with the length of the
driving video. A GIF cannot be streamed (Pillow holds every frame until it writes the file: about
0.75 MB a frame here, 13 GB for 10 minutes at 30 fps), so a driver video of more than
GIF_WARN_FRAMES frames with a .gif output gets a warning first. A driver video's frames without a
face repeat the previous frame in the video (the first one before any face), so it keeps the
driver's length and timing. Driver files that cannot be used (unreadable, undecodable video in a
folder, no face) are skipped with one message naming the file; an unusable identity image or
expression input as a whole stops the run with one message (exit status 2), as does an output file
that cannot be written (a full disk: the file, the OS error and how many frames were written before
it; their files are kept, the unfinished video is not); no frame written: exit status 1.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import cv2
import imageio
import jax.numpy as jnp
import numpy as np

from jaxdeca import xla_options
from jaxdeca.apps import export, inputs, pipeline
from jaxdeca.apps import visualize as vis
from jaxdeca.argtypes import positive_int
from jaxdeca.atomic_file import replacing


def animate_codes(identity: dict, driver: dict) -> dict:
    """Identity codes (batch 1) with the driver's expression and jaw pose (batch B).
    identity: codes dict with [1, ...] arrays; driver: codes dict with [B, ...] arrays.
    Returns a [B, ...] codes dict; its 'detail' is the identity's, 'exp' and pose[:, 3:] the driver's."""
    B = driver["exp"].shape[0]
    out = {k: jnp.broadcast_to(v, (B,) + v.shape[1:]) for k, v in identity.items()}
    out["exp"] = driver["exp"]
    out["pose"] = jnp.concatenate([out["pose"][:, :3], driver["pose"][:, 3:]], 1)
    return out


FPS = 10  # frames per second of the written videos unless told (GIF: 100 ms per frame)
# what VideoWriter writes: a GIF, or an mp4v video in one of these containers
VIDEO_OUT_EXTS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".gif")


def check_video_path(path: str) -> str:
    """path if it names a video VideoWriter can write (VIDEO_OUT_EXTS, any case), else
    inputs.InputError naming it and the extensions (a CLI_ERRORS: one line from the apps)."""
    # splitext: a bare '.mp4' is a name without an extension, which no writer can tell the format of
    if os.path.splitext(os.path.basename(path))[1].lower() not in VIDEO_OUT_EXTS:
        raise inputs.InputError(f"{path}: not a video name; use one of the extensions {', '.join(VIDEO_OUT_EXTS)}")
    return path


def gif_delay_ms(k: int, fps: float) -> int:
    """Delay of GIF frame k at fps, in ms of whole centiseconds (GIF's unit), from rounded
    timestamps so that the delays add up to the clip's length; at least 20 ms (2 cs)."""
    return 10 * max(round((k + 1) * 100 / fps) - round(k * 100 / fps), 2)


GIF_WARN_FRAMES = 1000  # a longer driver video with a GIF output gets a warning (~0.75 GB of frames)


class VideoWriter:
    """Streams frames [H, W, 3] (uint8, or float in [0, 1]) RGB to a .gif (imageio's Pillow
    plugin) or an mp4v video (cv2; .mp4 or another of VIDEO_OUT_EXTS), by extension (another
    name: InputError), at `fps` frames per second. An MP4 holds nothing but the current frame in
    memory; Pillow keeps a GIF's frames until it writes the file at the end. GIF delays are whole
    centiseconds: frame k lasts round((k + 1) 100 / fps) - round(k 100 / fps) cs (at least 2, as
    viewers show shorter delays as 10), so the GIF keeps the frame rate over its length (one
    delay of 1000 / fps ms, cut to whole centiseconds, made a 30 fps GIF 10% short).
    The file is opened at the first frame (its size fixes the video's), written beside its name
    and moved there by `close` or at the end of a `with` block that ends without an error
    (`atomic_file.replacing`); with no frame, no file is written. A `with` block ended by an
    error, or a frame that cannot be written, discards the video: nothing is left under its
    name. A video that cannot be written: export.WriteError naming it (an MP4 is read back when
    finished, since cv2's writer reports no error of its own: `_check_mp4`).
    """

    def __init__(self, path: str, fps: float = FPS):
        self.path, self._out, self._size, self.n_frames = check_video_path(path), None, None, 0
        self.fps = float(fps)
        self._gif = path.lower().endswith(".gif")
        self._file = None  # replacing(path) while a video is open
        self._delays = []  # a GIF's, one per frame (the list of all n, rebuilt per frame, was O(n^2))

    def append(self, frame) -> None:
        frame = vis.to_uint8(frame)
        with export.writing(self.path):
            try:
                self._append(frame)
            except BaseException as e:
                self._discard(e)
                raise

    def _append(self, frame) -> None:
        if self._out is None:
            self._size = frame.shape[:2]
            self._file = replacing(self.path)
            tmp = self._file_name = self._file.__enter__()
            if self._gif:
                self._out = imageio.v3.imopen(tmp, "w", plugin="pillow")
            else:
                self._out = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                            (self._size[1], self._size[0]))
                if not self._out.isOpened():
                    raise export.WriteError(self.path, "cv2 cannot open an mp4v writer")
        if frame.shape[:2] != self._size:
            raise ValueError(f"{self.path}: frame of size {frame.shape[:2]}, the video's is {self._size}")
        if self._gif:  # the last write's durations (ms, one per frame) are the ones Pillow saves
            self._delays.append(gif_delay_ms(self.n_frames, self.fps))
            self._out.write(frame, is_batch=False, duration=self._delays, loop=0)
        else:
            self._out.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self.n_frames += 1

    def close(self) -> str | None:
        """Finishes the file and moves it to its name (again: no-op); returns its path, or None
        when no frame was written (or the video was discarded)."""
        if self._file is not None:
            with export.writing(self.path):
                try:
                    self._finish()
                except BaseException as e:
                    self._discard(e)
                    raise
        return self.path if self.n_frames else None

    def _finish(self) -> None:
        out, self._out = self._out, None
        self._close_writer(out)
        if not self._gif:
            self._check_mp4(self._file_name)
        file, self._file = self._file, None
        file.__exit__(None, None, None)  # os.replace; on an error `replacing` removes the file

    def _check_mp4(self, tmp: str) -> None:
        """cv2's writer reports no error: a frame or the index it could not write (a full disk)
        is only a warning on stderr, and the file is left without its index (unreadable). So the
        finished file is opened again: WriteError unless it reads as n_frames frames."""
        cap = cv2.VideoCapture(tmp)
        try:
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else None
        finally:
            cap.release()
        if count != self.n_frames:
            got = "is not a readable video" if count is None else f"holds {count} frames"
            raise export.WriteError(self.path, f"cv2's writer failed silently: the video {got}, "
                                               f"{self.n_frames} were written (a full disk?)")

    def _close_writer(self, out) -> None:
        """Finishes the imageio (GIF) or cv2 (MP4) writer `out`."""
        out.close() if self._gif else out.release()

    def _discard(self, error: BaseException) -> None:
        """Drops the unfinished video after `error`: its writer closed (errors ignored), its
        temporary file removed (`replacing`), no frame counted."""
        out, file, self._out, self._file, self.n_frames = self._out, self._file, None, None, 0
        self._delays = []
        if out is not None:
            with contextlib.suppress(Exception):
                self._close_writer(out)
        if file is not None:
            file.__exit__(type(error), error, error.__traceback__)

    def __enter__(self):
        return self

    def __exit__(self, typ, error, tb):
        if error is None:
            self.close()
        else:
            self._discard(error)


def write_video(path: str, frames) -> str:
    """Frames [H, W, 3] RGB (uint8, or float in [0, 1]) -> .mp4 or .gif at FPS (see VideoWriter)."""
    with VideoWriter(path) as w:
        for f in frames:
            w.append(f)
    if not w.n_frames:
        raise ValueError(f"{path}: no frames to write")
    return path


def animate(identity_path: str, expression_path: str, out_dir: str, pipe: pipeline.Pipeline,
            crop: str = "detect", video: str = "animation.mp4", batch: int = 8) -> dict:
    """Runs the app; returns {'frames': [names], 'skipped': [(name, reason)], 'video': path}.
    The video plays at the driver video's frame rate (images or a folder: FPS). Each frame's OBJ
    carries the identity photo's texture (DECA's demo_transfer: the identity's uv_texture_gt)."""
    if os.path.isdir(identity_path):
        raise inputs.InputError(f"{identity_path}: --identity must be one image, not a folder")
    img = inputs.read_image(identity_path)
    c = pipeline.crop_face(img, crop)
    if c is None:
        raise inputs.InputError(f"{identity_path}: no face detected in the identity image")
    ident, decoded = pipe.run(c.image[None])  # one program: the codes, and the photo's texture
    texture = np.asarray(decoded["uv_texture_extracted"][0])
    frames, skipped = [], []
    fps = inputs.video_fps(expression_path)  # None: images or a folder
    sink = VideoWriter(os.path.join(out_dir, video), fps or FPS)
    n_driver = inputs.video_frame_count(expression_path) if sink._gif else None
    if n_driver is not None and n_driver > GIF_WARN_FRAMES:
        print(f"animate: warning: {expression_path} has {n_driver} frames; the GIF {sink.path} holds them all in "
              f"memory until it is written (~{n_driver * 0.75 / 1024:.1f} GB here): write an .mp4 "
              "(--video NAME.mp4) for a long video", file=sys.stderr)
    held, last = [0], [None]  # skipped driver frames already filled in the video; the last tile

    def hold(tile, n_skipped):  # a driver video keeps its timing: skipped frames repeat a tile
        if fps is not None:
            for _ in range(n_skipped - held[0]):
                sink.append(tile)
            held[0] = n_skipped

    def run(chunk):  # one padded batch of (name, Crop, skips so far): decode, write files, stream tiles
        drv = pipe.encode(pipeline.padded_batch([d.image for _, d, _ in chunk], batch))
        out = pipe.decode(animate_codes(ident, drv))
        # what is written, to the host once per batch (not one device slice per key and frame)
        out = {key: np.asarray(out[key]) for key in ("vertices", "uv_detail_normals", "shape_detail_images", "images")}
        for k, (name, d, n_skipped) in enumerate(chunk):
            export.write_obj(os.path.join(out_dir, name, f"{name}.obj"), out["vertices"][k], pipe.arrays["faces"],
                             uv_coords=pipe.arrays["uv_coords"], uv_faces=pipe.arrays["uv_faces"],
                             texture=texture, normal_map=out["uv_detail_normals"][k])
            tile = vis.grid([vis.label(d.image, "driver"), vis.label(out["shape_detail_images"][k], "detail shape"),
                             vis.label(out["images"][k], "render")], 3)
            export.save_image(os.path.join(out_dir, name, f"{name}_render.png"), tile)
            hold(tile if last[0] is None else last[0], n_skipped)  # skipped frames before this one
            sink.append(tile)
            frames.append(name)
            last[0] = tile

    with pipeline.stop_on_write_error("animate", frames, skipped, out_dir, "frame(s)"), sink:
        # the video may be written into the driver folder: a re-run must not read it as frames
        crops = pipeline.face_crops(expression_path, crop, skipped, "animate", unit="frame", exclude=(sink.path,))
        for chunk in pipeline.chunks(((name, d, len(skipped)) for name, d in crops), batch):
            run(chunk)
        if last[0] is not None:  # frames skipped after the last face
            hold(last[0], len(skipped))
    result = {"frames": frames, "skipped": [(s.name, s.reason) for s in skipped], "video": sink.close()}
    inputs.report("animate", len(frames), skipped, out_dir, "frame(s)")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxdeca.apps.animate", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--identity", required=True, help="the image whose identity and detail are kept")
    p.add_argument("--expression", required=True, help="the driver: an image, a folder or a video")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", default=None, help="converted (jaxdeca.convert deca) or trained model directory")
    p.add_argument("--flame", default=None, help="FLAME npz or DECA's data/ folder (default: the one a training "
                   "workdir records, else the embedded demo head)")
    p.add_argument("--crop", choices=["detect", "none"], default="detect",
                   help="detect: dlib's 68 landmarks (the data extra); none: the images are face crops")
    p.add_argument("--video", default="animation.mp4",
                   help=f"output name under --out ({', '.join(VIDEO_OUT_EXTS)}); .gif for a GIF, which is "
                   "held in memory until it is written: use an MP4 for a long driver video")
    p.add_argument("--batch", type=positive_int, default=8, help="driver frames decoded together")
    p.add_argument("--random-weights", type=int, default=None, metavar="SEED")
    a = p.parse_args(argv)
    xla_options.use_compilation_cache()
    try:
        check_video_path(a.video)
        pipeline.check_out_dir(a.out)
        video = os.path.join(a.out, a.video)
        if os.path.isdir(video):  # found at the end, after every frame was decoded and written
            raise pipeline.OutputError(f"--video {a.video}: cannot be written: {video} is a folder")
        if a.checkpoint is None and a.random_weights is None:
            raise pipeline.CheckpointError("animate needs --checkpoint (a converted or trained DECA model dir)")
        pipe = pipeline.load_pipeline(a.checkpoint, a.flame, a.random_weights)
        res = animate(a.identity, a.expression, a.out, pipe, a.crop, a.video, a.batch)
    except pipeline.CLI_ERRORS as e:
        print(f"animate: {e}", file=sys.stderr)
        return 2
    return 0 if res["frames"] else 1


if __name__ == "__main__":
    sys.exit(main())
