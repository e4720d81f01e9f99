# Snakemake adapter: video -> 16 kHz mono WAV + metadata JSON (logic in vafusion.audio).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.audio import extract_audio
from vafusion.jobs import job_logging

with job_logging(snakemake.log[0], f"extract_audio {snakemake.wildcards.video}", outputs=snakemake.output):
    extract_audio(
        snakemake.input.video,
        snakemake.output.wav,
        snakemake.output.meta,
        sample_rate=snakemake.params.sample_rate,
    )
