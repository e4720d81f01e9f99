# Snakemake adapter: every run's missing-audio scores -> one figure per pattern (vafusion.learning.figures).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.jobs import job_logging
from vafusion.learning.figures import plot_missing_audio
from vafusion.learning.results import load_metrics

with job_logging(snakemake.log[0], f"plot_missing_audio {snakemake.wildcards.pattern}", outputs=snakemake.output):
    plot_missing_audio(load_metrics(snakemake.input.metrics), snakemake.wildcards.pattern, snakemake.output.figure)
