# Feature stage: per-frame MFCC and VGGish per video, IResNet-50 per trial, in HDF5.
# Each rule's params hold exactly its extractor's settings, so changing one reruns that
# feature (and what depends on it) and nothing else.


rule extract_mfcc:
    input:
        wav=f"{OUT}/audio/{{video}}.wav",
        meta=f"{OUT}/audio/{{video}}.json",
    output:
        features=f"{OUT}/features/mfcc/{{video}}.h5",
    params:
        mfcc={**config["features"]["mfcc"], "sample_rate": config["media"]["sample_rate"]},
    log:
        f"{OUT}/logs/extract_mfcc/{{video}}.log",
    threads: 1
    resources:
        mem_mb=1500,
        runtime=30,
    conda:
        "../../envs/features.yaml"
    script:
        "../scripts/extract_mfcc.py"


rule extract_vggish:
    input:
        wav=f"{OUT}/audio/{{video}}.wav",
        meta=f"{OUT}/audio/{{video}}.json",
        weights=weights_input("vggish"),
        pca_weights=weights_input("vggish_pca") if config["features"]["vggish"]["pca"] else [],
    output:
        features=f"{OUT}/features/vggish/{{video}}.h5",
    params:
        vggish=config["features"]["vggish"],
        device=config["features"]["device"],
        seed=config["features"]["random_init_seed"],
    log:
        f"{OUT}/logs/extract_vggish/{{video}}.log",
    threads: network_threads("wav", 1_000_000)  # 16 kHz 16-bit mono: 31 s
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=GPU_JOB,
    conda:
        "../../envs/features.yaml"
    script:
        "../scripts/extract_vggish.py"


rule extract_iresnet50:
    input:
        faces=f"{OUT}/faces/{{trial}}.h5",
        weights=weights_input("iresnet50"),
    output:
        features=f"{OUT}/features/iresnet50/{{trial}}.h5",
    params:
        iresnet50=config["features"]["iresnet50"],
        device=config["features"]["device"],
        seed=config["features"]["random_init_seed"],
    log:
        f"{OUT}/logs/extract_iresnet50/{{trial}}.log",
    threads: network_threads("faces", 4_000_000)  # ~800 faces (~5 kB each)
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=GPU_JOB,
    conda:
        "../../envs/features.yaml"
    script:
        "../scripts/extract_iresnet50.py"


rule silence_features:
    # What MFCC and VGGish give for all-zero audio: the missing-audio experiment's input.
    input:
        weights=weights_input("vggish"),
        pca_weights=weights_input("vggish_pca") if config["features"]["vggish"]["pca"] else [],
    output:
        features=f"{OUT}/features/silence.h5",
    params:
        mfcc={**config["features"]["mfcc"], "sample_rate": config["media"]["sample_rate"]},
        vggish=config["features"]["vggish"],
        device=config["features"]["device"],
        seed=config["features"]["random_init_seed"],
    log:
        f"{OUT}/logs/silence_features.log",
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
        gpu=GPU_JOB,
    conda:
        "../../envs/features.yaml"
    script:
        "../scripts/silence_features.py"
