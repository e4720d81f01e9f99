# Snakemake adapter: every run's missing-audio scores -> one figure per pattern (vafusion.learning.figures).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.jobs import job_logging
from vafusion.learning.comparisons import missing_audio_bootstrap
from vafusion.learning.figures import plot_missing_audio
from vafusion.learning.folds import read_subject_map, resampling_units
from vafusion.learning.results import load_metrics

with job_logging(snakemake.log[0], f"plot_missing_audio {snakemake.wildcards.pattern}", outputs=snakemake.output):
    rows = load_metrics(snakemake.input.metrics)
    subjects = read_subject_map(snakemake.input.subjects[0]) if snakemake.input.subjects else None
    units = resampling_units(dict(snakemake.params.videos), subjects)
    boot = missing_audio_bootstrap(rows, snakemake.wildcards.pattern, units, dict(snakemake.params.compare))
    plot_missing_audio(rows, snakemake.wildcards.pattern, snakemake.output.figure, boot)
