"""Where the distributed path finds its servers, and a quick check that they answer.

:class:`ServiceSettings` is read from the environment only (these names are
the ones deploy/ sets); nothing reads it at import time: a client or a worker
reads it once at start and hands it to :func:`tasks.app.configure`.

The checks exist for people at a terminal: ``anonymize submit|status|cancel``
and ``anonymize worker`` call them first, so a server that is down or a URL
that is wrong is one line naming the server within seconds, instead of
Celery's and boto3's retry loops (minutes) ending in a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from models.errors import one_line
from pipeline.settings import SettingsError, check_environment

#: seconds a client waits for a server to accept a connection / answer
CHECK_TIMEOUT = 3.0
START_HINT = "start one with `make up`"


class ServiceError(ValueError):
    """A server of the distributed path is unreachable or refuses us. A ValueError
    because, like a bad setting, it is the user's to fix (start the server, correct
    the URL or credentials): the command line prints it as one line with exit 2.
    Raised only by the checks below, never inside a task."""


@dataclass
class ServiceSettings:
    """Where the distributed path finds its servers."""

    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = ""  # defaults to broker_url
    storage_url: str = "file://./anonymize-store"  # or s3://bucket/prefix
    s3_endpoint_url: str = ""  # empty: AWS; else MinIO/SeaweedFS endpoint
    visibility_timeout: int = 3600  # seconds; must exceed the longest batch
    task_max_retries: int = 3
    worker_max_memory_mb: int = 0  # per pool child, 0 = unlimited
    extra: dict[str, str] = field(default_factory=dict)

    ENV = {
        "broker_url": "ANONYMIZE_BROKER_URL",
        "result_backend": "ANONYMIZE_RESULT_BACKEND",
        "storage_url": "ANONYMIZE_STORAGE_URL",
        "s3_endpoint_url": "ANONYMIZE_S3_ENDPOINT_URL",
        "visibility_timeout": "ANONYMIZE_VISIBILITY_TIMEOUT",
        "task_max_retries": "ANONYMIZE_TASK_MAX_RETRIES",
        "worker_max_memory_mb": "ANONYMIZE_WORKER_MAX_MEMORY_MB",
    }

    #: the least value of each number: a visibility timeout of 0 or less hands every
    #: running task to another worker at the next sweep; a negative retry count or
    #: memory limit means nothing
    LEAST = {"visibility_timeout": 1, "task_max_retries": 0, "worker_max_memory_mb": 0}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServiceSettings:
        env = os.environ if environ is None else environ
        # a misspelt visibility timeout variable would leave the default in force unsaid
        check_environment(env)
        out = cls()
        for name, var in cls.ENV.items():
            if var in env and env[var] != "":
                current = getattr(out, name)
                if isinstance(current, int):
                    setattr(out, name, whole_number(var, env[var], cls.LEAST[name]))
                else:
                    setattr(out, name, env[var])
        if not out.result_backend:
            out.result_backend = out.broker_url
        return out

    @property
    def state_url(self) -> str:
        """The Redis that holds job state: the result backend's, or the broker's when
        the backend is not Redis."""
        if self.result_backend.startswith(REDIS_SCHEMES):
            return self.result_backend
        return self.broker_url


REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def whole_number(var: str, text: str, least: int) -> int:
    """The whole number environment variable ``var`` holds, at least ``least``, or a
    one-line SettingsError naming the variable (as settings are read)."""
    try:
        value = int(text.strip())
    except ValueError:
        raise SettingsError(f"{var}: {text!r} is not a whole number") from None
    if value < least:
        raise SettingsError(f"{var}: {text!r} is not >= {least}")
    return value


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (``redis://:secret@host`` ->
    ``redis://:***@host``), fit for messages and logs."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def check_redis(url: str, what: str = "broker", timeout: float = CHECK_TIMEOUT) -> None:
    """One PING to the Redis at ``url`` with short timeouts and no retries."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    var = "ANONYMIZE_BROKER_URL" if what == "broker" else "ANONYMIZE_RESULT_BACKEND"
    if not url.startswith(REDIS_SCHEMES):
        raise ServiceError(f"{what} {redact(url)} is not a Redis URL (redis://HOST:PORT/DB); "
                           f"set {var}")
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                      retry=Retry(NoBackoff(), 0))
    except ValueError as exc:
        raise ServiceError(f"{what} URL {redact(url)} cannot be read ({one_line(exc)}); "
                           f"set {var}") from None
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise ServiceError(f"{what} (Redis) at {redact(url)} refused the password "
                           f"({one_line(exc)}); check {var}") from None
    except (redis.RedisError, OSError) as exc:
        raise ServiceError(f"cannot reach the {what} (Redis) at {redact(url)} "
                           f"({one_line(exc)}); {START_HINT}, or set {var}") from None
    finally:
        client.close()


def check_services(service: ServiceSettings, storage: bool = True) -> None:
    """Raise :class:`ServiceError` unless the broker, the job-state Redis and (with
    ``storage``) the default storage answer."""
    check_redis(service.broker_url, "broker")
    if service.state_url != service.broker_url:
        check_redis(service.state_url, "result backend")
    if storage:
        check_storage(service.storage_url, service.s3_endpoint_url)


def check_storage(url: str, endpoint_url: str = "") -> None:
    from .storage import open_storage

    try:
        store = open_storage(url, endpoint_url=endpoint_url or None)
    except (ValueError, OSError) as exc:
        raise ServiceError(f"storage {url} cannot be used ({one_line(exc)}); "
                           "set ANONYMIZE_STORAGE_URL") from None
    store.check(timeout=CHECK_TIMEOUT)
