# Snakemake adapter: the fold models of one model -> averaged test predictions (vafusion.learning.train).
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.devices import job_device
from vafusion.jobs import job_logging
from vafusion.learning.provenance import check_features
from vafusion.learning.predict import predict_test_trials

with (
    job_logging(snakemake.log[0], f"predict_test {snakemake.wildcards.model}", outputs=snakemake.output),
    job_device(snakemake.params.device) as device,
):
    # the test trials' features against the models' record (the run stopped at parse time if its
    # config differs; this catches feature files left from other settings)
    check_features(snakemake.input.models, snakemake.input.aligned)
    predict_test_trials(
        snakemake.input.models,
        {Path(p).stem: Path(p) for p in snakemake.input.aligned},
        Path(snakemake.output.predictions[0]).parent,
        device=device,
    )
