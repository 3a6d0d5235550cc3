"""TFJS graph models as plain torch modules, generated once at load time.

A converted TFJS graph (:func:`models.tfjs_convert.convert_graph`: the node
list and every constant as a tensor) is turned into a :class:`torch.fx.GraphModule` by
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

This module translates each op; the values with their layouts and pending
padding, and the fx calls that make them, are :mod:`models.tfjs_emitter`;
the op tables and TF arithmetic are :mod:`models.tfjs_ops`.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx

from .tfjs_convert import needed, ref
from .tfjs_emitter import NHWC, Emitter, Traced, Value, identity_perm
from .tfjs_ops import (
    BINARY,
    CONV_OPS,
    DEPTHWISE_OPS,
    TF_DTYPES,
    UNARY,
    legacy_resize_matrix,
    resize_by_matrices,
    same_pads,
    to_channels_last,
)


class _Generator(Emitter):
    """Walks the graph once, emitting torch calls into an fx graph."""

    def __init__(self, checkpoint: dict, outputs: list[str], input_hw: tuple[int, int],
                 declared_hw: tuple[int, int] | None):
        super().__init__()
        nodes = {n["name"]: n for n in checkpoint["nodes"]}
        keep = needed(nodes, outputs)
        self.order = [n for n in checkpoint["nodes"] if n["name"] in keep]
        self.tensors: dict[str, torch.Tensor] = checkpoint["tensors"]
        self.outputs = outputs
        self.input_hw = input_hw
        self.declared_hw = declared_hw
        self.uses: dict[str, int] = {}
        for n in self.order:
            for r in n["inputs"]:
                self.uses[ref(r)[0]] = self.uses.get(ref(r)[0], 0) + 1
        for name in outputs:
            self.uses[name] = self.uses.get(name, 0) + 1
        #: convolutions without bias whose only consumer has not been seen yet
        self.bias_free: dict[str, Traced] = {}

    # -- generation -------------------------------------------------------------
    def run(self, input_name: str, input_nhwc: bool) -> fx.GraphModule:
        images = Traced(self.graph.placeholder("images"), torch.zeros(1, 3, *self.input_hw))
        self.env[input_name] = Value(self.call(to_channels_last, images),
                                     NHWC if input_nhwc else identity_perm(4))
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
            results.append(self.physical(v, identity_perm(v.rank)).t.node)
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
        if op in CONV_OPS or op in DEPTHWISE_OPS:
            return self.conv(n)
        if op in BINARY:
            return self.binary(n)
        if op in UNARY or op == "LeakyRelu":
            v = self.flush(self.value(ins[0]))
            if op == "LeakyRelu":
                return Value(self.call(F.leaky_relu, v.t, float(attr.get("alpha", 0.2))),
                             v.perm)
            return Value(self.call(UNARY[op], v.t), v.perm)
        if op == "Identity":
            return self.value(ins[0])
        if op == "Transpose":
            v = self.value(ins[0])
            order = [int(i) for i in self.const(ins[1]).tolist()]
            return Value(v.t, tuple(v.perm[i] for i in order), dict(v.pad), v.pad_value)
        if op in ("Pad", "PadV2"):
            v = self.flush(self.value(ins[0]))
            pads = self.const(ins[1]).reshape(-1, 2).tolist()
            fill = float(self.const(ins[2])) if op == "PadV2" else 0.0
            physical = {v.perm[axis]: (int(b), int(a)) for axis, (b, a) in enumerate(pads)
                        if b or a}
            return Value(v.t, v.perm, physical, fill)
        if op == "MaxPool":
            return self.max_pool(n)
        if op == "ConcatV2":
            parts = [self.flush(self.value(r)) for r in ins[:-1]]
            perm = parts[0].perm
            parts = [self.physical(p, perm) for p in parts]
            axis = int(self.const(ins[-1])) % len(perm)
            return Value(self.call(torch.cat, [p.t for p in parts], perm[axis]), perm)
        if op == "Mean":
            return self.mean(n)
        if op == "ResizeBilinear":
            return self.resize(n)
        if op == "SplitV":
            v = self.flush(self.value(ins[0]))
            sizes = [int(s) for s in self.const(ins[1]).tolist()]
            axis = int(self.const(ins[2])) % v.rank
            parts = self.call(torch.split, v.t, sizes, v.perm[axis])
            return tuple(Value(self.call(operator.getitem, parts, i), v.perm)
                         for i in range(len(sizes)))
        if op == "Reshape":
            return self.reshape(n)
        raise NotImplementedError("op not supported in a module")

    def fold(self, n: dict) -> torch.Tensor:
        """Evaluate a node whose inputs are all constants."""
        op, ins, attr = n["op"], n["inputs"], n["attr"]
        args = [self.const(r) for r in ins]
        if op in BINARY:
            return BINARY[op](args[0], args[1])
        if op == "Identity":
            return args[0]
        if op == "Cast":
            return args[0].to(TF_DTYPES[attr["DstT"]])
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

    def conv(self, n: dict) -> Value:
        op, ins, attr = n["op"], n["inputs"], n["attr"]
        if attr.get("data_format", "NHWC") != "NHWC":
            raise NotImplementedError(f"data_format {attr['data_format']}")
        v, pads = self.take_pad(self.value(ins[0]), 0.0)
        w = self.const(ins[1])
        if op in CONV_OPS:  # HWIO -> OIHW
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
            elif act in UNARY:
                y = self.call(UNARY[act], y)
            else:
                raise NotImplementedError(f"fused op {act}")
        return Value(y, NHWC)

    def binary(self, n: dict) -> Value:
        ins = n["inputs"]
        fn = BINARY[n["op"]]
        consts = [self.is_const(r) for r in ins]
        if not any(consts):
            a = self.flush(self.value(ins[0]))
            b = self.physical(self.value(ins[1]), a.perm)
            return Value(self.call(fn, a.t, b.t), a.perm)
        i = consts.index(False)
        v = self.flush(self.value(ins[i]))
        c = self.const(ins[1 - i])
        c = c if c.is_floating_point() else c.float()
        conv = self.bias_free.pop(ref(ins[i])[0], None)
        channels = v.logical_shape[-1]
        if (conv is not None and fn is operator.add and v.perm == NHWC
                and c.numel() == channels and tuple(c.shape[-1:]) == (channels,)):
            bias = self.buffer(c.reshape(-1), before=conv.node)
            args = list(conv.node.args)
            args[2] = bias.node
            conv.node.args = tuple(args)
            return Value(Traced(conv.node, conv.ex + bias.ex.view(1, -1, 1, 1)), v.perm)
        operand = float(c.reshape(-1)[0]) if c.numel() == 1 else self.buffer(
            self.layout_const(c, v))
        pair = (v.t, operand) if i == 0 else (operand, v.t)
        return Value(self.call(fn, *pair), v.perm)

    def max_pool(self, n: dict) -> Value:
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
        return Value(self.call(F.max_pool2d, x, (kh, kw), (sh, sw), torch_pad), NHWC)

    def mean(self, n: dict) -> Value:
        v = self.flush(self.value(n["inputs"][0]))
        axes = sorted({int(a) % v.rank for a in self.const(n["inputs"][1]).reshape(-1).tolist()})
        keep = bool(n["attr"].get("keep_dims", False))
        t = self.call(torch.mean, v.t, [v.perm[a] for a in axes], keepdim=keep)
        if keep:
            return Value(t, v.perm)
        left = [v.perm[a] for a in range(v.rank) if a not in axes]
        ranks = sorted(left)
        return Value(t, tuple(ranks.index(p) for p in left))

    def resize(self, n: dict) -> Value:
        attr = n["attr"]
        v = self.physical(self.value(n["inputs"][0]), NHWC)
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
        return Value(t, NHWC)

    def reshape(self, n: dict) -> Value:
        v = self.value(n["inputs"][0])
        v = self.physical(v, identity_perm(v.rank))
        shape: list = [int(s) for s in self.const(n["inputs"][1]).reshape(-1).tolist()]
        if shape and shape[0] == 1:  # frozen for batch 1: keep the batch free
            if -1 in shape:
                node = self.graph.call_method("size", (v.t.node, 0))
                shape[0] = Traced(node, v.t.ex.shape[0])
            else:
                shape[0] = -1
        t = self.call(torch.reshape, v.t, tuple(shape))
        return Value(t, identity_perm(t.ex.ndim))


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
