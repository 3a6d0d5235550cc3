"""TFJS graph model files -> a checkpoint of plain nodes and constant tensors.

Reads the TFJS json and weight shard (:mod:`models.tfjs`), keeps the nodes
the wanted outputs depend on in topological order and every constant as a
tensor. This is the fetch-time step; generating torch code from the
checkpoint (:mod:`models.tfjs_torch`) happens when a detector loads, so the
two are separate. :func:`ref` and :func:`needed` (graph walking by node
name) are shared with the generator.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .fetch import WeightsError
from .tfjs import TFJSFormatError, read_graph_model
from .tfjs_ops import MODULE_OPS

FORMAT = "tfjs-graph/1"


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
