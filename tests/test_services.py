# ruff: noqa: F811 -- the fixtures imported from tests.servers are test parameters
"""A server that is down, silent or misconfigured, as a person at a terminal meets it.

Every command that needs the cluster (``submit``, ``status``, ``cancel``,
``worker``) must answer within seconds with exactly one line
``anonymize: error: …`` that names the server and its URL (password hidden)
and says how to start one, and exit with status 2 — not a traceback after
minutes of retries. The commands run as subprocesses, as a user runs them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.servers import ROOT, redis_server, s3_server, servers_dir  # noqa: F401
from tests.videos import make_video

ANONYMIZE = [sys.executable, "-m", "anonymize"]
#: the seconds a command may take to report an unreachable server, start-up included
#: (Python, and torch imported by the command line's error path, take most of it on a
#: loaded machine; retry loops would take minutes)
BOUND_S = 30
#: what a server that accepts and never answers may add to that (timeouts are 3 s)
SILENT_EXTRA_S = 8


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket is closed


@pytest.fixture
def silent_port():
    """A port that accepts connections and never answers (a hung server, a firewall
    that swallows packets after the handshake, a server of another kind)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120):
    """Run ``anonymize ARGS`` with only the given ANONYMIZE_* variables; returns
    (exit status, stdout, stderr lines, seconds)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("ANONYMIZE_", "AWS_"))}
    full.update(env)
    full["PYTHONPATH"] = str(ROOT)
    t = time.monotonic()
    proc = subprocess.run([*ANONYMIZE, *args], env=full, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return proc.returncode, proc.stdout, lines, time.monotonic() - t


def assert_one_line_error(rc, lines, seconds, *expected: str, absent: tuple[str, ...] = ()):
    assert rc == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("anonymize: error: "), lines
    for text in expected:
        assert text in lines[0], (text, lines[0])
    for text in absent:
        assert text not in lines[0], (text, lines[0])
    assert seconds < BOUND_S, f"{seconds:.1f}s: {lines[0]}"


@pytest.fixture(scope="module")
def small_video(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("video") / "small.mp4", n_frames=6)


@pytest.mark.parametrize("content,expected", [
    (b"ANONYMIZE_BROKER_URL=redis://h\xe9te/0\n", "not UTF-8 text"),
    (b"ANONYMIZE_BROKER_URL='redis://host/0\n", "line 1: No closing quotation"),
])
def test_a_cluster_settings_file_that_cannot_be_read_is_named(tmp_path, content, expected):
    """A Latin-1 .cluster/env or an unclosed quote in it said only "'utf-8' codec
    can't decode byte 0xe9 ..." or "No closing quotation", naming no file."""
    env_file = tmp_path / "cluster.env"
    env_file.write_bytes(content)
    rc, _, lines, seconds = cli("status", env={"ANONYMIZE_CLUSTER_ENV": str(env_file)},
                                cwd=tmp_path)
    assert_one_line_error(rc, lines, seconds, f"cluster settings {env_file}", expected)


# ------------------------------------------------------------------ broker


@pytest.mark.parametrize("command", ["submit", "status", "cancel", "worker"])
def test_broker_down_is_one_line_naming_it_without_its_password(command, tmp_path,
                                                                  small_video):
    port = closed_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    args = {"submit": ["submit", str(small_video)], "status": ["status"],
            "cancel": ["cancel", "20250101-000000-abcdef01"], "worker": ["worker"]}[command]
    rc, _, lines, seconds = cli(*args, env={"ANONYMIZE_BROKER_URL": url}, cwd=tmp_path)
    assert_one_line_error(rc, lines, seconds, f"redis://:***@127.0.0.1:{port}/0", "broker",
                          "make up", absent=("hunter2",))


