"""Media stage, audio: every video becomes a 16 kHz mono 16-bit PCM WAV.

The sidecar JSON carries what the audio features need to sit on the video's frame clock:
the presentation time of every video frame (``frame_times``) and where the first audio
sample sits on that clock (``audio_start_s``). A video without an audio stream gets
silence of the video's length and ``audio_missing: true``, which later stages read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ffmpeg
import numpy as np
import soundfile as sf

from vafusion.io import atomic_output
from vafusion.video import MediaError, ffmpeg_binary, frame_times, probe_video

log = logging.getLogger(__name__)


def extract_audio(video: str | Path, wav_path: str | Path, meta_path: str | Path,
                  sample_rate: int = 16000) -> dict:
    """Write ``wav_path`` and its metadata JSON ``meta_path``; return the metadata."""
    video = Path(video)
    info = probe_video(video)
    times = frame_times(video)
    with atomic_output(wav_path) as tmp_wav:
        if info.has_audio:
            _decode_to_wav(video, tmp_wav, sample_rate)
            audio_missing = False
        else:
            n_samples = int(round(info.duration * sample_rate))
            log.warning("%s has no audio stream: writing %.3f s of silence", video, info.duration)
            sf.write(tmp_wav, np.zeros(n_samples, dtype=np.int16), sample_rate,
                     subtype="PCM_16", format="WAV")
            audio_missing = True
        wav_info = sf.info(tmp_wav)
        if wav_info.frames == 0 and not audio_missing:
            raise MediaError(f"{video}: the audio stream decodes to no samples")
        meta = {
            "video": str(video),
            "audio_missing": audio_missing,
            "sample_rate": wav_info.samplerate,
            "channels": wav_info.channels,
            "n_samples": wav_info.frames,
            "duration_s": wav_info.frames / wav_info.samplerate,
            "video_duration_s": info.duration,
            "video_fps": info.fps,
            "audio_start_s": info.audio_start if info.has_audio else times[0],
            "n_frames": len(times),
            "frame_times": times,
        }
        with atomic_output(meta_path) as tmp_meta:
            tmp_meta.write_text(json.dumps(meta) + "\n")
    log.info("%s -> %s: %.3f s of audio (video %.3f s)%s", video, wav_path, meta["duration_s"],
             info.duration, " [audio missing]" if audio_missing else "")
    return meta


def _decode_to_wav(video: Path, out: Path, sample_rate: int) -> None:
    stream = (
        ffmpeg.input(str(video))
        .output(str(out), map="0:a:0", vn=None, ac=1, ar=sample_rate, acodec="pcm_s16le", f="wav")
        .global_args("-nostdin", "-v", "error")
        .overwrite_output()
    )
    try:
        stream.run(cmd=ffmpeg_binary(), capture_stdout=True, capture_stderr=True)
    except ffmpeg.Error as err:
        detail = err.stderr.decode(errors="replace").strip().splitlines()
        raise MediaError(f"{video}: ffmpeg could not extract the audio: {' | '.join(detail[-3:])}") from None


def read_audio_meta(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
