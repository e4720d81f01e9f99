# Snakemake adapter: folds + aligned trials -> one trained model per fold and seed (vafusion.learning.train).
import json
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.devices import job_device
from vafusion.features.silence import read_fill
from vafusion.jobs import job_logging
from vafusion.learning.provenance import aligned_record
from vafusion.learning.settings import TrainConfig
from vafusion.learning.train import train_fold

with (
    job_logging(snakemake.log[0], f"train_model {snakemake.wildcards.model} seed {snakemake.wildcards.seed} "
                f"fold {snakemake.wildcards.fold}",
                outputs=snakemake.output),
    job_device(snakemake.params.device) as device,
):
    folds = json.loads(Path(snakemake.input.folds).read_text())
    fold = folds["folds"][int(snakemake.wildcards.fold)]
    aligned = {Path(p).stem: Path(p) for p in snakemake.input.aligned}
    # the features this model sees (settings, weights), from its fold's trials; stored in model.pt
    streams = snakemake.params.streams
    record = aligned_record([aligned[name] for name in fold["train"] + fold["validation"]],
                            streams["visual"] + streams["audio"])
    cfg = TrainConfig.from_dict(snakemake.params.train, seed=int(snakemake.wildcards.seed))
    fills = {Path(p).stem: p for p in snakemake.input.fills}  # features/fills/<stream>.h5
    train_fold(
        snakemake.wildcards.model,
        dict(snakemake.params.hparams),
        fold,
        aligned,
        Path(snakemake.output.model).parent,
        cfg,
        streams=dict(snakemake.params.streams),
        audio_fill=read_fill(fills, cfg.missing_audio.fill),
        device=device,
        threads=snakemake.threads,
        feature_provenance=record,
        fusion_model=snakemake.params.fusion_model,
    )
