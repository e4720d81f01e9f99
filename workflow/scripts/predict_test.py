# Snakemake adapter: the fold models of one model -> averaged test predictions (vafusion.learning.train).
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.devices import job_device
from vafusion.jobs import job_logging
from vafusion.learning.train import predict_test_trials

with (
    job_logging(snakemake.log[0], f"predict_test {snakemake.wildcards.model}"),
    job_device(snakemake.params.device) as device,
):
    predict_test_trials(
        snakemake.input.models,
        {Path(p).stem: Path(p) for p in snakemake.input.aligned},
        Path(snakemake.output.predictions[0]).parent,
        device=device,
    )
