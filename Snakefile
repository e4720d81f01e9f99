# vafusion: talking-face videos -> per-frame valence/arousal (see README.md).
import sys

from snakemake.utils import min_version

min_version("9.0")
sys.path.insert(0, f"{workflow.basedir}/src")
from vafusion.schema import ConfigError, config_schema, validate


configfile: "config.yaml"


# the schema file plus every feature stream's settings and weights keys (the registry's)
try:
    CONFIG_SCHEMA = config_schema(f"{workflow.basedir}/workflow/schemas/config.schema.yaml", config)
    validate(config, CONFIG_SCHEMA)
except ConfigError as err:
    raise WorkflowError(str(err))


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
