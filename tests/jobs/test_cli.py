"""Job entry points: a bad config, flag or path ends with one clear line and exit code 2."""

import pytest

from jobs import preprocess, synthesize, tune


def run(main, argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err


def test_preprocess_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  sise: 256\n")
    code, err = run(preprocess.main, ["--config", str(cfg), "--input", str(tmp_path),
                                      "--output", str(tmp_path / "o")], capsys)
    assert code == 2
    assert "error: data.sise: unknown key; allowed keys in 'data' are" in err
    assert not (tmp_path / "o").exists()


def test_preprocess_flag_out_of_range(tmp_path, capsys):
    code, err = run(preprocess.main, ["--input", str(tmp_path), "--output",
                                      str(tmp_path / "o"), "--size", "8"], capsys)
    assert code == 2 and "data.size: 8 is out of range; allowed 16 to 8192" in err


def test_preprocess_missing_input(tmp_path, capsys):
    code, err = run(preprocess.main, ["--input", str(tmp_path / "none"), "--output",
                                      str(tmp_path / "o")], capsys)
    assert code == 2 and "none: no such directory" in err


def test_preprocess_requires_input(tmp_path, capsys):
    code, err = run(preprocess.main, ["--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "data.input: required" in err


def test_preprocess_empty_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run(preprocess.main, ["--input", str(tmp_path / "empty"), "--output",
                                      str(tmp_path / "o")], capsys)
    assert code == 2 and "no DICOM files (*.dcm) found" in err


def test_preprocess_missing_output_parent(tmp_path, capsys):
    code, err = run(preprocess.main, ["--input", str(tmp_path), "--output",
                                      str(tmp_path / "a" / "b")], capsys)
    assert code == 2 and "parent folder" in err and "does not exist" in err


@pytest.mark.parametrize("argv,message", [
    (["--transfer-syntax", "jpeg-xl"], "--transfer-syntax jpeg-xl: choose mixed or one of"),
    (["--format", "dicomdir"], "--format dicomdir: choose one of folder"),
    (["--patients", "0"], "--patients 0: allowed 1 to 100000"),
    (["--height", "10"], "--height/--width 10 x 416: allowed 64 to 16384"),
])
def test_synthesize_bad_flags(tmp_path, capsys, argv, message):
    code, err = run(synthesize.main, ["--output", str(tmp_path / "s"), *argv], capsys)
    assert code == 2 and message in err


def test_synthesize_writes_dataset(tmp_path, capsys):
    code = synthesize.main(["--output", str(tmp_path / "s"), "--patients", "1", "--height",
                            "96", "--width", "80"])
    assert code == 0
    assert len(list((tmp_path / "s").rglob("*.dcm"))) == 4
    assert "synthesize: 4 folder images of 1 patients" in capsys.readouterr().out
    code, err = run(synthesize.main, ["--output", str(tmp_path / "s")], capsys)
    assert code == 2 and "exists and is not empty" in err


def test_tune_bad_key_missing_data_and_nothing_to_resume(tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("tune:\n  levles: [2, 3]\n")
    code, err = run(tune.main, ["--config", str(cfg), "--output", str(tmp_path / "o")], capsys)
    assert code == 2 and "error: tune.levles: unknown key; allowed keys in 'tune' are" in err
    code, err = run(tune.main, ["--data", str(tmp_path / "none"), "--output",
                                str(tmp_path / "o")], capsys)
    assert code == 2 and f"--data {tmp_path / 'none'}: no dataset.json" in err
    code, err = run(tune.main, ["--output", str(tmp_path / "o"), "--resume"], capsys)
    assert code == 2 and "--resume: no search to resume at" in err
    code, err = run(tune.main, ["--data", str(tmp_path), "--max-concurrent", "-1"], capsys)
    assert code == 2 and "tune.max_concurrent: -1 is out of range" in err
    assert not (tmp_path / "o").exists()
