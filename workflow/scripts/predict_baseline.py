# Snakemake adapter: a face model's own valence/arousal columns on the test trials (vafusion.learning.baseline).
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.jobs import job_logging
from vafusion.learning.baseline import predict_baseline

with job_logging(snakemake.log[0], f"predict_baseline {snakemake.wildcards.model}", outputs=snakemake.output):
    predict_baseline(snakemake.params.stream, list(snakemake.params.columns),
                     {Path(p).stem: Path(p) for p in snakemake.input.aligned},
                     Path(snakemake.output.predictions[0]).parent)
