"""Settings: one name per setting in three sources, strict parsing, precedence.

The expected values here are written out by hand (not derived from the
defaults table), so a changed default or a silently accepted bad value
shows up as a failure.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from anonymize.commands.options import add_settings_arguments
from pipeline.settings import FIELDS, Settings, SettingsError, env_names

ROOT = Path(__file__).resolve().parent.parent

#: one value per setting that differs from its default, in the form each source takes
SAMPLES = {
    "faces": ("false", False), "plates": ("one-stage", "one-stage"),
    "face_model": ("retinaface-mobilenet0.25", "retinaface-mobilenet0.25"),
    "plate_model": ("plate-yolov8n-safelicensing", "plate-yolov8n-safelicensing"),
    "vehicle_model": ("vehicles-centernet-mobilenetv3", "vehicles-centernet-mobilenetv3"),
    "face_model_format": ("biubug6", "biubug6"), "plate_model_format": ("darknet", "darknet"),
    "vehicle_model_format": ("keras-h5", "keras-h5"),
    "vehicle_thresh": ("0.35", 0.35), "lp_thresh": ("0.05", 0.05), "face_thresh": ("0.4", 0.4),
    "nms_thresh": ("0.6", 0.6), "min_face": ("24", 24), "plate_size": ("1280", 1280),
    "plate_second_size": ("0", 0),
    "crop_size": ("416", 416), "crop_margin": ("0.2", 0.2), "fill_frames": ("3", 3),
    "mode": ("pixelate", "pixelate"), "shape": ("ellipse", "ellipse"),
    "mask_scale": ("1.5", 1.5), "crf": ("23", 23), "preset": ("veryfast", "veryfast"),
    "keep_metadata": ("yes", True), "device": ("cpu", "cpu"), "batch_size": ("2", 2),
    "half": ("off", False), "segment_frames": ("100", 100), "threads": ("3", 3),
    "detect_every": ("2", 2),
    "reference_every": ("8", 8),
}


def test_every_setting_has_a_sample():
    assert set(SAMPLES) == set(FIELDS)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_setting_is_read_from_environment_config_and_flag(name, tmp_path):
    raw, value = SAMPLES[name]
    var = "ANONYMIZE_" + name.upper()
    assert Settings.load(environ={var: raw}).to_dict()[name] == value
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"{name}: {raw}\n")
    assert Settings.load(cfg, environ={}).to_dict()[name] == value
    cfg_json = tmp_path / "s.json"
    cfg_json.write_text(json.dumps({name.replace("_", "-"): raw}))
    assert Settings.load(cfg_json, environ={}).to_dict()[name] == value
    assert Settings.load(overrides={name: raw}, environ={}).to_dict()[name] == value


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_setting_has_its_flag(name):
    import argparse

    p = argparse.ArgumentParser()
    add_settings_arguments(p)
    raw, value = SAMPLES[name]
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        args = p.parse_args([flag if value else "--no-" + name.replace("_", "-")])
        assert getattr(args, name) is value
    else:
        args = p.parse_args([flag, raw])
        assert getattr(args, name) == raw


def test_precedence_flag_over_environment_over_config_over_default(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("lp_thresh: 0.2\nface_thresh: 0.3\ncrf: 20\n")
    env = {"ANONYMIZE_LP_THRESH": "0.25", "ANONYMIZE_FACE_THRESH": "0.35"}
    s, sources = Settings.resolve(cfg, {"lp_thresh": "0.3"}, env)
    assert (s.lp_thresh, s.face_thresh, s.crf, s.vehicle_thresh) == (0.3, 0.35, 20, 0.2)
    assert sources["lp_thresh"] == "--lp-thresh"
    assert sources["face_thresh"] == "ANONYMIZE_FACE_THRESH"
    assert sources["crf"] == str(cfg)
    assert sources["vehicle_thresh"] == "default"


def test_anonymize_config_variable_names_the_file(tmp_path):
    cfg = tmp_path / "s.json"
    cfg.write_text('{"mask_scale": 1.7}')
    assert Settings.load(environ={"ANONYMIZE_CONFIG": str(cfg)}).mask_scale == 1.7


def test_plates_both_from_the_environment_searches_plates():
    s = Settings.load(environ={"ANONYMIZE_PLATES": "both"})
    assert s.plates == "both" and s.plate_mode == "both"
    assert Settings.load(environ={"ANONYMIZE_PLATES": "off"}).plate_mode is None


@pytest.mark.parametrize("word,value", [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
    ("false", False), ("0", False), ("no", False), ("OFF", False), (" yes ", True)])
def test_boolean_words(word, value):
    assert Settings.load(environ={"ANONYMIZE_FACES": word}).faces is value


@pytest.mark.parametrize("var,raw,message", [
    ("ANONYMIZE_FACES", "maybe", "ANONYMIZE_FACES: 'maybe' is not a boolean"),
    ("ANONYMIZE_FACES", "", "ANONYMIZE_FACES: '' is not a boolean"),
    ("ANONYMIZE_HALF", "2", "ANONYMIZE_HALF: '2' is not a boolean"),
    ("ANONYMIZE_PLATES", "yes", "ANONYMIZE_PLATES: 'yes' is not one of both, one-stage, "
                                "two-stage, off"),
    ("ANONYMIZE_LP_THRESH", "abc", "ANONYMIZE_LP_THRESH: 'abc' is not a number"),
    ("ANONYMIZE_LP_THRESH", "1.5", "ANONYMIZE_LP_THRESH: '1.5' is not between 0 and 1"),
    ("ANONYMIZE_LP_THRESH", "nan", "ANONYMIZE_LP_THRESH: 'nan' is not a finite number"),
    ("ANONYMIZE_CRF", "18.5", "ANONYMIZE_CRF: '18.5' is not a whole number"),
    ("ANONYMIZE_CRF", "52", "ANONYMIZE_CRF: '52' is not between 0 and 51"),
    ("ANONYMIZE_BATCH_SIZE", "0", "ANONYMIZE_BATCH_SIZE: '0' is not >= 1"),
    # a 100000-px plate input is 67 GB of floats: refused, not tried
    ("ANONYMIZE_PLATE_SIZE", "100000", "ANONYMIZE_PLATE_SIZE: '100000' is not between 32 and 4096"),
    ("ANONYMIZE_PLATE_SECOND_SIZE", "5000", "ANONYMIZE_PLATE_SECOND_SIZE: '5000' is not between"),
    ("ANONYMIZE_CROP_SIZE", "8192", "ANONYMIZE_CROP_SIZE: '8192' is not between 32 and 4096"),
    ("ANONYMIZE_MASK_SCALE", "0.9", "ANONYMIZE_MASK_SCALE: '0.9' is not >= 1"),
    ("ANONYMIZE_MODE", "smear", "ANONYMIZE_MODE: 'smear' is not one of blur, pixelate, solid"),
    ("ANONYMIZE_PRESET", "fastest", "ANONYMIZE_PRESET: 'fastest' is not one of"),
    ("ANONYMIZE_DEVICE", " ", "ANONYMIZE_DEVICE: ' ' is not a non-empty text"),
    ("ANONYMIZE_DEVICE", "foo", "ANONYMIZE_DEVICE: 'foo' is not cpu, cuda, cuda:N or auto"),
    ("ANONYMIZE_DEVICE", "CPU", "ANONYMIZE_DEVICE: 'CPU' is not cpu, cuda, cuda:N or auto"),
    ("ANONYMIZE_DEVICE", "cuda:-1", "ANONYMIZE_DEVICE: 'cuda:-1' is not cpu, cuda"),
    ("ANONYMIZE_DEVICE", "mps", "ANONYMIZE_DEVICE: 'mps' is not cpu, cuda"),
])
def test_unreadable_environment_values_are_errors(var, raw, message):
    with pytest.raises(SettingsError) as err:
        Settings.load(environ={var: raw})
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text,message", [
    ("faces: 2\n", "faces: 2 is not a boolean"),
    ("crf: 18.5\n", "crf: 18.5 is not a whole number"),
    ("crf: true\n", "crf: True is not a whole number"),
    ("lp_thresh: high\n", "lp_thresh: 'high' is not a number"),
    ("face_model: 3\n", "face_model: 3 is not a non-empty text"),
    ("lp_tresh: 0.2\n", "unknown setting 'lp_tresh' in "),
    ("- 1\n- 2\n", "must hold a mapping"),
    ("lp_thresh: [\n", "cannot be read"),
])
def test_bad_config_files_are_errors(tmp_path, text, message):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(text)
    with pytest.raises(SettingsError) as err:
        Settings.load(cfg, environ={})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text,message", [
    ("lp-thresh: 0.3\nlp_thresh: 0.4\n", "sets lp_thresh twice, as lp-thresh and as lp_thresh"),
    ('{"lp_thresh": 0.4, "lp-thresh": 0.3}', "sets lp_thresh twice, as lp_thresh and as lp-"),
    ("faces: false\nplates: off\nfaces: true\n", "key 'faces' appears twice"),
    ('{"faces": false, "faces": true}', "key 'faces' appears twice"),
])
def test_config_setting_one_key_twice_is_an_error(tmp_path, text, message):
    """A key given twice (or in both spellings) was taken, the last value silently
    winning: `faces: false` above `faces: true` turned face detection on."""
    cfg = tmp_path / ("s.json" if text.startswith("{") else "s.yaml")
    cfg.write_text(text)
    with pytest.raises(SettingsError) as err:
        Settings.load(cfg, environ={})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text,value", [("faces: 0\n", False), ("faces: 1\n", True),
                                        ('{"faces": 0}', False), ('{"faces": 1}', True)])
def test_config_booleans_written_as_1_or_0_are_read(tmp_path, text, value):
    """`faces: 0` was refused with "0 is not a boolean (true/false, 1/0, ...)": YAML
    and JSON read 0 as a number, and only the text "0" was taken."""
    cfg = tmp_path / ("s.json" if text.startswith("{") else "s.yaml")
    cfg.write_text(text)
    assert Settings.load(cfg, environ={}).faces is value


def test_config_typo_gets_a_suggestion(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("lp_tresh: 0.2\n")
    with pytest.raises(SettingsError, match="did you mean lp_thresh"):
        Settings.load(cfg, environ={})


def test_a_config_file_that_is_no_utf8_text_or_a_folder_is_named(tmp_path):
    """A Latin-1 config file said only "'utf-8' codec can't decode byte 0xe9 ...",
    without the file; a folder was "not found"."""
    cfg = tmp_path / "s.yaml"
    cfg.write_bytes(b"lp_thresh: 0.1  # caf\xe9\n")
    with pytest.raises(SettingsError, match=f"^config file {cfg} cannot be read: 'utf-8' "
                                            f"codec can't decode byte 0xe9"):
        Settings.load(cfg, environ={})
    with pytest.raises(SettingsError, match=f"^config file {tmp_path} is a folder, not a "
                                            f"file$"):
        Settings.load(tmp_path, environ={})


def test_a_json_config_with_a_byte_order_mark_is_read(tmp_path):
    """A JSON settings file saved by a Windows editor (UTF-8 with a BOM) was
    refused as 'Unexpected UTF-8 BOM'; the same YAML was read."""
    for name, text in (("s.json", '{"lp_thresh": 0.3}'), ("s.yaml", "lp_thresh: 0.3\n")):
        cfg = tmp_path / name
        cfg.write_text(text, encoding="utf-8-sig")
        assert Settings.load(cfg, environ={}).lp_thresh == 0.3


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="config file not found"):
        Settings.load(tmp_path / "nope.yaml", environ={})


def test_unknown_anonymize_variable_is_an_error_with_a_suggestion():
    with pytest.raises(SettingsError) as err:
        Settings.load(environ={"ANONYMIZE_LP_TRESH": "0.2"})
    assert str(err.value) == ("unknown environment variable ANONYMIZE_LP_TRESH "
                              "(did you mean ANONYMIZE_LP_THRESH?)")
    with pytest.raises(SettingsError, match="ANONYMIZE_PLATE_MODE"):
        Settings.load(environ={"ANONYMIZE_PLATE_MODE": "both"})


def test_other_variables_are_left_alone():
    s = Settings.load(environ={"ANONYMIZE_BROKER_URL": "redis://x", "ANONYMIZE_MODELS_DIR": "/m",
                               "OTHER_TOOL_FACES": "maybe"})
    assert s == Settings()


def test_every_anonymize_name_in_the_source_is_known():
    """A variable read somewhere but missing from the list would be refused as unknown."""
    pattern = re.compile(r"\bANONYMIZE_[A-Z0-9_]*[A-Z0-9]\b")
    found = set()
    for package in ("anonymize", "pipeline", "models", "tasks", "workers", "deploy"):
        for path in (ROOT / package).rglob("*"):
            if path.suffix in (".py", ".sh", ".yaml", ".yml", ".example", "") and path.is_file():
                found |= set(pattern.findall(path.read_text(errors="ignore")))
    found -= {"ANONYMIZE_SEGMENT"}  # a tag inside segment files, not a variable
    assert found - env_names() == set()


def test_direct_construction_is_validated_too():
    with pytest.raises(SettingsError):
        Settings(plates=False)
    with pytest.raises(SettingsError):
        Settings(lp_thresh=2.0)


def test_manifest_round_trip_keeps_every_value():
    s = Settings(**{k: v for k, (_, v) in SAMPLES.items()})
    assert Settings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(SettingsError, match="unknown setting 'plate_mode'"):
        Settings.from_dict({"plate_mode": "both"})


def run_cli(*args, env=None):
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("ANONYMIZE_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "anonymize", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60)


def test_print_settings_shows_values_and_sources(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("crf: 20\n")
    proc = run_cli("run", "in.mp4", "-o", "out.mp4", "--config", str(cfg), "--lp-thresh", "0.3",
                   "--no-half", "--print-settings", env={"ANONYMIZE_PLATES": "two-stage"})
    assert proc.returncode == 0, proc.stderr
    lines = {line.split(":")[0]: line for line in proc.stdout.splitlines()}
    assert set(lines) == set(FIELDS)
    assert re.search(r'"two-stage"\s+# ANONYMIZE_PLATES$', lines["plates"])
    assert re.search(r"0\.3\s+# --lp-thresh$", lines["lp_thresh"])
    assert re.search(r"20\s+# " + re.escape(str(cfg)) + "$", lines["crf"])
    assert re.search(r"true\s+# default$", lines["faces"])
    assert re.search(r"false\s+# --no-half$", lines["half"])  # the flag given, not --half


def test_cli_bad_setting_is_one_line_exit_2():
    proc = run_cli("run", "in.mp4", "-o", "out.mp4", env={"ANONYMIZE_FACES": "maybe"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "anonymize: error: ANONYMIZE_FACES: 'maybe' is not a boolean "
        "(true/false, 1/0, yes/no, on/off)"]
    proc = run_cli("run", "in.mp4", "-o", "out.mp4", "--lp-thresh", "lots")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "anonymize: error: --lp-thresh: 'lots' is not a number"]


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_forms_the_readme_names_are_accepted(device):
    assert Settings.load(overrides={"device": device}, environ={}).device == device


def test_device_the_machine_lacks_is_one_line_exit_2():
    """`--device foo` was taken, then torch's traceback (exit 1) once the models
    loaded; `--device cuda` on a machine without CUDA likewise."""
    proc = run_cli("run", "in.mp4", "-o", "out.mp4", "--device", "foo")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "anonymize: error: --device: 'foo' is not cpu, cuda, cuda:N or auto"]
    proc = run_cli("worker", "--device", "gpu")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "anonymize: error: --device: 'gpu' is not cpu, cuda, cuda:N or auto"]
    import torch

    from models.base import resolve_device

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="^device cuda:1 requested but CUDA is not "
                                             "available$"):
            resolve_device("cuda:1")
    else:
        n = torch.cuda.device_count()
        with pytest.raises(ValueError, match=f"^device cuda:{n} requested but this machine"):
            resolve_device(f"cuda:{n}")


@pytest.mark.parametrize("argv", [["models", "list"], ["review", "nowhere"],
                                  ["convert-weights", "--weights", "w", "--cfg", "c", "-o", "o"]])
def test_commands_without_settings_refuse_a_misspelt_variable_too(argv):
    """ANONYMIZE_MODELS_DIRR (for ANONYMIZE_MODELS_DIR) was ignored by the commands that
    read no settings: `models list` showed, and `models fetch` filled, the default cache."""
    proc = run_cli(*argv, env={"ANONYMIZE_MODELS_DIRR": "/elsewhere"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "anonymize: error: unknown environment variable ANONYMIZE_MODELS_DIRR (did you mean "
        "ANONYMIZE_MODELS_DIR?)"]


@pytest.mark.parametrize("var, meant", [
    ("anonymize_lp_thresh", "ANONYMIZE_LP_THRESH"),
    ("Anonymize_Faces", "ANONYMIZE_FACES"),
    ("ANONYMISE_LP_THRESH", "ANONYMIZE_LP_THRESH"),  # the British spelling
    ("anonymise_models_dir", "ANONYMIZE_MODELS_DIR"),
])
def test_a_variable_in_another_case_or_spelling_is_refused(var, meant):
    """Names are read in capitals and with a z only: `anonymize_lp_thresh=0.3` or
    `ANONYMISE_FACES=0` changed nothing, unsaid, where a misspelt ANONYMIZE_* name
    is refused."""
    with pytest.raises(SettingsError) as err:
        Settings.load(environ={var: "0.3"})
    assert str(err.value) == f"unknown environment variable {var} (did you mean {meant}?)"


def test_a_variable_in_another_case_is_refused_by_the_command_line():
    proc = run_cli("run", "in.mp4", "-o", "out.mp4", env={"anonymize_plates": "off"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "anonymize: error: unknown environment variable anonymize_plates (did you mean "
        "ANONYMIZE_PLATES?)"]


def test_an_empty_config_file_name_is_an_error(tmp_path):
    """`--config "$SETTINGS"` with SETTINGS unset (or ANONYMIZE_CONFIG= in an env file)
    read no file and ran on the defaults, unsaid: an empty value of any other
    setting is an error."""
    proc = run_cli("run", "in.mp4", "-o", "out.mp4", "--config", "", "--print-settings")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "anonymize: error: --config: '' is not a file name"]
    with pytest.raises(SettingsError) as err:
        Settings.load(environ={"ANONYMIZE_CONFIG": " "})
    assert str(err.value) == "ANONYMIZE_CONFIG: ' ' is not a file name"


def test_more_threads_than_any_machine_has_cores_is_an_error():
    """`--threads 100000` was taken: the run failed to start x264 ("can't start new
    thread", then a traceback through PyAV) and never exited."""
    proc = run_cli("run", "in.mp4", "-o", "out.mp4", "--threads", "100000")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "anonymize: error: --threads: '100000' is not between 0 and 1024"]
    assert Settings.load(environ={"ANONYMIZE_THREADS": "1024"}).threads == 1024


