"""TFJS graph models as plain torch modules, generated once at load time.

A converted TFJS graph (:func:`convert_graph`: the node list and every
constant as a tensor) is turned into a :class:`torch.fx.GraphModule` by
:func:`build_module`: each TFJS node becomes one or two torch calls in
generated Python code, weights become buffers. Forward is then straight-line
torch code (``print(module.code)`` shows it): no per-call node lookups,
batched, on any device, traceable by ``torch.jit.trace`` and exportable with
``torch.onnx.export``.

Code generation does what an interpreter would redo on every call, once:

* **layouts.** TFJS graphs are NHWC; graphs converted from ONNX (NanoDet)
  also carry a Transpose around every convolution. Activations are kept in
  torch's NCHW and each value remembers which physical dimension holds each
  of its logical (TF) axes, so a Transpose costs nothing and axis
  constants (concat, split, mean, pad) are mapped instead of data moved. A
  permute is emitted only where an op needs its input in one order
  (Reshape, the outputs).
* **constants.** Subgraphs that only read constants (NanoDet computes its
  Reshape targets with SparseToDense) are evaluated here.
* **fusions that change no number.** A zero Pad feeding a convolution and a
  -inf Pad feeding a max-pool become the op's own padding when symmetric; a
  per-channel Add right after a bias-free convolution becomes its bias.
* **TF semantics.** ``SAME`` padding is asymmetric where TF makes it so,
  depthwise weights with channel multipliers are laid out for grouped
  convolution, ResizeBilinear keeps ``align_corners``/``half_pixel_centers``
  (the legacy mode, which torch lacks, as two interpolation matrices).

The module is specialised to the input height and width it was built for
(padding and resize targets are computed then); graphs frozen for batch 1
still run any batch (a leading 1 in a Reshape target is taken as the batch).
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from .fetch import WeightsError
from .tfjs import TFJSFormatError, read_graph_model

FORMAT = "tfjs-graph/1"

_CONV_OPS = {"Conv2D", "_FusedConv2D"}
_DEPTHWISE_OPS = {"DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"}
_BINARY = {"Add": operator.add, "AddV2": operator.add, "BiasAdd": operator.add,
           "Sub": operator.sub, "Mul": operator.mul, "RealDiv": operator.truediv}
_UNARY = {"Relu": F.relu, "Relu6": F.relu6, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
          "Elu": F.elu}
#: ops that :func:`build_module` turns into torch code
MODULE_OPS = frozenset(_CONV_OPS | _DEPTHWISE_OPS | set(_BINARY) | set(_UNARY) | {
    "Placeholder", "Const", "Identity", "LeakyRelu", "Mean", "ConcatV2", "ResizeBilinear",
    "MaxPool", "Pad", "PadV2", "Transpose", "SplitV", "Reshape", "Cast", "SparseToDense"})
_NHWC = (0, 2, 3, 1)  # logical NHWC axes held in a physical NCHW tensor
_TF_DTYPES = {"DT_FLOAT": torch.float32, "DT_INT32": torch.int32, "DT_BOOL": torch.bool,
              "DT_INT64": torch.int64}


# -- conversion ------------------------------------------------------------------

def ref(name: str) -> tuple[str, int]:
    """``'node:1'`` -> ('node', 1); ``'node'`` -> ('node', 0)."""
    node, _, index = name.partition(":")
    return node, int(index) if index else 0


def needed(nodes: dict[str, dict], outputs: list[str]) -> set[str]:
    """Names of the nodes that ``outputs`` depend on (control inputs ignored)."""
    seen: set[str] = set()
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(ref(i)[0] for i in nodes[name]["inputs"] if not i.startswith("^"))
    return seen


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
            for r in nodes[name]["inputs"]:
                dep = ref(r.lstrip("^"))[0]
                if dep in names and dep not in done:
                    stack.append((dep, False))
    return order


def _plain_attrs(attr: dict) -> dict:
    """Keep only the attribute values code generation reads (all plain types)."""
    keep = ("strides", "padding", "dilations", "explicit_paddings", "fused_ops", "num_args",
            "keep_dims", "align_corners", "half_pixel_centers", "ksize", "DstT", "sorted",
            "begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask",
            "batch_dims", "data_format", "leakyrelu_alpha", "alpha", "shape", "num_split")
    return {k: v for k, v in attr.items() if k in keep and not isinstance(v, dict)}


def _manifest_shard_name(graph_path: Path) -> str:
    """The first shard path the manifest expects (fetched files keep their own names)."""
    try:
        model = json.loads(graph_path.read_text(encoding="utf-8"))
        return model["weightsManifest"][0]["paths"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise WeightsError(f"{graph_path.name} is not a TFJS model.json with a weights "
                           f"manifest ({type(exc).__name__})") from exc


def convert_graph(files: dict[str, Path], heads: list[str] | None = None,
                  outputs: list[str] | None = None, input_size: int = 0) -> dict:
    """TFJS graph model (``files['graph']`` json, ``files['weights']`` bin) -> checkpoint.

    ``heads`` are the nodes :func:`build_module` will compute (default: the
    signature outputs); ``outputs`` the nodes kept in the checkpoint (default:
    ``heads``), e.g. a decode region that a model replaces with its own
    batched code but whose constants document it. The checkpoint is
    ``{"format", "nodes", "tensors", "inputs", "outputs", "heads",
    "input_size", "meta"}``: nodes as plain dicts in topological order,
    constants as tensors (fp16-stored weights widened to float32 exactly).
    Ops that code generation does not know fail here, at fetch time, rather
    than when a worker starts.
    """
    graph_path, weights_path = Path(files["graph"]), Path(files["weights"])
    try:
        graph = read_graph_model(graph_path, {_manifest_shard_name(graph_path): weights_path})
    except TFJSFormatError as exc:
        raise WeightsError(f"{graph_path.name}: {exc}") from exc
    nodes = {n["name"]: n for n in graph.nodes}
    heads = list(heads or graph.signature.get("outputs") or [])
    outputs = list(outputs or heads)
    inputs = list(graph.signature.get("inputs") or [])
    heads = [h.split(":")[0] for h in heads]
    outputs = [o.split(":")[0] for o in outputs]
    inputs = [i.split(":")[0] for i in inputs]
    if not heads or not inputs:
        raise WeightsError(f"{graph_path.name}: graph signature names no inputs/outputs")
    missing = [o for o in outputs + heads if o not in nodes]
    if missing:
        raise WeightsError(f"{graph_path.name}: signature names unknown nodes {missing}")
    try:
        keep = needed(nodes, outputs + heads)
        ordered = _topological([nodes[n] for n in nodes if n in keep], nodes)
        module_ops = {nodes[n]["op"] for n in needed(nodes, heads)}
    except KeyError as exc:
        raise WeightsError(f"{graph_path.name}: a node reads unknown node {exc}") from exc
    unsupported = sorted(module_ops - MODULE_OPS)
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
            "outputs": outputs, "heads": heads, "input_size": input_size,
            "meta": dict(graph.meta)}


# -- TF arithmetic that torch lacks ----------------------------------------------

def same_pads(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding (before, after): the extra pixel goes after."""
    eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def legacy_resize_matrix(n_in: int, n_out: int, align_corners: bool,
                         half_pixel: bool) -> torch.Tensor:
    """(n_out, n_in) bilinear interpolation weights with TF's sampling rule.

    TF's default ResizeBilinear (both flags false) samples at ``dst * in/out``
    with no half-pixel offset, which ``F.interpolate`` has no mode for.
    """
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
    return m.float()


