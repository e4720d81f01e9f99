# Snakemake adapter: an audio stream's rows for dropped audio, zeros and silence (vafusion.features.silence).
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.devices import job_device
from vafusion.features import registry
from vafusion.features.silence import fill_features
from vafusion.jobs import job_logging

stream = registry.get(snakemake.params.stream, snakemake.config)
with (
    job_logging(snakemake.log[0], f"fill_features {stream.name}", outputs=snakemake.output),
    job_device(snakemake.params.device) as device,
):
    job = registry.ExtractJob(stream=stream.name, output="", settings=snakemake.params.settings,
                              weights=snakemake.params.weights, device=device, threads=snakemake.threads,
                              seed=snakemake.params.seed)
    fill_features(snakemake.output.fills, stream, job, example=snakemake.input.example[0] if snakemake.input.example else None)
