"""Honest learning check on the demo dataset (`make bench-learning`): prints measured
figures, asserts nothing.

For every model and fold, the validation CCC of
  (a) a constant predictor (the training partition's mean label on every frame),
  (b) the model trained on labels shuffled across training trials (each training trial
      gets another trial's label curve, resampled to its length), evaluated on the true
      validation labels,
  (c) the model trained on the true labels,
plus the training throughput (windows/s). Needs the workflow's aligned files and folds
(it runs `snakemake` up to them first).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vafusion.learning.data import load_trial  # noqa: E402
from vafusion.learning.predict import fold_ccc  # noqa: E402
from vafusion.learning.settings import TrainConfig  # noqa: E402
from vafusion.learning.train import train_fold  # noqa: E402
from vafusion.models import FUSION_MODELS, config_section  # noqa: E402


def shuffled_copies(names: list[str], aligned: dict[str, Path], out: Path, rng: np.random.Generator) -> dict[str, Path]:
    """Copies of the training trials whose labels come from another trial (a derangement)."""
    order = list(names)
    while len(order) > 1 and any(a == b for a, b in zip(order, names)):
        rng.shuffle(order)
    copies = {}
    for name, donor in zip(names, order):
        copies[name] = out / f"{name}.h5"
        shutil.copy(aligned[name], copies[name])
        with h5py.File(aligned[donor]) as src, h5py.File(copies[name], "r+") as dst:
            length = dst["valence"].shape[0]
            index = np.round(np.linspace(0, src["valence"].shape[0] - 1, length)).astype(int)
            for key in ("valence", "arousal", "valid_valence", "valid_arousal"):
                dst[key][...] = src[key][:][index]
    return copies


def constant_scores(fold: dict, aligned: dict[str, Path]) -> dict[str, float]:
    train = [load_trial(aligned[n]) for n in fold["train"]]
    val = [load_trial(aligned[n]) for n in fold["validation"]]
    means = [np.mean(np.concatenate([t.labels[t.valid[:, j], j] for t in train])) for j in range(2)]
    predictions = {t.name: np.tile(np.array(means, np.float32), (t.length, 1)) for t in val}
    logging.getLogger("vafusion.learning.ccc").setLevel(logging.ERROR)
    return fold_ccc(predictions, val)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(FUSION_MODELS))
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a learning setting for this check, e.g. cross_attention.clip_frames=1 "
                             "(the CA/TCA models without temporal context)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    for item in args.set:
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        section = config["learning"]
        for part in path:
            section = section[part]
        section[last] = yaml.safe_load(value)
    results = REPO / config["output"]
    snakemake = [sys.executable, "-m", "snakemake", "--cores", "2"]
    quiet = {"cwd": REPO, "check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(snakemake + [f"{config['output']}/folds.json"], **quiet)
    annotated = json.loads((results / "folds.json").read_text())
    names = sorted({n for f in annotated["folds"] for n in f["train"] + f["validation"]})
    subprocess.run(snakemake + [f"{config['output']}/aligned/default/{n}.h5" for n in names], **quiet)
    aligned = {n: results / "aligned" / "default" / f"{n}.h5" for n in names}  # the default stream set
    cfg = replace(TrainConfig.from_dict(config["learning"]["train"], seed=0), max_epochs=args.max_epochs)
    print(f"# Honest learning check, {time.strftime('%Y-%m-%d %H:%M')}: demo dataset, "
          f"{len(annotated['folds'])} folds, max {cfg.max_epochs} epochs, CPU {args.threads} threads"
          + "".join(f", {item}" for item in args.set))
    print("| model | constant | shuffled labels | true labels | margin over shuffled | windows/s |")
    print("|---|---|---|---|---|---|")
    constant = [constant_scores(f, aligned)["ccc_mean"] for f in annotated["folds"]]
    for model in args.models.split(","):
        hparams = config["learning"][config_section(model)]
        real, fake, speed = [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            for fold in annotated["folds"]:
                tmp_fold = Path(tmp) / f"fold{fold['fold']}"
                (tmp_fold / "data").mkdir(parents=True)
                m = train_fold(model, hparams, fold, aligned, tmp_fold / "real", cfg, device="cpu", threads=args.threads)
                real.append(m["ccc_mean"])
                speed.append(m["windows_per_s"])
                rng = np.random.default_rng(fold["fold"])
                shuffled = {**aligned, **shuffled_copies(fold["train"], aligned, tmp_fold / "data", rng)}
                s = train_fold(model, hparams, fold, shuffled, tmp_fold / "shuffled", cfg, device="cpu", threads=args.threads)
                fake.append(s["ccc_mean"])

        def fmt(values):
            return f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}"

        print(f"| {model} | {fmt(constant)} | {fmt(fake)} | {fmt(real)} | {np.nanmean(real) - np.nanmean(fake):+.3f} "
              f"| {np.median(speed):.1f} |", flush=True)


if __name__ == "__main__":
    main()
