"""`anonymize submit`'s choices made before any server is reached: where each
job's video and records are downloaded, options refused (the cluster itself:
test_distributed); the same for `cancel` and `worker`, with a stand-in client."""

from __future__ import annotations

import pytest

from anonymize.cli import build_parser
from anonymize.commands.submit import _destinations


def _args(*argv: str):
    return build_parser("submit").parse_args(["submit", *argv])


def test_several_inputs_get_a_video_and_records_of_their_own(tmp_path):
    """Records have fixed names (detections.json, faces.pkl, ...): downloaded into
    one folder, the last job's replaced the others', and a second input of the
    same name replaced the first one's video, with exit status 0."""
    out = tmp_path / "out"
    got = _destinations(_args("cam1/clip.mp4", "cam2/clip.mp4", "s3://b/cam3/CLIP.mov",
                              "--wait", "-o", str(out)))
    assert got == [
        (str(out / "clip.anonymized.mp4"), str(out / "clip.anonymized")),
        (str(out / "clip-2.anonymized.mp4"), str(out / "clip-2.anonymized")),
        (str(out / "CLIP-3.anonymized.mov"), str(out / "CLIP-3.anonymized")),
    ]
    records = tmp_path / "records"
    got = _destinations(_args("a.mp4", "b.mkv", "--wait", "-o", str(out),
                              "--detections-dir", str(records)))
    assert got == [(str(out / "a.anonymized.mp4"), str(records / "a.anonymized")),
                   (str(out / "b.anonymized.mkv"), str(records / "b.anonymized"))]


def test_several_inputs_into_a_file_name_are_refused(tmp_path):
    """`submit a.mp4 b.mp4 --wait -o out.mp4` made a folder named out.mp4 holding
    a.anonymized.mp4 and b.anonymized.mp4."""
    with pytest.raises(ValueError, match="with several inputs -o names a folder"):
        _destinations(_args("a.mp4", "b.mp4", "--wait", "-o", str(tmp_path / "out.mp4")))
    (tmp_path / "clips.mov").mkdir()  # an existing folder of that name is a folder
    assert _destinations(_args("a.mp4", "b.mp4", "--wait", "-o", str(tmp_path / "clips.mov")))[0] \
        == (str(tmp_path / "clips.mov" / "a.anonymized.mp4"),
            str(tmp_path / "clips.mov" / "a.anonymized"))


def test_one_input_keeps_its_records_beside_the_video(tmp_path):
    assert _destinations(_args("a.mp4", "--wait", "-o", str(tmp_path / "x.mp4"))) == [
        (str(tmp_path / "x.mp4"), None)]
    assert _destinations(_args("a.mp4", "--wait", "-o", f"{tmp_path}/")) == [
        (str(tmp_path / "a.anonymized.mp4"), None)]
    assert _destinations(_args("a.mp4", "b.mp4")) == [(None, None), (None, None)]


