"""External feature streams (``vafusion.features.external``): OpenFace 2 and py-feat CSVs
matched to a trial's frame clock, the row policy, and errors that name file, line and column."""

from __future__ import annotations

import hashlib
import json
import logging

import h5py
import numpy as np
import pytest

from vafusion.faces import FaceTrackWriter
from vafusion.features.external import (ExternalFeatureError, csv_path, extract, fill_invalid, validate_settings)
from vafusion.features.registry import ExtractJob

N = 12  # video frames
AUS = ["AU01", "AU02", "AU04", "AU06", "AU12"]


def make_faces(path, n=N):
    """A real faces file (``FaceTrackWriter``) on an irregular frame clock, faces absent."""
    times = np.round(np.arange(n) / 29.97 + 0.0005 * np.sin(np.arange(n)), 6)
    with h5py.File(path, "w") as h5:
        writer = FaceTrackWriter(h5)
        for t in times:
            writer.add(float(t), None)
        writer.flush()
        h5.attrs.update({"fps": 29.97, "n_frames": n})
    return times


def au_values(n=N):
    """Distinct per (frame, AU) values: any shift of rows or columns shows."""
    return np.array([[round(f + 0.01 * (k + 1), 3) for k in range(len(AUS))] for f in range(n)])


def openface_csv(path, values, *, frames=None, success=None, edit=None):
    """OpenFace 2.2 FeatureExtraction layout: ', ' separators, 1-based frames, AU*_r then AU*_c."""
    frames = list(range(len(values))) if frames is None else frames
    header = (["frame", "face_id", "timestamp", "confidence", "success", "gaze_0_x", "pose_Tx"]
              + [f"{au}_r" for au in AUS] + [f"{au}_c" for au in AUS])
    lines = [", ".join(header)]
    for i, f in enumerate(frames):
        ok = 1 if success is None else success[i]
        row = [str(f + 1), "0", f"{f / 29.97:.3f}", "0.98", str(ok), "0.1", "-3.2"]
        row += [f"{v:.3f}" for v in values[f]] + [str(int(v > 5)) for v in values[f]]
        lines.append(", ".join(row))
    if edit:
        lines = edit(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def pyfeat_csv(path, values, *, frames=None, no_face=()):
    """py-feat Fex.to_csv: a pandas index column, 0-based frames, face box, AUs, emotions, input."""
    frames = list(range(len(values))) if frames is None else frames
    header = ["", "FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight", "FaceScore", *AUS,
              "anger", "happiness", "input", "frame", "approx_time"]
    lines = [",".join(header)]
    for i, f in enumerate(frames):
        if f in no_face:
            row = [str(i), "", "", "", "", "", *[""] * len(AUS), "", "", "clip.mp4", str(f), "00:00"]
        else:
            row = [str(i), "10.5", "12.0", "40.0", "44.0", "0.99", *[f"{v:.3f}" for v in values[f]],
                   "0.1", "0.7", "clip.mp4", str(f), "00:00"]
        lines.append(",".join(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def settings(**kw):
    return {"modality": "visual", "folder": "unused", "columns": ["AU*_r"], "layout": "auto", **kw}


def run(tmp_path, csv, stream_settings, name="ext"):
    faces = tmp_path / "faces.h5"
    if not faces.exists():
        make_faces(faces)
    out = tmp_path / f"{name}.h5"
    extract(ExtractJob(stream=name, output=str(out), settings=stream_settings, csv=str(csv), faces=str(faces)))
    with h5py.File(out) as h5:
        return h5["features"][:], h5["timestamps"][:], h5["valid"][:], dict(h5.attrs)


# --- round trips ----------------------------------------------------------------------------

def test_openface_round_trip(tmp_path):
    times = make_faces(tmp_path / "faces.h5")
    values = au_values()
    csv = openface_csv(tmp_path / "trial.csv", values)
    feats, ts, valid, attrs = run(tmp_path, csv, settings(columns=["AU12_r", "AU0*_r"]))
    # AU12 first (its pattern comes first), then AU01..AU06 in file order
    order = [4, 0, 1, 2, 3]
    np.testing.assert_allclose(feats, values[:, order], atol=1e-6)
    assert json.loads(attrs["columns"]) == ["AU12_r", "AU01_r", "AU02_r", "AU04_r", "AU06_r"]
    np.testing.assert_array_equal(ts, times)
    assert valid.all() and feats.dtype == np.float32
    assert attrs["csv_layout"] == "openface" and attrs["extractor"] == "external"
    assert attrs["weights_sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert attrs["weights"] == f"external CSV {csv}" and attrs["weights_seed"] == -1
    assert json.loads(attrs["params"])["columns"] == ["AU12_r", "AU0*_r"]


def test_pyfeat_round_trip_with_no_face_frames(tmp_path):
    times = make_faces(tmp_path / "faces.h5")
    values = au_values()
    csv = pyfeat_csv(tmp_path / "trial.csv", values, no_face={0, 1, 6})
    feats, ts, valid, attrs = run(tmp_path, csv, settings(columns=["AU*", "happiness"]))
    assert attrs["csv_layout"] == "pyfeat"
    assert json.loads(attrs["columns"]) == AUS + ["happiness"]
    expected = np.hstack([values, np.full((N, 1), 0.7)])
    expected[[0, 1]] = expected[2]  # leading no-face frames take the first valid row
    expected[6] = expected[5]  # later ones carry the last valid row forward
    np.testing.assert_allclose(feats, expected, atol=1e-6)
    np.testing.assert_array_equal(valid, ~np.isin(np.arange(N), [0, 1, 6]))
    np.testing.assert_array_equal(ts, times)
    assert attrs["n_rows_without_face"] == 3 and attrs["n_frames_filled"] == 3
    assert attrs["weights_sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()


def test_openface_success_zero_and_dropped_frame_are_filled(tmp_path, caplog):
    values = au_values()
    frames = [f for f in range(N) if f != 4]  # OpenFace skipped frame 5 (1-based)
    success = [0 if f == 8 else 1 for f in frames]
    csv = openface_csv(tmp_path / "trial.csv", values, frames=frames, success=success)
    with caplog.at_level(logging.WARNING):
        feats, _, valid, attrs = run(tmp_path, csv, settings(columns=["AU01_r"]))
    expected = values[:, 0].copy()
    expected[4], expected[8] = expected[3], expected[7]
    np.testing.assert_allclose(feats[:, 0], expected, atol=1e-6)
    assert not valid[4] and not valid[8] and valid.sum() == N - 2
    assert attrs["n_frames_without_row"] == 1 and attrs["n_rows_without_face"] == 1
    assert "2 of 12 frames filled" in caplog.text
    feats, _, _, _ = run(tmp_path, csv, settings(columns=["AU01_r"], fill="zeros"), name="z")
    assert feats[4, 0] == 0 and feats[8, 0] == 0 and feats[5, 0] == pytest.approx(values[5, 0])


def test_plain_layout_row_order_and_tolerance(tmp_path):
    values = au_values()
    # two rows fewer than frames (within the default tolerance of 2) and a quoted header
    lines = ['"a","b"'] + [f"{v[0]},{v[1]}" for v in values[:N - 2]]
    csv = tmp_path / "plain.csv"
    csv.write_text("\n".join(lines) + "\n")
    feats, _, valid, attrs = run(tmp_path, csv, settings(columns=["b", "a"], modality="audio"))
    assert attrs["csv_layout"] == "plain" and json.loads(attrs["columns"]) == ["b", "a"]
    np.testing.assert_allclose(feats[:N - 2], values[:N - 2, [1, 0]], atol=1e-6)
    np.testing.assert_allclose(feats[N - 2:], np.repeat(values[N - 3:N - 2, [1, 0]], 2, 0), atol=1e-6)
    assert valid.sum() == N - 2
    # rows past the end, within the tolerance, are dropped; a spreadsheet's BOM and CRLF
    lines = ["\ufeffframe,a"] + [f"{f},{f * 2}" for f in reversed(range(N + 1))]  # any row order
    csv.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    feats, _, valid, attrs = run(tmp_path, csv, settings(columns=["a"]), name="past")
    np.testing.assert_allclose(feats[:, 0], np.arange(N) * 2)
    assert valid.all() and attrs["n_rows_past_end"] == 1


def test_fill_invalid():
    x = np.arange(6, dtype=float)[:, None]
    valid = np.array([False, True, False, False, True, False])
    assert fill_invalid(x, valid, "carry")[:, 0].tolist() == [1, 1, 1, 1, 4, 4]
    assert fill_invalid(x, valid, "zeros")[:, 0].tolist() == [0, 1, 0, 0, 4, 0]
    assert not fill_invalid(x, np.zeros(6, bool), "carry").any()


# --- bad inputs --------------------------------------------------------------------------

def replace_cell(line_no, column, new):
    """Edit the OpenFace CSV's ``line_no`` (1-based, header = 1): ``column`` := ``new``."""
    def edit(lines):
        header = [c.strip() for c in lines[0].split(",")]
        cells = lines[line_no - 1].split(", ")
        cells[header.index(column)] = new
        lines[line_no - 1] = ", ".join(cells)
        return lines
    return edit


BAD = {
    "nan": (dict(edit=replace_cell(5, "AU04_r", "nan")), ["line 5", "'AU04_r'", "missing value"]),
    "empty": (dict(edit=replace_cell(7, "AU01_r", "")), ["line 7", "'AU01_r'", "missing value"]),
    "text": (dict(edit=replace_cell(9, "AU12_r", "0.3x")), ["line 9", "'AU12_r'", "'0.3x' is not a number"]),
    "inf": (dict(edit=replace_cell(3, "AU02_r", "inf")), ["line 3", "'AU02_r'", "not finite"]),
    "duplicate": (dict(frames=[0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
                  ["line 6", "column 'frame'", "frame 4 again (first on line 5)"]),
    "too_many": (dict(frames=list(range(N + 3))), ["line 16", "column 'frame'", "frame 15 is past the video's end"]),
    "too_few": (dict(frames=list(range(N - 3))), ["rows for 9 of the video's 12 frames", "the last on line 10", "frames 10, 11, 12"]),
    "frame_zero": (dict(edit=replace_cell(2, "frame", "0")), ["line 2", "column 'frame'", "frame 0 is before"]),
    "bad_frame": (dict(edit=replace_cell(4, "frame", "3.5")), ["line 4", "column 'frame'", "'3.5' is not a frame"]),
    "success": (dict(edit=replace_cell(6, "success", "2")), ["line 6", "column 'success'", "not 0 or 1"]),
    "short_row": (dict(edit=lambda lines: lines[:4] + [lines[4].rsplit(", ", 1)[0]] + lines[5:]),
                  ["line 5", "cells, the header has"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_csv_names_file_line_and_column(tmp_path, case):
    kwargs, expected = BAD[case]
    make_faces(tmp_path / "faces.h5")
    csv = openface_csv(tmp_path / "trial.csv", au_values(N + 3), **kwargs)
    with pytest.raises(ExternalFeatureError) as err:
        run(tmp_path, csv, settings())
    message = str(err.value)
    assert str(csv) in message and "features.external.ext" in message
    for part in expected:
        assert part in message, (part, message)
    assert not list(tmp_path.glob("ext.h5*")) and not list(tmp_path.glob(".ext.h5*"))


def test_no_face_rows_may_hold_nan(tmp_path):
    """OpenFace success 0 / py-feat empty face box: the row's cells are not used."""
    csv = openface_csv(tmp_path / "trial.csv", au_values(), success=[1] * 5 + [0] + [1] * 6,
                       edit=replace_cell(7, "AU04_r", "nan"))
    feats, _, valid, _ = run(tmp_path, csv, settings())
    assert np.isfinite(feats).all() and not valid[5]


def test_missing_file_and_unmatched_pattern(tmp_path):
    make_faces(tmp_path / "faces.h5")
    with pytest.raises(ExternalFeatureError, match=r"no CSV for this trial: .*absent\.csv is missing"):
        run(tmp_path, tmp_path / "absent.csv", settings())
    csv = openface_csv(tmp_path / "trial.csv", au_values())
    with pytest.raises(ExternalFeatureError) as err:
        run(tmp_path, csv, settings(columns=["AU*_r", "au01_r"]))
    message = str(err.value)
    assert str(csv) in message and "line 1 (header)" in message
    assert "no column matches 'au01_r' (patterns are fnmatch, case-sensitive)" in message
    csv.write_text(csv.read_text().replace(", pose_Tx,", ", gaze_0_x,", 1))
    with pytest.raises(ExternalFeatureError, match="column 'gaze_0_x' appears twice"):
        run(tmp_path, csv, settings())
    assert not list(tmp_path.glob("ext.h5*"))


def test_layout_forced_and_semicolons(tmp_path):
    make_faces(tmp_path / "faces.h5")
    csv = tmp_path / "t.csv"
    csv.write_text("a;b\n1;2\n")
    with pytest.raises(ExternalFeatureError, match="comma-separated"):
        run(tmp_path, csv, settings(columns=["a"]))
    csv.write_text("a,b\n" + "1,2\n" * N)
    with pytest.raises(ExternalFeatureError, match="layout 'openface' needs a 'frame' column"):
        run(tmp_path, csv, settings(columns=["a"], layout="openface"))


# --- settings ----------------------------------------------------------------------------

def test_validate_settings_names_keys():
    assert validate_settings("openface_au", settings()) == []
    problems = validate_settings("of", {"modality": "video", "folder": "", "columns": [], "layout": "csv",
                                        "fill": "mean", "tolerance": -1, "colums": ["x"]})
    text = "\n".join(problems)
    for key in ("modality", "folder", "columns", "layout", "fill", "tolerance", "colums"):
        assert f"features.external.of.{key}:" in text, key
    assert validate_settings("bad/name", settings())[0].startswith("features.external.bad/name:")
    assert "columns[1]" in validate_settings("x", settings(columns=["AU*", ""]))[0]
    assert csv_path({"folder": "feats/of"}, "trial_3").as_posix() == "feats/of/trial_3.csv"


def test_bad_settings_fail_the_job(tmp_path):
    csv = openface_csv(tmp_path / "trial.csv", au_values())
    with pytest.raises(ExternalFeatureError, match=r"features\.external\.ext\.layout: must be one of"):
        run(tmp_path, csv, settings(layout="openface2"))
    assert not list(tmp_path.glob("ext.h5*"))


def test_not_utf8_names_the_line(tmp_path):
    csv = openface_csv(tmp_path / "trial.csv", au_values())
    lines = csv.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"0.98", b"0.9\xe8", 1)  # a Latin-1 byte
    csv.write_bytes(b"\n".join(lines))
    with pytest.raises(ExternalFeatureError, match=r"trial\.csv, line 4: not UTF-8 text"):
        run(tmp_path, csv, settings())
    assert not list(tmp_path.glob("ext.h5*"))
