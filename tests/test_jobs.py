"""The job steps (split, process, reassemble) and the Celery tasks around them,
without a broker: a local-directory storage, an in-memory job state and a list
that records what would be enqueued, on a small real video and a scripted
detector (the one of test_run.py), so everything but Redis and S3 is the code
the workers run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from celery.exceptions import Retry
from celery.utils.time import get_exponential_backoff_interval

from pipeline.process import run_local
from pipeline.settings import Settings
from tasks import jobs, keys, steps
from tasks.app import configure
from tasks.config import PROCESS, REASSEMBLE
from tasks.service import ServiceSettings
from tasks.state import FINAL, STATUSES
from tasks.storage import LocalStorage
from tests.test_run import N, ScriptedStack, write_scene

MAX_RETRIES = 2


class MemoryState:
    """JobState's contract in a dict: final statuses are never overwritten, finished
    segments are a set, failures keep the latest attempt per segment."""

    def __init__(self):
        self.jobs: dict[str, dict] = {}
        self.done: dict[str, set[int]] = {}
        self.failures: dict[str, dict[int, dict]] = {}
        self.history: dict[str, list[str]] = {}

    def create(self, job, **fields):
        self.jobs[job] = {"job": job, "status": "queued", "segments_total": 0, **fields}
        self.done[job], self.failures[job], self.history[job] = set(), {}, ["queued"]

    def get(self, job):
        if job not in self.jobs:
            return None
        return {**json.loads(json.dumps(self.jobs[job])), "segments_done": len(self.done[job]),
                "failures": dict(self.failures[job])}

    def update(self, job, **fields):
        if job not in self.jobs or self.jobs[job]["status"] in FINAL:
            return False
        self.jobs[job].update(fields)
        if "status" in fields:
            self.history[job].append(fields["status"])
        return True

    def set_status(self, job, status, **fields):
        assert status in STATUSES
        return self.update(job, status=status, **fields)

    def fail(self, job, reason):
        assert "\n" not in reason
        return self.set_status(job, "failed", error=reason)

    def cancel(self, job):
        return self.set_status(job, "cancelled", error="cancelled by user")

    def segment_done(self, job, index):
        self.done[job].add(index)
        self.failures[job].pop(index, None)
        return len(self.done[job])

    def add_frames(self, job, n):
        self.jobs[job]["frames_done"] = self.jobs[job].get("frames_done", 0) + n

    def segment_failed(self, job, index, reason, attempt):
        self.failures[job][index] = {"reason": reason, "attempt": attempt}

    def status(self, job):
        return self.jobs.get(job, {}).get("status")

    def is_final(self, job):
        return self.status(job) in (None, *FINAL)


class Harness:
    """A Context with a recorder for enqueued steps, and a job created as submit does."""

    def __init__(self, root: Path, source: Path, settings: Settings, job="job-1"):
        self.storage = LocalStorage(root / "store")
        self.state = MemoryState()
        self.sent: list[tuple[str, tuple]] = []
        self.ctx = steps.Context(self.storage, self.state,
                                lambda name, args: self.sent.append((name, args)),
                                workdir=str(root))
        self.job = job
        url = self.storage.put_file(source, keys.source_key(job, source.suffix))
        self.state.create(job, source_url=url, source_name=source.name,
                          settings=settings.to_dict(), storage_url=self.storage.url(),
                          output_ext=".mp4")

    def keys(self, sub: str = "") -> list[str]:
        return self.storage.list(f"jobs/{self.job}/{sub}")

    def objects(self) -> dict[str, bytes]:
        return {k: self.storage.get_bytes(k) for k in self.keys()}

    def take_sent(self) -> list[tuple[str, tuple]]:
        sent, self.sent = self.sent, []
        return sent


def settings() -> Settings:
    return Settings(fill_frames=3, segment_frames=16, shape="box", mask_scale=1.3, batch_size=4,
                    crf=10, preset="ultrafast", device="cpu")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scene")
    return write_scene(tmp / "scene.mp4")


@pytest.fixture(scope="module")
def reference(scene, tmp_path_factory):
    """``anonymize run`` on the same input and settings: what the steps must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    run_local(scene, out / "out.mp4", settings(), out, stack=ScriptedStack())
    return json.loads((out / "detections.json").read_text())["frames"]


