# Trial discovery and input functions. The data folders are scanned once, here, when the
# workflow is parsed; input functions only look things up in the result.
import copy
import os
import re
from pathlib import Path

from vafusion.dataset import DatasetError, discover
from vafusion.features import registry
from vafusion.learning.experiments import ensembles, experiment_problems, resolve_runs
from vafusion.learning.provenance import trained_run_problems
from vafusion.learning.streams import (baselines, flat, presence_problems, presence_streams, stream_problems, stream_sets,
                                       used_streams)
from vafusion.models import settings_problems


OUT = config["output"]

try:
    DATASET = discover(config["data"])
except DatasetError as err:
    hint = ""
    if str(config["data"]["videos"]).startswith("resources/demo"):
        hint = "\n(the demo dataset is built by `make demo`, which `make run` calls)"
    raise WorkflowError(f"{err}{hint}")

for name, path in config["weights"].items():  # a file, or a folder (a Hugging Face speech model): the job reads it
    if path is not None and not Path(path).exists():
        raise WorkflowError(f"weights.{name}: '{path}' does not exist")
if config["learning"]["fold_groups"] is not None:
    if not Path(config["learning"]["fold_groups"]).is_file():
        raise WorkflowError(f"learning.fold_groups: file '{config['learning']['fold_groups']}' does not exist")
    from vafusion.learning.folds import partition_overlap, read_subject_map

    try:
        overlap = partition_overlap({t.name: t.video for t in DATASET.partition("train")},
                                    {t.name: t.video for t in DATASET.partition("validation")},
                                    read_subject_map(config["learning"]["fold_groups"]))
    except ValueError as err:
        raise WorkflowError(f"learning.fold_groups: {err}")
    if overlap:
        raise WorkflowError("learning.fold_groups: subject-independent folds are impossible, fold 0 (the official "
                            "split) would train and validate on the same person:\n" + "\n".join(overlap)
                            + "\nMove these trials into one partition, or correct the subject map.")
if problems := settings_problems(config["learning"]):
    raise WorkflowError("settings that cannot work together:\n" + "\n".join(problems))
if problems := stream_problems(config):
    raise WorkflowError("feature streams that cannot work:\n" + "\n".join(problems))
if config["features"]["face_models"]:
    from vafusion.features.backbones import spec_problems

    if problems := [p for name, spec in config["features"]["face_models"].items() for p in spec_problems(name, spec)]:
        raise WorkflowError("face models that cannot work:\n" + "\n".join(problems))


def validate_learning(learning):
    """Schema-check an experiment's effective learning section (on a copy: validate fills defaults)."""
    validate(copy.deepcopy({**config, "learning": learning}), CONFIG_SCHEMA)


if problems := experiment_problems(config, validate_learning):
    raise WorkflowError("experiments or ensembles that cannot work:\n" + "\n".join(problems))

# Every trained run (learning.models, learning.experiments) and ensemble by name: the
# folders models/<name>/seed<s>/fold<f>/ and the report's rows.
RUNS = resolve_runs(config)
ENSEMBLES = ensembles(config)
SEEDS = config["learning"]["seeds"]


