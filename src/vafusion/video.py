"""Video decoding on the container's clock (PyAV), and the ffmpeg binary to use.

The frame clock of the whole pipeline is the presentation timestamps of the decoded video
frames, so variable-frame-rate files stay in sync; a trial's length T is the number of
frames decoded.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np


class MediaError(RuntimeError):
    """A video that cannot be read (corrupt, truncated, no video stream); names the file."""


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: float  # average frame rate the container declares
    declared_frames: int  # 0 when the container does not say
    duration: float  # seconds, from the container (0.0 when unknown)
    has_audio: bool
    audio_start: float  # seconds on the container clock where the first audio sample sits


@dataclass(frozen=True)
class Frame:
    index: int  # 0-based decode order
    time: float  # presentation time in seconds
    rgb: np.ndarray  # (H, W, 3) uint8


def ffmpeg_binary() -> str:
    """The system ffmpeg when on PATH, else the static build shipped by imageio-ffmpeg."""
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise MediaError(f"{path}: video file does not exist")
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise MediaError(f"{path}: cannot open video ({err})") from None
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path}: has no video stream")
    return container


def probe_video(path: str | Path) -> VideoInfo:
    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        audio_start = 0.0
        if container.streams.audio:
            audio = container.streams.audio[0]
            if audio.start_time is not None and audio.time_base is not None:
                audio_start = float(audio.start_time * audio.time_base)
        return VideoInfo(
            path=path,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=float(rate) if rate else 0.0,
            declared_frames=int(stream.frames or 0),
            duration=duration,
            has_audio=bool(container.streams.audio),
            audio_start=audio_start,
        )


def iter_frames(path: str | Path) -> Iterator[Frame]:
    """Decode every video frame in presentation order as RGB.

    Raises MediaError for a file that cannot be decoded or whose frames end before the
    duration its container declares (a truncated download or copy).
    """
    for index, time, frame in _decode(Path(path)):
        # PyAV returns a view with padded rows; dlib ignores the strides and reads the
        # padding bytes (garbage), which made detections differ from run to run.
        yield Frame(index=index, time=time, rgb=np.ascontiguousarray(frame.to_ndarray(format="rgb24")))


def frame_times(path: str | Path) -> list[float]:
    """Presentation times (s) of every decoded frame: the pipeline's frame clock."""
    return [time for _, time, _ in _decode(Path(path))]


def _declared_end(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    """Where the container says the video ends (s, on the frames' clock); None when unsaid."""
    if stream.duration is not None and stream.time_base is not None:
        return float(((stream.start_time or 0) + stream.duration) * stream.time_base)
    # The container's duration spans all streams (an audio track may run past the video), so
    # it bounds the video only when the video is the sole stream (e.g. mkv without audio).
    if container.duration is not None and len(container.streams) == 1:
        return ((container.start_time or 0) + container.duration) / av.time_base
    return None


def _decode(path: Path) -> Iterator[tuple[int, float, av.VideoFrame]]:
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame-threaded decoding; order and output unchanged
        declared_end = _declared_end(container, stream)
        rate = stream.average_rate or stream.guessed_rate
        step = 1 / float(rate) if rate else 0.0  # one frame's duration
        index, time = 0, 0.0
        try:
            for frame in container.decode(stream):
                time = frame.time
                if time is None:  # no timestamp: fall back to the nominal rate
                    time = index / float(rate) if rate else float(index)
                yield index, float(time), frame
                index += 1
        except av.FFmpegError as err:
            raise MediaError(f"{path}: decoding failed after {index} frames ({err})") from None
    if index == 0:
        raise MediaError(f"{path}: no video frame could be decoded")
    # Truncation is judged by time, not by frame count: mp4 edit lists (cuts on a non-keyframe,
    # B-frame priming) make the container count samples the decoder never outputs. The decoded
    # frames must reach the declared end within max(3 frames, 0.1 s): that absorbs the frame or
    # two by which an edit list or a rounded duration is off and the unknown length of the last
    # frame of a variable-rate file; a cut that loses less than that passes, costing at most
    # those few frames. With no declared duration there is nothing to compare: accept.
    if declared_end is not None and time + step < declared_end - max(3 * step, 0.1):
        raise MediaError(
            f"{path}: truncated or corrupt: decoded {index} frames ending at {time + step:.3f} s, "
            f"the container declares {declared_end:.3f} s"
        )