def test_an_s3_input_that_is_no_object_is_refused_before_anything_is_queued(capsys, monkeypatch,
                                                                          tmp_path):
    """``s3://bucket/`` was queued and held the cpu worker for minutes of retries;
    ``s3://`` was read by the worker as a local file named ``s3:``."""
    from anonymize.cli import main

    monkeypatch.setenv("ANONYMIZE_CLUSTER_ENV", str(tmp_path / "no-cluster-env"))
    for url in ("s3://bucket/", "s3://bucket/videos/", "s3://"):
        assert main(["submit", url]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err == [f"anonymize: error: not an object url: {url} (give s3://BUCKET/KEY)"]


def test_options_without_the_option_they_serve_are_refused(capsys, monkeypatch, tmp_path):
    """--detections-dir without -o, and --timeout without --wait, were ignored (no
    records downloaded, no limit), --timeout -5 gave up at once and nan never; -o without --wait
    was already refused. Each is one line before any server is reached (--timeout 0,
    one look, stays: test_distributed uses it)."""
    from anonymize.cli import main

    monkeypatch.setenv("ANONYMIZE_CLUSTER_ENV", str(tmp_path / "no-cluster-env"))
    for argv, message in [
            (["--detections-dir", "recs"], "--detections-dir needs -o/--output (and --wait)"),
            (["--timeout", "60"], "--timeout needs --wait"),
            (["--wait", "--timeout", "-5"], "--timeout must be 0 or more seconds, got -5"),
            (["--wait", "--timeout", "nan"], "--timeout must be 0 or more seconds, got nan"),
            (["-o", "x.mp4"], "-o/--output needs --wait")]:
        assert main(["submit", "a.mp4", *argv]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"anonymize: error: {message}"), err


def test_cancel_delete_of_a_finished_job_says_its_objects_are_deleted(capsys, monkeypatch,
                                                                       tmp_path):
    """`cancel --delete` of a done job deleted its source and results but printed only
    "already done", as if nothing had happened."""
    import tasks.client
    from anonymize.cli import main

    calls = []

    class Done:
        def __init__(self):
            pass

        def cancel(self, job, delete=False):
            calls.append((job, delete))
            return False

        def get(self, job):
            return {"job": job, "status": "done"}

    monkeypatch.setenv("ANONYMIZE_CLUSTER_ENV", str(tmp_path / "no-cluster-env"))
    monkeypatch.setattr(tasks.client, "Client", Done)
    assert main(["cancel", "--delete", "j1"]) == 0
    assert main(["cancel", "j2"]) == 0
    assert calls == [("j1", True), ("j2", False)]
    assert capsys.readouterr().out.splitlines() == [
        "j1: already done; its objects deleted from storage", "j2: already done"]


@pytest.mark.parametrize("flag", [["--face-model", "retinaface-mobilenet0.25"],
                                  ["--lp-thresh", "0.3"], ["--no-plates"],
                                  ["--detect-every", "2"], ["--device", "cpu"]])
def test_detector_flags_with_detections_are_refused(capsys, monkeypatch, tmp_path, flag):
    """`submit --detections` took --face-model, --lp-thresh and the like and ignored
    them (no detector runs), where `render` has no such flags."""
    from anonymize.cli import main

    monkeypatch.setenv("ANONYMIZE_CLUSTER_ENV", str(tmp_path / "no-cluster-env"))
    assert main(["submit", "a.mp4", "--detections", "d.json", *flag]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"anonymize: error: {flag[0]} steers the detectors, and --detections "
                   f"re-renders without them (as `anonymize render`, which has no such flag)"
                   if flag[0] != "--no-plates" else
                   "anonymize: error: --plates steers the detectors, and --detections "
                   "re-renders without them (as `anonymize render`, which has no such flag)"]


def test_worker_log_level_is_checked_before_the_worker_starts(capsys, monkeypatch, tmp_path):
    """--loglevel FOO reached Celery, which raised click's BadParameter as a traceback
    once the servers had been reached."""
    from anonymize.cli import main

    monkeypatch.setenv("ANONYMIZE_CLUSTER_ENV", str(tmp_path / "no-cluster-env"))
    with pytest.raises(SystemExit) as err:
        main(["worker", "--loglevel", "FOO"])
    assert err.value.code == 2
    assert "argument --loglevel/-l: invalid choice: 'FOO'" in capsys.readouterr().err
    from anonymize.cli import build_parser

    args = build_parser("worker").parse_args(["worker", "-l", "debug"])
    assert args.loglevel == "DEBUG"


@pytest.mark.parametrize("env,message", [
    ({"ANONYMIZE_FACES": "maybe"}, "ANONYMIZE_FACES: 'maybe' is not a boolean"),
    ({"ANONYMIZE_FACE_MODEL": "nope"}, "--face-model: unknown model 'nope'")])
def test_worker_preload_checks_the_settings_it_will_load(capsys, monkeypatch, tmp_path, env,
                                                         message):
    """`worker --preload` with a bad setting in its environment said "ready" and then
    failed in every pool process's start with a traceback."""
    from anonymize.cli import main

    monkeypatch.setenv("ANONYMIZE_CLUSTER_ENV", str(tmp_path / "no-cluster-env"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["worker", "--preload"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"anonymize: error: {message}"), err


def test_a_zones_file_travels_with_its_own_name(monkeypatch, tmp_path):
    """The worker checks an s3:// job's zones against the video; what it said of
    them named "zones.json", not the user's file."""
    import json

    import tasks.client
    from anonymize.cli import main

    submitted = []

    class Recording:
        def check_in_storage(self, source):
            pass

        def submit(self, source, settings, **kwargs):
            submitted.append(kwargs)
            return "j1"

    zones = tmp_path / "my-zones.json"
    zones.write_text(json.dumps({"zones": [{"kind": "force", "box": [0, 0, 8, 8]}]}))
    monkeypatch.setenv("ANONYMIZE_CLUSTER_ENV", str(tmp_path / "no-cluster-env"))
    monkeypatch.setattr(tasks.client, "Client", Recording)
    assert main(["submit", "s3://bucket/clip.mp4", "--zones", str(zones)]) == 0
    assert submitted[0]["detections_file"] == str(zones)
    assert submitted[0]["zones"] and submitted[0]["detections"] is None


def test_records_folder_that_is_the_output_is_refused_before_upload(capsys, monkeypatch,
                                                                    tmp_path):
    """`submit --wait -o out.mkv --detections-dir out.mkv`: the job ran, the records
    made a folder out.mkv, and the video could not be put there."""
    from anonymize.cli import main
    from tests.videos import make_video

    src = make_video(tmp_path / "in.mp4", n_frames=6)
    out = tmp_path / "out.mkv"
    monkeypatch.setenv("ANONYMIZE_CLUSTER_ENV", str(tmp_path / "no-cluster-env"))
    monkeypatch.setenv("ANONYMIZE_BROKER_URL", "redis://127.0.0.1:9/0")  # never reached
    assert main(["submit", str(src), "--wait", "-o", str(out), "--detections-dir",
                 str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"anonymize: error: detections folder {out} is the output file {out} (or "
                   f"lies in it); give the records a folder of their own"]
    assert not out.exists()
