"""Keras YOLOv3 ``.h5`` (keras-yolo3 / ImageAI) -> YOLOv3 checkpoint.

The research models were Keras files: ImageAI's ``yolo.h5`` (COCO) and a
custom-trained ``yolov3_custom.h5`` (plates). Both are HDF5 with one group
per layer (under ``model_weights/`` for a saved model, at the root for
``save_weights``), each listing its arrays in the ``weight_names``
attribute, e.g. ``conv2d_5/kernel:0`` or ``batch_normalization_5/gamma:0``.

Layers are matched by *creation order*, which Keras encodes in the numeric
suffix of the auto-generated names (``conv2d``, ``conv2d_1``, ...; the
experiencor/ImageAI-custom layout uses ``conv_<darknet index>`` and
``bnorm_<index>``). In keras-yolo3 that order equals the darknet cfg order,
so the n-th convolution fills the n-th entry of
:meth:`models.yolov3_net.YoloV3.conv_layers`. Convolutions with a bias are the
three linear output layers; the others take the batch norms in order.
Kernels are HWIO in Keras and become OIHW here.

The file stores no cfg: the stem width, blocks per stage and classes are
read off the kernel shapes; anchors are the COCO ones unless given (an
ImageAI ``detection_config.json`` passed as names also supplies them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import one_line
from .fetch import WeightsError
from .yolov3_names import detection_config, resolve_names
from .yolov3_net import COCO_ANCHORS, YoloV3, make_checkpoint, make_config

#: Keras' BatchNormalization default epsilon
KERAS_BN_EPS = 1e-3

_CONV_PREFIXES = ("conv2d", "conv")
_BN_PREFIXES = ("batch_normalization", "bnorm", "batchnormalization")


@dataclass
class KerasConv:
    name: str
    kernel: np.ndarray  # H, W, I, O
    bias: np.ndarray | None


@dataclass
class KerasBN:
    name: str
    gamma: np.ndarray
    beta: np.ndarray
    mean: np.ndarray
    var: np.ndarray


def _order_key(name: str) -> tuple[str, int]:
    m = re.fullmatch(r"(.*?)(?:_(\d+))?", name)
    assert m is not None
    return m.group(1), int(m.group(2) or 0)


def _decode(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _layer_arrays(group) -> dict[str, np.ndarray]:
    """``{weight basename without ':0'}: array`` of one layer group."""
    out: dict[str, np.ndarray] = {}
    names = [_decode(n) for n in group.attrs.get("weight_names", [])]
    if not names:  # files written without the attribute: walk the datasets
        found: list[str] = []
        group.visit(lambda n: found.append(n) if hasattr(group[n], "shape") else None)
        names = found
    for name in names:
        out[name.rsplit("/", 1)[-1].split(":", 1)[0]] = np.asarray(group[name][()])
    return out


def _bn_eps(f) -> float | None:
    """Epsilon of the BatchNormalization layers from the saved model config, if any."""
    raw = f.attrs.get("model_config")
    if raw is None:
        return None
    try:
        config = json.loads(_decode(raw))
    except ValueError:
        return None
    eps = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "BatchNormalization":
                eps.add(float(node.get("config", {}).get("epsilon", KERAS_BN_EPS)))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return eps.pop() if len(eps) == 1 else None


def read_layers(path: Path) -> tuple[list[KerasConv], list[KerasBN], float | None]:
    """Convolutions and batch norms of a Keras h5 file, each in creation order."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"{path.name} is not a Keras HDF5 file ({one_line(exc)})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        layer_names = [_decode(n) for n in root.attrs.get("layer_names", [])] or list(root.keys())
        convs, bns = [], []
        for lname in layer_names:
            if lname not in root or not hasattr(root[lname], "keys"):
                continue
            arrays = _layer_arrays(root[lname])
            if "kernel" in arrays and arrays["kernel"].ndim == 4:
                convs.append(KerasConv(lname, arrays["kernel"], arrays.get("bias")))
            elif {"gamma", "beta", "moving_mean", "moving_variance"} <= set(arrays):
                bns.append(KerasBN(lname, arrays["gamma"], arrays["beta"],
                                   arrays["moving_mean"], arrays["moving_variance"]))
        eps = _bn_eps(f)
    convs.sort(key=lambda c: _order_key(c.name))
    bns.sort(key=lambda b: _order_key(b.name))
    if len({_order_key(c.name)[0] for c in convs}) > 1:
        raise WeightsError(f"{path.name}: convolution layers with several name prefixes; "
                           f"cannot tell their creation order")
    return convs, bns, eps


