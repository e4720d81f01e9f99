# Snakemake adapter: WAV + frame clock -> per-frame MFCC+deltas HDF5 (vafusion.features.mfcc).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.audio import read_audio_meta
from vafusion.features.mfcc import MfccParams, extract_mfcc
from vafusion.jobs import job_logging

with job_logging(snakemake.log[0], f"extract_mfcc {snakemake.wildcards.video}", outputs=snakemake.output):
    extract_mfcc(
        snakemake.input.wav,
        read_audio_meta(snakemake.input.meta),
        snakemake.output.features,
        MfccParams(**snakemake.params.mfcc),
    )
