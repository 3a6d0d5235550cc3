"""Anonymization flags shared by `run`, `submit`, `images`, `faces` and `eval`.

The flags are generated from :class:`pipeline.settings.Settings`: every field
``x_y`` becomes ``--x-y`` with the field's help, choices and default, booleans
as ``--x-y`` / ``--no-x-y``. Flag, config key and environment variable
therefore always name the same setting. Only flags a user gave override the
config file and the environment.
"""

from __future__ import annotations

import argparse

from pipeline.settings import FIELDS, Settings, describe

GROUPS = ("detection", "anonymization", "encoding", "execution")


def add_settings_arguments(p: argparse.ArgumentParser, video: bool = True,
                           exclude: tuple[str, ...] = ()) -> None:
    """Add one flag per setting (video-only settings only when ``video``)."""
    groups = {g: p.add_argument_group(g) for g in GROUPS}
    groups["detection"].add_argument(
        "--config", help="YAML/JSON file with settings (same names as the flags; "
                         "also ANONYMIZE_CONFIG)")
    groups["detection"].add_argument(
        "--print-settings", action="store_true",
        help="print the effective settings and where each value came from, then exit")
    added = []
    for name, f in FIELDS.items():
        meta = f.metadata
        if name in exclude or (meta["video_only"] and not video):
            continue
        added.append(name)
        flag = "--" + name.replace("_", "-")
        g = groups[meta["group"]]
        text = f"{meta['help']} (default: {_shown(f.default)})"
        if isinstance(f.default, bool):
            g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                           help=text)
        else:
            g.add_argument(flag, dest=name, default=None, choices=meta["choices"],
                           metavar=None if meta["choices"] else name.split("_")[-1].upper(),
                           help=text)
    if "plates" in FIELDS and "plates" not in exclude:
        groups["detection"].add_argument("--no-plates", dest="plates", action="store_const",
                                         const="off", help="same as --plates off")
    # which attributes of the parsed arguments are settings (a command's own
    # options may share a name, e.g. eval's --mode)
    p.set_defaults(_settings_flags=tuple(added))


def refuse_empty(args: argparse.Namespace, *names: str) -> None:
    """A file option given an empty value (``--zones "$ZONES"`` with ZONES unset) must
    not read as an option not given: the forced regions of the zones file would be
    left out, unsaid. ``names``: the options' attribute names."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and not value.strip():
            raise ValueError(f"--{name.replace('_', '-')}: {value!r} is not a file name")


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def settings_from_args(args: argparse.Namespace, **fixed) -> Settings:
    """The effective settings of a command; ``--print-settings`` prints them and exits."""
    names = getattr(args, "_settings_flags", ())
    overrides = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    overrides.update(fixed)
    settings, sources = Settings.resolve(getattr(args, "config", None), overrides)
    for name in fixed:
        sources[name] = "fixed by this command"
    if getattr(args, "print_settings", False):
        print(describe(settings, sources))
        raise SystemExit(0)
    return settings
