# Snakemake adapter: every run's metrics, curves and predictions -> reports (vafusion.learning.report).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.jobs import job_logging
from vafusion.learning.report import write_reports

with job_logging(snakemake.log[0], "report"):
    write_reports(
        list(snakemake.input.metrics),
        list(snakemake.input.history),
        list(snakemake.input.predictions),
        snakemake.output.ccc,
        snakemake.output.summary,
        snakemake.output.html,
        weights=dict(snakemake.params.weights),
    )
