# Snakemake adapter: one feature stream of one video or trial, by its registry entry
# (vafusion.features.registry): the stream's module writes the per-frame HDF5.
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.audio import read_audio_meta
from vafusion.devices import job_device
from vafusion.features import registry
from vafusion.jobs import job_logging

stream = registry.get(snakemake.params.stream, snakemake.config)
item = getattr(snakemake.wildcards, "video", None) or snakemake.wildcards.trial
with (
    job_logging(snakemake.log[0], f"extract {stream.name} {item}", outputs=snakemake.output),
    job_device(snakemake.params.device) as device,
):
    inputs = snakemake.input
    stream.extractor()(registry.ExtractJob(
        stream=stream.name,
        output=snakemake.output.features,
        settings=snakemake.params.settings,
        wav=inputs.get("wav"),
        meta=read_audio_meta(inputs.meta) if "meta" in inputs.keys() else None,
        faces=inputs.get("faces"),
        csv=inputs.get("csv"),
        weights=snakemake.params.weights,
        device=device,
        threads=snakemake.threads,
        seed=snakemake.params.seed,
    ))
