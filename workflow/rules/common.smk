# Trial discovery and input functions. The data folders are scanned once, here, when the
# workflow is parsed; input functions only look things up in the result.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from vafusion.dataset import DatasetError, discover
from vafusion.models import config_section, settings_problems


OUT = config["output"]

try:
    DATASET = discover(config["data"])
except DatasetError as err:
    hint = ""
    if str(config["data"]["videos"]).startswith("resources/demo"):
        hint = "\n(the demo dataset is built by `make demo`, which `make run` calls)"
    raise WorkflowError(f"{err}{hint}")

for name, path in config["weights"].items():
    if path is not None and not Path(path).is_file():
        raise WorkflowError(f"weights.{name}: file '{path}' does not exist")
if config["learning"]["fold_groups"] is not None and not Path(config["learning"]["fold_groups"]).is_file():
    raise WorkflowError(f"learning.fold_groups: file '{config['learning']['fold_groups']}' does not exist")
if config["features"]["vggish"]["pca"] and config["weights"]["vggish_pca"] is None:
    raise WorkflowError("features.vggish.pca is true but weights.vggish_pca is null")
if problems := settings_problems(config["learning"]):
    raise WorkflowError("settings that cannot work together:\n" + "\n".join(problems))

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


def weights_input(name):
    """The weights file as an input (so replacing it reruns the job), or nothing."""
    path = config["weights"][name]
    return [] if path is None else [path]


# Networks use a GPU unless the config pins them to the CPU (then no gpu is requested).
GPU_JOB = 0 if config["features"]["device"] == "cpu" else 1


def feature_outputs():
    return (
        expand(f"{OUT}/features/mfcc/{{video}}.h5", video=VIDEOS)
        + expand(f"{OUT}/features/vggish/{{video}}.h5", video=VIDEOS)
        + expand(f"{OUT}/features/iresnet50/{{trial}}.h5", trial=TRIALS)
    )


MODELS = config["learning"]["models"]
FOLDS = list(range(config["learning"]["n_folds"]))
TEST_TRIALS = [t.name for t in DATASET.partition("test")]
TRAINED_RUN = config["learning"]["trained_run"]
if TRAINED_RUN is not None:
    TRAINED_MODELS = {m: sorted(Path(TRAINED_RUN, "models", m).glob("fold*/model.pt")) for m in MODELS}
    if missing := [m for m, paths in TRAINED_MODELS.items() if not paths]:
        raise WorkflowError(f"learning.trained_run: no models/<model>/fold*/model.pt in '{TRAINED_RUN}' for "
                            + ", ".join(missing))
    if not TEST_TRIALS:
        raise WorkflowError("learning.trained_run is set but there is nothing to predict (no test trials)")
elif not ANNOTATED:
    raise WorkflowError("data.annotations is null (prediction only): set learning.trained_run to a finished run")
GPU_TRAIN = 0 if config["learning"]["device"] == "cpu" else 1


def aligned_inputs(wildcards):
    """A trial's features (its video's audio features, its own faces), audio metadata and
    validated labels (annotated trials only)."""
    trial = TRIALS[wildcards.trial]
    inputs = {
        "iresnet50": f"{OUT}/features/iresnet50/{trial.name}.h5",
        "vggish": f"{OUT}/features/vggish/{trial.video}.h5",
        "mfcc": f"{OUT}/features/mfcc/{trial.video}.h5",
        "audio_meta": f"{OUT}/audio/{trial.video}.json",
    }
    if trial.annotation is not None:
        inputs["labels"] = f"{OUT}/labels/{trial.name}.h5"
    return inputs


def fold_groups_input():
    """The subject map (trial,subject CSV) when the config names one, else nothing."""
    path = config["learning"]["fold_groups"]
    return [] if path is None else [path]


def model_hparams(wildcards):
    return config["learning"][config_section(wildcards.model)]


RUN_OUTPUTS = ("model.pt", "metrics.json", "history.csv", "val_predictions.h5")


def run_files(name):
    return expand(f"{OUT}/models/{{model}}/fold{{fold}}/{name}", model=MODELS, fold=FOLDS)


def fold_models(wildcards):
    """The fold models that predict the test trials: this run's, or learning.trained_run's."""
    if TRAINED_RUN is not None:
        return [str(p) for p in TRAINED_MODELS[wildcards.model]]
    return expand(f"{OUT}/models/{wildcards.model}/fold{{fold}}/model.pt", fold=FOLDS)


def prediction_outputs():
    return expand(f"{OUT}/predictions/{{model}}/test/{{trial}}.txt", model=MODELS, trial=TEST_TRIALS)


def learning_outputs():
    if TRAINED_RUN is not None:  # prediction only
        return prediction_outputs()
    return (
        [f"{OUT}/reports/ccc.csv", f"{OUT}/reports/summary.md", f"{OUT}/reports/report.html"]
        + prediction_outputs()
    )