@pytest.fixture
def h(tmp_path, scene):
    return Harness(tmp_path, scene, settings())


def untimed(data: bytes) -> dict:
    doc = json.loads(data)
    doc.pop("timings", None)
    return doc


def run_all_segments(h: Harness, n: int) -> None:
    for i in range(n):
        assert steps.run_process(h.ctx, h.job, i, stack=ScriptedStack()) is True


# ------------------------------------------------------------------ the steps


def test_steps_write_their_keys_move_the_status_and_equal_run_local(h, reference):
    job = h.job
    n = steps.run_split(h.ctx, job)
    assert n == 3  # 48 frames in segments of 16
    assert h.take_sent() == [(PROCESS, (job, i)) for i in range(n)]
    assert h.keys() == sorted([f"jobs/{job}/manifest.json", f"jobs/{job}/source.mp4"]
                              + [f"jobs/{job}/segments/{i}.mkv" for i in range(n)])
    info = h.state.get(job)
    assert (info["status"], info["segments_total"], info["frames_total"]) == ("processing", n, N)

    for i in range(n):
        assert steps.run_process(h.ctx, h.job, i, stack=ScriptedStack()) is True
        # only the last segment to finish asks for the reassembly
        assert h.take_sent() == ([(REASSEMBLE, (job,))] if i == n - 1 else [])
    assert h.state.get(job)["segments_done"] == n
    assert h.state.get(job)["frames_done"] >= N
    assert set(h.keys("out/")) == {f"jobs/{job}/out/{i}.mp4" for i in range(n)}
    assert set(h.keys("detections/")) == {f"jobs/{job}/detections/{i}.json" for i in range(n)}

    report = steps.run_reassemble(h.ctx, job)
    assert report["frames_match"] is True
    info = h.state.get(job)
    assert info["status"] == "done"
    assert h.state.history[job] == ["queued", "splitting", "processing", "reassembling", "done"]
    assert info["output_url"] == h.storage.url(f"jobs/{job}/output.mp4")
    assert info["report_url"] == h.storage.url(f"jobs/{job}/report.json")
    assert set(info["files"]) >= {"faces_pickle", "plates_pickle", "detections_json"}
    # intermediate objects are gone, results stay
    assert not h.keys("segments/") and not h.keys("out/")
    assert {f"jobs/{job}/{name}" for name in ("output.mp4", "report.json", "faces.pkl",
                                              "plates.pkl", "detections.json")} <= set(h.keys())
    got = h.storage.get_json(f"jobs/{job}/detections.json")["frames"]
    assert got == reference
    assert h.take_sent() == []


def test_running_each_step_twice_gives_the_same_objects(h):
    """What a redelivered task does: overwrite its own outputs with the same content."""
    n = steps.run_split(h.ctx, h.job)
    first = h.objects()
    assert steps.run_split(h.ctx, h.job) == n
    assert h.objects().keys() == first.keys()
    assert h.objects() == first
    assert h.take_sent() == 2 * [(PROCESS, (h.job, i)) for i in range(n)]

    run_all_segments(h, n)
    after_process = h.objects()
    steps.run_process(h.ctx, h.job, 1, stack=ScriptedStack())
    assert h.objects().keys() == after_process.keys()
    for key, data in after_process.items():  # same bytes, but for the measured timings
        if key.endswith(".json"):
            assert untimed(h.storage.get_bytes(key)) == untimed(data), key
        else:
            assert h.storage.get_bytes(key) == data, key
    assert h.state.get(h.job)["segments_done"] == n  # counted once
    # every finished segment count reached n, so each asks for the reassembly again:
    # harmless, a duplicate reassemble finds the job done
    assert h.take_sent() == [(REASSEMBLE, (h.job,))] * 2

    steps.run_reassemble(h.ctx, h.job)
    done = h.objects()
    assert steps.run_reassemble(h.ctx, h.job) is None
    assert steps.run_process(h.ctx, h.job, 0, stack=ScriptedStack()) is False
    assert h.objects() == done
    assert h.state.get(h.job)["status"] == "done" and h.take_sent() == []


