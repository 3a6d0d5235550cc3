"""YOLOv8 weights: Ultralytics training checkpoint -> plain checkpoint -> network.

Separate from the network (:mod:`models.yolov8_net`) because it deals in
file formats: the Ultralytics pickle is read without Ultralytics
(:mod:`models.ultralytics_unpickle`) and saved as plain types and tensors
that load with ``weights_only=True``; :func:`network_from_checkpoint` turns
that saved dict back into a loaded :class:`~models.yolov8_net.YoloV8`.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from .errors import one_line
from .fetch import WeightsError
from .ultralytics_unpickle import load_pickled_checkpoint, module_tensors
from .yolov8_net import YoloV8


def _plain(value: Any, where: str) -> Any:
    """Deep copy of yaml-like data as plain python types (weights_only-loadable)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {(k if isinstance(k, (str, int)) else str(k)): _plain(v, where)
                for k, v in value.items()}
    raise WeightsError(f"{where}: unexpected {type(value).__name__} in the model description")


def convert_ultralytics_checkpoint(files: dict[str, Path]) -> dict:
    """Ultralytics training checkpoint (``files["pt"]``) -> plain checkpoint dict.

    Returns ``{"arch": "yolov8", "yaml", "names", "stride", "bn_eps",
    "state_dict", "ultralytics_version"}``; the network is built and loaded
    strictly once here, so a mismatching file fails at fetch time.
    """
    path = Path(files["pt"])
    ckpt = load_pickled_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{path.name}: not an Ultralytics checkpoint (top level is "
                           f"{type(ckpt).__name__})")
    model = ckpt.get("ema") or ckpt.get("model")
    state = getattr(model, "__dict__", {})
    if not isinstance(state.get("yaml"), dict) or "_modules" not in state:
        raise WeightsError(f"{path.name}: no detection model with a yaml in the checkpoint")
    yaml = _plain(state["yaml"], path.name)
    names = state.get("names") or {i: f"class{i}" for i in range(int(yaml["nc"]))}
    names = [str(names[i]) for i in sorted(names)] if isinstance(names, dict) else list(names)
    stride = [float(s) for s in torch.as_tensor(state.get("stride")).flatten().tolist()]
    tensors = module_tensors(model)
    eps = [m.__dict__["eps"] for m in _walk(model) if type(m).__name__ == "BatchNorm2d"]
    out = {
        "arch": "yolov8",
        "yaml": yaml,
        "names": names,
        "stride": stride,
        "bn_eps": float(eps[0]) if eps else 1e-3,
        "ultralytics_version": str(ckpt.get("version", "")),
        "state_dict": OrderedDict((k, v.contiguous()) for k, v in tensors.items()),
    }
    network_from_checkpoint(out)  # validates shapes and names
    return out


def _walk(obj: Any):
    yield obj
    for child in (getattr(obj, "__dict__", {}).get("_modules") or {}).values():
        if child is not None:
            yield from _walk(child)


def network_from_checkpoint(ckpt: dict) -> YoloV8:
    """A converted checkpoint -> the loaded network in eval mode; a one-line
    WeightsError when its tensors do not fit its yaml."""
    if ckpt.get("arch") != "yolov8":
        raise WeightsError(f"checkpoint arch is {ckpt.get('arch')!r}, expected 'yolov8'")
    net = YoloV8(ckpt["yaml"], ckpt["stride"], ckpt.get("bn_eps", 1e-3))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"YOLOv8 weights do not fit the yaml: {one_line(exc)}") from None
    return net.eval()

