# Snakemake adapter: a trial's features + labels -> aligned HDF5 (vafusion.learning.align).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.jobs import job_logging
from vafusion.learning.align import align_trial

with job_logging(snakemake.log[0], f"align_trial {snakemake.wildcards.stream_set} {snakemake.wildcards.trial}", outputs=snakemake.output):
    align_trial(
        snakemake.output.aligned,
        trial=snakemake.wildcards.trial,
        partition=snakemake.params.partition,
        features={name: snakemake.input[name] for name in snakemake.params.streams},
        faces=snakemake.input.faces,
        audio_meta=snakemake.input.audio_meta,
        labels=snakemake.input.get("labels"),
    )
