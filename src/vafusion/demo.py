"""The demo dataset: a tiny Aff-Wild2-layout dataset built from real GRID recordings.

The valence/arousal curves are synthetic, but the media carry them, so that a model has
something real to learn from either modality:

- visible cues, in the face itself: valence tints the picture (warm for positive, cool for
  negative), arousal scales its brightness;
- audible cues: a tone whose pitch follows valence (200-800 Hz) and whose loudness, with
  the loudness of the speech, follows arousal.

In the two-person video each half of the picture carries its own person's curves, and the
left/right audio channel carries the left/right person's tone.

The layout exercises what the pipeline must handle: mp4 and avi, 25 and 30 fps, a
two-person video (``_left``/``_right`` trials), ``-5`` rows (both targets, and one target
alone), ``cropped_aligned`` folders with missing frames (a leading gap and a middle gap),
a trial without a ``cropped_aligned`` folder (its faces must be detected), a video without
an audio stream, and videos in nested folders.

With 11 clips, recordings repeat across partitions: the validation trials grid_sbwe5n,
grid_sbia1a and grid_bbaf2n_take2 and both test trials reuse recordings of the training
partition (other container, frame rate, crop and synthetic curves). The folds separate
videos, not recordings or speakers: the demo shows the pipeline working, not generalisation
to unseen people (README, The demo dataset).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

from vafusion.annotations import INVALID, write_annotation
from vafusion.faces import FaceDetector, pick_face, warp_face
from vafusion.video import ffmpeg_binary, iter_frames

log = logging.getLogger(__name__)

AUDIO_RATE = 44100  # the pipeline must resample to 16 kHz
DURATION_S = 3.0  # every demo video lasts 3 s (75 frames at 25 fps, 90 at 30 fps)


@dataclass(frozen=True)
class DemoTrial:
    name: str
    partition: str  # train / validation / test
    side: str | None = None
    cropped: str = "full"  # full / gaps / leading-gap / none
    invalid: str | None = None  # None / "both" / "valence"


@dataclass(frozen=True)
class DemoVideo:
    name: str
    clips: tuple[str, ...]  # GRID clip stems: one, or two side by side
    container: str  # mp4 / avi
    fps: int
    trials: tuple[DemoTrial, ...]
    audio: bool = True
    folder: str = "batch1"


def _single(name, clip, container, fps, partition, folder="batch1", audio=True, **trial):
    return DemoVideo(name, (clip,), container, fps, (DemoTrial(name, partition, **trial),),
                     audio=audio, folder=folder)


DEMO_VIDEOS: tuple[DemoVideo, ...] = (
    # training partition: 8 single-person videos and one two-person video (10 trials)
    _single("grid_bbaf2n", "bbaf2n", "mp4", 25, "train", invalid="both"),
    _single("grid_brbk7n", "brbk7n", "avi", 30, "train", cropped="gaps"),
    _single("grid_lbax4n", "lbax4n", "mp4", 30, "train"),
    _single("grid_lbbc2a", "lbbc2a", "avi", 25, "train", invalid="valence"),
    _single("grid_lrwp9a", "lrwp9a", "mp4", 25, "train", cropped="leading-gap"),
    _single("grid_lwbsza", "lwbsza", "avi", 30, "train", folder="batch2"),
    _single("grid_pwij3p", "pwij3p", "mp4", 25, "train", cropped="none", folder="batch2"),
    _single("grid_swiz3n", "swiz3n", "avi", 25, "train", folder="batch2"),
    DemoVideo("duo_sbia1a_sbwe5n", ("sbia1a", "sbwe5n"), "mp4", 25,
              (DemoTrial("duo_sbia1a_sbwe5n_left", "train", side="left"),
               DemoTrial("duo_sbia1a_sbwe5n_right", "train", side="right", cropped="gaps"))),
    # validation partition: 4 trials
    _single("grid_swwp2s", "id2_vcd_swwp2s", "mp4", 25, "validation"),
    _single("grid_sbwe5n", "sbwe5n", "avi", 30, "validation", invalid="both"),
    _single("grid_sbia1a", "sbia1a", "mp4", 30, "validation", folder="batch2"),
    _single("grid_bbaf2n_take2", "bbaf2n", "avi", 25, "validation", cropped="gaps"),
    # test trials: no annotation in the layout (their synthetic truth is kept aside)
    _single("grid_lbax4n_take2", "lbax4n", "avi", 30, "test", folder="batch2"),
    _single("grid_brbk7n_silent", "brbk7n", "mp4", 25, "test", audio=False),
)


def synthetic_curve(rng: np.random.Generator, n_frames: int, fps: float) -> np.ndarray:
    """A smooth random curve in [-0.9, 0.9]: an offset plus three slow sinusoids."""
    t = np.arange(n_frames) / fps
    curve = rng.uniform(-0.5, 0.5) * np.ones(n_frames)
    for _ in range(3):
        freq = rng.uniform(0.1, 0.8)
        curve += rng.uniform(0.1, 0.3) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    return np.clip(curve, -0.9, 0.9)


def apply_visible_cue(rgb: np.ndarray, valence: float, arousal: float) -> np.ndarray:
    """Tint by valence (red up / blue down when positive), brightness by arousal."""
    out = rgb.astype(np.float32)
    out[..., 0] *= 1.0 + 0.25 * valence
    out[..., 2] *= 1.0 - 0.25 * valence
    out *= 1.0 + 0.3 * arousal
    return np.clip(out, 0, 255).astype(np.uint8)


def audible_cue(valence: np.ndarray, arousal: np.ndarray, fps: float, n_samples: int,
                rate: int = AUDIO_RATE) -> tuple[np.ndarray, np.ndarray]:
    """(tone, speech_gain) per audio sample from per-frame curves."""
    t = np.arange(n_samples) / rate
    frame_t = np.arange(len(valence)) / fps
    v = np.interp(t, frame_t, valence)
    a = np.interp(t, frame_t, arousal)
    freq = 400.0 * 2.0**v  # 200..800 Hz
    phase = 2 * np.pi * np.cumsum(freq) / rate
    tone = (0.03 + 0.12 * (a + 1) / 2) * np.sin(phase)
    speech_gain = 0.5 + 0.5 * (a + 1) / 2
    return tone, speech_gain


def _read_clip(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """All frames (RGB) and the audio (float mono at AUDIO_RATE) of one GRID clip."""
    frames = [f.rgb for f in iter_frames(path)]
    raw = subprocess.run(
        [ffmpeg_binary(), "-nostdin", "-v", "error", "-i", str(path), "-vn", "-ac", "1",
         "-ar", str(AUDIO_RATE), "-f", "f32le", "-"],
        check=True, capture_output=True).stdout
    return frames, np.frombuffer(raw, dtype=np.float32).astype(np.float64)


def _encode(path: Path, frames: list[np.ndarray], fps: int, audio: np.ndarray | None, tmp: Path) -> None:
    height, width = frames[0].shape[:2]
    cmd = [ffmpeg_binary(), "-nostdin", "-v", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-"]
    if audio is not None:
        wav = tmp / f"{path.stem}.wav"
        sf.write(wav, audio, AUDIO_RATE, subtype="PCM_16")
        cmd += ["-i", str(wav)]
    if path.suffix == ".mp4":
        cmd += ["-c:v", "libx264", "-preset", "fast", "-crf", "18", "-pix_fmt", "yuv420p"]
        cmd += ["-c:a", "aac", "-b:a", "128k"] if audio is not None else []
    else:
        cmd += ["-c:v", "mpeg4", "-q:v", "2"]
        cmd += ["-c:a", "pcm_s16le"] if audio is not None else []
    cmd.append(str(path))
    subprocess.run(cmd, input=np.stack(frames).tobytes(), check=True, capture_output=True)


def _render_video(spec: DemoVideo, source_dir: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]],
                  out: Path, tmp: Path) -> None:
    clips = [_read_clip(source_dir / f"{clip}.mpg") for clip in spec.clips]
    n_out = int(round(DURATION_S * spec.fps))
    n_samples = int(round(DURATION_S * AUDIO_RATE))
    frames = []
    for k in range(n_out):
        parts = []
        for (clip_frames, _), trial in zip(clips, spec.trials):
            src = clip_frames[min(int(k * 25 / spec.fps), len(clip_frames) - 1)]
            v, a = curves[trial.name]
            parts.append(apply_visible_cue(src, v[k], a[k]))
        frames.append(np.hstack(parts))
    channels = []
    for (_, speech), trial in zip(clips, spec.trials):
        v, a = curves[trial.name]
        tone, gain = audible_cue(v, a, spec.fps, n_samples)
        padded = np.zeros(n_samples)
        padded[: min(len(speech), n_samples)] = speech[:n_samples]
        channels.append(np.clip(0.8 * gain * padded + tone, -1, 1))
    audio = np.stack(channels * (2 // len(channels)), axis=1) if spec.audio else None
    _encode(out, frames, spec.fps, audio, tmp)


def _write_cropped_aligned(video: Path, trial: DemoTrial, folder: Path, detector: FaceDetector) -> int:
    """Aligned faces of the encoded video, as Aff-Wild2 ships them; returns frames written."""
    folder.mkdir(parents=True)
    written = 0
    for frame in iter_frames(video):
        n = frame.index + 1
        if trial.cropped == "gaps" and 30 <= n < 38:
            continue  # a run of frames where the dataset's detector "failed"
        if trial.cropped == "leading-gap" and n <= 5:
            continue
        face = pick_face(detector.detect(frame.rgb), trial.side, frame.rgb.shape[1])
        if face is None:
            continue
        bgr = cv2.cvtColor(warp_face(frame.rgb, face.keypoints), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / f"{n:05d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        written += 1
    return written


def _mark_invalid(values: np.ndarray, trial: DemoTrial, target: str) -> np.ndarray:
    values = values.copy()
    if trial.invalid == "both":
        values[40:50] = INVALID
        values[-5:] = INVALID
    elif trial.invalid == "valence" and target == "valence":
        values[:6] = INVALID
    return values


def build_demo_dataset(out_dir: str | Path, source_dir: str | Path, seed: int = 0) -> dict:
    """Build the demo dataset into ``out_dir`` (atomically: a temporary folder renamed at
    the end). Returns a summary of what was written."""
    out_dir, source_dir = Path(out_dir), Path(source_dir)
    rng = np.random.default_rng(seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    detector = FaceDetector(upsample=0)
    summary: dict = {"seed": seed, "videos": {}, "trials": {}}
    try:
        tmp = staging / ".tmp"
        tmp.mkdir()
        for spec in DEMO_VIDEOS:
            n_frames = int(round(DURATION_S * spec.fps))
            curves = {t.name: (synthetic_curve(rng, n_frames, spec.fps), synthetic_curve(rng, n_frames, spec.fps))
                      for t in spec.trials}
            video = staging / "videos" / spec.folder / f"{spec.name}.{spec.container}"
            video.parent.mkdir(parents=True, exist_ok=True)
            _render_video(spec, source_dir, curves, video, tmp)
            summary["videos"][spec.name] = {"file": str(video.relative_to(staging)), "fps": spec.fps,
                                            "frames": n_frames, "audio": spec.audio, "clips": list(spec.clips)}
            for trial in spec.trials:
                v, a = curves[trial.name]
                labels = "test_annotations" if trial.partition == "test" else f"annotations/{trial.partition}"
                (staging / labels).mkdir(parents=True, exist_ok=True)
                write_annotation(staging / labels / f"{trial.name}.txt",
                                 _mark_invalid(v, trial, "valence"), _mark_invalid(a, trial, "arousal"))
                faces = 0
                if trial.cropped != "none":
                    faces = _write_cropped_aligned(video, trial, staging / "cropped_aligned" / trial.name, detector)
                summary["trials"][trial.name] = {"partition": trial.partition, "video": spec.name,
                                                 "side": trial.side or "", "cropped_aligned_frames": faces}
                log.info("demo trial %s (%s): %d frames, %d cropped_aligned faces",
                         trial.name, trial.partition, n_frames, faces)
        shutil.rmtree(tmp)
        tests = [t.name for v in DEMO_VIDEOS for t in v.trials if t.partition == "test"]
        (staging / "test_trials.txt").write_text("\n".join(tests) + "\n")
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (staging / "README.md").write_text(DEMO_README)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


DEMO_README = """# vafusion demo dataset (generated)

Built by `make demo` (`vafusion.demo.build_demo_dataset`) from GRID audiovisual corpus
clips. THE VALENCE/AROUSAL ANNOTATIONS ARE SYNTHETIC: random smooth curves, carried by
the media (a colour tint and brightness change of the picture; a tone whose pitch and
loudness, with the speech's loudness, follow the curves). They say nothing about the
speakers' real affect. `test_annotations/` holds the synthetic truth of the test trials.

GRID corpus, CC BY 4.0 (doi:10.5281/zenodo.3625687): M. Cooke, J. Barker, S. Cunningham,
X. Shao, "An audio-visual corpus for speech perception and automatic speech recognition",
JASA 120(5):2421-2424, 2006.
"""
