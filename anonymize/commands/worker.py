"""`anonymize worker --queues gpu|cpu|gpu,cpu`: serve the cluster's task queues."""

from __future__ import annotations

import argparse
import os

HELP = "start a worker for the gpu (process) and/or cpu (split, render, reassemble) queues"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queues", "-Q", default="gpu,cpu",
                   help="gpu, cpu or gpu,cpu (default: gpu,cpu)")
    p.add_argument("--device", help="device for this worker's models: cpu, cuda, cuda:N "
                                    "(default: the job's setting, auto; cpu for a worker "
                                    "of the cpu queue only)")
    p.add_argument("--concurrency", "-c", type=int, default=1,
                   help="pool processes; each loads its own models (default: 1)")
    p.add_argument("--hostname", "-n", help="worker node name (default: QUEUES@host)")
    p.add_argument("--loglevel", "-l", default="INFO", type=str.upper,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL"),
                   help="log level (default: INFO)")
    p.add_argument("--preload", action="store_true",
                   help="load the default models when each pool process starts, not on its "
                        "first task")


def run(args: argparse.Namespace) -> int:

    from pipeline.settings import coerce
    from tasks.client import load_cluster_env

    load_cluster_env()
    if args.concurrency < 1:
        raise ValueError("--concurrency must be >= 1")
    # the pool processes would fail every job with it, after the worker said it was ready
    if args.device is not None:
        _check_device(coerce("device", args.device, "--device"), "--device")
    elif os.environ.get("ANONYMIZE_WORKER_DEVICE"):
        _check_device(coerce("device", os.environ["ANONYMIZE_WORKER_DEVICE"],
                             "ANONYMIZE_WORKER_DEVICE"), "ANONYMIZE_WORKER_DEVICE")
    from tasks.service import ServiceSettings, check_services
    from workers.main import parse_queues, run_worker

    parse_queues(args.queues)
    if args.preload:
        # what each pool process loads at its start: a bad value (ANONYMIZE_FACES=maybe)
        # or an unfetched model was a traceback in every child after "ready"
        from models.resolve import check_settings
        from pipeline.settings import Settings

        check_settings(Settings.load())
    service = ServiceSettings.from_env()
    check_services(service)  # one line now, rather than Celery retrying for ever
    return run_worker(args.queues, device=args.device, concurrency=args.concurrency,
                      loglevel=args.loglevel, hostname=args.hostname, preload=args.preload,
                      service=service)


def _check_device(device: str, source: str) -> None:
    """A CUDA device this machine has, or a one-line ValueError naming ``source``: a
    worker for ``cuda:3`` on a one-GPU host said "ready", then failed every job it
    took, for good, jobs other workers could have done. Asked in a process of its own:
    this one forks the pool, and a CUDA context does not survive a fork."""
    import subprocess
    import sys
    from pathlib import Path

    import models

    if not device.startswith("cuda"):
        return
    code = ("import sys\n"
            "from models.base import resolve_device\n"
            "from models.errors import DeviceError\n"
            "try:\n"
            "    resolve_device(sys.argv[1])\n"
            "except DeviceError as exc:\n"
            "    print(exc)\n"
            "    sys.exit(3)\n")
    root = str(Path(models.__file__).resolve().parent.parent)
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-c", code, device], capture_output=True, text=True,
                          env=env)
    if proc.returncode == 3:
        raise ValueError(f"{source}: {proc.stdout.strip()}")
