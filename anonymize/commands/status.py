"""`anonymize status [JOB…]`: progress and result locations of jobs."""

from __future__ import annotations

import argparse

HELP = "show progress and result locations of a job (all known jobs without JOB)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("jobs", nargs="*", metavar="JOB", help="job id(s) printed by submit")
    p.add_argument("--json", action="store_true", help="print the full state as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from tasks.client import load_cluster_env

    load_cluster_env()
    from tasks.client import Client

    client = Client()
    jobs = args.jobs or client.jobs()
    infos = [client.get(j) for j in jobs]
    if args.json:
        print(json.dumps(infos if not args.jobs or len(infos) != 1 else infos[0], indent=2))
    else:
        for info in infos:
            print(_line(info))
    return 1 if any(i["status"] in ("failed", "cancelled") for i in infos) else 0


def _line(info: dict) -> str:
    parts = [info["job"], info["status"], info.get("source_name", ""),
             f"segments {info.get('segments_done', 0)}/{info.get('segments_total') or '?'}"]
    if info.get("frames_total"):
        done = min(int(info.get("frames_done") or 0), int(info["frames_total"]))
        parts.append(f"frames {done}/{info['frames_total']}")
    if info.get("deleted"):
        parts.append("objects deleted from storage (cancel --delete)")
    elif info.get("output_url"):
        parts.append(f"output {info['output_url']}")
        parts.append(f"report {info['report_url']}")
    if info.get("error"):
        parts.append(f"error: {info['error']}")
    for index, fail in sorted(info.get("failures", {}).items()):
        parts.append(f"segment {index} attempt {fail['attempt']}: {fail['reason']}")
    return "  ".join(str(p) for p in parts)
