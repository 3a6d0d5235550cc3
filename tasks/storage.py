"""Object storage for jobs: a local directory or an S3 bucket, behind one interface.

The distributed path moves every large thing (source video, segments, encoded
segments, results) through storage and only keys through Redis; ``pipeline/``
never sees it (a task downloads its inputs to a folder, calls the pipeline on
files, and uploads what it wrote). Keys are
``/``-separated relative names (``jobs/<job>/segments/3.mkv``). Writes are
whole-object and atomic (a reader sees the old object or the new one, never a
half-written file), so a redelivered task may simply overwrite.

boto3 is imported inside :class:`S3Storage` only: ``anonymize run`` never needs it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from models.errors import DISK_FULL_ERRNOS, one_line

log = logging.getLogger(__name__)

#: default part size and threshold for multipart transfers (S3 minimum part is 5 MiB)
MULTIPART_BYTES = 16 * 1024 * 1024


class StorageError(RuntimeError):
    """A storage operation failed for good (missing key, retries exhausted)."""


class Storage(ABC):
    """Whole-object storage addressed by relative keys."""

    @abstractmethod
    def put_file(self, local: str | Path, key: str) -> str:
        """Upload a local file to ``key``; returns the object's url."""

    @abstractmethod
    def get_file(self, key: str, local: str | Path) -> Path:
        """Download ``key`` to ``local`` (parents created); raises FileNotFoundError if absent."""

    @abstractmethod
    def put_bytes(self, data: bytes, key: str) -> str:
        """Store ``data`` at ``key``; returns the object's url."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read ``key``; raises FileNotFoundError if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` holds an object."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys that start with ``prefix``."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many."""

    @abstractmethod
    def url(self, key: str = "") -> str:
        """Full url of ``key`` (``file:///…`` or ``s3://bucket/…``)."""

    @abstractmethod
    def check(self, timeout: float) -> None:
        """Raise ``tasks.service.ServiceError`` (one line naming the store) within about
        ``timeout`` seconds unless the store can be used; no retries."""

    # conveniences shared by both backends
    def put_json(self, obj: Any, key: str) -> str:
        return self.put_bytes(json.dumps(obj, indent=1, sort_keys=True).encode(), key)

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_tree(self, local_dir: str | Path, prefix: str) -> list[str]:
        """Upload every file below ``local_dir`` to ``prefix/<relative path>``."""
        root = Path(local_dir)
        keys = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = join_key(prefix, path.relative_to(root).as_posix())
            self.put_file(path, key)
            keys.append(key)
        return keys


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class LocalStorage(Storage):
    """A directory on a filesystem every worker shares (or one machine)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key.strip("/")).resolve()
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"storage key escapes the store: {key!r}")
        return path

    def _atomic_write(self, key: str, write) -> str:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.url(key)

    def put_file(self, local, key):
        with open(local, "rb") as src:
            return self._atomic_write(key, lambda fh: shutil.copyfileobj(src, fh, 1 << 20))

    def get_file(self, key, local):
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"not in storage: {self.url(key)}")
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, local)
        return local

    def put_bytes(self, data, key):
        return self._atomic_write(key, lambda fh: fh.write(data))

    def get_bytes(self, key):
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"not in storage: {self.url(key)}")
        return path.read_bytes()

    def exists(self, key):
        return self._path(key).is_file()

    def list(self, prefix=""):
        keys = []
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.endswith(".part"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete_prefix(self, prefix):
        keys = self.list(prefix)
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        return len(keys)

    def url(self, key=""):
        return self._path(key).as_uri() if key else self.root.as_uri()

    def check(self, timeout=0.0):
        from .service import ServiceError

        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ServiceError(f"storage {self.url()} is not writable; set ANONYMIZE_STORAGE_URL")


class S3Storage(Storage):
    """An S3 bucket (AWS, MinIO, SeaweedFS, …) under an optional key prefix.

    Credentials come from the usual AWS environment (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, profiles, instance roles); the endpoint from
    ``endpoint_url`` (``ANONYMIZE_S3_ENDPOINT_URL``). Connection failures are
    retried with exponential backoff for up to ``retry_seconds`` so that a
    storage restart of a few seconds does not fail a job.
    """

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 retry_seconds: float = 60.0, multipart_bytes: int = MULTIPART_BYTES,
                 max_concurrency: int = 4):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self.retry_seconds = retry_seconds
        config = Config(retries={"max_attempts": 3, "mode": "standard"},
                        connect_timeout=5, read_timeout=60,
                        s3={"addressing_style": "path"} if self.endpoint_url else None)
        self.region = os.environ.get("AWS_DEFAULT_REGION",
                                     os.environ.get("AWS_REGION", "us-east-1"))
        self._session = boto3.session.Session()
        self.client = self._session.client("s3", endpoint_url=self.endpoint_url, config=config,
                                           region_name=self.region)
        self.transfer = TransferConfig(multipart_threshold=multipart_bytes,
                                       multipart_chunksize=multipart_bytes,
                                       max_concurrency=max_concurrency)

    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    def _retry(self, what: str, fn, *args, **kwargs):
        """Run ``fn`` retrying connection-level failures until ``retry_seconds`` pass."""
        from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        deadline = time.monotonic() + self.retry_seconds
        delay = 0.25
        while True:
            try:
                return fn(*args, **kwargs)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if code in ("404", "NoSuchKey", "NotFound"):
                    raise FileNotFoundError(f"not in storage: {what}") from None
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if status < 500 and code not in ("SlowDown", "RequestTimeout"):
                    raise StorageError(f"{what}: {code or exc}") from None
                error: Exception = exc
            except ParamValidationError as exc:  # a request that can never be valid (an empty key)
                raise ValueError(f"{what}: {' '.join(str(exc).split())}") from None
            except (BotoCoreError, S3UploadFailedError, S3TransferFailedError, OSError) as exc:
                if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
                    raise
                if getattr(exc, "errno", None) in DISK_FULL_ERRNOS:
                    raise  # this machine's disk, not the storage: waiting makes no room
                if "404" in str(exc) or "Not Found" in str(exc):
                    raise FileNotFoundError(f"not in storage: {what}") from None
                error = exc
            if time.monotonic() + delay > deadline:
                raise StorageError(f"{what}: {error}") from error
            log.warning("storage: %s failed (%s); retrying in %.1fs", what, error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def put_file(self, local, key):
        k = self._key(key)
        self._retry(self.url(key), self.client.upload_file, str(local), self.bucket, k,
                    Config=self.transfer)
        return self.url(key)

    def get_file(self, key, local):
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._retry(self.url(key), self.client.download_file, self.bucket, self._key(key),
                        str(local), Config=self.transfer)
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS and not exc.filename:  # boto3 names no file
                raise OSError(exc.errno, exc.strerror, str(local)) from None
            raise
        return local

    def put_bytes(self, data, key):
        self._retry(self.url(key), self.client.put_object, Bucket=self.bucket,
                    Key=self._key(key), Body=data)
        return self.url(key)

    def get_bytes(self, key):
        def read():
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

        return self._retry(self.url(key), read)

    def exists(self, key):
        try:
            self._retry(self.url(key), self.client.head_object, Bucket=self.bucket,
                        Key=self._key(key))
            return True
        except FileNotFoundError:
            return False

    def _list_full(self, prefix: str) -> list[str]:
        def collect():
            keys = []
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key(prefix) if prefix else
                (self.prefix + "/" if self.prefix else ""))
            for page in pages:
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
            return keys

        return self._retry(f"list {self.url(prefix)}", collect)

    def list(self, prefix=""):
        cut = len(self.prefix) + 1 if self.prefix else 0
        keys = [k[cut:] for k in self._list_full(prefix)]
        # a prefix ending in "/" was stripped by _key; keep exact prefix semantics
        return sorted(k for k in keys if k.startswith(prefix))

    def delete_prefix(self, prefix):
        full = [self._key(k) for k in self.list(prefix)]
        for start in range(0, len(full), 1000):
            chunk = [{"Key": k} for k in full[start:start + 1000]]
            self._retry(f"delete {self.url(prefix)}", self.client.delete_objects,
                        Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
        return len(full)

    def url(self, key=""):
        return "s3://" + join_key(self.bucket, self.prefix, key)

    def check(self, timeout=3.0):
        """One HEAD of the bucket with a client of its own: no retries, short timeouts."""
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        from .service import START_HINT, ServiceError, redact

        where = f"storage {self.url()} at {redact(self.endpoint_url or 'AWS S3')}"
        config = Config(retries={"total_max_attempts": 1}, connect_timeout=timeout,
                        read_timeout=timeout,
                        s3={"addressing_style": "path"} if self.endpoint_url else None)
        client = self._session.client("s3", endpoint_url=self.endpoint_url, config=config,
                                      region_name=self.region)
        try:
            client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise ServiceError(f"{where}: no credentials; set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY") from None
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = exc.response.get("Error", {}).get("Code", "") or str(status)
            if status in (401, 403):
                raise ServiceError(f"{where} refused the credentials ({code}); check "
                                   "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
            if status == 404:
                raise ServiceError(f"{where}: no bucket {self.bucket!r}; create it "
                                   "(`make up` does), or set ANONYMIZE_STORAGE_URL") from None
            raise ServiceError(f"{where} answered {code}") from None
        except (BotoCoreError, OSError) as exc:
            raise ServiceError(f"cannot reach the {where} ({one_line(exc)}); {START_HINT}, "
                               "or set ANONYMIZE_S3_ENDPOINT_URL") from None
        finally:
            client.close()


def open_storage(url: str, endpoint_url: str | None = None, **kwargs) -> Storage:
    """``file:///abs/dir``, ``file://./rel/dir``, a plain path, or ``s3://bucket/prefix``.

    For S3 the endpoint defaults to ``ANONYMIZE_S3_ENDPOINT_URL`` from the environment.
    """
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if endpoint_url is None:
            endpoint_url = os.environ.get("ANONYMIZE_S3_ENDPOINT_URL") or None
        return S3Storage(parsed.netloc, parsed.path, endpoint_url=endpoint_url, **kwargs)
    if parsed.scheme == "file":
        # file://./rel keeps "." as the netloc; file:///abs has an empty one
        return LocalStorage((parsed.netloc + parsed.path) if parsed.netloc else parsed.path)
    if parsed.scheme in ("", ) or len(parsed.scheme) == 1:  # plain or Windows path
        return LocalStorage(url)
    raise ValueError(f"unsupported storage url: {url} (use file://DIR or s3://BUCKET/PREFIX)")


def split_url(url: str) -> tuple[str, str]:
    """``s3://b/p/x.mp4`` -> (``s3://b/p``, ``x.mp4``): a storage url and a key in it.
    A bucket or folder (``s3://b/``, ``s3://b/p/``) or a url without a bucket
    (``s3://``, which read as a local file named ``s3:``) is not an object."""
    head, _, name = url.rpartition("/")
    if not name or "://" not in head or head.endswith(":/") or head.endswith(":"):
        raise ValueError(f"not an object url: {url} (give s3://BUCKET/KEY)")
    return head, name
