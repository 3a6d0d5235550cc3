"""YOLOv8 detector (licence plates): pre/post-processing around the torch network.

The network is :mod:`models.yolov8_net`, filled from Ultralytics
checkpoints by :mod:`models.yolov8_checkpoint`; Ultralytics itself is never
imported.

Pre/post-processing follows the Ultralytics predictor:

* frames: letterbox to ``size`` on the long side, minimal padding to a
  multiple of 32 (Ultralytics' rectangular inference for same-shaped
  images; 1280×720 -> 640×384, 40 % fewer pixels than 640×640), grey 114,
  centred; RGB / 255;
* crops (two-stage): every crop letterboxed to a ``size``×``size`` square so
  crops of any shape share one batch;
* resize bilinear (``align_corners=False``, no antialiasing) in whole grey
  levels (:func:`models.resize.letterbox_frames`): on CPU OpenCV's
  ``INTER_LINEAR`` on the uint8 frame, as Ultralytics does; on other
  devices torch's float kernel rounded, so frames never leave the GPU;
* output (N, 4 + nc, anchors) = cx, cy, w, h, score; score threshold, NMS
  (IoU 0.5), boxes mapped back to the input's pixels.

Frames much larger than ``size`` (long side > 2×size, e.g. 4K) are also cut
into overlapping tiles of 2×size pixels, each run at ``size``; tile boxes
touching an inner tile edge are dropped (the overlap shows them whole in a
neighbour) and everything is merged with the full-frame boxes by NMS, so
plates too small to survive the ×6 shrink of a 4K frame are still found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .base import Detector, Frames, frames_to_tensor
from .boxes import letterbox_params
from .detections import PLATE, Detections, label_id
from .fetch import WeightsError, load_checkpoint
from .ops import batched_nms
from .resize import letterbox_frames
from .runtime import GraphSpec, accelerate
from .tiling import Tile, inner_edge_mask, keep_whole, merge, windows
from .yolov8_checkpoint import network_from_checkpoint
from .yolov8_net import YoloV8

PAD_VALUE = 114
#: what models/runtime.py exports: the whole network, head decoding included;
#: inputs are letterboxed to multiples of the largest stride
#: bf16 on AMX CPUs: Open Images plates 0.907 -> 0.912, openalpr US 0.996 -> 0.996
#: (docs/benchmarks.md, "Half precision on CPU")
GRAPH = GraphSpec("yolov8", example=(2, 3, 384, 640), outputs=("predictions",), multiple=32,
                  cpu_bf16=True)


# ---------------------------------------------------------------- detector
class YoloV8Detector(Detector):
    """Plate detector: one-stage on full frames (:meth:`detect`) and on vehicle crops
    (:meth:`detect_crops`)."""

    name = "yolov8"

    def __init__(self, network: YoloV8, names: Sequence[str], device="cpu", half: bool = True,
                 thresh: float = 0.1, size: int = 640, crop_size: int = 320, iou: float = 0.5,
                 tile: bool = True, tile_overlap: float = 0.2, tile_above: float = 2.0,
                 max_batch: int = 16, max_det: int = 300):
        super().__init__(device, half)
        self.net = self.prepare(network)
        self.stride = 32
        self.thresh, self.size, self.crop_size, self.iou = thresh, size, crop_size, iou
        self.tile, self.tile_overlap, self.tile_above = tile, tile_overlap, tile_above
        self.max_batch, self.max_det = max_batch, max_det
        ids = []
        for n in names:
            try:
                ids.append(label_id(n))
            except ValueError:
                ids.append(PLATE)  # a plate model's only class, whatever its name
        self.class_ids = torch.tensor(ids, dtype=torch.long)
        self.labels = frozenset(ids)

    # -- preprocessing ------------------------------------------------------
    def _letterbox(self, images: torch.Tensor, size: int, square: bool):
        """(B,H,W,3) uint8 -> (B,3,h,w) model input + (scale, pad_left, pad_top)."""
        _, h, w, _ = images.shape
        if square:  # a size x size canvas: the network needs a multiple of its stride
            size = int(math.ceil(size / self.stride) * self.stride)
        scale, new_w, new_h, left, top = letterbox_params(h, w, size, self.stride, square)
        if square:
            canvas_h = canvas_w = size
        else:
            canvas_h = int(math.ceil(new_h / self.stride) * self.stride)
            canvas_w = int(math.ceil(new_w / self.stride) * self.stride)
        x = letterbox_frames(images, new_h, new_w, canvas=(canvas_h, canvas_w),
                             offset=(top, left), fill=PAD_VALUE, scale=1 / 255, antialias=False)
        return x.to(self.dtype), (scale, left, top)

    # -- forward + postprocessing ------------------------------------------
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        outs = [self.net(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        return torch.cat(outs)

    def _postprocess(self, pred: torch.Tensor, thresh: float) -> list[torch.Tensor]:
        """(B, 4+nc, A) -> per image (n, 6) = x1, y1, x2, y2, score, class index (model space)."""
        results = []
        for p in pred:
            p = p.t()
            scores, cls = p[:, 4:].max(1)
            keep = scores > thresh
            p, scores, cls = p[keep], scores[keep], cls[keep]
            xyxy = torch.cat((p[:, :2] - p[:, 2:4] / 2, p[:, :2] + p[:, 2:4] / 2), 1)
            idx = batched_nms(xyxy, scores, cls, self.iou)[: self.max_det]
            results.append(torch.cat((xyxy[idx], scores[idx, None], cls[idx, None].float()), 1))
        return results

    def _to_detections(self, rows: torch.Tensor, scale: float, left: int, top: int,
                       width: int, height: int) -> Detections:
        rows = rows.float().cpu()
        xyxy = rows[:, :4].clone()
        xyxy[:, [0, 2]] = (xyxy[:, [0, 2]] - left) / scale
        xyxy[:, [1, 3]] = (xyxy[:, [1, 3]] - top) / scale
        det = Detections(xyxy.numpy(), rows[:, 4].numpy(),
                         self.class_ids[rows[:, 5].long()].numpy())
        return det.clipped(width, height)

    def _run(self, images: torch.Tensor, size: int, square: bool, thresh: float) -> list[Detections]:
        """Same-shaped (B,H,W,3) uint8 images -> Detections in their pixels."""
        _, h, w, _ = images.shape
        out: list[Detections] = []
        for i in range(0, len(images), self.max_batch):
            x, (scale, left, top) = self._letterbox(images[i:i + self.max_batch], size, square)
            for rows in self._postprocess(self.net(x), thresh):
                out.append(self._to_detections(rows, scale, left, top, w, h))
        return out

    # -- tiles ----------------------------------------------------------------
    def _tile_origins(self, length: int, tile: int) -> list[int]:
        if length <= tile:
            return [0]
        step = max(1, int(tile * (1 - self.tile_overlap)))
        n = int(math.ceil((length - tile) / step)) + 1
        return [round(i * (length - tile) / (n - 1)) for i in range(n)]

    def _tiled(self, frame: torch.Tensor, size: int, thresh: float) -> Detections:
        """Detections from overlapping 2×size tiles of one large frame, in frame pixels."""
        h, w = frame.shape[:2]
        tile = 2 * size
        th, tw = min(tile, h), min(tile, w)
        origins = [(x0, y0) for y0 in self._tile_origins(h, th) for x0 in self._tile_origins(w, tw)]
        tiles = torch.stack([frame[y0:y0 + th, x0:x0 + tw] for x0, y0 in origins])
        found = self._run(tiles, size, True, thresh)
        return Detections.merge([keep_whole(det, Tile(x0, y0, tw, th), h, w)
                                 for (x0, y0), det in zip(origins, found, strict=True)])

    def _tiles(self, hw: tuple[int, int], size: int, tile: bool) -> bool:
        """Whether :meth:`detect` adds tiles for a frame of ``hw`` at ``size``."""
        return tile and self.tile and max(hw) > self.tile_above * size

    # -- public -------------------------------------------------------------
    @torch.inference_mode()
    def detect(self, frames: Frames, thresh: float | None = None,
               size: int | None = None, tile: bool = True) -> list[Detections]:
        """One-stage plates on whole frames; one :class:`Detections` per frame.
        ``tile=False``: no tiles for this call (a second pass at a smaller size,
        whose tiles would repeat the ×0.5 scale the main pass already covers)."""
        thresh = self.thresh if thresh is None else thresh
        size = size or self.size
        images = frames_to_tensor(frames, self.device)
        results: list[Detections | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(tuple(im.shape), []).append(i)
        for shape, idx in groups.items():
            batch = torch.stack([images[i] for i in idx])
            for i, det in zip(idx, self._run(batch, size, False, thresh), strict=True):
                results[i] = det
            if self._tiles(shape[:2], size, tile):
                for i in idx:
                    results[i] = merge([results[i], self._tiled(images[i], size, thresh)],
                                       self.iou)
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def detect_windows(self, frame: Frames, rects, thresh: float | None = None,
                       size: int | None = None, tile: bool = True) -> Detections | None:
        """Plates of one frame found by looking only at ``rects`` (x0, y0, x1, y1
        frame pixels) of it, as :meth:`detect` at ``size`` sees them there: the
        network runs on windows of the letterboxed input on its 32-px grid
        (:func:`models.tiling.windows`), boxes cut by a window's inner edge
        dropped (pipeline/changes.py). None when :meth:`detect` would also tile
        the frame: then only it applies."""
        thresh = self.thresh if thresh is None else thresh
        size = size or self.size
        image = frames_to_tensor([frame], self.device)[0]
        h, w = image.shape[:2]
        if self._tiles((h, w), size, tile):
            return None
        if not rects:
            return Detections.empty()
        x, (scale, left, top) = self._letterbox(image[None], size, False)
        canvas = (int(x.shape[2]), int(x.shape[3]))
        parts = []
        for t in windows(rects, (scale, scale), (left, top), canvas, self.stride):
            rows = self._postprocess(self.net(t.crop(x).contiguous()), thresh)[0]
            cut = inner_edge_mask(rows[:, :4].float().cpu().numpy(), t, *canvas)
            rows = rows[torch.from_numpy(~cut).to(rows.device)]
            rows[:, [0, 2]] += t.x0
            rows[:, [1, 3]] += t.y0
            parts.append(self._to_detections(rows, scale, left, top, w, h))
        return Detections.merge(parts)

    @torch.inference_mode()
    def detect_crops(self, crops: Sequence[np.ndarray | torch.Tensor], thresh: float | None = None,
                     size: int | None = None) -> list[Detections]:
        """Plates in crops of any sizes (two-stage), boxes in each crop's pixels.

        Each crop is letterboxed into a size×size square, all squares run as
        one batch (chunks of ``max_batch``).
        """
        thresh = self.thresh if thresh is None else thresh
        size = size or self.crop_size
        if len(crops) == 0:
            return []
        inputs, geoms = [], []
        for crop in crops:
            t = crop if isinstance(crop, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(crop))
            t = t.to(self.device)
            if t.shape[0] == 0 or t.shape[1] == 0:
                inputs.append(None)
                geoms.append(None)
                continue
            x, g = self._letterbox(t[None], size, True)
            inputs.append(x)
            geoms.append((g, t.shape[1], t.shape[0]))
        valid = [i for i, x in enumerate(inputs) if x is not None]
        out = [Detections.empty() for _ in crops]
        if not valid:
            return out
        batch = torch.cat([inputs[i] for i in valid])
        rows = self._postprocess(self._forward(batch), thresh)
        for i, r in zip(valid, rows, strict=True):
            (scale, left, top), w, h = geoms[i]
            out[i] = self._to_detections(r, scale, left, top, w, h)
        return out


def build(checkpoint_path: str | Path, device: str | torch.device | None = "cpu",
          half: bool = True, fuse: bool = True, **opts) -> YoloV8Detector:
    """Load a converted checkpoint and return the ready detector.

    ``opts``: thresh (0.1), size (640), crop_size (320), iou (0.5), tile
    (True: also run 2×size tiles on frames whose long side exceeds
    ``tile_above`` × size), tile_overlap (0.2), tile_above (2.0), max_batch
    (16), max_det (300); runtime and threads (the network's backend and CPU
    threads, see models/runtime.py). ``fuse`` folds BatchNorm into the convolutions.
    """
    ckpt = load_checkpoint(checkpoint_path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise WeightsError(f"{checkpoint_path}: not a converted YOLOv8 checkpoint")
    net = network_from_checkpoint(ckpt)
    if fuse:
        net.fuse()
    backend, threads = opts.pop("runtime", None), opts.pop("threads", None)
    det = YoloV8Detector(net, ckpt["names"], device=device, half=half, **opts)
    det.net = accelerate(det.net, GRAPH, checkpoint_path, det.device, backend, threads, half)
    det.name = Path(checkpoint_path).parent.name or "yolov8"
    return det
