"""Late-fusion ensembles: the weighted mean of the members' predictions, scored against an
independent CCC, and weights that never look at the fold they are scored on."""

from __future__ import annotations

import json
import logging
import math
import random
import runpy
from pathlib import Path

import h5py
import numpy as np
import pytest

from vafusion.learning.ensemble import ensemble_fold, ensemble_weights, group_metrics, predict_ensemble

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"
LENGTHS = {"a_left": 50, "b": 80, "c": 30}


def numpy_ccc(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return float(2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2))


def fold_labels(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """trial -> (labels (T, 2) with -5 where unannotated, valid (T, 2))."""
    rng = np.random.default_rng(seed)
    out = {}
    for trial, n in LENGTHS.items():
        valid = rng.random((n, 2)) > 0.2
        labels = np.where(valid, rng.uniform(-1, 1, (n, 2)), -5).astype(np.float32)
        out[trial] = labels, valid
    return out


def member_predictions(labels: dict, noise: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t: (np.where(v, y, 0) + rng.normal(0, noise, y.shape)).astype(np.float32) for t, (y, v) in labels.items()}


def write_val(path: Path, labels: dict, predictions: dict) -> Path:
    """A val_predictions.h5 laid out as train.write_outputs writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as h5:
        for trial, (y, v) in labels.items():
            group = h5.create_group(trial)
            group["prediction"], group["label"], group["valid"] = predictions[trial], y, v
    return path


def row(model: str, fold: int, seed: int, valence: float, arousal: float, selection: str = "inner") -> dict:
    return {"model": model, "fold": fold, "seed": seed, "ccc_valence": valence, "ccc_arousal": arousal,
            "ccc_mean": math.nan, "best_epoch": 3, "selection": selection}


def seed_rows(model: str, seed: int, valence: list[float], arousal: list[float], **kw) -> list[dict]:
    return [row(model, f, seed, v, a, **kw) for f, (v, a) in enumerate(zip(valence, arousal))]


@pytest.fixture
def members(tmp_path) -> tuple[dict, dict[str, Path], dict[str, list[dict]]]:
    """(labels, member -> val_predictions.h5 of seed 0 fold 1, member -> metrics of seed 0)."""
    labels = fold_labels()
    noise = {"jca": 0.3, "iaca": 0.6, "cross_attention@pretrained": 0.9}
    files = {m: write_val(tmp_path / m / "seed0" / "fold1" / "val_predictions.h5", labels,
                          member_predictions(labels, s, seed=i)) for i, (m, s) in enumerate(noise.items())}
    metrics = {"jca": seed_rows("jca", 0, [0.5, 0.9, 0.3], [0.4, 0.1, 0.6]),
               "iaca": seed_rows("iaca", 0, [0.2, 0.1, 0.4], [0.2, 0.8, 0.2]),
               "cross_attention@pretrained": seed_rows("cross_attention@pretrained", 0, [0.1, 0.0, 0.1],
                                                       [0.3, 0.3, 0.3])}
    return labels, files, metrics


def read_val(path: Path) -> dict[str, dict[str, np.ndarray]]:
    with h5py.File(path) as h5:
        return {t: {k: h5[t][k][:] for k in h5[t]} for t in h5}


# --- validation folds ------------------------------------------------------------------------


def test_equal_weights_are_the_plain_mean_scored_by_ccc(members, tmp_path):
    labels, files, metrics = members
    out = tmp_path / "ens" / "seed0" / "fold1"
    returned = ensemble_fold("ens", files, metrics, "equal", fold=1, seed=0, out_dir=out)

    inputs = {m: read_val(p) for m, p in files.items()}
    written = read_val(out / "val_predictions.h5")
    assert sorted(written) == sorted(LENGTHS)
    for trial, (y, v) in labels.items():
        mean = sum(inputs[m][trial]["prediction"].astype(np.float64) for m in files) / 3
        np.testing.assert_allclose(written[trial]["prediction"], mean, atol=1e-6)
        np.testing.assert_array_equal(written[trial]["label"], y)
        np.testing.assert_array_equal(written[trial]["valid"], v)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(returned))
    for j, target in enumerate(("valence", "arousal")):
        pred = np.concatenate([written[t]["prediction"][v[:, j], j] for t, (_, v) in labels.items()])
        true = np.concatenate([y[v[:, j], j] for y, v in labels.values()])
        assert saved[f"ccc_{target}"] == pytest.approx(numpy_ccc(pred, true), abs=1e-9)
        assert saved["n_valid_frames"][target] == int(sum(v[:, j].sum() for _, v in labels.values()))
    assert saved["ccc_mean"] == pytest.approx((saved["ccc_valence"] + saved["ccc_arousal"]) / 2)
    assert {k: saved[k] for k in ("model", "fold", "seed", "selection", "n_validation_trials", "unscored_targets",
                                  "streams")} == {"model": "ens", "fold": 1, "seed": 0, "selection": "inner",
                                                  "n_validation_trials": 3, "unscored_targets": [], "streams": None}
    assert saved["ensemble"]["members"] == list(files)
    assert saved["ensemble"]["weights_mode"] == "equal"
    assert saved["ensemble"]["weights"]["arousal"] == {m: pytest.approx(1 / 3) for m in files}
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "val_predictions.h5"]  # no .part left


def test_ccc_weighted_fold_writes_the_weighted_mean(members, tmp_path):
    labels, files, metrics = members
    out = tmp_path / "ens"
    saved = ensemble_fold("ens", files, metrics, "ccc", fold=1, seed=0, out_dir=out)
    # folds 0 and 2 only: valence jca 0.4, iaca 0.3, cross 0.1; arousal 0.5, 0.2, 0.3
    expected = {"valence": {"jca": 0.4 / 0.8, "iaca": 0.3 / 0.8, "cross_attention@pretrained": 0.1 / 0.8},
                "arousal": {"jca": 0.5 / 1.0, "iaca": 0.2 / 1.0, "cross_attention@pretrained": 0.3 / 1.0}}
    for target in expected:
        assert saved["ensemble"]["weights"][target] == pytest.approx(expected[target])
    inputs = {m: read_val(p) for m, p in files.items()}
    written = read_val(out / "val_predictions.h5")
    for trial in labels:
        for j, target in enumerate(expected):
            mean = sum(expected[target][m] * inputs[m][trial]["prediction"][:, j].astype(np.float64) for m in files)
            np.testing.assert_allclose(written[trial]["prediction"][:, j], mean, atol=1e-6)


def test_ccc_weights_never_look_at_the_scored_fold(members):
    """The no-peeking proof: fold 1's weights do not move when fold 1's own scores change
    drastically, nor with another seed's; they do with another fold of the same seed."""
    _, _, metrics = members
    other_seed = {m: seed_rows(m, 1, [0.7, 0.7, 0.7], [0.7, 0.7, 0.7]) for m in metrics}
    pooled = {m: rows + other_seed[m] for m, rows in metrics.items()}
    base = ensemble_weights(pooled, "ccc", fold=1, seed=0)

    def changed(fold: int, seed: int, values: dict[str, float]) -> dict[str, list[dict]]:
        return {m: [dict(r, ccc_valence=values[m], ccc_arousal=values[m]) if (r["fold"], r["seed"]) == (fold, seed)
                    else r for r in rows] for m, rows in pooled.items()}

    drastic = {"jca": -0.99, "iaca": 0.99, "cross_attention@pretrained": math.nan}
    assert ensemble_weights(changed(1, 0, drastic), "ccc", fold=1, seed=0) == base
    assert ensemble_weights(changed(2, 1, drastic), "ccc", fold=1, seed=0) == base
    moved = ensemble_weights(changed(2, 0, drastic), "ccc", fold=1, seed=0)
    for target in base:
        assert moved[target] != pytest.approx(base[target])


def test_members_must_hold_the_same_trials_and_labels(members, tmp_path):
    labels, files, metrics = members
    out = tmp_path / "out"

    def fails(bad: dict, *words: str) -> None:
        broken = write_val(tmp_path / "bad" / "val_predictions.h5", bad, member_predictions(bad, 0.1, 9))
        with pytest.raises(ValueError) as err:
            ensemble_fold("ens", {**files, "iaca": broken}, metrics, "equal", fold=1, seed=0, out_dir=out)
        for word in ("iaca", *words):
            assert word in str(err.value)
        assert not out.exists() or not any(out.iterdir())  # nothing half-written

    fails({t: labels[t] for t in ("a_left", "b")}, "c")  # a trial lacking
    fails({**labels, "d": labels["c"]}, "d")  # an extra trial
    y, v = labels["b"]
    fails({**labels, "b": (np.where(v, y + 0.5, y).astype(np.float32), v)}, "trial b", "labels")
    fails({**labels, "b": (y, ~v)}, "trial b", "valid")
    fails({**labels, "b": (y[:-1], v[:-1])}, "trial b")


def test_mixed_selection_modes_are_refused(members, tmp_path):
    _, files, metrics = members
    mixed = {**metrics, "iaca": [dict(r, selection="validation") for r in metrics["iaca"]]}
    with pytest.raises(ValueError, match=r"(?s)selected their epochs differently.*jca: inner; iaca: validation"):
        ensemble_fold("ens", files, mixed, "equal", fold=1, seed=0, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- weights ---------------------------------------------------------------------------------


def test_negative_and_nan_scores(caplog):
    metrics = {"a": seed_rows("a", 0, [-0.5, 0.9, -0.3], [0.4, 0.9, math.nan]),
               "b": seed_rows("b", 0, [0.2, 0.9, math.nan], [None, 0.9, 0.2]),  # None: a NaN through JSON
               "c": seed_rows("c", 0, [math.nan, 0.9, math.nan], [-0.1, 0.9, -0.4])}
    weights = ensemble_weights(metrics, "ccc", fold=1, seed=0)
    # valence: a's mean -0.4 -> 0; b 0.2 (its NaN fold ignored); c has no score -> 0
    assert weights["valence"] == {"a": 0.0, "b": 1.0, "c": 0.0}
    # arousal: a 0.4, b 0.2, c negative
    assert weights["arousal"] == pytest.approx({"a": 0.4 / 0.6, "b": 0.2 / 0.6, "c": 0.0})

    hopeless = {m: [dict(r, ccc_valence=-0.2 if m == "a" else math.nan) for r in rows] for m, rows in metrics.items()}
    with caplog.at_level(logging.WARNING):
        weights = ensemble_weights(hopeless, "ccc", fold=1, seed=0)
    assert weights["valence"] == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert "equal weights instead" in caplog.text and "valence" in caplog.text
    for target in weights:
        assert sum(weights[target].values()) == pytest.approx(1)


def test_test_weights_use_every_fold_and_seed():
    metrics = {"a": seed_rows("a", 0, [0.1, 0.2], [0.5, 0.5]) + seed_rows("a", 1, [0.3, 0.6], [0.5, 0.5]),
               "b": seed_rows("b", 0, [0.4, 0.4], [0.1, 0.1]) + seed_rows("b", 1, [0.4, math.nan], [0.1, 0.3])}
    weights = ensemble_weights(metrics, "ccc", fold=None, seed=None)
    a_v, b_v = (0.1 + 0.2 + 0.3 + 0.6) / 4, 0.4
    a_a, b_a = 0.5, (0.1 + 0.1 + 0.1 + 0.3) / 4
    assert weights["valence"] == pytest.approx({"a": a_v / (a_v + b_v), "b": b_v / (a_v + b_v)})
    assert weights["arousal"] == pytest.approx({"a": a_a / (a_a + b_a), "b": b_a / (a_a + b_a)})
    # every row counts: changing any one (fold, seed) moves the test weights
    for i in range(4):
        bumped = {**metrics, "a": [dict(r, ccc_valence=0.9) if k == i else r for k, r in enumerate(metrics["a"])]}
        assert ensemble_weights(bumped, "ccc", fold=None, seed=None)["valence"]["a"] > weights["valence"]["a"]
    assert ensemble_weights(metrics, "equal", fold=None, seed=None)["valence"] == {"a": 0.5, "b": 0.5}


def test_weights_refuse_wiring_mistakes():
    rows = {"a": seed_rows("a", 0, [0.1, 0.2], [0.1, 0.2]), "b": seed_rows("b", 0, [0.1, 0.2], [0.1, 0.2])}
    with pytest.raises(ValueError, match="unknown ensemble weights"):
        ensemble_weights(rows, "best", fold=0, seed=0)
    with pytest.raises(ValueError, match="at least two members"):
        ensemble_weights({"a": rows["a"]}, "equal", fold=0, seed=0)
    with pytest.raises(ValueError, match="'b'.*member 'a'"):
        ensemble_weights({"a": rows["b"], "b": rows["b"]}, "ccc", fold=0, seed=0)
    with pytest.raises(ValueError, match="a: no fold's metrics"):  # only the scored fold itself
        ensemble_weights({"a": rows["a"][:1], "b": rows["b"]}, "ccc", fold=0, seed=0)
    with pytest.raises(ValueError, match="no metrics.json given for member.*b"):
        group_metrics(rows["a"], ["a", "b"])
    with pytest.raises(ValueError, match="must differ"):
        group_metrics(rows["a"], ["a", "a"])
    with pytest.raises(ValueError, match="'c' given"):
        group_metrics(rows["a"] + rows["b"] + seed_rows("c", 0, [0.1], [0.1]), ["a", "b"])


# --- test predictions ------------------------------------------------------------------------


def write_txt(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["valence,arousal"] + [f"{v:.6f},{a:.6f}" for v, a in values]) + "\n")


def test_predict_ensemble_is_the_weighted_mean(tmp_path):
    rng = np.random.default_rng(1)
    trials = {"t1": 40, "t2": 7}
    values = {m: {t: rng.uniform(-1, 1, (n, 2)).round(6) for t, n in trials.items()} for m in ("a", "b")}
    for m, per_trial in values.items():
        for t, v in per_trial.items():
            write_txt(tmp_path / "predictions" / m / "test" / f"{t}.txt", v)
    weights = {"valence": {"a": 0.25, "b": 0.75}, "arousal": {"a": 0.6, "b": 0.4}}
    out = tmp_path / "predictions" / "ens" / "test"
    predict_ensemble({m: tmp_path / "predictions" / m / "test" for m in values}, weights, list(trials), out)
    for t, n in trials.items():
        lines = (out / f"{t}.txt").read_text().splitlines()
        assert lines[0] == "valence,arousal" and len(lines) == n + 1
        assert all(len(x) == 6 for line in lines[1:] for x in (f.split(".")[1] for f in line.split(",")))
        got = np.loadtxt(out / f"{t}.txt", delimiter=",", skiprows=1)
        expected = np.stack([0.25 * values["a"][t][:, 0] + 0.75 * values["b"][t][:, 0],
                             0.6 * values["a"][t][:, 1] + 0.4 * values["b"][t][:, 1]], axis=1)
        np.testing.assert_allclose(got, expected, atol=1e-6)

    write_txt(tmp_path / "predictions" / "b" / "test" / "t2.txt", values["b"]["t2"][:-1])
    with pytest.raises(ValueError, match="t2: member b predicts 6 frames, a 7"):
        predict_ensemble({m: tmp_path / "predictions" / m / "test" for m in values}, weights, ["t2"],
                         tmp_path / "other")
    assert not (tmp_path / "other").exists()


# --- the Snakemake adapters ------------------------------------------------------------------


class Named(list):
    """Snakemake's Namedlist in miniature: a list whose items are attributes as well."""

    def __init__(self, **items):
        super().__init__(items.values())
        self.__dict__.update(items)


def run_script(name: str, **sections) -> None:
    snakemake = Named(**{k: Named(**v) if isinstance(v, dict) else v for k, v in sections.items()})
    snakemake.scriptdir = str(SCRIPTS)
    runpy.run_path(str(SCRIPTS / name), init_globals={"snakemake": snakemake}, run_name="__main__")


def test_scripts(members, tmp_path):
    labels, files, metrics = members
    paths = []
    for m, rows in metrics.items():
        for r in rows:
            path = tmp_path / "models" / m / "seed0" / f"fold{r['fold']}" / "metrics.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(r))
            paths.append(str(path))
    random.Random(0).shuffle(paths)  # any order: grouped by their "model" key
    out = tmp_path / "models" / "ens" / "seed0" / "fold1"
    run_script("ensemble_fold.py",
               input={"member_predictions": [str(p) for p in files.values()], "member_metrics": paths},
               output={"metrics": str(out / "metrics.json"), "predictions": str(out / "val_predictions.h5")},
               params={"members": list(files), "weights": "ccc"},
               wildcards={"model": "ens", "seed": "0", "fold": "1"},
               log=[str(tmp_path / "ensemble_fold.log")])
    direct = ensemble_fold("ens", files, metrics, "ccc", fold=1, seed=0, out_dir=tmp_path / "direct")
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(direct))

    rng = np.random.default_rng(2)
    txt = []
    for m in files:
        for t in ("x", "y"):
            txt.append(tmp_path / "predictions" / m / "test" / f"{t}.txt")
            write_txt(txt[-1], rng.uniform(-1, 1, (5, 2)))
    out = tmp_path / "predictions" / "ens" / "test"
    run_script("predict_ensemble.py",
               input={"member_predictions": [str(p) for p in txt], "member_metrics": paths},
               output={"predictions": [str(out / "x.txt"), str(out / "y.txt")]},
               params={"members": list(files), "weights": "ccc", "trials": ["x", "y"]},
               wildcards={"model": "ens"}, log=[str(tmp_path / "predict_ensemble.log")])
    weights = ensemble_weights(metrics, "ccc", fold=None, seed=None)
    predict_ensemble({m: tmp_path / "predictions" / m / "test" for m in files}, weights, ["x", "y"],
                     tmp_path / "direct_test")
    for t in ("x", "y"):
        assert (out / f"{t}.txt").read_text() == (tmp_path / "direct_test" / f"{t}.txt").read_text()
    assert "weights over every fold and seed" in (tmp_path / "predict_ensemble.log").read_text()