def test_silent_broker_times_out_in_seconds(tmp_path, silent_port):
    refused = f"redis://127.0.0.1:{closed_port()}/0"
    *_, baseline = cli("status", env={"ANONYMIZE_BROKER_URL": refused}, cwd=tmp_path)
    url = f"redis://127.0.0.1:{silent_port}/0"
    rc, _, lines, seconds = cli("status", env={"ANONYMIZE_BROKER_URL": url}, cwd=tmp_path)
    assert_one_line_error(rc, lines, seconds, url, "broker")
    assert seconds < baseline + SILENT_EXTRA_S, (seconds, baseline)


def test_broker_url_of_another_kind_is_refused(tmp_path):
    rc, _, lines, seconds = cli("status", env={"ANONYMIZE_BROKER_URL": "amqp://guest@host//"},
                                cwd=tmp_path)
    assert_one_line_error(rc, lines, seconds, "amqp://guest@host//", "ANONYMIZE_BROKER_URL")


def test_broker_url_that_cannot_be_read(tmp_path):
    rc, _, lines, seconds = cli("status", env={"ANONYMIZE_BROKER_URL": "redis://host:port/0"},
                                cwd=tmp_path)
    assert_one_line_error(rc, lines, seconds, "redis://host:port/0", "ANONYMIZE_BROKER_URL")


# ----------------------------------------------------------------- storage


@pytest.mark.integration
@pytest.mark.parametrize("command", ["submit", "worker"])
def test_storage_endpoint_down_is_one_line_naming_it(command, redis_server, tmp_path,
                                                     small_video):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    env = {"ANONYMIZE_BROKER_URL": redis_server.url, "ANONYMIZE_STORAGE_URL": "s3://anonymize",
           "ANONYMIZE_S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "a",
           "AWS_SECRET_ACCESS_KEY": "b"}
    args = ["submit", str(small_video)] if command == "submit" else ["worker"]
    rc, _, lines, seconds = cli(*args, env=env, cwd=tmp_path)
    assert_one_line_error(rc, lines, seconds, "storage", "s3://anonymize", endpoint, "make up")


