import numpy as np
import pytest

from vafusion.annotations import AnnotationError, read_annotation, write_annotation


def write(tmp_path, text, name="trial.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_values_and_masks_invalid_rows_per_target(tmp_path):
    path = write(tmp_path, "valence,arousal\n0.5,-0.25\n-5,0.1\n1,-5\n-1,1\n")
    ann = read_annotation(path)
    assert ann.n_frames == 4
    np.testing.assert_allclose(ann.valence, [0.5, -5, 1, -1])
    np.testing.assert_allclose(ann.arousal, [-0.25, 0.1, -5, 1])
    assert ann.valid("valence").tolist() == [True, False, True, True]
    assert ann.valid("arousal").tolist() == [True, True, False, True]


def test_round_trip_through_writer(tmp_path):
    v = np.array([0.1, -5, 0.3], dtype=np.float32)
    a = np.array([-0.2, 0.0, -5], dtype=np.float32)
    write_annotation(tmp_path / "t.txt", v, a)
    ann = read_annotation(tmp_path / "t.txt")
    np.testing.assert_allclose(ann.valence, v, atol=1e-4)
    np.testing.assert_allclose(ann.arousal, a, atol=1e-4)


def test_trailing_blank_line_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"valence,arousal\r\n0.1,0.2\r\n0.3,0.4\r\n\r\n")
    assert read_annotation(path).n_frames == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("arousal,valence\n0.1,0.2\n", ":1: header is 'arousal,valence'"),
        ("0.1,0.2\n0.3,0.4\n", ":1: header is '0.1,0.2'"),
        ("", "empty file"),
        ("valence,arousal\n", "no data rows"),
        ("valence,arousal\n0.1,0.2\n0.1,abc\n", ":3: arousal 'abc' is not a number"),
        ("valence,arousal\n0.1,0.2\nx,0.2\n", ":3: valence 'x' is not a number"),
        ("valence,arousal\n0.1,0.2\n1.5,0.2\n", ":3: valence 1.5 is outside [-1, 1]"),
        ("valence,arousal\n-3,0.2\n", ":2: valence -3 is outside [-1, 1]"),
        ("valence,arousal\n0.1,-1.01\n", ":2: arousal -1.01 is outside [-1, 1]"),
        ("valence,arousal\n0.1,nan\n", ":2: arousal 'nan' is not finite"),
        ("valence,arousal\n0.1,0.2,0.3\n", ":2: expected 2 comma-separated values, found 3"),
        ("valence,arousal\n0.1\n", ":2: expected 2 comma-separated values, found 1"),
        ("valence,arousal\n0.1,0.2\n\n0.3,0.4\n", ":3: blank line inside the data rows"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(AnnotationError) as err:
        read_annotation(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)
