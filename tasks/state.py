"""Job state in Redis: what a user asks ``anonymize status`` about.

One hash per job (``anonymize:job:<id>``) holds status, counts, the failure
reason and result locations; a set holds the indices of finished segments so
that a redelivered segment task counts once. Everything expires after
``ttl`` seconds (a week by default) so Redis never fills up with old jobs.

Status moves ``queued -> splitting -> processing -> reassembling -> done``;
``failed`` and ``cancelled`` are final and never overwritten by a late task.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

PREFIX = "anonymize:job:"
FINAL = ("done", "failed", "cancelled")
STATUSES = ("queued", "splitting", "processing", "reassembling") + FINAL
TTL = 7 * 24 * 3600


def new_job_id() -> str:
    """Short, unique, sortable by creation time."""
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]


class JobState:
    """Read and update jobs in one Redis database."""

    def __init__(self, url_or_client: Any, ttl: int = TTL, patient: bool = False):
        """``patient`` (workers): a command that meets a Redis restart is retried for
        about 35 s (0.5, 1, 2, 4, then 5 s apart), so progress and the finished-segment
        count survive a broker restart. Otherwise (clients: ``anonymize status``) one
        attempt with short timeouts, so that a user waits seconds, not minutes."""
        if isinstance(url_or_client, str):
            import redis
            from redis.backoff import ExponentialBackoff, NoBackoff
            from redis.retry import Retry

            retry = Retry(ExponentialBackoff(cap=5, base=0.5), 10) if patient \
                else Retry(NoBackoff(), 0)
            url_or_client = redis.Redis.from_url(url_or_client, decode_responses=True,
                                                 socket_timeout=10 if patient else 5,
                                                 socket_connect_timeout=5 if patient else 3,
                                                 retry=retry)
        self.r = url_or_client
        self.ttl = ttl

    # keys
    def _k(self, job: str, part: str = "") -> str:
        return PREFIX + job + (":" + part if part else "")

    def _touch(self, pipe, job: str) -> None:
        for part in ("", "done", "failures"):
            pipe.expire(self._k(job, part), self.ttl)

    # writes
    def create(self, job: str, **fields: Any) -> None:
        now = time.time()
        data = {"job": job, "status": "queued", "created": now, "updated": now,
                "segments_total": 0, **fields}
        pipe = self.r.pipeline()
        pipe.delete(self._k(job), self._k(job, "done"), self._k(job, "failures"))
        pipe.hset(self._k(job), mapping={k: _enc(v) for k, v in data.items()})
        self._touch(pipe, job)
        pipe.execute()

    def update(self, job: str, **fields: Any) -> bool:
        """Set fields unless the job is already final (a late task must not revive it).
        Returns whether the update was applied."""
        key = self._k(job)
        fields["updated"] = time.time()

        def txn(pipe):
            status = _dec(pipe.hget(key, "status"))
            if status is None or status in FINAL:
                return False
            pipe.multi()
            pipe.hset(key, mapping={k: _enc(v) for k, v in fields.items()})
            self._touch(pipe, job)
            return True

        return self.r.transaction(txn, key, value_from_callable=True)

    def set_status(self, job: str, status: str, **fields: Any) -> bool:
        if status not in STATUSES:
            raise ValueError(f"unknown job status {status!r}")
        if status in FINAL:
            fields.setdefault("finished", time.time())
        return self.update(job, status=status, **fields)

    def fail(self, job: str, reason: str) -> bool:
        """Mark the job failed with a one-line reason (first failure wins)."""
        line = (reason.strip().splitlines() or ["unknown error"])[0][:500]
        return self.set_status(job, "failed", error=line)

    def cancel(self, job: str) -> bool:
        return self.set_status(job, "cancelled", error="cancelled by user")

    def mark_deleted(self, job: str) -> None:
        """Record that the job's objects were deleted from storage, final job or
        not: its output and report locations no longer hold anything."""
        pipe = self.r.pipeline()
        pipe.hset(self._k(job), mapping={"deleted": _enc(time.time())})
        self._touch(pipe, job)
        pipe.execute()

    def segment_done(self, job: str, index: int) -> int:
        """Record one finished segment; returns how many distinct ones are done."""
        pipe = self.r.pipeline()
        pipe.sadd(self._k(job, "done"), index)
        pipe.hdel(self._k(job, "failures"), index)
        pipe.scard(self._k(job, "done"))
        self._touch(pipe, job)
        return int(pipe.execute()[2])

    def add_frames(self, job: str, n: int) -> None:
        """Progress within segments (a redelivered segment may count twice: readers cap it)."""
        self.r.hincrby(self._k(job), "frames_done", n)

    def segment_failed(self, job: str, index: int, reason: str, attempt: int) -> None:
        """Remember the latest failure of a segment (kept while it is retried)."""
        self.r.hset(self._k(job, "failures"), index, json.dumps(
            {"reason": reason.strip().splitlines()[0][:500] if reason.strip() else "error",
             "attempt": attempt}))

    # reads
    def get(self, job: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(self._k(job))
        if not raw:
            return None
        out = {k: _dec(v) for k, v in raw.items()}
        out["segments_done"] = int(self.r.scard(self._k(job, "done")))
        out["failures"] = {int(k): json.loads(v)
                           for k, v in self.r.hgetall(self._k(job, "failures")).items()}
        return out

    def status(self, job: str) -> str | None:
        return _dec(self.r.hget(self._k(job), "status"))

    def is_final(self, job: str) -> bool:
        s = self.status(job)
        return s is None or s in FINAL

    def jobs(self) -> list[str]:
        """Known job ids, oldest first."""
        ids = {k[len(PREFIX):] for k in self.r.scan_iter(PREFIX + "*")
               if k.count(":") == PREFIX.count(":")}
        return sorted(ids)


def _enc(v: Any) -> str:
    return json.dumps(v)


def _dec(v: str | None) -> Any:
    if v is None:
        return None
    try:
        return json.loads(v)
    except ValueError:
        return v
