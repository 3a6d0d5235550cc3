"""Model files that travel with a job, named in its settings by ``stored:`` references.

Model files a user passes (``--plate-model plates.weights``) travel with the
job: :func:`upload_models` stores each one, and what goes beside it (a
darknet ``.cfg``), under ``jobs/<job>/models/<sha256><ext>`` and rewrites the
job's setting to a :func:`stored_model` reference naming that key and the
file's sha256; a worker downloads it once per process and checks the
sha256 before loading (``tasks/runtime.py``). Registry names travel as
names: workers must have them fetched (``anonymize models fetch`` is part
of a worker's set-up), or the job fails with the command to run.

Apart from the steps because the client (upload), the worker's runtime
(download) and the report (:func:`job_models`) all read these references.
"""

from __future__ import annotations

from .errors import PermanentError
from .keys import model_key

#: prefix of a model setting that names a file in the job's storage
STORED = "stored:"


def stored_model(key: str, sha256: str, name: str, companions: dict[str, str]) -> str:
    """The setting value of an uploaded model file: ``stored:<key>?sha256=…&name=…``,
    plus ``&<role>=<key>`` per companion file (whose key's stem is its sha256)."""
    from urllib.parse import urlencode

    return f"{STORED}{key}?" + urlencode({"sha256": sha256, "name": name, **companions})


def parse_stored_model(value: str) -> tuple[str, str, str, dict[str, str]]:
    """(key, sha256, file name, {role: key}) of a :func:`stored_model` value."""
    from urllib.parse import parse_qsl

    key, _, query = value[len(STORED):].partition("?")
    params = dict(parse_qsl(query))
    sha256, name = params.pop("sha256", ""), params.pop("name", "")
    if not key or len(sha256) != 64:
        raise PermanentError(f"malformed stored model setting: {value[:120]}")
    return key, sha256, name, params


def job_models(settings) -> dict[str, str]:
    """{task: model} of a job's settings as the report names them (the name of a
    stored file, its format and sha256; a registry name as it is), read from the
    settings alone: the reassembling worker loads no model."""
    from models.model_ref import file_display
    from models.resolve import models_in_use

    out = {}
    for task, (value, fmt) in models_in_use(settings).items():
        if value.startswith(STORED):
            _, sha256, name, _ = parse_stored_model(value)
            value = file_display(name, fmt, sha256)
        out[task] = value
    return out


def upload_models(storage, job: str, settings):
    """Upload the model files ``settings`` name; return the settings naming them by
    their storage key and sha256 (registry names stay as they are).

    The resolved format is written into the job's settings too, so workers
    load the file the way this machine recognised it.
    """
    from models.fetch import sha256_file
    from models.model_ref import SETTING
    from models.resolve import check_settings
    from pipeline.settings import Settings

    changes = {}
    for task, ref in check_settings(settings, fetched=False).items():
        if not ref.is_file:
            continue
        key = model_key(job, ref.sha256, ref.path.suffix.lower())
        storage.put_file(ref.path, key)
        companions = {}
        for role, path in ref.companions.items():
            companions[role] = model_key(job, sha256_file(path), path.suffix.lower())
            storage.put_file(path, companions[role])
        changes[SETTING[task]] = stored_model(key, ref.sha256, ref.path.name, companions)
        changes[SETTING[task] + "_format"] = ref.format
    if not changes:
        return settings
    return Settings.from_dict({**settings.to_dict(), **changes})