def config_from_kernels(kernels: list[tuple[int, int, int, int]], has_bias: list[bool]) -> dict:
    """Stem width, blocks per stage and classes from HWIO kernel shapes in creation order.

    Backbone stages start with a 3×3 conv doubling the channels; each
    residual block is a 1×1 halving and a 3×3 restoring them. The last stage
    cannot be told from the first head by shapes alone, so it is counted
    back from the first output conv (the first with a bias): 6 head convs
    precede it.
    """
    if len(kernels) < 10 or not any(has_bias):
        raise ValueError("too few convolutions or no output convolution")
    width = kernels[0][3]
    first_out = has_bias.index(True)
    blocks: list[int] = []
    c, i = width, 1
    while True:
        kh, _, cin, cout = kernels[i]
        if kh == 3 and cin == c and cout == 2 * c:
            if len(blocks) == 4:  # the last stage's downsampling conv
                break
            blocks.append(0)
            c, i = cout, i + 1
        elif kh == 1 and blocks and cin == c and cout == c // 2:
            blocks[-1] += 1
            i += 2
        else:
            raise ValueError(f"convolution {i} with kernel {kernels[i]} does not fit Darknet-53")
    n_last = first_out - (i + 1) - 6
    if n_last < 0 or n_last % 2:
        raise ValueError("cannot count the residual blocks of the last backbone stage")
    blocks.append(n_last // 2)
    out_channels = kernels[first_out][3]
    if out_channels % 3 or out_channels // 3 < 6:
        raise ValueError(f"output convolution has {out_channels} channels, expected 3 × (5 + classes)")
    return {"width": width, "blocks": blocks, "num_classes": out_channels // 3 - 5}


def fill_model(model: YoloV3, convs: list[KerasConv], bns: list[KerasBN], name: str) -> None:
    """Copy Keras arrays into ``model`` in creation order, checking every shape."""
    targets = model.conv_layers()
    if len(convs) != len(targets):
        raise WeightsError(f"{name} has {len(convs)} convolutions, the YOLOv3 layout has "
                           f"{len(targets)}")
    n_bn = sum(bn is not None for _, bn in targets)
    if len(bns) != n_bn:
        raise WeightsError(f"{name} has {len(bns)} batch norms, the YOLOv3 layout has {n_bn}")
    bn_iter = iter(bns)
    with torch.no_grad():
        for (conv, bn), src in zip(targets, convs, strict=True):
            kernel = torch.from_numpy(np.ascontiguousarray(src.kernel.transpose(3, 2, 0, 1)))
            if tuple(kernel.shape) != tuple(conv.weight.shape):
                raise WeightsError(f"{name}: size mismatch at {src.name}: kernel "
                                   f"{tuple(kernel.shape)} (OIHW), the model expects "
                                   f"{tuple(conv.weight.shape)}")
            conv.weight.copy_(kernel)
            if bn is None:
                if src.bias is None:
                    raise WeightsError(f"{name}: output convolution {src.name} has no bias")
                conv.bias.copy_(torch.from_numpy(src.bias.astype(np.float32)))
                continue
            if src.bias is not None:
                raise WeightsError(f"{name}: {src.name} has a bias where the layout has a "
                                   f"batch norm")
            b = next(bn_iter)
            for target, value in ((bn.weight, b.gamma), (bn.bias, b.beta),
                                  (bn.running_mean, b.mean), (bn.running_var, b.var)):
                if tuple(value.shape) != tuple(target.shape):
                    raise WeightsError(f"{name}: size mismatch at {b.name}: {value.shape}, "
                                       f"the model expects {tuple(target.shape)}")
                target.copy_(torch.from_numpy(value.astype(np.float32)))


def _anchors_from(names: str | list[str] | None, anchors) -> list[list[int]] | None:
    """Anchors given explicitly, or from an ImageAI detection_config.json."""
    if anchors is not None:
        flat = [float(v) for v in (anchors.replace(" ", "").split(",")
                                    if isinstance(anchors, str) else np.ravel(anchors))]
    elif isinstance(names, str) and names.lower().endswith(".json") and Path(names).is_file():
        raw = detection_config(Path(names)).get("anchors")
        if raw is None:
            return None
        groups = [list(map(float, g)) for g in raw]
        # ImageAI lists the anchor groups large first (stride 32 first)
        flat = [v for g in reversed(groups) for v in g] if isinstance(raw[0], list) else raw
    else:
        return None
    if len(flat) != 18:
        raise WeightsError(f"expected 9 anchors (18 numbers), got {len(flat)} numbers")
    if not all(np.isfinite(v) and round(v) >= 1 for v in flat):  # widths and heights in pixels
        raise WeightsError(f"anchors are box widths and heights in pixels, each 1 or more; "
                           f"got {', '.join(f'{v:g}' for v in flat)}")
    return [[int(round(flat[i])), int(round(flat[i + 1]))] for i in range(0, 18, 2)]


def convert_keras_h5(path: str | Path, names: str | list[str] | None = None,
                     anchors=None, input_size: int = 416, bn_eps: float | None = None) -> dict:
    """Keras YOLOv3 ``.h5`` -> checkpoint dict (see :mod:`models.yolov3_net`).

    ``anchors``: 18 numbers small to large (default COCO, or from an ImageAI
    detection_config.json given as ``names``). ``bn_eps``: default the
    epsilon stored in the file's model config, else Keras' 1e-3.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"file not found: {path}")
    convs, bns, file_eps = read_layers(path)
    if not convs:
        raise WeightsError(f"{path.name} holds no convolution kernels: not a Keras YOLOv3 file")
    try:
        shape = config_from_kernels([tuple(c.kernel.shape) for c in convs],
                                    [c.bias is not None for c in convs])
        config = make_config(**shape, anchors=_anchors_from(names, anchors) or COCO_ANCHORS,
                             input_size=int(input_size),
                             bn_eps=float(bn_eps if bn_eps is not None else
                                          file_eps if file_eps is not None else KERAS_BN_EPS))
        names = resolve_names(names, config["num_classes"])
    except (ValueError, IndexError) as exc:
        raise WeightsError(f"{path.name} is not a Keras YOLOv3 layout: {exc}") from None
    model = YoloV3(config)
    fill_model(model, convs, bns, path.name)
    return make_checkpoint(model, names, {"format": "keras-h5", "file": path.name})


def convert(files: dict[str, Path]) -> dict:
    """Registry converter: ``{"h5": file, "names"?: file}``."""
    return convert_keras_h5(files["h5"], str(files["names"]) if files.get("names") else None)
