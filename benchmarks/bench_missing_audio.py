"""Missing audio on a finished demo run (`make bench-missing-audio`): prints measured figures,
asserts nothing.

1. The curves under both fills: every trained fold model of the run, its validation trials
   with a share of the audio frames dropped, given either ``zeros`` (the paper's zeros at
   the audio networks' input) or ``silence`` (the features of an all-zero waveform).
2. The scattered pattern's context leak. The workflow drops audio per frame on the
   features, so a kept frame next to dropped ones still has the VGGish example (0.96 s) and
   the MFCC deltas (+-2 frames) that were computed from the dropped frames' audio. Here the
   same frames are dropped in the waveform instead (each dropped frame's 1/fps slot set to
   digital silence), MFCC and VGGish are recomputed from that waveform with the run's
   settings and weights, and the same models are scored on it. The difference to the
   feature-level ``silence`` fill is what the leak changes in the curve.

Needs the run's outputs (`make run` first): models, folds, aligned trials, audio.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vafusion.dataset import discover  # noqa: E402
from vafusion.features.mfcc import MfccParams, extract_mfcc  # noqa: E402
from vafusion.features.silence import FILLS, read_fill  # noqa: E402
from vafusion.features.vggish import VggishParams, extract_vggish  # noqa: E402
from vafusion.learning.align import fit_length  # noqa: E402
from vafusion.learning.data import TrialData, open_trial  # noqa: E402
from vafusion.learning.missing_audio import missing_audio_scores, missing_frames  # noqa: E402
from vafusion.learning.predict import evaluate, load_model  # noqa: E402
from vafusion.learning.settings import MissingAudio  # noqa: E402

AUDIO_STREAMS = ("vggish", "mfcc")  # the default stream set's, recomputed here from the waveform

TARGETS = ("valence", "arousal")


def waveform_dropped_features(trial: TrialData, wav: Path, meta: dict, dropped: np.ndarray, config: dict,
                              work: Path) -> dict[str, np.ndarray]:
    """The trial's MFCC and VGGish recomputed from its waveform with the ``dropped`` frames'
    slots silenced, fitted to the trial's length as the aligner does."""
    samples, rate = sf.read(wav, dtype="float32", always_2d=False)
    times = np.asarray(meta["frame_times"], np.float64)
    slot = float(np.median(np.diff(times))) if len(times) > 1 else 0.04
    for frame in np.flatnonzero(dropped[:len(times)]):
        lo = int(round((times[frame] - meta["audio_start_s"] - slot / 2) * rate))
        hi = int(round((times[frame] - meta["audio_start_s"] + slot / 2) * rate))
        samples[max(lo, 0):max(hi, 0)] = 0.0
    cut = work / "cut.wav"
    sf.write(cut, samples, rate, subtype="PCM_16")
    features = config["features"]
    extract_mfcc(str(cut), meta, str(work / "mfcc.h5"),
                 MfccParams(**{**features["mfcc"], "sample_rate": config["media"]["sample_rate"]}))
    extract_vggish(str(cut), meta, str(work / "vggish.h5"), VggishParams(**features["vggish"]),
                   weights=config["weights"]["vggish"], pca_weights=config["weights"]["vggish_pca"], device="cpu",
                   threads=1, seed=features["random_init_seed"])
    out = {}
    for name in AUDIO_STREAMS:
        with h5py.File(work / f"{name}.h5") as h5:
            out[name] = fit_length(h5["features"][:], trial.length)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="rjca,rjca_iaca", help="models of the run to score (comma-separated)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("vafusion.weights").setLevel(logging.ERROR)  # said once below, not per recomputation
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    results = REPO / config["output"]
    dataset = discover(config["data"])
    folds = json.loads((results / "folds.json").read_text())["folds"]
    fills = {fill: read_fill({s: results / "features" / "fills" / f"{s}.h5" for s in AUDIO_STREAMS}, fill)
             for fill in FILLS}
    shares = config["learning"]["train"]["missing_audio"]["shares"]
    device = torch.device("cpu")
    started = time.perf_counter()
    print(f"# Missing audio on the demo run, {time.strftime('%Y-%m-%d %H:%M')}: {len(folds)} folds, shares "
          f"{', '.join(f'{s:g}' for s in shares)}; CCC valence / arousal over all validation trials, mean over folds; "
          f"VGGish weights: {config['weights']['vggish'] or 'RANDOM-INIT (none configured)'}")

    cache: dict[tuple[str, float], dict[str, np.ndarray]] = {}  # (trial, share) -> recomputed audio features
    curves: dict[tuple[str, str, str], list[dict]] = {}
    for model_name in args.models.split(","):
        for fold in folds:
            seed = config["learning"]["seeds"][0]  # the first seed's models
            model, normalizer, cfg, smoothing = load_model(results / "models" / model_name / f"seed{seed}"
                                                           / f"fold{fold['fold']}" / "model.pt", device)
            val = [open_trial(results / "aligned" / "default" / f"{n}.h5") for n in fold["validation"]]
            for fill in FILLS:
                both = replace(cfg, missing_audio=MissingAudio(tuple(shares), ("contiguous", "scattered"), fill))
                scores, _ = missing_audio_scores(model, val, normalizer, fills[fill], both, device, smoothing)
                for pattern in ("contiguous", "scattered"):
                    curves.setdefault((model_name, fill, pattern), []).append(scores[pattern]["all_trials"])
            per_share = {}
            for share in shares:
                def recomputed(t, share=share) -> TrialData:
                    key = (t.name, share)
                    loaded = t.load()
                    if key not in cache:
                        video = dataset.trials[t.name].video
                        meta = json.loads((results / "audio" / f"{video}.json").read_text())
                        dropped = missing_frames(t, share, "scattered", cfg.seed)
                        with tempfile.TemporaryDirectory() as tmp:
                            cache[key] = waveform_dropped_features(loaded, results / "audio" / f"{video}.wav", meta,
                                                                   dropped, config, Path(tmp))
                    streams = {**loaded.streams, **cache[key]}
                    return normalizer.apply(TrialData(t.name, streams, loaded.labels, loaded.valid))

                per_share[f"{share:g}"] = evaluate(model, val, cfg, device, smoothing, recomputed)[0]
            curves.setdefault((model_name, "waveform silence", "scattered"), []).append(per_share)

    # the recomputation reproduces the workflow's features when nothing is dropped
    worst = 0.0
    for (name, share), streams in cache.items():
        if share == 0:
            stored = open_trial(results / "aligned" / "default" / f"{name}.h5").load()
            worst = max(worst, *(float(np.abs(streams[s] - stored.streams[s]).max()) for s in AUDIO_STREAMS))
    print(f"(check: audio features recomputed with nothing dropped differ from the workflow's by at most {worst:.2e})")

    def mean_curve(runs: list[dict], target: str) -> list[float]:
        return [float(np.nanmean([r[f"{s:g}"][f"ccc_{target}"] for r in runs])) for s in shares]

    print("\n| model | fill | pattern | " + " | ".join(f"{s * 100:.0f} %" for s in shares) + " |")
    print("|---|---|---|" + "---|" * len(shares))
    for (model_name, fill, pattern), runs in sorted(curves.items()):
        v, a = mean_curve(runs, "valence"), mean_curve(runs, "arousal")
        print(f"| {model_name} | {fill} | {pattern} | " + " | ".join(f"{x:.3f} / {y:.3f}" for x, y in zip(v, a)) + " |")
    print("\nScattered pattern, the leak: waveform-level minus feature-level silence (CCC valence / arousal)")
    print("| model | " + " | ".join(f"{s * 100:.0f} %" for s in shares) + " |")
    print("|---|" + "---|" * len(shares))
    for model_name in args.models.split(","):
        wave, feat = curves[(model_name, "waveform silence", "scattered")], curves[(model_name, "silence", "scattered")]
        cells = [f"{dv:+.3f} / {da:+.3f}" for dv, da in zip(
            np.subtract(mean_curve(wave, "valence"), mean_curve(feat, "valence")),
            np.subtract(mean_curve(wave, "arousal"), mean_curve(feat, "arousal")))]
        print(f"| {model_name} | " + " | ".join(cells) + " |")
    print(f"\n{time.perf_counter() - started:.0f} s, {len(cache)} trial-share recomputations")


if __name__ == "__main__":
    main()
