# Snakemake adapter: the MFCC and VGGish features of all-zero audio (vafusion.features.silence).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.devices import job_device
from vafusion.features.mfcc import MfccParams
from vafusion.features.silence import silence_features
from vafusion.features.vggish import VggishParams
from vafusion.jobs import job_logging

with (
    job_logging(snakemake.log[0], "silence_features", outputs=snakemake.output),
    job_device(snakemake.params.device) as device,
):
    silence_features(
        snakemake.output.features,
        MfccParams(**snakemake.params.mfcc),
        VggishParams(**snakemake.params.vggish),
        weights=snakemake.input.weights[0] if snakemake.input.weights else None,
        pca_weights=snakemake.input.pca_weights[0] if snakemake.input.pca_weights else None,
        device=device,
        threads=snakemake.threads,
        seed=snakemake.params.seed,
    )
