# Snakemake adapter: GRID clips -> demo dataset in the Aff-Wild2 layout (vafusion.demo).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.demo import build_demo_dataset
from vafusion.jobs import job_logging

with job_logging(snakemake.log[0], "build_demo_dataset", outputs=snakemake.output):
    build_demo_dataset(snakemake.output.dataset, snakemake.params.source, seed=snakemake.params.seed)
