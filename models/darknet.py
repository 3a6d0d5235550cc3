"""Darknet ``.cfg`` + ``.weights`` -> YOLOv3 checkpoint.

The ``.cfg`` is parsed into sections; a YOLOv3 config (stem width, residual
blocks per stage, classes, anchors, masks, input size) is read from them and
the cfg is then compared, section by section, with the layout that config
implies, so a file describing some other network is refused with the first
difference rather than loaded into the wrong layers.

``.weights`` layout: int32 major, minor, revision; ``seen`` as int64 when
``major * 10 + minor >= 2`` (int32 before); then for every convolutional
section in order: with batch_normalize the BN beta (darknet's "biases"),
gamma ("scales"), rolling mean and rolling variance, else the conv bias;
then the kernel in OIHW order; all float32 little-endian. The file must end
exactly after the last kernel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .fetch import WeightsError
from .yolov3_names import resolve_names
from .yolov3_net import YoloV3, make_checkpoint, make_config, stage_channels

#: darknet's batch-norm epsilon (blas.c normalize: sqrt(var + .00001))
DARKNET_BN_EPS = 1e-5


def parse_cfg(text: str) -> list[dict[str, str]]:
    """Sections in file order, each ``{"type": name, key: value...}`` (strings)."""
    sections: list[dict[str, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ValueError(f"cfg line {lineno}: bad section header {raw.strip()!r}")
            sections.append({"type": line[1:-1].strip().lower()})
        elif "=" in line:
            if not sections:
                raise ValueError(f"cfg line {lineno}: option before the first section")
            key, value = line.split("=", 1)
            sections[-1][key.strip()] = value.strip()
        else:
            raise ValueError(f"cfg line {lineno}: expected key=value, got {raw.strip()!r}")
    if not sections or sections[0]["type"] not in ("net", "network"):
        raise ValueError("cfg does not start with a [net] section")
    return sections


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.replace(" ", "").split(",") if v]


def config_from_cfg(sections: list[dict[str, str]]) -> dict:
    """Read a YOLOv3 config from parsed cfg sections (then :func:`check_layout`)."""
    net, layers = sections[0], sections[1:]
    convs = [s for s in layers if s["type"] == "convolutional"]
    yolos = [s for s in layers if s["type"] == "yolo"]
    if not convs or len(yolos) != 3:
        raise ValueError(f"cfg has {len(yolos)} [yolo] sections; a YOLOv3 layout has 3")
    # residual blocks: shortcuts between stride-2 convolutions of the backbone
    blocks: list[int] = []
    for s in layers:
        if s["type"] == "convolutional" and int(s.get("stride", 1)) == 2:
            blocks.append(0)
        elif s["type"] == "shortcut" and blocks:
            blocks[-1] += 1
        elif s["type"] == "yolo":
            break
    anchors_flat = _ints(yolos[0].get("anchors", ""))
    anchors = [anchors_flat[i:i + 2] for i in range(0, len(anchors_flat), 2)]
    classes = {int(y.get("classes", 0)) for y in yolos}
    if len(classes) != 1:
        raise ValueError("the [yolo] sections disagree on the number of classes")
    size = int(net.get("width", 416))
    if int(net.get("height", size)) != size:
        raise ValueError("only square network inputs are supported (width != height in [net])")
    return make_config(width=int(convs[0]["filters"]), blocks=blocks,
                       num_classes=classes.pop(), anchors=anchors,
                       masks=[_ints(y["mask"]) for y in yolos], input_size=size,
                       bn_eps=DARKNET_BN_EPS)


def yolov3_sections(config: dict) -> list[dict[str, str]]:
    """The cfg sections (without [net]) of the YOLOv3 layout ``config`` describes."""
    out: list[dict[str, str]] = []

    def conv(filters: int, size: int, stride: int = 1, bn: bool = True) -> None:
        out.append({"type": "convolutional", "batch_normalize": "1" if bn else "0",
                    "filters": str(filters), "size": str(size), "stride": str(stride),
                    "pad": "1", "activation": "leaky" if bn else "linear"})

    c = stage_channels(config)
    conv(config["width"], 3)
    stage_ends = []
    for i, n in enumerate(config["blocks"]):
        conv(c[i], 3, 2)
        for _ in range(n):
            conv(c[i] // 2, 1)
            conv(c[i], 3)
            out.append({"type": "shortcut", "from": "-3", "activation": "linear"})
        stage_ends.append(len(out) - 1)
    anchors = ",".join(f"{w},{h}" for w, h in config["anchors"])
    for scale, nf in enumerate((c[4] // 2, c[3] // 2, c[2] // 2)):
        for _ in range(2):
            conv(nf, 1)
            conv(2 * nf, 3)
        conv(nf, 1)
        conv(2 * nf, 3)
        conv(len(config["masks"][scale]) * (5 + config["num_classes"]), 1, bn=False)
        out.append({"type": "yolo", "mask": ",".join(map(str, config["masks"][scale])),
                    "anchors": anchors, "classes": str(config["num_classes"]),
                    "num": str(len(config["anchors"]))})
        if scale < 2:
            out.append({"type": "route", "layers": "-4"})
            conv(nf // 2, 1)
            out.append({"type": "upsample", "stride": "2"})
            out.append({"type": "route", "layers": f"-1,{stage_ends[3 - scale]}"})
    return out


def yolov3_cfg_text(config: dict) -> str:
    """A darknet ``.cfg`` for ``config`` (handy for training tools or inspection)."""
    size = config["input_size"]
    lines = ["[net]", "batch=1", "subdivisions=1", f"width={size}", f"height={size}",
             "channels=3", ""]
    for s in yolov3_sections(config):
        lines.append(f"[{s['type']}]")
        lines += [f"{k}={v}" for k, v in s.items() if k != "type"]
        lines.append("")
    return "\n".join(lines)


_COMPARED = {
    "convolutional": (("filters", None), ("size", "1"), ("stride", "1"),
                      ("batch_normalize", "0"), ("activation", "logistic"), ("pad", "0")),
    "shortcut": (("from", None),),
    "route": (("layers", None),),
    "upsample": (("stride", "2"),),
    "yolo": (("mask", None), ("classes", "20")),
}


def _route_layers(value: str, index: int) -> list[int]:
    return [v if v >= 0 else index + v for v in _ints(value)]


def check_layout(sections: list[dict[str, str]], config: dict) -> None:
    """Raise ValueError naming the first section that differs from the YOLOv3 layout."""
    layers = sections[1:]
    expected = yolov3_sections(config)
    for i, (got, want) in enumerate(zip(layers, expected, strict=False)):
        if got["type"] != want["type"]:
            raise ValueError(f"cfg layer {i} is [{got['type']}], the YOLOv3 layout has "
                             f"[{want['type']}] there")
        for key, default in _COMPARED.get(got["type"], ()):
            a, b = got.get(key, default), want.get(key, default)
            if key == "layers":
                a, b = _route_layers(a, i), _route_layers(b, i)
            elif key == "from":
                a, b = _route_layers(a, i), _route_layers(b, i)
            elif key == "mask":
                a, b = _ints(a), _ints(b)
            elif key == "pad" and "padding" in got:
                a = "1" if int(got["padding"]) == int(got.get("size", 1)) // 2 else "0"
            if a != b:
                raise ValueError(f"cfg layer {i} [{got['type']}] has {key}={a}, the YOLOv3 "
                                 f"layout needs {key}={b}")
    if len(layers) != len(expected):
        raise ValueError(f"cfg has {len(layers)} layers, the YOLOv3 layout has {len(expected)}")


class _Reader:
    """Sequential float32 reader over the weights body with clear errors."""

    def __init__(self, data: np.ndarray, name: str):
        self.data, self.pos, self.name = data, 0, name

    def take(self, n: int, what: str) -> np.ndarray:
        if self.pos + n > len(self.data):
            raise WeightsError(f"{self.name} is truncated: {what} needs {n} floats at offset "
                               f"{self.pos}, only {len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out


def read_header(raw: bytes, name: str) -> tuple[tuple[int, int, int], int, int]:
    """(version, seen, header length in bytes) of a darknet weights file."""
    if len(raw) < 16:
        raise WeightsError(f"{name} is too short to be a darknet weights file ({len(raw)} bytes)")
    major, minor, revision = (int(v) for v in np.frombuffer(raw[:12], "<i4"))
    if not (0 <= major < 1000 and 0 <= minor < 1000 and 0 <= revision < 1 << 20):
        raise WeightsError(f"{name} is not a darknet weights file (header {major}.{minor}."
                           f"{revision})")
    if major * 10 + minor >= 2:
        seen, header = int(np.frombuffer(raw[12:20], "<i8")[0]), 20
    else:
        seen, header = int(np.frombuffer(raw[12:16], "<i4")[0]), 16
    return (major, minor, revision), seen, header


def load_weights(model: YoloV3, path: Path) -> dict:
    """Fill ``model`` from a darknet weights file; returns header facts."""
    raw = Path(path).read_bytes()
    version, seen, header = read_header(raw, path.name)
    body = raw[header:]
    if len(body) % 4:
        raise WeightsError(f"{path.name}: body is not a whole number of float32 values "
                           f"({len(body)} bytes)")
    reader = _Reader(np.frombuffer(body, "<f4"), path.name)
    with torch.no_grad():
        for i, (conv, bn) in enumerate(model.conv_layers()):
            n = conv.out_channels
            if bn is not None:
                for target in (bn.bias, bn.weight, bn.running_mean, bn.running_var):
                    target.copy_(torch.from_numpy(reader.take(n, f"conv {i} batch norm").copy()))
            else:
                conv.bias.copy_(torch.from_numpy(reader.take(n, f"conv {i} bias").copy()))
            shape = tuple(conv.weight.shape)
            kernel = reader.take(int(np.prod(shape)), f"conv {i} kernel {shape}")
            conv.weight.copy_(torch.from_numpy(kernel.reshape(shape).copy()))
    left = len(reader.data) - reader.pos
    if left:
        raise WeightsError(f"{path.name} does not match the cfg: {left} float values "
                           f"({left * 4} bytes) left over after the last layer")
    return {"version": list(version), "seen": seen}


def read_cfg(cfg: Path) -> dict:
    """The network config of a YOLOv3 darknet ``.cfg`` file, its layout checked
    (text only, cheap); a one-line ValueError naming the file if it is not one."""
    try:
        sections = parse_cfg(cfg.read_text(encoding="utf-8", errors="replace"))
        config = config_from_cfg(sections)
        check_layout(sections, config)
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{cfg.name} is not a YOLOv3 darknet cfg: {exc}") from None
    return config


def convert_darknet(weights: str | Path, cfg: str | Path,
                    names: str | list[str] | None = None) -> dict:
    """Darknet YOLOv3 ``.weights`` + ``.cfg`` -> checkpoint dict (see :mod:`models.yolov3_net`)."""
    weights, cfg = Path(weights), Path(cfg)
    for p in (weights, cfg):
        if not p.is_file():
            raise WeightsError(f"file not found: {p}")
    try:
        config = read_cfg(cfg)
    except ValueError as exc:
        raise WeightsError(str(exc)) from None
    try:
        names = resolve_names(names, config["num_classes"])
    except ValueError as exc:
        raise WeightsError(f"{cfg.name}: {exc}") from None
    model = YoloV3(config)
    facts = load_weights(model, weights)
    return make_checkpoint(model, names, {"format": "darknet", "weights": weights.name,
                                          "cfg": cfg.name, **facts})


def convert(files: dict[str, Path]) -> dict:
    """Registry converter: ``{"weights": .weights, "cfg": .cfg, "names"?: file}``."""
    return convert_darknet(files["weights"], files["cfg"],
                           str(files["names"]) if files.get("names") else None)