def test_cancel_after_split_skips_every_later_step(h):
    n = steps.run_split(h.ctx, h.job)
    h.take_sent()
    assert h.state.cancel(h.job)
    for i in range(n):
        assert steps.run_process(h.ctx, h.job, i, stack=ScriptedStack()) is False
    assert steps.run_reassemble(h.ctx, h.job) is None
    assert h.keys("out/") == [] and h.keys("detections/") == []
    assert not [k for k in h.keys() if "/output" in k]
    assert h.take_sent() == []
    assert h.state.get(h.job)["status"] == "cancelled"


def test_cancel_between_segments_and_before_reassembly(h):
    n = steps.run_split(h.ctx, h.job)
    steps.run_process(h.ctx, h.job, 0, stack=ScriptedStack())
    h.take_sent()
    h.state.cancel(h.job)
    for i in range(1, n):
        assert steps.run_process(h.ctx, h.job, i, stack=ScriptedStack()) is False
    assert h.keys("out/") == [f"jobs/{h.job}/out/0.mp4"]
    assert steps.run_reassemble(h.ctx, h.job) is None
    assert not [k for k in h.keys() if "/output" in k] and h.take_sent() == []


def test_cancel_while_splitting_enqueues_nothing(h):
    """Cancelled while the split uploads: the job stays cancelled, no segment is queued."""
    put_json = h.storage.put_json

    def cancel_then_put(obj, key):
        h.state.cancel(h.job)
        return put_json(obj, key)

    h.storage.put_json = cancel_then_put
    assert steps.run_split(h.ctx, h.job) == 0
    assert h.take_sent() == []
    assert h.state.get(h.job)["status"] == "cancelled"
    assert h.keys("segments/") == []  # the segments cut meanwhile are deleted


def test_cancel_before_the_last_segment_finishes_skips_the_reassembly(h):
    n = steps.run_split(h.ctx, h.job)
    h.take_sent()
    for i in range(n - 1):
        steps.run_process(h.ctx, h.job, i, stack=ScriptedStack())
    segment_done = h.state.segment_done

    def cancel_then_count(job, index):  # cancelled while the last segment was encoding
        h.state.cancel(job)
        return segment_done(job, index)

    h.state.segment_done = cancel_then_count
    steps.run_process(h.ctx, h.job, n - 1, stack=ScriptedStack())
    assert h.take_sent() == []
    # what the job had cut and the segment just uploaded do not stay behind
    assert h.keys("segments/") == [] and h.keys("out/") == []


def test_cancel_deletes_the_copies_of_the_source_at_once(h):
    """``anonymize cancel`` without ``--delete`` left the job's segments (stream
    copies of the source's unblurred video) in the bucket indefinitely; they
    go at once, the source and anything finished stay."""
    from tasks.client import Client
    from tasks.service import ServiceSettings

    steps.run_split(h.ctx, h.job)
    assert h.keys("segments/")
    client = Client(ServiceSettings(storage_url=h.storage.url()), check=False)
    client.state, client.storage = h.state, h.storage
    assert client.cancel(h.job)
    assert h.keys("segments/") == []
    assert any(k.startswith(f"jobs/{h.job}/source") for k in h.keys())


# ------------------------------------------------------------ the Celery tasks


@pytest.fixture
def tasks_on(monkeypatch):
    """Run the Celery tasks in this process (``apply``: Celery's own tracer, retries
    included, no broker) on a given Harness; records the retry countdowns."""
    configure(ServiceSettings(broker_url="redis://127.0.0.1:9/0", task_max_retries=MAX_RETRIES))
    countdowns: list[float] = []
    retry = jobs.JobTask.retry

    def recording_retry(self, *args, **kwargs):
        try:
            return retry(self, *args, **kwargs)
        except Retry as scheduled:
            countdowns.append(scheduled.when)
            raise

    monkeypatch.setattr(jobs.JobTask, "retry", recording_retry)

    def use(h: Harness):
        monkeypatch.setattr(jobs, "_context", lambda store_url: h.ctx)
        return countdowns

    return use


