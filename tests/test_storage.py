# ruff: noqa: F811 -- the fixtures imported from tests.servers are test parameters
"""Storage backends: the same behaviour from a local folder and from a real S3 server."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.storage import LocalStorage, S3Storage, open_storage, split_url
from tests.conftest import small_files
from tests.servers import redis_server, s3_server, servers_dir  # noqa: F401

MiB = 1024 * 1024


def _exercise(store, tmp_path):
    """put/get/list/exists/delete_prefix round trip shared by both backends."""
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(3000))
    url = store.put_file(src, "jobs/a/segments/0.mkv")
    assert url == store.url("jobs/a/segments/0.mkv")
    store.put_bytes(b"hello", "jobs/a/manifest.json")
    store.put_json({"x": [1, 2]}, "jobs/b/report.json")

    assert store.exists("jobs/a/manifest.json")
    assert not store.exists("jobs/a/nothing")
    assert store.get_bytes("jobs/a/manifest.json") == b"hello"
    assert store.get_json("jobs/b/report.json") == {"x": [1, 2]}
    got = store.get_file("jobs/a/segments/0.mkv", tmp_path / "deep" / "out.bin")
    assert got.read_bytes() == src.read_bytes()
    assert store.list("jobs/a/") == ["jobs/a/manifest.json", "jobs/a/segments/0.mkv"]
    assert store.list("jobs/") == ["jobs/a/manifest.json", "jobs/a/segments/0.mkv",
                                   "jobs/b/report.json"]

    # overwrite = what a redelivered task does
    store.put_bytes(b"again", "jobs/a/manifest.json")
    assert store.get_bytes("jobs/a/manifest.json") == b"again"

    with pytest.raises(FileNotFoundError):
        store.get_bytes("jobs/zz/none")
    with pytest.raises(FileNotFoundError):
        store.get_file("jobs/zz/none", tmp_path / "none")

    assert store.delete_prefix("jobs/a/") == 2
    assert store.list("jobs/") == ["jobs/b/report.json"]


def test_local_storage_round_trip(tmp_path):
    store = open_storage((tmp_path / "store").as_uri())
    assert isinstance(store, LocalStorage)
    _exercise(store, tmp_path)
    # no temporary leftovers from atomic writes
    assert [p.name for p in (tmp_path / "store").rglob("*.part")] == []


def test_local_storage_rejects_escaping_keys(tmp_path):
    store = LocalStorage(tmp_path / "store")
    with pytest.raises(ValueError):
        store.put_bytes(b"x", "../outside")


def test_open_storage_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_storage("file://./rel").root == (tmp_path / "rel").resolve()
    assert open_storage(str(tmp_path / "plain")).root == tmp_path / "plain"
    with pytest.raises(ValueError):
        open_storage("ftp://host/x")
    assert split_url("s3://bucket/jobs/x.mp4") == ("s3://bucket/jobs", "x.mp4")
    # a bucket, a folder, no bucket at all (which used to open a local file "s3:")
    for url in ("s3://bucket", "s3://bucket/", "s3://bucket/jobs/", "s3://", "s3:"):
        with pytest.raises(ValueError, match="not an object url"):
            split_url(url)


@pytest.mark.integration
def test_an_s3_request_that_can_never_be_valid_is_not_retried(s3_server, tmp_path):
    """An empty key (a bucket given as an input) was retried for the whole
    retry window, a minute, as if the connection had failed, holding the
    worker; it is a ValueError at once, which fails the job."""
    store = S3Storage(s3_server.bucket, "", endpoint_url=s3_server.endpoint, retry_seconds=60)
    t = time.monotonic()
    with pytest.raises(ValueError):
        store.get_file("", tmp_path / "x")
    assert time.monotonic() - t < 10
    with pytest.raises(FileNotFoundError):
        store.get_file("missing.mp4", tmp_path / "y")


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["enospc", "efbig"])
def test_a_download_into_a_full_disk_is_not_retried_as_a_storage_outage(s3_server, tmp_path,
                                                                        kind, request):
    """`submit --wait -o` onto a full disk: the download was retried as if the
    storage were away (a warning line per try, for the whole retry window), then
    reported as "lost the storage at s3://…" with no file named. No wait makes room
    on this machine's disk: the error comes at once and names the file."""
    store = S3Storage(s3_server.bucket, "full", endpoint_url=s3_server.endpoint,
                      retry_seconds=30)
    store.put_bytes(os.urandom(64 * 1024), "output.mp4")
    if kind == "enospc":
        target = request.getfixturevalue("full_disk") / "out.mp4"  # 16 KiB free
        t = time.monotonic()
        with pytest.raises(OSError) as caught:
            store.get_file("output.mp4", target)
        assert time.monotonic() - t < 10
        assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(target))
        assert sorted(p.name for p in target.parent.iterdir()) == ["filler"]
        return
    # a file larger than `ulimit -f` allows: the same, in a process of its own
    target = tmp_path / "out" / "out.mp4"
    code = ("import sys, time\n"
            "from tasks.storage import S3Storage\n"
            f"store = S3Storage({s3_server.bucket!r}, 'full', endpoint_url={s3_server.endpoint!r}, "
            "retry_seconds=30)\n"
            "t = time.monotonic()\n"
            "try:\n"
            f"    store.get_file('output.mp4', {str(target)!r})\n"
            "except OSError as exc:\n"
            "    print(exc.errno, exc.filename, round(time.monotonic() - t))\n")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          timeout=120, preexec_fn=small_files(16 * 1024),
                          env={**os.environ, "PYTHONPATH": str(root)})
    errno_, filename, seconds = proc.stdout.split()
    assert (int(errno_), filename) == (errno.EFBIG, str(target)), proc.stderr
    assert int(seconds) < 10
    assert "retrying" not in proc.stderr
    assert list(target.parent.iterdir()) == []


@pytest.mark.integration
def test_s3_storage_round_trip(s3_server, tmp_path):
    store = open_storage(s3_server.storage_url("t1"))
    assert isinstance(store, S3Storage)
    assert store.url("k") == f"s3://{s3_server.bucket}/t1/k"
    _exercise(store, tmp_path)


@pytest.mark.integration
def test_s3_multipart_upload_and_download(s3_server, tmp_path):
    store = S3Storage(s3_server.bucket, "mp", endpoint_url=s3_server.endpoint,
                      multipart_bytes=5 * MiB)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * MiB + 123))
    store.put_file(big, "video.mkv")
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key="mp/video.mkv")
    # a multipart object's ETag is "<md5 of part md5s>-<number of parts>"
    assert head["ETag"].strip('"').endswith("-3")
    assert head["ContentLength"] == big.stat().st_size
    out = store.get_file("video.mkv", tmp_path / "back.bin")
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(big.read_bytes()).digest()
