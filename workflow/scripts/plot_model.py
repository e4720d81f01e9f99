# Snakemake adapter: one model's runs (all folds) -> its report figures (vafusion.learning.figures).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.jobs import job_logging
from vafusion.learning.figures import model_figures
from vafusion.learning.results import load_runs

with job_logging(snakemake.log[0], f"{snakemake.rule} {snakemake.wildcards.model}", outputs=snakemake.output):
    runs = load_runs(snakemake.input.metrics, snakemake.input.history, snakemake.input.predictions)
    model_figures(runs, dict(snakemake.output.items()))
