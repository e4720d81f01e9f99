# Snakemake adapter: the members' validation predictions of one seed and fold -> the ensemble's
# val_predictions.h5 and metrics.json (vafusion.learning.ensemble).
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.jobs import job_logging
from vafusion.learning.ensemble import ensemble_fold, group_metrics
from vafusion.learning.results import read_metrics

wildcards = snakemake.wildcards
with job_logging(snakemake.log[0], f"ensemble_fold {wildcards.model} seed {wildcards.seed} fold {wildcards.fold}",
                 outputs=snakemake.output):
    members = list(snakemake.params.members)
    predictions = [Path(p) for p in snakemake.input.member_predictions]
    if len(predictions) != len(members):
        raise ValueError(f"{len(predictions)} val_predictions.h5 for the {len(members)} members {members}")
    out_dir = Path(snakemake.output.metrics).parent
    if (Path(snakemake.output.metrics).name, Path(snakemake.output.predictions)) != (
            "metrics.json", out_dir / "val_predictions.h5"):
        raise ValueError(f"outputs must be metrics.json and val_predictions.h5 in one folder, got {snakemake.output}")
    # read_metrics refuses an untrained member; every fold of this seed, for the ccc weights
    metrics = group_metrics([read_metrics(p) for p in snakemake.input.member_metrics], members)
    ensemble_fold(wildcards.model, dict(zip(members, predictions)), metrics, snakemake.params.weights,
                  fold=int(wildcards.fold), seed=int(wildcards.seed), out_dir=out_dir)
