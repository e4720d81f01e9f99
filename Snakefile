# vafusion: talking-face videos -> per-frame valence/arousal (see README.md).
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/media.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/learning.smk"


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
