# Trial discovery and input functions. The data folders are scanned once, here, when the
# workflow is parsed; input functions only look things up in the result.
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from vafusion.dataset import DatasetError, discover
from vafusion.features import registry
from vafusion.learning.provenance import trained_run_problems
from vafusion.learning.streams import flat, run_streams, split_run, stream_problems, stream_sets, used_streams
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
if problems := stream_problems(config):
    raise WorkflowError("feature streams that cannot work:\n" + "\n".join(problems))

# The feature streams (vafusion.features.registry); only those some model fuses are made.
STREAM_SPECS = registry.streams(config)
USED_STREAMS = used_streams(config)

VIDEOS = DATASET.used_videos
TRIALS = DATASET.trials
DATA_COUNTS = {"videos": len(VIDEOS), **{f"{p} trials": len(DATASET.partition(p)) for p in ("train", "validation", "test")}}
ANNOTATED = [name for name, t in TRIALS.items() if t.annotation is not None]


wildcard_constraints:
    video="[^/]+",
    trial="[^/]+",
    # a fusion model, or <model>@<stream set> (learning.stream_sets)
    model="[a-z_]+(@[A-Za-z0-9_-]+)?",
    stream_set="[A-Za-z0-9_-]+",


def external_csv(stream, trial):
    """The CSV file of ``trial`` for a stream of features made elsewhere (features.external)."""
    from vafusion.features.external import csv_path

    return str(csv_path(stream.settings(config), trial))


def trial_video(wildcards):
    return str(VIDEOS[TRIALS[wildcards.trial].video])


def trial_face_inputs(wildcards):
    """The video, plus the dataset's aligned faces when the trial has them."""
    trial = TRIALS[wildcards.trial]
    inputs = {"video": str(VIDEOS[trial.video])}
    if trial.cropped_aligned is not None:
        inputs["cropped_aligned"] = str(trial.cropped_aligned)
    return inputs


FACE_DETECTOR = config["media"]["face_detector"]  # hog or cnn (vafusion.faces.FaceDetector)


def detected(wildcards):
    """The trial's faces are detected here (it has no cropped_aligned folder of its own)."""
    return TRIALS[wildcards.trial].cropped_aligned is None


def align_faces_runtime(wildcards, input):
    """Minutes: 120 (HOG, or the dataset's own faces); the CNN's from the video's frame count
    and size: it takes ~70x HOG's time on a CPU (vafusion.faces.detection_minutes)."""
    if FACE_DETECTOR != "cnn" or not detected(wildcards):
        return 120
    from vafusion.faces import detection_minutes

    return max(120, detection_minutes(input.video, "cnn", config["media"]["face_detector_upsample"]))


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


def network_threads(input_name, bytes_for_two):
    """A network job's threads from its input's size, known once the input exists: 2 for a
    video of more than about half a minute; 1 for a shorter clip, whose job is mostly
    start-up (imports, weight set-up) that one thread does as fast, so two such jobs side
    by side keep both cores busy (the demo's 3-s clips: measured in docs/benchmarks.md).
    Before the input exists (a dry run) the rule's full size, 2."""

    def threads(wildcards, input):
        path = input[input_name]
        return 2 if not os.path.exists(path) or os.path.getsize(path) >= bytes_for_two else 1

    return threads


def stream_file(stream, trial):
    """A trial's feature file of ``stream``: its video's for a stream made from the WAV."""
    spec = STREAM_SPECS[stream]
    return f"{OUT}/features/{stream}/{trial.video if spec.source == 'wav' else trial.name}.h5"


def stream_weights(stream):
    """The weights files a stream reads (config paths; the optional ones only when their
    setting is on): inputs, so that replacing a file reruns the stream."""
    settings = stream.settings(config)
    return {key: config["weights"].get(key) for key in stream.weights
            if key not in stream.optional_weights or settings.get(stream.optional_weights[key])}


def stream_inputs(stream):
    """Input function of extract_<stream>: what its source needs, and its weights files."""

    def inputs(wildcards):
        if stream.source == "wav":
            found = {"wav": f"{OUT}/audio/{wildcards.video}.wav", "meta": f"{OUT}/audio/{wildcards.video}.json"}
        elif stream.source == "faces":
            found = {"faces": f"{OUT}/faces/{wildcards.trial}.h5"}
        else:  # csv: the trial's file, on its faces' frame clock
            found = {"csv": external_csv(stream, wildcards.trial), "faces": f"{OUT}/faces/{wildcards.trial}.h5"}
        found["weights"] = [p for p in stream_weights(stream).values() if p is not None]
        return found

    return inputs


