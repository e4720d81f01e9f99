# vafusion: talking-face videos -> per-frame valence/arousal (see README.md).
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/media.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/learning.smk"


report: report_front_page()


# Jobs of a few seconds run where Snakemake runs, also on a cluster: a SLURM job of its own
# would cost more in queueing and status polls than the work. Every other rule's resources
# (threads = cpus_per_task, mem_mb, runtime in minutes, gpu) are sized in the rule for
# Aff-Wild2's longest videos and go to the cluster as they are.
localrules:
    read_annotation,
    align_trial,
    make_folds,
    plot_model,
    plot_gates,
    plot_missing_audio,
    ensemble_fold,
    predict_ensemble,
    report,


rule all:
    input:
        media_outputs(),
        feature_outputs(),
        learning_outputs(),
    default_target: True


rule media:
    input:
        media_outputs(),


rule features:
    input:
        feature_outputs(),


rule predict:
    input:
        prediction_outputs(),
