# Snakemake adapter: every run's metrics and figures -> tables, provenance, report.html (vafusion.learning.report).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.jobs import job_logging
from vafusion.learning.folds import read_subject_map
from vafusion.learning.report import write_reports

with job_logging(snakemake.log[0], "report", outputs=snakemake.output):
    write_reports(
        list(snakemake.input.metrics),
        dict(snakemake.output.items()),
        predictions=list(snakemake.input.predictions),
        videos=dict(snakemake.params.videos),
        subjects=read_subject_map(snakemake.input.subjects[0]) if snakemake.input.subjects else None,
        variants=dict(snakemake.params.variants),
        compare=dict(snakemake.params.compare),
        figures=list(snakemake.input.figures),
        missing_audio_figures=list(snakemake.input.missing_audio),
        weights=dict(snakemake.params.weights),
        config=dict(snakemake.params.config),
        counts=dict(snakemake.params.counts),
    )
