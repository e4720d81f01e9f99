# Snakemake adapter: WAV + frame clock -> per-frame VGGish HDF5 (vafusion.features.vggish).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.audio import read_audio_meta
from vafusion.devices import job_device
from vafusion.features.vggish import VggishParams, extract_vggish
from vafusion.jobs import job_logging

with (
    job_logging(snakemake.log[0], f"extract_vggish {snakemake.wildcards.video}", outputs=snakemake.output),
    job_device(snakemake.params.device) as device,
):
    extract_vggish(
        snakemake.input.wav,
        read_audio_meta(snakemake.input.meta),
        snakemake.output.features,
        VggishParams(**snakemake.params.vggish),
        weights=snakemake.input.weights[0] if snakemake.input.weights else None,
        pca_weights=snakemake.input.pca_weights[0] if snakemake.input.pca_weights else None,
        device=device,
        threads=snakemake.threads,
        seed=snakemake.params.seed,
    )
