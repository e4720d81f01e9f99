# Learning stage: alignment, folds, training per model and fold, test predictions, reports.


rule align_trial:
    input:
        unpack(aligned_inputs),
    output:
        aligned=f"{OUT}/aligned/{{stream_set}}/{{trial}}.h5",
    params:
        partition=lambda wildcards: TRIALS[wildcards.trial].partition,
        streams=set_streams,
        # the file's layout: a new one reruns the rule on existing results
        aligned_format="streams, labels, masks; each stream's feature provenance (<stream>_provenance)",
    log:
        f"{OUT}/logs/align_trial/{{stream_set}}/{{trial}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/learning.yaml"
    script:
        "../scripts/align_trial.py"


rule make_folds:
    input:
        labels=expand(f"{OUT}/labels/{{trial}}.h5", trial=ANNOTATED),
        subjects=fold_groups_input(),
    output:
        folds=f"{OUT}/folds.json",
    params:
        n_folds=config["learning"]["n_folds"],
        seed=config["learning"]["fold_seed"],
        train={t.name: t.video for t in DATASET.partition("train")},
        validation={t.name: t.video for t in DATASET.partition("validation")},
    log:
        f"{OUT}/logs/make_folds.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/learning.yaml"
    script:
        "../scripts/make_folds.py"


rule train_model:
    input:
        folds=f"{OUT}/folds.json",
        aligned=run_aligned(ANNOTATED),
        fills=fill_inputs,
    output:
        model=f"{OUT}/models/{{model}}/seed{{seed}}/fold{{fold}}/model.pt",
        metrics=f"{OUT}/models/{{model}}/seed{{seed}}/fold{{fold}}/metrics.json",
        history=f"{OUT}/models/{{model}}/seed{{seed}}/fold{{fold}}/history.csv",
        predictions=f"{OUT}/models/{{model}}/seed{{seed}}/fold{{fold}}/val_predictions.h5",
    params:
        # the run's effective settings (an experiment's overrides applied)
        fusion_model=fusion_model,
        train=run_train,
        hparams=model_hparams,
        streams=model_streams,
        device=config["learning"]["device"],
    log:
        f"{OUT}/logs/train_model/{{model}}_seed{{seed}}_fold{{fold}}.log",
    wildcard_constraints:
        model=any_of(RUNS),
    threads: 1
    resources:
        # Windows are read from the aligned files, not held: peak RSS ~1 GB, flat in the
        # data's size (make bench: 0.9 GiB at 1/8 to 1/2 of Aff-Wild2); CUDA adds ~1 GB.
        mem_mb=3000,
        runtime=360,
        gpu=GPU_TRAIN,
    conda:
        "../../envs/learning.yaml"
    script:
        "../scripts/train_model.py"


rule ensemble_fold:
    input:
        member_predictions=ensemble_member_predictions,
        member_metrics=ensemble_member_metrics,
    output:
        metrics=f"{OUT}/models/{{model}}/seed{{seed}}/fold{{fold}}/metrics.json",
        predictions=f"{OUT}/models/{{model}}/seed{{seed}}/fold{{fold}}/val_predictions.h5",
    params:
        members=ensemble_members,
        weights=lambda wildcards: ENSEMBLES[wildcards.model].get("weights", "equal"),
    log:
        f"{OUT}/logs/ensemble_fold/{{model}}_seed{{seed}}_fold{{fold}}.log",
    wildcard_constraints:
        model=any_of(ENSEMBLES),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/learning.yaml"
    script:
        "../scripts/ensemble_fold.py"