def feature_outputs():
    return sorted({stream_file(stream, trial) for stream in USED_STREAMS for trial in TRIALS.values()})


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
    # the features this run makes against those the models were trained on (each model.pt's
    # record): settings and weights per stream; a weights file's sha256 is cached in OUT/.cache
    try:
        problem = trained_run_problems(TRAINED_RUN, [p for paths in TRAINED_MODELS.values() for p in paths], config,
                                       sha256_cache=Path(OUT, ".cache", "sha256.json"))
    except ValueError as err:
        raise WorkflowError(f"learning.trained_run: {err}")
    if problem:
        raise WorkflowError(problem)
elif not ANNOTATED:
    raise WorkflowError("data.annotations is null (prediction only): set learning.trained_run to a finished run")
GPU_TRAIN = 0 if config["learning"]["device"] == "cpu" else 1


def set_streams(wildcards):
    """The streams of the stream set ``wildcards.stream_set``, visual first."""
    return flat(stream_sets(config["learning"])[wildcards.stream_set])


def aligned_inputs(wildcards):
    """A trial's features (each stream of the set: its video's for streams from the WAV, its
    own otherwise), faces (frame count, face found), audio metadata and validated labels
    (annotated trials only). One aligned file per stream set: changing one stream's
    settings reruns the models that fuse it, not the others."""
    trial = TRIALS[wildcards.trial]
    inputs = {stream: stream_file(stream, trial) for stream in set_streams(wildcards)}
    inputs["faces"] = f"{OUT}/faces/{trial.name}.h5"
    inputs["audio_meta"] = f"{OUT}/audio/{trial.video}.json"
    if trial.annotation is not None:
        inputs["labels"] = f"{OUT}/labels/{trial.name}.h5"
    return inputs


def fold_groups_input():
    """The subject map (trial,subject CSV) when the config names one, else nothing."""
    path = config["learning"]["fold_groups"]
    return [] if path is None else [path]


def model_hparams(wildcards):
    return config["learning"][config_section(split_run(wildcards.model)[0])]


def model_streams(wildcards):
    return run_streams(wildcards.model, config["learning"])


def run_aligned(trials):
    """Input function: the aligned files of ``trials`` in the stream set of the run ``wildcards.model``."""
    return lambda wildcards: expand(f"{OUT}/aligned/{{stream_set}}/{{trial}}.h5",
                                    stream_set=split_run(wildcards.model)[1], trial=trials)


def fill_inputs(wildcards):
    """The missing-audio fills of a run's audio streams (features/fills/<stream>.h5)."""
    return [f"{OUT}/features/fills/{s}.h5" for s in run_streams(wildcards.model, config["learning"])["audio"]]


RUN_OUTPUTS = ("model.pt", "metrics.json", "history.csv", "val_predictions.h5")


def run_files(name):
    return expand(f"{OUT}/models/{{model}}/fold{{fold}}/{name}", model=MODELS, fold=FOLDS)


def model_run_files(name):
    """Input function: one model's file ``name`` of every fold."""
    return lambda wildcards: expand(f"{OUT}/models/{wildcards.model}/fold{{fold}}/{name}", fold=FOLDS)


# rule report's outputs; all of them are targets, so that `snakemake --report` finds every flagged file
REPORT_FILES = ("ccc.csv", "summary.md", "ccc_per_fold.png", "config.yaml", "provenance.rst", "report.html")
MODEL_FIGURES = ("training_curves", "ccc_per_trial", "scatter", "traces")
GATE_FIGURES = ("gates_over_time", "gates_missing_audio")
MISSING_AUDIO_PATTERNS = config["learning"]["train"]["missing_audio"]["patterns"]


def model_figure_files():
    """Every model's figures (rule plot_model), and the IACA models' gate figures (plot_gates)."""
    files = []
    for model in MODELS:
        names = MODEL_FIGURES + (GATE_FIGURES if split_run(model)[0].endswith("_iaca") else ())
        files += [f"{OUT}/reports/{model}/{name}.png" for name in names]
    return files


def missing_audio_figure_files():
    return expand(f"{OUT}/reports/missing_audio_{{pattern}}.png", pattern=MISSING_AUDIO_PATTERNS)


def report_front_page():
    """The first page of `snakemake --report`: the run's provenance once rule report has
    written it, before that a description of the workflow."""
    written = Path(OUT, "reports", "provenance.rst").resolve()
    return str(written) if written.exists() else "workflow/report/workflow.rst"


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
        [f"{OUT}/reports/{name}" for name in REPORT_FILES]
        + model_figure_files()
        + missing_audio_figure_files()
        + prediction_outputs()
    )