def any_of(names):
    """A wildcard constraint matching exactly these names."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!)"

# The feature streams (vafusion.features.registry); only those some model fuses are made.
STREAM_SPECS = registry.streams(config)
# Zero-training baselines (vafusion.learning.baseline): face models' own valence/arousal columns.
BASELINES = baselines(config)
# Streams a setting reads but no model fuses unless a set lists them, aligned beside every
# stream set's own: speech presence (the unvoiced pattern, learning.train.unvoiced_audio) and
# the baselines' face models.
PRESENCE_STREAMS = presence_streams(config, [run.learning for run in RUNS.values()])
if problems := presence_problems(PRESENCE_STREAMS, STREAM_SPECS):
    raise WorkflowError("\n".join(problems))
AUX_STREAMS = list(dict.fromkeys(PRESENCE_STREAMS + [b["stream"] for b in BASELINES.values()]))
USED_STREAMS = list(dict.fromkeys(used_streams(config) + AUX_STREAMS))

VIDEOS = DATASET.used_videos
TRIALS = DATASET.trials
DATA_COUNTS = {"videos": len(VIDEOS), **{f"{p} trials": len(DATASET.partition(p)) for p in ("train", "validation", "test")}}
ANNOTATED = [name for name, t in TRIALS.items() if t.annotation is not None]


wildcard_constraints:
    video="[^/]+",
    trial="[^/]+",
    # a run (a fusion model, <model>@<stream set>, an experiment), an ensemble or a baseline
    model=any_of(list(RUNS) + list(ENSEMBLES) + list(BASELINES)),
    seed="[0-9]+",
    fold="[0-9]+",
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
    """The weights files a stream reads (config paths, or the file a package ships; the
    optional ones only when their setting is on): inputs, so that replacing a file reruns
    the stream."""
    return stream.weight_paths(config)


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


MODELS = list(RUNS) + list(ENSEMBLES) + list(BASELINES)  # every row of the report


def baseline_aligned(trials):
    """The aligned files of ``trials`` in the stream set of the first run (a baseline's
    stream is aligned beside every set's)."""
    return expand(f"{OUT}/aligned/{{stream_set}}/{{trial}}.h5", stream_set=next(iter(RUNS.values())).stream_set,
                  trial=trials)
FOLDS = list(range(config["learning"]["n_folds"]))
TEST_TRIALS = [t.name for t in DATASET.partition("test")]
TRAINED_RUN = config["learning"]["trained_run"]


def trained_files(run, name):
    """A finished run's files of one model: models/<run>/seed*/fold*/<name> (fold*/<name>
    before seeds were a dimension)."""
    folder = Path(TRAINED_RUN, "models", run)
    return sorted(folder.glob(f"seed*/fold*/{name}")) or sorted(folder.glob(f"fold*/{name}"))


if TRAINED_RUN is not None:
    TRAINED_MODELS = {m: trained_files(m, "model.pt") for m in RUNS}
    if missing := [m for m, paths in TRAINED_MODELS.items() if not paths]:
        raise WorkflowError(f"learning.trained_run: no models/<model>/seed*/fold*/model.pt in '{TRAINED_RUN}' for "
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
    """The streams of the stream set ``wildcards.stream_set``, visual first, and the
    streams some setting reads (AUX_STREAMS) it lacks."""
    streams = flat(stream_sets(config["learning"])[wildcards.stream_set])
    return streams + [s for s in AUX_STREAMS if s not in streams]


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


# A run's settings: its jobs' params (so that changing one experiment reruns only it).
def run_train(wildcards):
    return RUNS[wildcards.model].learning["train"]


def model_hparams(wildcards):
    return RUNS[wildcards.model].hparams


def fusion_model(wildcards):
    return RUNS[wildcards.model].fusion_model


def model_streams(wildcards):
    return RUNS[wildcards.model].streams


def run_aligned(trials):
    """Input function: the aligned files of ``trials`` in the stream set of the run ``wildcards.model``."""
    return lambda wildcards: expand(f"{OUT}/aligned/{{stream_set}}/{{trial}}.h5",
                                    stream_set=RUNS[wildcards.model].stream_set, trial=trials)


def fill_inputs(wildcards):
    """The missing-audio fills of a run's audio streams (features/fills/<stream>.h5)."""
    return [f"{OUT}/features/fills/{s}.h5" for s in RUNS[wildcards.model].streams["audio"]]


RUN_OUTPUTS = ("model.pt", "metrics.json", "history.csv", "val_predictions.h5")


def run_files(name, names=None):
    """File ``name`` of every model (``names``: those only), seed and fold."""
    return expand(f"{OUT}/models/{{model}}/seed{{seed}}/fold{{fold}}/{name}", model=MODELS if names is None else names,
                  seed=SEEDS, fold=FOLDS)


def model_run_files(name):
    """Input function: one model's file ``name`` of every seed and fold."""
    return lambda wildcards: expand(f"{OUT}/models/{wildcards.model}/seed{{seed}}/fold{{fold}}/{name}", seed=SEEDS,
                                    fold=FOLDS)


def ensemble_members(wildcards):
    return ENSEMBLES[wildcards.model]["members"]


def ensemble_member_predictions(wildcards):
    """The members' validation predictions of this seed and fold, in the order of the members."""
    return [f"{OUT}/models/{m}/seed{wildcards.seed}/fold{wildcards.fold}/val_predictions.h5"
            for m in ensemble_members(wildcards)]


def ensemble_member_metrics(wildcards):
    """Every fold's metrics of each member for this seed (weights: ccc reads the other folds')."""
    return expand(f"{OUT}/models/{{member}}/seed{wildcards.seed}/fold{{fold}}/metrics.json",
                  member=ensemble_members(wildcards), fold=FOLDS)


def ensemble_test_inputs(wildcards):
    """The members' test predictions and metrics (all seeds and folds: the test weights)."""
    members = ensemble_members(wildcards)
    predictions = expand(f"{OUT}/predictions/{{member}}/test/{{trial}}.txt", member=members, trial=TEST_TRIALS)
    if TRAINED_RUN is not None:
        metrics = [str(p) for m in members for p in trained_files(m, "metrics.json")]
    else:
        metrics = expand(f"{OUT}/models/{{member}}/seed{{seed}}/fold{{fold}}/metrics.json", member=members,
                         seed=SEEDS, fold=FOLDS)
    return {"member_predictions": predictions, "member_metrics": metrics}


# rule report's outputs; all of them are targets, so that `snakemake --report` finds every flagged file
REPORT_FILES = ("ccc.csv", "summary.md", "ccc_per_fold.png", "ccc_forest.png", "ccc_differences.png", "config.yaml",
                "provenance.rst", "report.html")
MODEL_FIGURES = ("training_curves", "ccc_per_trial", "scatter", "traces")
GATE_FIGURES = ("gates_over_time", "gates_missing_audio")
MISSING_AUDIO_PATTERNS = config["learning"]["train"]["missing_audio"]["patterns"]


def model_figure_files():
    """Every model's figures (rule plot_model), and the IACA models' gate figures (plot_gates)."""
    files = []
    for model in RUNS:
        names = MODEL_FIGURES + (GATE_FIGURES if RUNS[model].fusion_model.endswith("_iaca") else ())
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
    return expand(f"{OUT}/models/{wildcards.model}/seed{{seed}}/fold{{fold}}/model.pt", seed=SEEDS, fold=FOLDS)


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
