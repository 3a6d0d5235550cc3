"""One way in: a registry name or a weights file becomes a ready :class:`Detector`.

``--face-model``, ``--plate-model`` and ``--vehicle-model`` take either.

* A **registry name** loads the checkpoint that ``anonymize models fetch``
  converted and cached. Loading never downloads: a worker must not reach
  the internet in the middle of a job, and weights that appear silently
  have no recorded origin. A name that is not fetched is a one-line error
  naming the command that fetches it.
* A **file** is recognised from its content (:func:`models.sniff.sniff`), or its
  format is forced by ``--face-model-format`` and its siblings. Each format (table
  :data:`models.file_formats.FORMATS`) loads through a registry record, whose
  builder makes the detector; formats that need converting (darknet, Keras h5,
  Ultralytics) go through the record's converter first, each time they are loaded
  (``anonymize convert-weights`` writes the result once, for reuse).
  Files that go with a model (a darknet ``.cfg``, class names, an mmdet
  config) are found beside it under the same stem.

:func:`models.resolve.resolve` does everything but read the weights, so commands
check their model settings before touching any video
(:func:`models.resolve.check_settings`); :func:`build` and :func:`load` make the
detector. Where a file says what it finds (class names, a face-only architecture,
:mod:`models.model_labels`), a model passed for the wrong task is refused: a face
model as ``--plate-model`` would blur nothing.
Every error here is one line (:class:`models.model_ref.ModelError`, a ``WeightsError``).

This module is the building step: it runs the record's builder (after its
converter, for formats converted when loaded) with the pipeline options that
builder takes, and checks the detector's own labels against the task.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import one_line
from .fetch import WeightsError, checkpoint_problem
from .file_formats import FORMATS
from .model_labels import wrong_task
from .model_ref import TASK_LABELS, ModelError, ModelRef
from .registry import REGISTRY, ModelSpec
from .resolve import resolve

#: builder options the pipeline passes, and the builders that take them
_FAST = ("models.retinaface:build", "models.centerface:build", "models.nanodet:build",
         "models.yolov8:build")
_HINTS = {"min_face": ("models.retinaface:build", "models.centerface:build"),
          "threads": _FAST}


def load(value: str, task: str | None = None, fmt: str = "auto", device=None,
         half: bool = True, **hints):
    """:func:`resolve` then :func:`build`."""
    return build(resolve(value, task, fmt), device=device, half=half, **hints)


def build(ref: ModelRef, device=None, half: bool = True, **hints):
    """The detector of a resolved model. ``hints``: pipeline options (``min_face``, ``threads``)
    passed to the builders that take them."""
    if ref.parts:
        from .union import UnionDetector

        return UnionDetector([build(p, device=device, half=half, **hints) for p in ref.parts])
    spec = REGISTRY[ref.record]
    if not ref.is_file:  # a fetched checkpoint that changed would load and detect wrongly
        problem = checkpoint_problem(ref.path)
        if problem:
            raise ModelError(f"model {ref.record}: {problem}; run `anonymize models fetch "
                             f"{ref.record} --force`")
    builder = spec.load_function("builder")
    opts = {k: v for k, v in hints.items() if spec.builder in _HINTS.get(k, ())}
    if ref.format == "mmdet":
        opts["config"] = str(ref.companions["config"])
    fmt = FORMATS.get(ref.format or "")
    if fmt is not None and fmt.convert_as:
        detector = _build_converted(ref, fmt.convert_as, spec, builder, device, half, opts)
    else:
        detector = builder(ref.path, device=device, half=half, **opts)
    detector.name = ref.display
    labels = detector.labels if detector.labels is not None else ref.labels
    if ref.task is not None and labels is not None and not labels & TASK_LABELS[ref.task]:
        raise ModelError(wrong_task(ref.task, ref.display, labels))
    return detector


def _build_converted(ref: ModelRef, role: str, spec: ModelSpec, builder, device, half, opts):
    import torch

    converter = spec.load_function("converter")
    try:
        checkpoint = converter({role: ref.path, **ref.companions})
    except WeightsError:
        raise
    except Exception as exc:  # a converter meeting unexpected bytes
        raise WeightsError(f"{ref.path.name}: conversion as {ref.format} failed: "
                           f"{one_line(exc)}") from None
    with tempfile.TemporaryDirectory(prefix="anonymize-model-") as tmp:
        target = Path(tmp) / "model.pt"
        torch.save(checkpoint, target)
        return builder(target, device=device, half=half, **opts)
