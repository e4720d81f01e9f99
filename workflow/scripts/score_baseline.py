# Snakemake adapter: a face model's own valence/arousal columns on one fold's validation trials ->
# val_predictions.h5 and metrics.json, as a trained run's (vafusion.learning.baseline).
import json
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.jobs import job_logging
from vafusion.learning.baseline import score_baseline

wildcards = snakemake.wildcards
with job_logging(snakemake.log[0], f"score_baseline {wildcards.model} seed {wildcards.seed} fold {wildcards.fold}",
                 outputs=snakemake.output):
    fold = json.loads(Path(snakemake.input.folds).read_text())["folds"][int(wildcards.fold)]
    score_baseline(wildcards.model, snakemake.params.stream, list(snakemake.params.columns), fold,
                   {Path(p).stem: Path(p) for p in snakemake.input.aligned}, int(wildcards.seed),
                   Path(snakemake.output.metrics).parent)
