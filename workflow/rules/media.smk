# Media stage: WAV per video, aligned faces per trial, validated labels per annotated trial.


rule extract_audio:
    input:
        video=lambda wildcards: str(VIDEOS[wildcards.video]),
    output:
        wav=f"{OUT}/audio/{{video}}.wav",
        meta=f"{OUT}/audio/{{video}}.json",
    params:
        sample_rate=config["media"]["sample_rate"],
    log:
        f"{OUT}/logs/extract_audio/{{video}}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=20,
    conda:
        "../../envs/media.yaml"
    script:
        "../scripts/extract_audio.py"


rule align_faces:
    input:
        unpack(trial_face_inputs),
    output:
        faces=f"{OUT}/faces/{{trial}}.h5",
    params:
        side=lambda wildcards: TRIALS[wildcards.trial].side,
        # the detector's settings, only where it runs: changing them reruns the detected
        # trials, not those with the dataset's own cropped_aligned faces
        upsample=lambda wildcards: config["media"]["face_detector_upsample"] if detected(wildcards) else None,
        detector=lambda wildcards: FACE_DETECTOR if detected(wildcards) else None,
        # the file's layout: a new one reruns the rule on existing results
        face_format="packed JPEG per frame (jpegs, jpeg_offsets, face_index)",
    log:
        f"{OUT}/logs/align_faces/{{trial}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=align_faces_runtime,
    conda:
        "../../envs/media.yaml"
    script:
        "../scripts/align_faces.py"


rule read_annotation:
    input:
        annotation=trial_annotation,
    output:
        labels=f"{OUT}/labels/{{trial}}.h5",
    log:
        f"{OUT}/logs/read_annotation/{{trial}}.log",
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        "../../envs/media.yaml"
    script:
        "../scripts/read_annotation.py"