rule score_baseline:
    # a face model's own valence/arousal outputs, scored like a trained run (no training)
    input:
        folds=f"{OUT}/folds.json",
        aligned=baseline_aligned(ANNOTATED),
    output:
        metrics=f"{OUT}/models/{{model}}/seed{{seed}}/fold{{fold}}/metrics.json",
        predictions=f"{OUT}/models/{{model}}/seed{{seed}}/fold{{fold}}/val_predictions.h5",
    params:
        stream=lambda wildcards: BASELINES[wildcards.model]["stream"],
        columns=lambda wildcards: BASELINES[wildcards.model]["columns"],
    log:
        f"{OUT}/logs/score_baseline/{{model}}_seed{{seed}}_fold{{fold}}.log",
    wildcard_constraints:
        model=any_of(BASELINES),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/learning.yaml"
    script:
        "../scripts/score_baseline.py"


rule predict_baseline:
    input:
        aligned=baseline_aligned(TEST_TRIALS),
    output:
        predictions=expand(f"{OUT}/predictions/{{{{model}}}}/test/{{trial}}.txt", trial=TEST_TRIALS),
    params:
        stream=lambda wildcards: BASELINES[wildcards.model]["stream"],
        columns=lambda wildcards: BASELINES[wildcards.model]["columns"],
    log:
        f"{OUT}/logs/predict_baseline/{{model}}.log",
    wildcard_constraints:
        model=any_of(BASELINES),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/learning.yaml"
    script:
        "../scripts/predict_baseline.py"


rule predict_test:
    input:
        models=fold_models,
        aligned=run_aligned(TEST_TRIALS),
    output:
        predictions=expand(f"{OUT}/predictions/{{{{model}}}}/test/{{trial}}.txt", trial=TEST_TRIALS),
    params:
        device=config["learning"]["device"],
    log:
        f"{OUT}/logs/predict_test/{{model}}.log",
    wildcard_constraints:
        model=any_of(RUNS),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=GPU_TRAIN,
    conda:
        "../../envs/learning.yaml"
    script:
        "../scripts/predict_test.py"


rule predict_ensemble:
    input:
        unpack(ensemble_test_inputs),
    output:
        predictions=expand(f"{OUT}/predictions/{{{{model}}}}/test/{{trial}}.txt", trial=TEST_TRIALS),
    params:
        members=ensemble_members,
        weights=lambda wildcards: ENSEMBLES[wildcards.model].get("weights", "equal"),
        trials=TEST_TRIALS,
    log:
        f"{OUT}/logs/predict_ensemble/{{model}}.log",
    wildcard_constraints:
        model=any_of(ENSEMBLES),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/learning.yaml"
    script:
        "../scripts/predict_ensemble.py"


rule plot_model:
    input:
        metrics=model_run_files("metrics.json"),
        history=model_run_files("history.csv"),
        predictions=model_run_files("val_predictions.h5"),
    output:
        training_curves=report(
            f"{OUT}/reports/{{model}}/training_curves.png",
            caption="../report/training_curves.rst",
            category="2 Training",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "training curves"},
        ),
        ccc_per_trial_csv=report(
            f"{OUT}/reports/{{model}}/ccc_per_trial.csv",
            caption="../report/ccc_per_trial_csv.rst",
            category="3 Validation",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "CCC per trial (table)"},
        ),
        ccc_per_trial=report(
            f"{OUT}/reports/{{model}}/ccc_per_trial.png",
            caption="../report/ccc_per_trial.rst",
            category="3 Validation",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "CCC per trial"},
        ),
        scatter=report(
            f"{OUT}/reports/{{model}}/scatter.png",
            caption="../report/scatter.rst",
            category="3 Validation",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "predicted vs annotated"},
        ),
        traces=report(
            f"{OUT}/reports/{{model}}/traces.png",
            caption="../report/traces.rst",
            category="3 Validation",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "traces, best fold"},
        ),
    log:
        f"{OUT}/logs/plot_model/{{model}}.log",
    wildcard_constraints:
        model=any_of(RUNS),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/learning.yaml"
    script:
        "../scripts/plot_model.py"