@pytest.mark.integration
def test_silent_storage_endpoint_times_out_in_seconds(redis_server, tmp_path, small_video,
                                                      silent_port):
    env = {"ANONYMIZE_BROKER_URL": redis_server.url, "ANONYMIZE_STORAGE_URL": "s3://anonymize",
           "ANONYMIZE_S3_ENDPOINT_URL": f"http://127.0.0.1:{closed_port()}",
           "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    *_, baseline = cli("submit", str(small_video), env=env, cwd=tmp_path)
    endpoint = env["ANONYMIZE_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{silent_port}"
    rc, _, lines, seconds = cli("submit", str(small_video), env=env, cwd=tmp_path)
    assert_one_line_error(rc, lines, seconds, "storage", endpoint)
    assert seconds < baseline + SILENT_EXTRA_S, (seconds, baseline)


@pytest.mark.integration
def test_s3_wrong_credentials_are_one_line_naming_the_endpoint(redis_server, s3_server, tmp_path,
                                                               small_video):
    env = {**s3_server.client_env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret",
           "ANONYMIZE_BROKER_URL": redis_server.url,
           "ANONYMIZE_STORAGE_URL": s3_server.storage_url("creds")}
    rc, _, lines, seconds = cli("submit", str(small_video), env=env, cwd=tmp_path)
    assert_one_line_error(rc, lines, seconds, s3_server.endpoint, "credentials",
                          "AWS_SECRET_ACCESS_KEY", absent=("not-the-secret",))
    assert not s3_server.client().list_objects_v2(Bucket=s3_server.bucket,
                                                  Prefix="creds/").get("Contents")


@pytest.mark.integration
def test_s3_bucket_that_does_not_exist(redis_server, s3_server, tmp_path, small_video):
    env = {**s3_server.client_env(), "ANONYMIZE_BROKER_URL": redis_server.url,
           "ANONYMIZE_STORAGE_URL": "s3://no-such-bucket/x"}
    rc, _, lines, seconds = cli("submit", str(small_video), env=env, cwd=tmp_path)
    assert_one_line_error(rc, lines, seconds, "no-such-bucket", s3_server.endpoint)


@pytest.mark.integration
def test_an_s3_input_that_is_not_in_storage_is_refused_before_anything_is_queued(
        redis_server, s3_server, tmp_path):
    """`submit s3://bucket/missing.mp4` printed a job id and exited 0; the job failed
    later on a worker ("the input is not in storage"), seen only by `status`. A
    missing local file is refused at once: so is a missing object."""
    env = {**s3_server.client_env(), "ANONYMIZE_BROKER_URL": redis_server.url,
           "ANONYMIZE_STORAGE_URL": s3_server.storage_url("in-place")}
    _, before, _, _ = cli("status", env=env, cwd=tmp_path)
    for url in (f"s3://{s3_server.bucket}/in-place/missing.mp4", "s3://no-such-bucket/a.mp4"):
        rc, out, lines, seconds = cli("submit", url, env=env, cwd=tmp_path)
        assert_one_line_error(rc, lines, seconds, f"the input is not in storage: {url}")
        assert out == ""
    # with a good input before it: neither is queued
    src = tmp_path / "here.mp4"
    make_video(src, n_frames=6)
    rc, out, lines, _ = cli("submit", str(src), url, env=env, cwd=tmp_path)
    assert rc == 2 and out == "" and len(lines) == 1, lines
    _, after, _, _ = cli("status", env=env, cwd=tmp_path)
    assert after == before


# --------------------------------------------------------- other exit codes


def test_run_bad_input_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n")
    rc, _, lines, seconds = cli("run", str(bad), "-o", str(tmp_path / "out.mp4"), env={},
                                cwd=tmp_path)
    assert_one_line_error(rc, lines, seconds, "not a video", "notes.mp4")
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.integration
def test_status_and_cancel_of_an_unknown_job_exit_2(redis_server, tmp_path):
    env = {"ANONYMIZE_BROKER_URL": redis_server.url}
    for command in ("status", "cancel"):
        rc, _, lines, seconds = cli(command, "20250101-000000-deadbeef", env=env, cwd=tmp_path)
        assert_one_line_error(rc, lines, seconds, "unknown job: 20250101-000000-deadbeef")
        # one of a job's own keys was read as a job, and Redis's answer as an outage
        rc, _, lines, seconds = cli(command, "20250101-000000-deadbeef:done", env=env,
                                    cwd=tmp_path)
        assert_one_line_error(rc, lines, seconds, "not a job id: '20250101-000000-deadbeef:done'")


@pytest.mark.integration
def test_submit_of_a_non_video_is_refused_before_upload(redis_server, tmp_path):
    """The user's own files are checked on their machine: nothing is uploaded or queued."""
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video\n")
    store = tmp_path / "store"
    env = {"ANONYMIZE_BROKER_URL": redis_server.url, "ANONYMIZE_STORAGE_URL": store.as_uri()}
    rc, out, lines, seconds = cli("submit", str(bad), env=env, cwd=tmp_path)
    assert_one_line_error(rc, lines, seconds, "not a video", "notes.mp4")
    assert out == "" and not store.exists()
    rc, _, lines, _ = cli("submit", str(tmp_path / "missing.mp4"), env=env, cwd=tmp_path)
    assert rc == 2 and len(lines) == 1 and "missing.mp4" in lines[0]


@pytest.mark.integration
def test_submit_status_cancel_succeed_against_live_servers(redis_server, tmp_path, small_video):
    """The other side of the checks above: live servers and no worker: the job is queued,
    shown, and cancelled, each command exiting 0 (status of a cancelled job: 1)."""
    store = tmp_path / "store"
    env = {"ANONYMIZE_BROKER_URL": redis_server.url, "ANONYMIZE_STORAGE_URL": store.as_uri()}
    rc, out, lines, _ = cli("submit", str(small_video), env=env, cwd=tmp_path)
    assert rc == 0, lines
    job = out.strip()
    assert list((store / "jobs" / job).iterdir()) == [store / "jobs" / job / "source.mp4"]
    rc, out, _, _ = cli("status", job, env=env, cwd=tmp_path)
    assert rc == 0 and out.startswith(f"{job}  queued  small.mp4")
    rc, out, _, _ = cli("cancel", job, env=env, cwd=tmp_path)
    assert rc == 0 and out.strip() == f"{job}: cancelled"
    rc, out, _, _ = cli("status", job, env=env, cwd=tmp_path)
    assert rc == 1 and f"{job}  cancelled" in out


@pytest.mark.integration
def test_a_done_job_whose_objects_were_deleted_names_them_no_more(redis_server, tmp_path):
    """`cancel --delete` of a finished job deleted its objects, and `status`
    went on printing its output and report locations, which held nothing."""
    from tasks.state import JobState, new_job_id

    store = tmp_path / "store"
    env = {"ANONYMIZE_BROKER_URL": redis_server.url, "ANONYMIZE_STORAGE_URL": store.as_uri()}
    job = new_job_id()
    out = store / "jobs" / job / "out"
    out.mkdir(parents=True)
    (out / "a.mp4").write_bytes(b"video")
    (out / "report.json").write_text("{}")
    state = JobState(redis_server.url)
    state.create(job, source_name="a.mp4", output_url=(out / "a.mp4").as_uri(),
                 report_url=(out / "report.json").as_uri())
    assert state.set_status(job, "done")
    rc, printed, _, _ = cli("status", job, env=env, cwd=tmp_path)
    assert rc == 0 and f"output {(out / 'a.mp4').as_uri()}" in printed
    rc, printed, _, _ = cli("cancel", "--delete", job, env=env, cwd=tmp_path)
    assert rc == 0 and printed.strip() == f"{job}: already done; its objects deleted from storage"
    assert not [f for f in store.rglob("*") if f.is_file()]
    rc, printed, _, _ = cli("status", job, env=env, cwd=tmp_path)
    assert rc == 0 and f"{job}  done  a.mp4" in printed
    assert "objects deleted from storage" in printed and "output" not in printed
    assert state.get(job)["status"] == "done"


# ------------------------------------------------------------------ contracts


def test_redact_hides_only_the_password():
    from tasks.service import redact

    assert redact("redis://:secret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("rediss://user:secret@host/1") == "rediss://user:***@host/1"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"
    assert redact("http://127.0.0.1:8333") == "http://127.0.0.1:8333"


def test_every_service_variable_passes_the_strict_environment_check():
    from pipeline.settings import check_environment, env_names
    from tasks.config import TRANSPORT_ENV
    from tasks.service import ServiceSettings

    names = set(ServiceSettings.ENV.values()) | set(TRANSPORT_ENV.values())
    assert names <= env_names()
    check_environment({name: "1" for name in names})


@pytest.mark.parametrize("var,raw,message", [
    ("ANONYMIZE_VISIBILITY_TIMEOUT", "0", "ANONYMIZE_VISIBILITY_TIMEOUT: '0' is not >= 1"),
    ("ANONYMIZE_VISIBILITY_TIMEOUT", "-5", "ANONYMIZE_VISIBILITY_TIMEOUT: '-5' is not >= 1"),
    ("ANONYMIZE_VISIBILITY_TIMEOUT", "1h", "ANONYMIZE_VISIBILITY_TIMEOUT: '1h' is not a whole"),
    ("ANONYMIZE_TASK_MAX_RETRIES", "-1", "ANONYMIZE_TASK_MAX_RETRIES: '-1' is not >= 0"),
    ("ANONYMIZE_WORKER_MAX_MEMORY_MB", "-1", "ANONYMIZE_WORKER_MAX_MEMORY_MB: '-1' is not >= 0"),
    ("ANONYMIZE_UNACKED_RESTORE_INTERVAL", "abc",
     "ANONYMIZE_UNACKED_RESTORE_INTERVAL: 'abc' is not a whole number"),
    ("ANONYMIZE_UNACKED_MUTEX_EXPIRE", "0", "ANONYMIZE_UNACKED_MUTEX_EXPIRE: '0' is not >= 1"),
])
def test_service_numbers_out_of_range_are_one_line_naming_the_variable(var, raw, message):
    """A visibility timeout of 0 or -5 was taken (every running task handed to another
    worker at the next sweep), as were negative retries and memory limits, and a
    transport knob that is no number said only "invalid literal for int()"."""
    from pipeline.settings import SettingsError
    from tasks.config import celery_config
    from tasks.service import ServiceSettings

    env = {var: raw}
    with pytest.raises(SettingsError) as err:
        celery_config(ServiceSettings.from_env(env), env)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    ok = {"ANONYMIZE_VISIBILITY_TIMEOUT": "1", "ANONYMIZE_TASK_MAX_RETRIES": "0",
          "ANONYMIZE_WORKER_MAX_MEMORY_MB": "0", "ANONYMIZE_UNACKED_RESTORE_INTERVAL": "1"}
    service = ServiceSettings.from_env(ok)
    assert (service.visibility_timeout, service.task_max_retries,
            service.worker_max_memory_mb) == (1, 0, 0)
    assert celery_config(service, ok)["broker_transport_options"]["unacked_restore_interval"] == 1


@pytest.mark.parametrize("command", ["status", "cancel", "worker"])
def test_a_misspelt_variable_is_refused_by_every_cluster_command(command, tmp_path):
    """submit refused ANONYMIZE_VISIBILTY_TIMEOUT (settings are read strictly), but a
    worker started with it, the default 3600 s in force, and status and cancel ran."""
    args = [command] + (["some-job"] if command == "cancel" else [])
    rc, _, lines, seconds = cli(*args, env={"ANONYMIZE_VISIBILTY_TIMEOUT": "7200"},
                                cwd=tmp_path)
    assert_one_line_error(rc, lines, seconds, "unknown environment variable "
                          "ANONYMIZE_VISIBILTY_TIMEOUT (did you mean "
                          "ANONYMIZE_VISIBILITY_TIMEOUT?)")


def test_worker_with_a_service_number_out_of_range_exits_2_in_one_line(tmp_path):
    rc, _, lines, seconds = cli("worker", env={"ANONYMIZE_VISIBILITY_TIMEOUT": "0"},
                                cwd=tmp_path)
    assert_one_line_error(rc, lines, seconds, "ANONYMIZE_VISIBILITY_TIMEOUT: '0' is not >= 1")


def test_importing_the_tasks_layer_connects_nowhere_and_reads_no_environment():
    """`tasks.app` is configured by whoever starts a process, never at import."""
    code = ("import os, sys; os.environ['ANONYMIZE_BROKER_URL'] = 'redis://env-was-read:1/0'\n"
            "import tasks.app, tasks.jobs, tasks.client\n"
            "from tasks.app import app\n"
            "assert not app.configured, 'configured at import'\n"
            "assert 'torch' not in sys.modules and 'av' not in sys.modules\n"
            "from tasks.app import configure\n"
            "from tasks.service import ServiceSettings\n"
            "configure(ServiceSettings(broker_url='redis://given:2/0'))\n"
            "assert app.conf.broker_url == 'redis://given:2/0', app.conf.broker_url\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr


def test_celery_command_line_reads_the_configuration_module(tmp_path):
    """What Flower and the health check run: the environment's broker, password hidden."""
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "ANONYMIZE_BROKER_URL": "redis://:secret@broker.example:6390/0"}
    proc = subprocess.run([str(Path(sys.executable).parent / "celery"), "-A", "tasks.app",
                           "--config", "tasks.celeryconfig", "report"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "broker_url: 'redis://:********@broker.example:6390/0'" in proc.stdout
    assert "'anonymize.process': {'queue': 'gpu'}" in proc.stdout
