"""Video decoding and WAV extraction with the real ffmpeg, on generated and GRID media."""

import json
import re
import subprocess

import numpy as np
import pytest
import soundfile as sf

from conftest import GRID
from vafusion.audio import extract_audio
from vafusion.video import MediaError, ffmpeg_binary, frame_times, iter_frames, probe_video


def _ffmpeg(*args: str) -> str:
    """Run the real ffmpeg; its log (stderr)."""
    cmd = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-nostats", "-y", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stderr


def _test_pattern(path, seconds: float, *options: str):
    """A 25 fps H.264 test pattern without audio."""
    _ffmpeg("-v", "error", "-f", "lavfi", "-i", f"testsrc=size=64x48:rate=25:duration={seconds}",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", *options, str(path))
    return path


def test_wav_is_16k_mono_pcm16_and_as_long_as_the_audio(tmp_path, video_factory):
    video = video_factory("tone clip.mp4", seconds=2.0, fps=30)  # spaces in the name
    meta = extract_audio(video, tmp_path / "a.wav", tmp_path / "a.json")
    info = sf.info(tmp_path / "a.wav")
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert abs(info.duration - 2.0) < 1 / 30
    assert meta == json.loads((tmp_path / "a.json").read_text())
    assert meta["audio_missing"] is False
    # the 440 Hz tone survives the resampling
    samples, rate = sf.read(tmp_path / "a.wav")
    spectrum = np.abs(np.fft.rfft(samples[4000:20000]))
    assert abs(np.argmax(spectrum) * rate / 16000 - 440) < 2


def test_decoded_frames_are_plain_contiguous_rgb():
    """No decoder row padding leaks out (libraries that ignore strides would read it)."""
    frames = list(iter_frames(GRID / "bbaf2n.mpg"))
    assert len(frames) == 75
    assert all(f.rgb.flags["C_CONTIGUOUS"] and f.rgb.shape == (288, 360, 3) for f in frames)


def test_grid_clip_audio_keeps_its_real_length(tmp_path):
    meta = extract_audio(GRID / "bbaf2n.mpg", tmp_path / "g.wav", tmp_path / "g.json")
    # GRID's audio ends 50 ms before its 3 s video; the WAV is not stretched (features pad)
    assert meta["sample_rate"] == 16000 and meta["channels"] == 1
    assert 2.9 < meta["duration_s"] < 3.0
    assert abs(meta["video_duration_s"] - 3.0) < 0.05


def test_video_without_audio_gets_silence_and_a_flag(tmp_path, video_factory):
    video = video_factory(seconds=1.2, fps=25, audio=False)
    meta = extract_audio(video, tmp_path / "s.wav", tmp_path / "s.json")
    samples, rate = sf.read(tmp_path / "s.wav")
    assert meta["audio_missing"] is True and rate == 16000
    assert abs(len(samples) / rate - 1.2) < 1 / 25
    assert not samples.any()


def test_corrupt_video_fails_naming_the_file_and_leaves_nothing(tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(MediaError, match="corrupt.mp4"):
        extract_audio(bad, tmp_path / "x.wav", tmp_path / "x.json")
    with pytest.raises(MediaError, match="corrupt.mp4"):
        list(iter_frames(bad))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.mp4"]


@pytest.mark.parametrize("keep", [0.5, 0.9])
@pytest.mark.parametrize("moov_first", [True, False], ids=["moov-first", "moov-last"])
def test_truncated_video_fails_naming_the_file(tmp_path, keep, moov_first):
    """A cut download. With the mp4 index (moov) first the cut file still opens and declares
    the whole 4 s, so decoding must notice the missing end (even the 90 % cut lacks far more
    than the tolerance); with the index last the cut file does not open at all."""
    video = _test_pattern(tmp_path / "whole.mp4", 4.0, *(["-movflags", "+faststart"] if moov_first else []))
    data = video.read_bytes()
    assert (data.index(b"moov") < data.index(b"mdat")) == moov_first
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * keep)])
    if moov_first:
        assert probe_video(cut).duration == 4.0
    with pytest.raises(MediaError, match="cut.mp4"):
        list(iter_frames(cut))


def test_mp4_edit_list_is_accepted_on_ffmpegs_frame_clock(tmp_path):
    """A stream-copy cut on a non-keyframe keeps the leading frames of the group of pictures
    in the file and an edit list that hides them: the container counts frames that no decoder
    shows. Such a file plays; its frames are the ones ffmpeg itself shows, at its times."""
    whole = _test_pattern(tmp_path / "whole.mp4", 2.0, "-bf", "3")
    edited = tmp_path / "edited.mp4"
    _ffmpeg("-v", "error", "-ss", "0.5", "-i", str(whole), "-c", "copy", str(edited))
    times = frame_times(edited)
    assert probe_video(edited).declared_frames > len(times)  # the container counts hidden frames
    log = _ffmpeg("-copyts", "-i", str(edited), "-map", "0:v:0", "-vf", "showinfo", "-f", "null", "-")
    shown = [float(t) for t in re.findall(r"pts_time:(\S+)", log)]
    assert len(times) == len(shown)
    np.testing.assert_allclose(times, shown, atol=1e-3)


def test_truncated_avi_with_index_is_detected(tmp_path, video_factory):
    video = video_factory("whole.avi", seconds=2.0, audio=False, vcodec="mpeg4")
    assert probe_video(video).declared_frames == 50
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match="cut.avi"):
        list(iter_frames(cut))


def test_variable_frame_rate_keeps_container_timestamps(tmp_path):
    """Frames whose timestamps are irregular keep them (the pipeline's frame clock)."""
    vfr = tmp_path / "vfr.mkv"
    # 10 frames at 25 fps, then timestamps stretched 3x for frames >= 5
    subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=0.4",
         "-vf", "setpts='if(lt(N,5),N,5+3*(N-5))/(25*TB)'", "-fps_mode", "passthrough",
         "-c:v", "libx264", str(vfr)],
        check=True, capture_output=True)
    times = [f.time for f in iter_frames(vfr)]
    assert len(times) == 10
    np.testing.assert_allclose(times, [k / 25 if k < 5 else (5 + 3 * (k - 5)) / 25 for k in range(10)], atol=2e-3)
