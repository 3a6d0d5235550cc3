"""`anonymize worker --queues gpu|cpu|gpu,cpu`: serve the cluster's task queues."""

from __future__ import annotations

import argparse

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
    import os

    from pipeline.settings import coerce
    from tasks.client import load_cluster_env

    load_cluster_env()
    if args.concurrency < 1:
        raise ValueError("--concurrency must be >= 1")
    # the pool processes would fail every job with it, after the worker said it was ready
    if args.device is not None:
        coerce("device", args.device, "--device")
    elif os.environ.get("ANONYMIZE_WORKER_DEVICE"):
        coerce("device", os.environ["ANONYMIZE_WORKER_DEVICE"], "ANONYMIZE_WORKER_DEVICE")
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