def test_a_permanent_error_fails_the_job_at_once_with_one_line(tmp_path, tasks_on):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n" * 50)
    h = Harness(tmp_path, bad, settings())
    countdowns = tasks_on(h)
    result = jobs.split.apply(args=(h.job, h.storage.url()))
    assert result.failed()
    info = h.state.get(h.job)
    assert info["status"] == "failed"
    assert info["error"].startswith("split: not a video: notes.mp4")
    assert "\n" not in info["error"] and str(tmp_path) not in info["error"]
    assert countdowns == []  # not retried
    assert h.take_sent() == []


def test_an_input_missing_from_storage_fails_the_job_at_once(tmp_path, scene, tasks_on):
    """An s3:// input that names no object cannot appear by retrying: the job
    fails at once with the reason, instead of after every retry."""
    h = Harness(tmp_path, scene, settings())
    h.storage.delete_prefix(f"jobs/{h.job}/")
    countdowns = tasks_on(h)
    assert jobs.split.apply(args=(h.job, h.storage.url())).failed()
    info = h.state.get(h.job)
    assert info["status"] == "failed"
    assert info["error"].startswith("split: the input is not in storage: ")
    assert countdowns == []  # not retried


def test_a_transient_error_is_retried_with_backoff_then_fails_the_job(h, tasks_on, monkeypatch):
    countdowns = tasks_on(h)
    n = steps.run_split(h.ctx, h.job)
    h.take_sent()
    seen = []

    def flaky(ctx, job_id, index, stack=None):
        seen.append(index)
        raise ConnectionError(f"storage went away\nwhile reading segment {index}")

    monkeypatch.setattr(jobs, "run_process", flaky)
    result = jobs.process.apply(args=(h.job, 1, h.storage.url()))
    assert result.failed()
    assert seen == [1] * (MAX_RETRIES + 1)
    assert countdowns == [2, 4]
    info = h.state.get(h.job)
    assert info["status"] == "failed"
    assert info["error"] == f"segment 1 failed after {MAX_RETRIES + 1} attempts: storage went away"
    assert info["failures"] == {1: {"reason": "storage went away", "attempt": MAX_RETRIES + 1}}
    assert info["segments_done"] == 0 and n == 3
    assert h.keys("segments/") == []  # the failed job's copies of the source are gone


def test_a_transient_error_that_clears_lets_the_job_go_on(h, tasks_on, monkeypatch):
    countdowns = tasks_on(h)
    steps.run_split(h.ctx, h.job)
    h.take_sent()
    real = steps.run_process
    calls = []

    def once_flaky(ctx, job_id, index, stack=None):
        calls.append(index)
        if len(calls) == 1:
            raise OSError("connection reset by peer")
        return real(ctx, job_id, index, stack=ScriptedStack())

    monkeypatch.setattr(jobs, "run_process", once_flaky)
    assert jobs.process.apply(args=(h.job, 0, h.storage.url())).get() is True
    assert countdowns == [2]
    info = h.state.get(h.job)
    assert info["status"] == "processing" and info["segments_done"] == 1
    assert info["failures"] == {}  # a segment that finished forgets its failed attempt


def test_backoff_doubles_from_2_s_up_to_60_s():
    task = jobs.split
    waits = [get_exponential_backoff_interval(int(task.retry_backoff), n, task.retry_backoff_max,
                                              task.retry_jitter) for n in range(7)]
    assert waits == [2, 4, 8, 16, 32, 60, 60]


def test_a_retry_the_broker_cannot_take_puts_the_message_back(tasks_on, monkeypatch):
    """Celery drops a message whose retry cannot be published (reject without requeue):
    the job would never finish. It is requeued instead."""
    from celery.canvas import Signature
    from celery.exceptions import Reject

    def broker_down(self, *args, **kwargs):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")

    monkeypatch.setattr(Signature, "apply_async", broker_down)
    task = jobs.process
    task.push_request(id="t-1", args=["job-1", 0, "file:///store"], kwargs={}, retries=0,
                      is_eager=False, called_directly=False, delivery_info={})
    try:
        with pytest.raises(Reject) as rejected:
            task.retry(exc=OSError("storage went away"), countdown=2)
    finally:
        task.pop_request()
    assert rejected.value.requeue is True
