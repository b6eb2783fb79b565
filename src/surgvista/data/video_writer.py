"""The one h264 writer of the generated datasets (demo, proxy): the same frames always give the same bytes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

# x264's macroblock tree gave different bytes for the same frames from one encode to the next (PyAV 17 and 18
# wheels, any thread count, even asm=0); without it the output is byte-identical run to run.
X264_OPTIONS = {"crf": "23", "x264-params": "mbtree=0"}
GOP = 12


def write_h264(path: Path, frames: Iterable[np.ndarray], fps: int, size: tuple[int, int]) -> None:
    """Encode RGB ``frames`` (``height x width x 3`` uint8, ``size`` = width, height) to an mp4 at ``fps``."""
    import av  # only when writing: the data modules import the generators

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options=X264_OPTIONS)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.codec_context.gop_size = GOP
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = index  # explicit timestamps: x264's rate control reads them
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
