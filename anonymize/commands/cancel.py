"""`anonymize cancel JOB…`: stop jobs; queued and later tasks of them are skipped."""

from __future__ import annotations

import argparse

HELP = "cancel jobs (tasks already running finish their batch, later ones are skipped)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("jobs", nargs="+", metavar="JOB", help="job id(s)")
    p.add_argument("--delete", action="store_true",
                   help="also delete the job's objects (source, segments, results) from storage")


def run(args: argparse.Namespace) -> int:
    from tasks.client import load_cluster_env

    load_cluster_env()
    from tasks.client import Client

    client = Client()
    for job in args.jobs:
        changed = client.cancel(job, delete=args.delete)
        status = client.get(job)["status"]
        # --delete deletes a finished job's objects too: say so, not only "already done"
        deleted = "; its objects deleted from storage" if args.delete else ""
        print(f"{job}: {'cancelled' if changed else 'already ' + status}{deleted}")
    return 0
