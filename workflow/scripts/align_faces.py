# Snakemake adapter: video (+ dataset's aligned faces) -> per-frame faces HDF5 (vafusion.faces).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.faces import align_trial_faces
from vafusion.jobs import job_logging

with job_logging(snakemake.log[0], f"align_faces {snakemake.wildcards.trial}", outputs=snakemake.output):
    align_trial_faces(
        snakemake.input.video,
        snakemake.output.faces,
        trial=snakemake.wildcards.trial,
        side=snakemake.params.side,
        cropped_aligned=snakemake.input.get("cropped_aligned"),
        # None for a trial with cropped_aligned faces, which runs no detector
        upsample=snakemake.params.upsample or 0,
        detector=snakemake.params.detector or "hog",
    )
