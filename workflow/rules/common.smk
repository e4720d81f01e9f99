# Trial discovery and input functions. The data folders are scanned once, here, when the
# workflow is parsed; input functions only look things up in the result.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from vafusion.dataset import DatasetError, discover


OUT = config["output"]

try:
    DATASET = discover(config["data"])
except DatasetError as err:
    hint = ""
    if str(config["data"]["videos"]).startswith("resources/demo"):
        hint = "\n(the demo dataset is built by `make demo`, which `make run` calls)"
    raise WorkflowError(f"{err}{hint}")

VIDEOS = DATASET.used_videos
TRIALS = DATASET.trials
ANNOTATED = [name for name, t in TRIALS.items() if t.annotation is not None]


wildcard_constraints:
    video="[^/]+",
    trial="[^/]+",


def trial_video(wildcards):
    return str(VIDEOS[TRIALS[wildcards.trial].video])


def trial_face_inputs(wildcards):
    """The video, plus the dataset's aligned faces when the trial has them."""
    trial = TRIALS[wildcards.trial]
    inputs = {"video": str(VIDEOS[trial.video])}
    if trial.cropped_aligned is not None:
        inputs["cropped_aligned"] = str(trial.cropped_aligned)
    return inputs


def trial_annotation(wildcards):
    return str(TRIALS[wildcards.trial].annotation)


def media_outputs():
    return (
        expand(f"{OUT}/audio/{{video}}.wav", video=VIDEOS)
        + expand(f"{OUT}/faces/{{trial}}.h5", trial=TRIALS)
        + expand(f"{OUT}/labels/{{trial}}.h5", trial=ANNOTATED)
    )
