# Snakemake adapter: annotation .txt -> validated labels HDF5 (vafusion.annotations).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.annotations import write_labels
from vafusion.jobs import job_logging

with job_logging(snakemake.log[0], f"read_annotation {snakemake.wildcards.trial}", outputs=snakemake.output):
    write_labels(snakemake.input.annotation, snakemake.output.labels)
