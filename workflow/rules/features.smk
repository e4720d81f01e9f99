# Feature stage: one rule per feature stream some configured model fuses (learning.streams,
# learning.stream_sets), made from the stream's registry entry (vafusion.features.registry):
# extract_<stream> per video (streams from the WAV) or per trial (from the aligned faces, or
# imported from CSV files), and for audio streams fill_<stream>, the rows a dropped audio
# frame gets in the missing-audio test. Each rule's params hold exactly its stream's
# settings, so changing one reruns that stream (and what depends on it) and nothing else;
# resources come from the registry entry, sized for Aff-Wild2's longest videos.


for _stream in STREAM_SPECS.values():
    if _stream.name not in USED_STREAMS:
        continue
    _item = "video" if _stream.source == "wav" else "trial"

    rule:
        name:
            f"extract_{_stream.name}"
        input:
            unpack(stream_inputs(_stream)),
        output:
            features=f"{OUT}/features/{_stream.name}/{{{_item}}}.h5",
        params:
            stream=_stream.name,
            settings=_stream.settings(config),
            weights=stream_weights(_stream),
            device=config["features"]["device"] if _stream.network else "cpu",
            seed=config["features"]["random_init_seed"] if _stream.network else -1,
        log:
            f"{OUT}/logs/extract_{_stream.name}/{{{_item}}}.log",
        # networks: threads by input size (1 for a short clip); GPU when there is one
        threads: network_threads(_stream.source, 1_000_000 if _stream.source == "wav" else 4_000_000) if _stream.network else 1
        resources:
            mem_mb=_stream.mem_mb,
            runtime=_stream.runtime,
            gpu=GPU_JOB if _stream.network else 0,
        conda:
            "../../envs/features.yaml"
        script:
            "../scripts/extract_stream.py"

    if _stream.modality != "audio":
        continue

    rule:
        # the rows of a dropped audio frame: zeros at the network's input, and silence
        name:
            f"fill_{_stream.name}"
        input:
            weights=[p for p in stream_weights(_stream).values() if p is not None],
            # features made elsewhere: one file gives the width of their all-zero fills
            example=[f"{OUT}/features/{_stream.name}/{next(iter(TRIALS))}.h5"] if _stream.source == "csv" else [],
        output:
            fills=f"{OUT}/features/fills/{_stream.name}.h5",
        params:
            stream=_stream.name,
            settings=_stream.settings(config),
            weights=stream_weights(_stream),
            device=config["features"]["device"] if _stream.network else "cpu",
            seed=config["features"]["random_init_seed"] if _stream.network else -1,
        log:
            f"{OUT}/logs/fill_{_stream.name}.log",
        threads: 1
        resources:
            mem_mb=_stream.mem_mb,
            runtime=10,
            gpu=GPU_JOB if _stream.network else 0,
        conda:
            "../../envs/features.yaml"
        script:
            "../scripts/fill_features.py"
