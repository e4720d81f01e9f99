# Snakemake adapter: trial lists + labels -> folds.json (vafusion.learning.folds).
import json
import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")

from vafusion.io import atomic_output
from vafusion.jobs import job_logging
from vafusion.learning.folds import excluded_trials, make_folds, read_subject_map

with job_logging(snakemake.log[0], "make_folds", outputs=snakemake.output) as log:
    excluded = excluded_trials(snakemake.input.labels)
    for trial, reason in excluded.items():
        log.warning("trial %s is left out of every fold: %s", trial, reason)
    subjects = read_subject_map(snakemake.input.subjects[0]) if snakemake.input.subjects else None
    # both partitions map trial -> video: each fold's training groups (the inner selection
    # split's units) include the validation partition's trials where they train
    folds = make_folds(dict(snakemake.params.train), dict(snakemake.params.validation), snakemake.params.n_folds,
                       snakemake.params.seed, excluded, subjects)
    log.info("%d groups of training trials (seed %d) in %d chunks: %s", len(folds["groups"]), folds["seed"],
             len(folds["chunks"]), ", ".join(str(len(c)) for c in folds["chunks"]))
    log.info("training groups per fold: %s", ", ".join(f"fold {f['fold']} {len(f['train_groups'])}"
                                                      for f in folds["folds"]))
    with atomic_output(snakemake.output.folds) as tmp:
        Path(tmp).write_text(json.dumps(folds, indent=2) + "\n")
