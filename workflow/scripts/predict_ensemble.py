# Snakemake adapter: the members' test predictions -> the ensemble's weighted mean per test trial
# (vafusion.learning.ensemble); ccc weights from every validation fold and seed of the members.
import json
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.jobs import job_logging
from vafusion.learning.ensemble import ensemble_weights, group_metrics, predict_ensemble
from vafusion.learning.results import read_metrics

job = f"predict_ensemble {snakemake.wildcards.model}"
with job_logging(snakemake.log[0], job, outputs=snakemake.output) as log:
    members = list(snakemake.params.members)
    trials = list(snakemake.params.trials)
    # predictions/<run>/test/<trial>.txt: the member is the folder above test/
    folders = {Path(p).parent.parent.name: Path(p).parent for p in snakemake.input.member_predictions}
    if set(folders) != set(members):
        raise ValueError(f"test predictions of {sorted(folders)} given for the members {members}")
    outputs = [Path(p) for p in snakemake.output.predictions]
    out_dir = outputs[0].parent
    if sorted(outputs) != sorted(out_dir / f"{t}.txt" for t in trials):
        raise ValueError(f"outputs must be one <trial>.txt per params.trials, in one folder: {outputs}")
    metrics = group_metrics([read_metrics(p) for p in snakemake.input.member_metrics], members)
    weights = ensemble_weights(metrics, snakemake.params.weights, fold=None, seed=None)
    log.info("%s weights over every fold and seed: %s", snakemake.params.weights, json.dumps(weights))
    predict_ensemble({m: folders[m] for m in members}, weights, trials, out_dir)
