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
    progress, done = capsys.readouterr().out.strip().splitlines()
    assert progress == "synthesize: folder: 1/1 patients (100%), 0 s"
    assert done.startswith("synthesize: 4 folder images of 1 patients (96 x 80) + 0 defect "
                           "files -> ")
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


# ------------------------------------------------------------------ --set, --no-, mammoray

def test_set_values_are_yaml_typed_and_checked_like_the_file():
    from mammoray.core.config import ConfigError, load_config, parse_sets

    sets = parse_sets(["train.epochs=5", "model.dropout=[0.1, 0.2]", "train.use_gpu=false",
                       "train.run_name=null", "train.lr_schedule=cosine",
                       "train.learning_rate=3e-4"])
    assert sets == {"train.epochs": 5, "model.dropout": [0.1, 0.2], "train.use_gpu": False,
                    "train.run_name": None, "train.lr_schedule": "cosine",
                    "train.learning_rate": "3e-4"}  # YAML 1.1; read as in a config file:
    assert load_config(None, None, {"train.learning_rate": "3e-4"}).train.learning_rate == 3e-4
    # --set comes after the flags, and after the file: thesis.yaml's use_gpu: true turned off.
    cfg = load_config("jobs/configs/thesis.yaml", {"train.epochs": 7},
                      parse_sets(["train.epochs=2", "train.use_gpu=false"]))
    assert cfg.train.epochs == 2 and cfg.train.use_gpu is False
    assert cfg.model.levels == 7  # the rest as in the file
    for item, message in (
            ("epochs=5", "--set epochs=5: give SECTION.KEY=VALUE"),
            ("train.epochs", "--set train.epochs: give SECTION.KEY=VALUE"),
            ("train.epochs=[1", "--set train.epochs=[1: the value is not valid YAML")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            parse_sets([item])
    with pytest.raises(ConfigError, match=r"^train.epochz: unknown key; allowed keys in "
                                          r"'train' are "):
        load_config(None, None, parse_sets(["train.epochz=3"]))
    with pytest.raises(ConfigError, match=r"^train.epochs: expected an integer, got 'many'"):
        load_config(None, None, parse_sets(["train.epochs=many"]))


def test_set_errors_end_a_job_before_any_work(tmp_path, capsys):
    from jobs import evaluate, train

    assert error_of(train.main, ["--data", str(tmp_path), "--output", str(tmp_path / "o"),
                                 "--set", "train.batch_size=0"], capsys) == \
        "train.batch_size: 0 is out of range; allowed 1 to 4096"
    assert error_of(evaluate.main, ["--checkpoint", str(tmp_path), "--data", str(tmp_path),
                                    "--set", "train.epochs=3"], capsys) == (
        "--set train.epochs: jobs.evaluate takes a config's ray.* and infer.* keys only (its "
        "other options are its flags; see --help)")
    from jobs import predict

    # infer.* is checked like a config file's key, before the checkpoint is even looked at.
    assert error_of(predict.main, ["--checkpoint", str(tmp_path), "--input", str(tmp_path),
                                   "--set", "infer.overlap=0.99"], capsys) == \
        "infer.overlap: 0.99 is out of range; allowed 0.0 to 0.95"
    assert error_of(evaluate.main, ["--checkpoint", str(tmp_path), "--data", str(tmp_path),
                                    "--set", "infer.mode=tiles"], capsys) == \
        "infer.mode: 'tiles' is not allowed; choose one of 'sliding', 'whole'"
    assert not (tmp_path / "o").exists()


def test_boolean_flags_have_no_forms():
    from jobs import predict, synthesize, train

    assert train.parse_args(["--no-use-gpu"]).use_gpu is False
    assert train.parse_args(["--use-gpu"]).use_gpu is True
    assert train.parse_args([]).use_gpu is None  # the config decides
    args = predict.parse_args(["--checkpoint", "c", "--input", "i", "--no-dicom-seg"])
    assert args.dicom_seg is False and args.skip_existing is False
    assert synthesize.parse_args(["--output", "o", "--no-film"]).film is False


def test_the_mammoray_command_runs_the_jobs(capsys):
    from jobs.__main__ import JOBS, main

    assert main([]) == 2 and "usage: mammoray <job>" in capsys.readouterr().out
    assert main(["fly"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: unknown job 'fly'; choose one of {', '.join(JOBS)}")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0 and "--cpus-per-worker" in capsys.readouterr().out
    assert main(["synthesize", "--output", "x", "--patients", "0"]) == 2