rule plot_gates:
    input:
        metrics=model_run_files("metrics.json"),
        history=model_run_files("history.csv"),
        predictions=model_run_files("val_predictions.h5"),
    output:
        gates_over_time=report(
            f"{OUT}/reports/{{model}}/gates_over_time.png",
            caption="../report/gates_over_time.rst",
            category="4 Missing audio",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "IACA gates over time"},
        ),
        gates_missing_audio=report(
            f"{OUT}/reports/{{model}}/gates_missing_audio.png",
            caption="../report/gates_missing_audio.rst",
            category="4 Missing audio",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "IACA gates under missing audio"},
        ),
    log:
        f"{OUT}/logs/plot_gates/{{model}}.log",
    wildcard_constraints:
        model=any_of([r for r in RUNS if RUNS[r].fusion_model.endswith("_iaca")]),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/learning.yaml"
    script:
        "../scripts/plot_model.py"


rule plot_missing_audio:
    input:
        metrics=run_files("metrics.json", RUNS),
        subjects=fold_groups_input(),
    output:
        figure=report(
            f"{OUT}/reports/missing_audio_{{pattern}}.png",
            caption="../report/missing_audio.rst",
            category="4 Missing audio",
            subcategory="all models",
            labels={"figure": "CCC, {pattern} audio frames dropped"},
        ),
    params:
        # the curves' intervals: the report's bootstrap over the same units
        videos={name: t.video for name, t in TRIALS.items()},
        compare=config["learning"]["compare"],
    log:
        f"{OUT}/logs/plot_missing_audio/{{pattern}}.log",
    wildcard_constraints:
        pattern=any_of(MISSING_AUDIO_PATTERNS),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/learning.yaml"
    script:
        "../scripts/plot_missing_audio.py"


rule report:
    input:
        metrics=run_files("metrics.json"),
        predictions=run_files("val_predictions.h5"),
        # with a subject map the bootstrap resamples subjects (with their videos), not videos
        subjects=fold_groups_input(),
        figures=model_figure_files(),
        missing_audio=missing_audio_figure_files(),
    output:
        ccc=report(
            f"{OUT}/reports/ccc.csv",
            caption="../report/ccc.rst",
            category="1 Summary",
            labels={"figure": "CCC per model and fold (table)"},
        ),
        summary=report(
            f"{OUT}/reports/summary.md",
            caption="../report/summary.rst",
            category="1 Summary",
            labels={"figure": "summary tables"},
        ),
        ccc_per_fold=report(
            f"{OUT}/reports/ccc_per_fold.png",
            caption="../report/ccc_per_fold.rst",
            category="1 Summary",
            labels={"figure": "CCC per fold"},
        ),
        ccc_forest=report(
            f"{OUT}/reports/ccc_forest.png",
            caption="../report/ccc_forest.rst",
            category="1 Summary",
            labels={"figure": "pooled CCC with intervals"},
        ),
        ccc_differences=report(
            f"{OUT}/reports/ccc_differences.png",
            caption="../report/ccc_differences.rst",
            category="1 Summary",
            labels={"figure": "paired differences"},
        ),
        config=report(
            f"{OUT}/reports/config.yaml",
            caption="../report/config.rst",
            category="1 Summary",
            labels={"figure": "effective configuration"},
        ),
        html=f"{OUT}/reports/report.html",
        # the first page of `snakemake --report` (Snakefile: report:)
        provenance=f"{OUT}/reports/provenance.rst",
    params:
        # each fused stream's weights files by config key (its registry entry's)
        weights={s: STREAM_SPECS[s].weights_by_key(config) for s in USED_STREAMS},
        config=config,
        counts=DATA_COUNTS,
        # trial -> video: the bootstrap resamples whole videos (both trials of a two-person video)
        videos={name: t.video for name, t in TRIALS.items()},
        # runs that vary a listed model (another stream set, learning.experiments): ranked against it
        variants={name: {"model": run.fusion_model, "stream_set": run.stream_set, "changes": run.changes}
                  for name, run in RUNS.items() if run.changes},
        compare=config["learning"]["compare"],
    log:
        f"{OUT}/logs/report.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/learning.yaml"
    script:
        "../scripts/report.py"
