# Snakemake adapter: folds + aligned trials -> one trained model per fold (vafusion.learning.train).
import json
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.devices import job_device
from vafusion.features.silence import read_silence
from vafusion.jobs import job_logging
from vafusion.learning.train import TrainConfig, train_fold

with (
    job_logging(snakemake.log[0], f"train_model {snakemake.wildcards.model} fold {snakemake.wildcards.fold}"),
    job_device(snakemake.params.device) as device,
):
    folds = json.loads(Path(snakemake.input.folds).read_text())
    fold = folds["folds"][int(snakemake.wildcards.fold)]
    aligned = {Path(p).stem: Path(p) for p in snakemake.input.aligned}
    train_fold(
        snakemake.wildcards.model,
        dict(snakemake.params.hparams),
        fold,
        aligned,
        Path(snakemake.output.model).parent,
        TrainConfig.from_dict(snakemake.params.train),
        silence=read_silence(snakemake.input.silence),
        device=device,
        threads=snakemake.threads,
    )
