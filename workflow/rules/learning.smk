# Learning stage: alignment, folds, training per model and fold, test predictions, reports.


rule align_trial:
    input:
        unpack(aligned_inputs),
    output:
        aligned=f"{OUT}/aligned/{{trial}}.h5",
    params:
        partition=lambda wildcards: TRIALS[wildcards.trial].partition,
    log:
        f"{OUT}/logs/align_trial/{{trial}}.log",
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
        validation=[t.name for t in DATASET.partition("validation")],
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
        aligned=expand(f"{OUT}/aligned/{{trial}}.h5", trial=ANNOTATED),
        silence=f"{OUT}/features/silence.h5",
    output:
        model=f"{OUT}/models/{{model}}/fold{{fold}}/model.pt",
        metrics=f"{OUT}/models/{{model}}/fold{{fold}}/metrics.json",
        history=f"{OUT}/models/{{model}}/fold{{fold}}/history.csv",
        predictions=f"{OUT}/models/{{model}}/fold{{fold}}/val_predictions.h5",
    params:
        train=config["learning"]["train"],
        hparams=model_hparams,
        device=config["learning"]["device"],
    log:
        f"{OUT}/logs/train_model/{{model}}_fold{{fold}}.log",
    wildcard_constraints:
        fold="[0-9]+",
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


rule predict_test:
    input:
        models=fold_models,
        aligned=expand(f"{OUT}/aligned/{{trial}}.h5", trial=TEST_TRIALS),
    output:
        predictions=expand(f"{OUT}/predictions/{{{{model}}}}/test/{{trial}}.txt", trial=TEST_TRIALS),
    params:
        device=config["learning"]["device"],
    log:
        f"{OUT}/logs/predict_test/{{model}}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=GPU_TRAIN,
    conda:
        "../../envs/learning.yaml"
    script:
        "../scripts/predict_test.py"


rule report:
    input:
        metrics=run_files("metrics.json"),
        history=run_files("history.csv"),
        predictions=run_files("val_predictions.h5"),
    output:
        ccc=f"{OUT}/reports/ccc.csv",
        summary=f"{OUT}/reports/summary.md",
        html=f"{OUT}/reports/report.html",
    params:
        weights=config["weights"],
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
