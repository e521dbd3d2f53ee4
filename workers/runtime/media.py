"""Encoding of generated images and videos, and their WEBP thumbnails."""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np
from PIL import Image

THUMBNAIL_EDGE = 256


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # No timestamps or other varying chunks: same pixels, same bytes.
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def encode_thumbnail(image: Image.Image) -> bytes:
    """WEBP, longest edge at most 256 px, aspect ratio kept (never upscaled)."""
    thumb = image.convert("RGB")
    thumb.thumbnail((THUMBNAIL_EDGE, THUMBNAIL_EDGE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="WEBP", quality=85)
    return buffer.getvalue()


def encode_mp4(frames: list[Image.Image], fps: float) -> bytes:
    """H.264 MP4, yuv420p, moov atom first (faststart) so browsers start playing before the end."""
    import imageio_ffmpeg

    width, height = frames[0].size
    fd, path = tempfile.mkstemp(suffix=".mp4")
    os.close(fd)
    try:
        writer = imageio_ffmpeg.write_frames(
            path, (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            quality=None, bitrate=None, macro_block_size=1,
            output_params=["-movflags", "+faststart", "-crf", "18", "-preset", "medium"],
            ffmpeg_log_level="error")
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(np.asarray(frame.convert("RGB"), dtype=np.uint8)))
        writer.close()
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


def decode_mp4(data: bytes) -> tuple[list[np.ndarray], dict]:
    """Frames and stream info of an MP4 (used by tests and checks, not by the serving path)."""
    import imageio_ffmpeg

    fd, path = tempfile.mkstemp(suffix=".mp4")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    try:
        reader = imageio_ffmpeg.read_frames(path)
        info = next(reader)
        width, height = info["size"]
        frames = [np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader]
        return frames, info
    finally:
        os.unlink(path)