def resize_by_matrices(x: torch.Tensor, ry: torch.Tensor, rx: torch.Tensor) -> torch.Tensor:
    """Separable resize of NCHW ``x`` by row and column matrices, in channels-last order.

    Exact, and faster on CPU than gathering; the batch stays a free dimension.
    """
    _, c, h, w = x.shape
    oh, ow = ry.shape[0], rx.shape[0]
    nhwc = x.permute(0, 2, 3, 1).reshape(-1, h, w * c)  # no copy when channels-last
    rows = torch.matmul(ry.to(x.dtype), nhwc).reshape(-1, w, c)
    out = torch.matmul(rx.to(x.dtype), rows).reshape(-1, oh, ow, c)
    return out.permute(0, 3, 1, 2)  # NCHW shape, channels-last memory


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Channels-last memory: depthwise convolutions and max-pooling run several
    times faster that way on CPU, and the graph's own NHWC views need no copy."""
    return x.contiguous(memory_format=torch.channels_last)


# -- code generation -----------------------------------------------------------------

@dataclass
class _T:
    """A generated value: the fx node and what it computes for the example input."""

    node: fx.Node
    ex: torch.Tensor


@dataclass
class _Value:
    """An activation during code generation.

    ``t`` is a physical tensor whose dimension ``perm[i]`` holds logical (TF)
    axis ``i``. ``pad`` maps physical dims to a (before, after) padding with
    ``pad_value`` that is not emitted yet: a following convolution or
    max-pool takes it over as its own padding.
    """

    t: _T
    perm: tuple[int, ...]
    pad: dict[int, tuple[int, int]] = field(default_factory=dict)
    pad_value: float = 0.0

    @property
    def rank(self) -> int:
        return self.t.ex.ndim

    @property
    def logical_shape(self) -> list[int]:
        return [self.t.ex.shape[p] for p in self.perm]


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _identity(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


class _Generator:
    """Walks the graph once, emitting torch calls into an fx graph."""

    def __init__(self, checkpoint: dict, outputs: list[str], input_hw: tuple[int, int],
                 declared_hw: tuple[int, int] | None):
        nodes = {n["name"]: n for n in checkpoint["nodes"]}
        keep = needed(nodes, outputs)
        self.order = [n for n in checkpoint["nodes"] if n["name"] in keep]
        self.tensors: dict[str, torch.Tensor] = checkpoint["tensors"]
        self.outputs = outputs
        self.input_hw = input_hw
        self.declared_hw = declared_hw
        self.root = torch.nn.Module()
        self.graph = fx.Graph()
        self.env: dict[str, _Value | tuple[_Value, ...] | torch.Tensor] = {}
        self.uses: dict[str, int] = {}
        for n in self.order:
            for r in n["inputs"]:
                self.uses[ref(r)[0]] = self.uses.get(ref(r)[0], 0) + 1
        for name in outputs:
            self.uses[name] = self.uses.get(name, 0) + 1
        #: convolutions without bias whose only consumer has not been seen yet
        self.bias_free: dict[str, _T] = {}

    # -- helpers --------------------------------------------------------------
    def call(self, fn, *args, **kwargs) -> _T:
        """Emit ``fn(*args, **kwargs)``; :class:`_T` arguments (also inside lists)
        stand for generated values and are run on their examples too."""
        node_args, node_kwargs = fx.node.map_aggregate(
            (args, kwargs), lambda a: a.node if isinstance(a, _T) else a)
        ex_args, ex_kwargs = fx.node.map_aggregate(
            (args, kwargs), lambda a: a.ex if isinstance(a, _T) else a)
        node = self.graph.call_function(fn, tuple(node_args), dict(node_kwargs))
        ex = fn(*ex_args, **ex_kwargs)
        if isinstance(ex, torch.Tensor):
            node.meta["shape"] = tuple(ex.shape)  # read back by output_shapes()
        return _T(node, ex)

    def buffer(self, tensor: torch.Tensor, before: fx.Node | None = None) -> _T:
        """A constant as a module buffer (read where ``before`` is, else at the end)."""
        name = f"c{len(self.root._buffers)}"
        self.root.register_buffer(name, tensor.detach().clone().contiguous())
        if before is None:
            return _T(self.graph.get_attr(name), getattr(self.root, name))
        with self.graph.inserting_before(before):
            return _T(self.graph.get_attr(name), getattr(self.root, name))

    def const(self, r: str) -> torch.Tensor:
        value = self.env.get(ref(r)[0])
        if not isinstance(value, torch.Tensor):
            raise NotImplementedError(f"{r} must be a constant")
        return value

    def is_const(self, r: str) -> bool:
        return isinstance(self.env.get(ref(r)[0]), torch.Tensor)

    def value(self, r: str) -> _Value:
        name, index = ref(r)
        v = self.env[name]
        if isinstance(v, tuple):
            return v[index]
        if isinstance(v, torch.Tensor):
            raise NotImplementedError(f"{r}: constant where an activation was expected")
        return v

    def flush(self, v: _Value) -> _Value:
        """``v`` with any pending padding emitted."""
        if not v.pad:
            return v
        pads: list[int] = []
        for dim in reversed(range(v.rank)):
            pads.extend(v.pad.get(dim, (0, 0)))
        return _Value(self.call(F.pad, v.t, pads, value=v.pad_value), v.perm)

    def physical(self, v: _Value, perm: tuple[int, ...]) -> _Value:
        """``v`` with logical axis ``i`` at physical dim ``perm[i]`` (a permute if needed)."""
        v = self.flush(v)
        if v.perm == perm:
            return v
        order = tuple(v.perm[j] for j in _inverse(perm))
        return _Value(self.call(torch.permute, v.t, order), perm)

    def take_pad(self, v: _Value, value: float) -> tuple[_Value, list[list[int]]]:
        """``v`` in NHWC order and the pending H/W padding it had, if that padding
        used ``value`` and needs no permute (the caller folds it into its op)."""
        if v.pad and v.pad_value == value and v.perm == _NHWC and set(v.pad) <= {2, 3}:
            pads = [list(v.pad.get(2, (0, 0))), list(v.pad.get(3, (0, 0)))]
            return _Value(v.t, v.perm), pads
        return self.physical(v, _NHWC), [[0, 0], [0, 0]]

    def layout_const(self, c: torch.Tensor, like: _Value) -> torch.Tensor:
        """A logical (TF-broadcast) constant laid out for ``like``'s physical dims."""
        if c.ndim > like.rank:
            raise NotImplementedError("constant of higher rank than the activation")
        c = c.reshape((1,) * (like.rank - c.ndim) + tuple(c.shape))
        return c.permute(_inverse(like.perm))

    # -- generation -------------------------------------------------------------
    def run(self, input_name: str, input_nhwc: bool) -> fx.GraphModule:
        images = _T(self.graph.placeholder("images"), torch.zeros(1, 3, *self.input_hw))
        self.env[input_name] = _Value(self.call(to_channels_last, images),
                                      _NHWC if input_nhwc else _identity(4))
        for n in self.order:
            if n["name"] in self.env:
                continue
            try:
                self.env[n["name"]] = self.emit(n)
            except (NotImplementedError, KeyError, IndexError, ValueError) as exc:
                raise NotImplementedError(f"{n['name']} ({n['op']}): {exc}") from None
        results = []
        for name in self.outputs:
            v = self.value(name)
            results.append(self.physical(v, _identity(v.rank)).t.node)
        self.graph.output(tuple(results))
        self.graph.eliminate_dead_code()
        self.graph.lint()
        return fx.GraphModule(self.root, self.graph, class_name="TFJSGraph")

    def emit(self, n: dict):
        op, ins, attr = n["op"], n["inputs"], n["attr"]
        if op == "Const":
            return self.tensors[n["name"]]
        if op == "Placeholder":
            raise NotImplementedError("graphs with more than one input")
        if all(self.is_const(r) for r in ins):
            return self.fold(n)
        if op in _CONV_OPS or op in _DEPTHWISE_OPS:
            return self.conv(n)
        if op in _BINARY:
            return self.binary(n)
        if op in _UNARY or op == "LeakyRelu":
            v = self.flush(self.value(ins[0]))
            if op == "LeakyRelu":
                return _Value(self.call(F.leaky_relu, v.t, float(attr.get("alpha", 0.2))),
                              v.perm)
            return _Value(self.call(_UNARY[op], v.t), v.perm)
        if op == "Identity":
            return self.value(ins[0])
        if op == "Transpose":
            v = self.value(ins[0])
            order = [int(i) for i in self.const(ins[1]).tolist()]
            return _Value(v.t, tuple(v.perm[i] for i in order), dict(v.pad), v.pad_value)
        if op in ("Pad", "PadV2"):
            v = self.flush(self.value(ins[0]))
            pads = self.const(ins[1]).reshape(-1, 2).tolist()
            fill = float(self.const(ins[2])) if op == "PadV2" else 0.0
            physical = {v.perm[axis]: (int(b), int(a)) for axis, (b, a) in enumerate(pads)
                        if b or a}
            return _Value(v.t, v.perm, physical, fill)
        if op == "MaxPool":
            return self.max_pool(n)
        if op == "ConcatV2":
            parts = [self.flush(self.value(r)) for r in ins[:-1]]
            perm = parts[0].perm
            parts = [self.physical(p, perm) for p in parts]
            axis = int(self.const(ins[-1])) % len(perm)
            return _Value(self.call(torch.cat, [p.t for p in parts], perm[axis]), perm)
        if op == "Mean":
            return self.mean(n)
        if op == "ResizeBilinear":
            return self.resize(n)
        if op == "SplitV":
            v = self.flush(self.value(ins[0]))
            sizes = [int(s) for s in self.const(ins[1]).tolist()]
            axis = int(self.const(ins[2])) % v.rank
            parts = self.call(torch.split, v.t, sizes, v.perm[axis])
            return tuple(_Value(self.call(operator.getitem, parts, i), v.perm)
                         for i in range(len(sizes)))
        if op == "Reshape":
            return self.reshape(n)
        raise NotImplementedError("op not supported in a module")

    def fold(self, n: dict) -> torch.Tensor:
        """Evaluate a node whose inputs are all constants."""
        op, ins, attr = n["op"], n["inputs"], n["attr"]
        args = [self.const(r) for r in ins]
        if op in _BINARY:
            return _BINARY[op](args[0], args[1])
        if op == "Identity":
            return args[0]
        if op == "Cast":
            return args[0].to(_TF_DTYPES[attr["DstT"]])
        if op == "Reshape":
            return args[0].reshape([int(s) for s in args[1].reshape(-1).tolist()])
        if op == "SparseToDense":
            indices, shape, values, default = args
            out = torch.full([int(s) for s in shape.reshape(-1).tolist()], default.item(),
                             dtype=default.dtype)
            if values.numel():
                idx = indices.reshape(values.numel() if values.ndim else 1, -1).long()
                out[tuple(idx.T)] = values.to(out.dtype)
            return out
        raise NotImplementedError("constant folding of this op")

    def conv(self, n: dict) -> _Value:
        op, ins, attr = n["op"], n["inputs"], n["attr"]
        if attr.get("data_format", "NHWC") != "NHWC":
            raise NotImplementedError(f"data_format {attr['data_format']}")
        v, pads = self.take_pad(self.value(ins[0]), 0.0)
        w = self.const(ins[1])
        if op in _CONV_OPS:  # HWIO -> OIHW
            weight = w.permute(3, 2, 0, 1)
            groups = 1
        else:  # TF depthwise: out channel c*mult + m
            kh, kw, cin, mult = w.shape
            weight = w.permute(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
            groups = cin
        sh, sw = (attr.get("strides") or [1, 1, 1, 1])[1:3]
        dh, dw = (attr.get("dilations") or [1, 1, 1, 1])[1:3]
        kh, kw = weight.shape[2:]
        h = v.t.ex.shape[2] + sum(pads[0])
        wd = v.t.ex.shape[3] + sum(pads[1])
        padding = attr.get("padding", "VALID")
        if padding == "SAME":
            own = [same_pads(h, kh, sh, dh), same_pads(wd, kw, sw, dw)]
        elif padding == "EXPLICIT":
            p = attr["explicit_paddings"]
            own = [(p[2], p[3]), (p[4], p[5])]
        else:
            own = [(0, 0), (0, 0)]
        pads = [[a + b for a, b in zip(pads[i], own[i], strict=True)] for i in range(2)]
        x = v.t
        if pads[0][0] == pads[0][1] and pads[1][0] == pads[1][1]:
            torch_pad = (pads[0][0], pads[1][0])
        else:
            x = self.call(F.pad, x, [pads[1][0], pads[1][1], pads[0][0], pads[0][1]])
            torch_pad = (0, 0)
        fused = list(attr.get("fused_ops") or [])
        bias = None
        if fused and fused[0] == "BiasAdd":
            bias = self.buffer(self.const(ins[2]).float().reshape(-1))
            fused = fused[1:]
        y = self.call(F.conv2d, x, self.buffer(weight), bias, (sh, sw), torch_pad, (dh, dw),
                      groups)
        if bias is None and not fused and self.uses.get(n["name"], 0) == 1:
            self.bias_free[n["name"]] = y
        for act in fused:
            if act == "LeakyRelu":
                y = self.call(F.leaky_relu, y, float(attr.get("leakyrelu_alpha", 0.2)))
            elif act in _UNARY:
                y = self.call(_UNARY[act], y)
            else:
                raise NotImplementedError(f"fused op {act}")
        return _Value(y, _NHWC)

    def binary(self, n: dict) -> _Value:
        ins = n["inputs"]
        fn = _BINARY[n["op"]]
        consts = [self.is_const(r) for r in ins]
        if not any(consts):
            a = self.flush(self.value(ins[0]))
            b = self.physical(self.value(ins[1]), a.perm)
            return _Value(self.call(fn, a.t, b.t), a.perm)
        i = consts.index(False)
        v = self.flush(self.value(ins[i]))
        c = self.const(ins[1 - i])
        c = c if c.is_floating_point() else c.float()
        conv = self.bias_free.pop(ref(ins[i])[0], None)
        channels = v.logical_shape[-1]
        if (conv is not None and fn is operator.add and v.perm == _NHWC
                and c.numel() == channels and tuple(c.shape[-1:]) == (channels,)):
            bias = self.buffer(c.reshape(-1), before=conv.node)
            args = list(conv.node.args)
            args[2] = bias.node
            conv.node.args = tuple(args)
            return _Value(_T(conv.node, conv.ex + bias.ex.view(1, -1, 1, 1)), v.perm)
        operand = float(c.reshape(-1)[0]) if c.numel() == 1 else self.buffer(
            self.layout_const(c, v))
        pair = (v.t, operand) if i == 0 else (operand, v.t)
        return _Value(self.call(fn, *pair), v.perm)

    def max_pool(self, n: dict) -> _Value:
        attr = n["attr"]
        v, pads = self.take_pad(self.value(n["inputs"][0]), float("-inf"))
        kh, kw = attr["ksize"][1:3]
        sh, sw = attr["strides"][1:3]
        if attr.get("padding") == "SAME":
            h = v.t.ex.shape[2] + sum(pads[0])
            w = v.t.ex.shape[3] + sum(pads[1])
            own = [same_pads(h, kh, sh), same_pads(w, kw, sw)]
            pads = [[a + b for a, b in zip(pads[i], own[i], strict=True)] for i in range(2)]
        x = v.t
        if pads[0][0] == pads[0][1] <= kh // 2 and pads[1][0] == pads[1][1] <= kw // 2:
            torch_pad = (pads[0][0], pads[1][0])  # max_pool2d pads with -inf itself
        else:
            x = self.call(F.pad, x, [pads[1][0], pads[1][1], pads[0][0], pads[0][1]],
                          value=float("-inf"))
            torch_pad = (0, 0)
        return _Value(self.call(F.max_pool2d, x, (kh, kw), (sh, sw), torch_pad), _NHWC)

    def mean(self, n: dict) -> _Value:
        v = self.flush(self.value(n["inputs"][0]))
        axes = sorted({int(a) % v.rank for a in self.const(n["inputs"][1]).reshape(-1).tolist()})
        keep = bool(n["attr"].get("keep_dims", False))
        t = self.call(torch.mean, v.t, [v.perm[a] for a in axes], keepdim=keep)
        if keep:
            return _Value(t, v.perm)
        left = [v.perm[a] for a in range(v.rank) if a not in axes]
        ranks = sorted(left)
        return _Value(t, tuple(ranks.index(p) for p in left))

    def resize(self, n: dict) -> _Value:
        attr = n["attr"]
        v = self.physical(self.value(n["inputs"][0]), _NHWC)
        size = [int(s) for s in self.const(n["inputs"][1]).tolist()]
        if self.declared_hw and tuple(self.declared_hw) != tuple(self.input_hw):
            # fixed targets of a graph exported at one size scale with the input
            size = [round(s * a / d) for s, a, d in zip(size, self.input_hw, self.declared_hw,
                                                         strict=True)]
        align, half = bool(attr.get("align_corners")), bool(attr.get("half_pixel_centers"))
        if align or half:  # torch's own modes are TF's
            t = self.call(F.interpolate, v.t, size=tuple(size), mode="bilinear",
                          align_corners=align)
        else:
            h, w = v.t.ex.shape[2:]
            t = self.call(resize_by_matrices, v.t,
                          self.buffer(legacy_resize_matrix(h, size[0], align, half)),
                          self.buffer(legacy_resize_matrix(w, size[1], align, half)))
        return _Value(t, _NHWC)

    def reshape(self, n: dict) -> _Value:
        v = self.value(n["inputs"][0])
        v = self.physical(v, _identity(v.rank))
        shape: list = [int(s) for s in self.const(n["inputs"][1]).reshape(-1).tolist()]
        if shape and shape[0] == 1:  # frozen for batch 1: keep the batch free
            if -1 in shape:
                node = self.graph.call_method("size", (v.t.node, 0))
                shape[0] = _T(node, v.t.ex.shape[0])
            else:
                shape[0] = -1
        t = self.call(torch.reshape, v.t, tuple(shape))
        return _Value(t, _identity(t.ex.ndim))


def input_layout(checkpoint: dict) -> tuple[bool, tuple[int, int] | None]:
    """(whether the graph input is NHWC, its declared height and width if fixed)."""
    name = checkpoint["inputs"][0]
    node = next((n for n in checkpoint["nodes"] if n["name"] == name), None)
    shape = list((node or {}).get("attr", {}).get("shape") or [])
    nhwc = not (len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3))
    hw = (shape[1], shape[2]) if nhwc and len(shape) == 4 else tuple(shape[2:4]) or None
    if hw is not None and (len(hw) != 2 or min(hw) <= 0):
        hw = None
    return nhwc, hw


def build_module(checkpoint: dict, outputs: list[str],
                 input_hw: tuple[int, int] | None = None) -> fx.GraphModule:
    """Generate the torch module computing ``outputs`` of a converted graph.

    ``forward(images)`` takes N×3×H×W float images at the graph's own input
    scale (H×W = ``input_hw``, default the declared or ``input_size`` one) and
    returns a tuple with each output in the graph's own (logical) layout.
    When the graph declares a fixed input shape and ``input_hw`` differs, its
    ResizeBilinear targets are scaled by the same factor (they were frozen
    at export); fully convolutional graphs then run at other sizes.
    """
    nhwc, declared = input_layout(checkpoint)
    size = int(checkpoint.get("input_size") or 0)
    hw = tuple(input_hw or declared or ((size, size) if size else ()))
    if len(hw) != 2:
        raise ValueError("the graph declares no input size; pass input_hw")
    with torch.no_grad():
        return _Generator(checkpoint, outputs, hw, declared).run(checkpoint["inputs"][0], nhwc)


def output_shapes(module: fx.GraphModule) -> list[tuple[int, ...]]:
    """Shapes of a generated module's outputs for a batch of one at its build size."""
    out = next(n for n in module.graph.nodes if n.op == "output")
    return [n.meta["shape"] for n in out.args[0]]
