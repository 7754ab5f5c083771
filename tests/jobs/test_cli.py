"""Job entry points: a bad config, flag or path ends with exactly one line, ``error: `` and
what to fix, and exit code 2, before any work."""

import dataclasses

import pytest

from jobs import preprocess, synthesize, tune
from mammoray.core.config import DataConfig, TuneConfig
from mammoray.synthetic import dicom_write

pytestmark = pytest.mark.unit


def error_of(main, argv, capsys) -> str:
    """The job's error message: exit code 2 and one line ``error: <message>`` on stderr."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0][len("error: "):]


def keys(cls) -> str:
    return ", ".join(sorted(f.name for f in dataclasses.fields(cls)))


def test_preprocess_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  sise: 256\n")
    message = error_of(preprocess.main, ["--config", str(cfg), "--input", str(tmp_path),
                                         "--output", str(tmp_path / "o")], capsys)
    assert message == f"data.sise: unknown key; allowed keys in 'data' are {keys(DataConfig)}"
    assert not (tmp_path / "o").exists()


def test_preprocess_flag_out_of_range(tmp_path, capsys):
    assert error_of(preprocess.main, ["--input", str(tmp_path), "--output",
                                      str(tmp_path / "o"), "--size", "8"], capsys) == \
        "data.size: 8 is out of range; allowed 16 to 8192"


def test_preprocess_missing_input(tmp_path, capsys):
    assert error_of(preprocess.main, ["--input", str(tmp_path / "none"), "--output",
                                      str(tmp_path / "o")], capsys) == \
        f"--input {tmp_path / 'none'}: no such directory"


def test_preprocess_requires_input(tmp_path, capsys):
    assert error_of(preprocess.main, ["--output", str(tmp_path / "o")], capsys) == \
        "data.input: required (the dataset root); pass --input DIR"


def test_preprocess_empty_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert error_of(preprocess.main, ["--input", str(tmp_path / "empty"), "--output",
                                      str(tmp_path / "o")], capsys) == \
        f"--input {tmp_path / 'empty'}: no DICOM files (*.dcm) found for format 'folder'"


def test_preprocess_missing_output_parent(tmp_path, capsys):
    assert error_of(preprocess.main, ["--input", str(tmp_path), "--output",
                                      str(tmp_path / "a" / "b")], capsys) == \
        f"--output {tmp_path / 'a' / 'b'}: parent folder {tmp_path / 'a'} does not exist"


@pytest.mark.parametrize("argv,message", [
    (["--transfer-syntax", "jpeg-xl"], "--transfer-syntax jpeg-xl: choose mixed or one of "
     + ", ".join(dicom_write.TRANSFER_SYNTAXES)),
    (["--format", "dicomdir"], "--format dicomdir: choose one of folder, cbis-ddsm, inbreast"),
    (["--patients", "0"], "--patients 0: allowed 1 to 100000"),
    (["--height", "10"], "--height/--width 10 x 416: allowed 64 to 16384"),
])
def test_synthesize_bad_flags(tmp_path, capsys, argv, message):
    assert error_of(synthesize.main, ["--output", str(tmp_path / "s"), *argv], capsys) == message


def test_synthesize_writes_dataset(tmp_path, capsys):
    code = synthesize.main(["--output", str(tmp_path / "s"), "--patients", "1", "--height",
                            "96", "--width", "80"])
    assert code == 0
    assert len(list((tmp_path / "s").rglob("*.dcm"))) == 4
    assert capsys.readouterr().out.startswith("synthesize: 4 folder images of 1 patients "
                                              "(96 x 80) + 0 defect files -> ")
    assert error_of(synthesize.main, ["--output", str(tmp_path / "s")], capsys) == \
        f"--output {tmp_path / 's'}: exists and is not empty"


def test_tune_bad_key_missing_data_and_nothing_to_resume(tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("tune:\n  levles: [2, 3]\n")
    assert error_of(tune.main, ["--config", str(cfg), "--output", str(tmp_path / "o")],
                    capsys) == \
        f"tune.levles: unknown key; allowed keys in 'tune' are {keys(TuneConfig)}"
    assert error_of(tune.main, ["--data", str(tmp_path / "none"), "--output",
                                str(tmp_path / "o")], capsys) == \
        f"--data {tmp_path / 'none'}: no dataset.json; give the output folder of jobs.preprocess"
    assert error_of(tune.main, ["--output", str(tmp_path / "o"), "--resume"], capsys) == \
        (f"--resume: no search to resume at {tmp_path / 'o' / 'ray_results' / 'search'} "
         "(set by tune.output / tune.storage_path and tune.name)")
    assert error_of(tune.main, ["--data", str(tmp_path), "--max-concurrent", "-1"], capsys) == \
        "tune.max_concurrent: -1 is out of range; allowed 0 to 10000"
    assert not (tmp_path / "o").exists()
