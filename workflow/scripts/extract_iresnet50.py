# Snakemake adapter: aligned faces HDF5 -> per-frame IResNet-50 HDF5 (vafusion.features.iresnet).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.devices import job_device
from vafusion.features.iresnet import IresnetParams, extract_iresnet50
from vafusion.jobs import job_logging

with (
    job_logging(snakemake.log[0], f"extract_iresnet50 {snakemake.wildcards.trial}", outputs=snakemake.output),
    job_device(snakemake.params.device) as device,
):
    extract_iresnet50(
        snakemake.input.faces,
        snakemake.output.features,
        IresnetParams(**snakemake.params.iresnet50),
        weights=snakemake.input.weights[0] if snakemake.input.weights else None,
        device=device,
        threads=snakemake.threads,
        seed=snakemake.params.seed,
    )