@pytest.mark.parametrize("argv, flag", [
    (["run", "in.mp4", "-o", "out.mp4", "--zones", ""], "--zones"),
    (["run", "in.mp4", "-o", "out.mp4", "--detections-dir", " "], "--detections-dir"),
    (["render", "in.mp4", "--detections", "d.json", "-o", "out.mp4", "--zones", ""], "--zones"),
    (["render", "in.mp4", "--detections", "d.json", "-o", "out.mp4", "--detections-dir", ""],
     "--detections-dir"),
    (["submit", "in.mp4", "--zones", ""], "--zones"),
    (["submit", "in.mp4", "--detections", ""], "--detections"),
    (["submit", "in.mp4", "--wait", "-o", "out.mp4", "--detections-dir", ""],
     "--detections-dir"),
])
def test_an_empty_file_option_is_an_error(argv, flag):
    """`--zones "$ZONES"` with ZONES unset read as no --zones at all: the forced
    regions the user meant to blur in every frame were left out, unsaid (and an
    empty --detections-dir put the records beside the output, --detections ran
    the detectors instead of re-rendering). Refused before any work."""
    proc = run_cli(*argv)
    assert proc.returncode == 2, proc.stderr
    value = argv[argv.index(flag) + 1]
    assert proc.stderr.strip().splitlines() == [
        f"anonymize: error: {flag}: {value!r} is not a file name"]


@pytest.mark.parametrize("given", ["flag", "environment"])
def test_a_worker_for_a_device_the_machine_lacks_is_refused_before_it_starts(given):
    """`anonymize worker --device cuda:3` on a machine without that GPU said "ready"
    and then failed every job it took, at once and for good (a device error is no
    transient one): jobs another worker could have done. Its servers need not be
    up: the device is checked first."""
    import torch

    device = f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}"
    argv, env = (["worker", "--device", device], {}) if given == "flag" else (
        ["worker"], {"ANONYMIZE_WORKER_DEVICE": device})
    env["ANONYMIZE_BROKER_URL"] = "redis://127.0.0.1:9/0"  # nothing listens: not reached
    proc = run_cli(*argv, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    name = "--device" if given == "flag" else "ANONYMIZE_WORKER_DEVICE"
    assert len(lines) == 1 and lines[0].startswith(
        f"anonymize: error: {name}: device {device} requested but "), lines
