"""Reader for TensorFlow.js graph models (``model.json`` + weight shards).

Some pretrained detectors are published only as TFJS graph models inside
npm packages. This module turns such a model into plain Python: the node
list (name, op, inputs, attributes decoded from TensorFlow's ``AttrValue``
JSON) and the weights as numpy arrays keyed by name. It knows nothing about
torch or about any particular network, so converters build on it and
TensorFlow never becomes a dependency.

Weight storage follows the TFJS manifest: each group lists shard files
(``paths``) whose bytes are concatenated, then cut into the listed weights
in order. A weight may be quantized: ``float16`` (stored as IEEE halves) or
affine ``uint8``/``uint16`` (``value = q * scale + min``); both decode to
the weight's declared dtype.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Stored element types of the TFJS manifest (``string`` weights are not supported).
_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "bool": np.dtype("u1"),
    "float16": np.dtype("<f2"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "int8": np.dtype("i1"),
    "int16": np.dtype("<i2"),
}


class TFJSFormatError(ValueError):
    """The model.json or its weight shards do not form a valid TFJS graph model."""


@dataclass
class TFJSGraph:
    """A parsed TFJS graph model.

    ``nodes`` keep graph order; each is ``{"name", "op", "inputs", "attr"}``
    with attributes as plain Python values. ``weights`` holds every
    manifest entry (in graph models these are the ``Const`` nodes).
    ``signature`` is the model's input/output signature as stored.
    """

    nodes: list[dict]
    weights: dict[str, np.ndarray]
    signature: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def node(self, name: str) -> dict:
        for n in self.nodes:
            if n["name"] == name:
                return n
        raise KeyError(name)


# -- attributes ---------------------------------------------------------

def _shape(value: dict) -> list[int] | None:
    if value.get("unknownRank"):
        return None
    return [int(d.get("size", -1)) for d in value.get("dim", [])]


def decode_attr(value: dict):
    """One TensorFlow ``AttrValue`` (as TFJS stores it in JSON) -> plain Python.

    Strings arrive base64-encoded (``{"s": "U0FNRQ=="}`` is ``"SAME"``);
    64-bit integers arrive as strings. Lists become lists; an empty list
    (``{"list": {}}``) becomes ``[]``.
    """
    if "list" in value:
        lst = value["list"]
        for key in ("s", "i", "f", "b", "type", "shape"):
            if key in lst:
                return [decode_attr({key: v}) for v in lst[key]]
        return []
    if "s" in value:
        return base64.b64decode(value["s"]).decode("utf-8", errors="replace")
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "type" in value:
        return str(value["type"])
    if "shape" in value:
        return _shape(value["shape"])
    if "tensor" in value:
        return {"tensor": value["tensor"]}
    if "func" in value:
        return {"func": value["func"]}
    return None


def decode_node(node: dict) -> dict:
    attr = {k: decode_attr(v) for k, v in (node.get("attr") or {}).items()}
    return {"name": node["name"], "op": node["op"], "inputs": list(node.get("input") or []),
            "attr": attr}


# -- weights --------------------------------------------------------------

def _decode_one(spec: dict, raw: bytes, offset: int) -> tuple[np.ndarray, int]:
    name = spec["name"]
    shape = [int(s) for s in spec.get("shape", [])]
    dtype = spec.get("dtype", "float32")
    quant = spec.get("quantization")
    count = int(np.prod(shape)) if shape else 1
    stored = quant["dtype"] if quant else dtype
    if stored not in _DTYPES:
        raise TFJSFormatError(f"weight {name}: unsupported stored dtype {stored!r}")
    if dtype not in _DTYPES:
        raise TFJSFormatError(f"weight {name}: unsupported dtype {dtype!r}")
    item = _DTYPES[stored]
    nbytes = count * item.itemsize
    if offset + nbytes > len(raw):
        raise TFJSFormatError(f"weight {name}: needs bytes {offset}..{offset + nbytes}, "
                              f"shards hold {len(raw)}")
    arr = np.frombuffer(raw, dtype=item, count=count, offset=offset)
    if quant and stored in ("uint8", "uint16", "int8", "int16"):
        if "scale" not in quant or "min" not in quant:
            raise TFJSFormatError(f"weight {name}: affine quantization without scale/min")
        arr = arr.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
        if np.issubdtype(_DTYPES[dtype], np.integer):
            arr = np.round(arr)
    out = arr.astype(_DTYPES[dtype].newbyteorder("="), copy=True)
    if dtype == "bool":
        out = out.astype(bool)
    return out.reshape(shape), offset + nbytes


def decode_weights(manifest: list[dict], read_shard) -> dict[str, np.ndarray]:
    """All weights of a manifest; ``read_shard(path) -> bytes`` supplies each shard."""
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        raw = b"".join(read_shard(p) for p in group.get("paths", []))
        offset = 0
        for spec in group.get("weights", []):
            weights[spec["name"]], offset = _decode_one(spec, raw, offset)
        if offset != len(raw):
            raise TFJSFormatError(f"weight shards {group.get('paths')} hold {len(raw)} bytes, "
                                  f"the manifest describes {offset}")
    return weights


def read_graph_model(model_json: str | Path,
                     shards: dict[str, str | Path] | None = None) -> TFJSGraph:
    """Parse ``model_json`` and decode its weights.

    Shards are looked up by their manifest path in ``shards`` first (a
    fetched file can have another name than the manifest says), then next
    to ``model_json``.
    """
    model_json = Path(model_json)
    try:
        model = json.loads(model_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TFJSFormatError(f"{model_json.name} is not a readable model.json: {exc}") from exc
    if not isinstance(model, dict) or "modelTopology" not in model:
        raise TFJSFormatError(f"{model_json.name} has no modelTopology")
    topology = model["modelTopology"]
    if not isinstance(topology, dict) or "node" not in topology:
        raise TFJSFormatError(f"{model_json.name} is not a graph model (no node list)")
    shards = {k: Path(v) for k, v in (shards or {}).items()}

    def read_shard(path: str) -> bytes:
        candidate = shards.get(path, model_json.parent / path)
        try:
            return candidate.read_bytes()
        except OSError as exc:
            raise TFJSFormatError(f"weight shard {path} unreadable: {exc.strerror or exc}") from exc

    weights = decode_weights(model.get("weightsManifest", []), read_shard)
    nodes = [decode_node(n) for n in topology["node"]]
    meta = {k: v for k, v in model.items()
            if k in ("format", "generatedBy", "convertedBy") and isinstance(v, str)}
    return TFJSGraph(nodes=nodes, weights=weights, signature=model.get("signature") or {},
                     meta=meta)
