"""EgoBlur face / licence-plate detectors from user-supplied TorchScript files.

EgoBlur ships its detectors as TorchScript: the model takes one CHW float
tensor with values 0..255 in BGR order (the release demo feeds OpenCV
images) at the image's own size, resizes internally, and returns
``(boxes, labels, scores, image_size)`` with boxes xyxy in input pixels
(some exports add a fifth output: ``boxes, labels, _, scores, _``). Here
each frame goes through the model on the detector's device, then NMS and
the score threshold, as the release demo does. TorchScript graphs are run
in float32 (they were exported that way).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.base import Detector, Frames, frames_to_tensor
from models.detections import FACE, PLATE, Detections
from models.errors import one_line
from models.fetch import WeightsError
from models.ops import nms


def load_torchscript(path: str | Path, device: torch.device) -> torch.jit.ScriptModule:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"EgoBlur model file not found: {path}")
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:
        raise WeightsError(f"{path.name} is not a TorchScript model: {one_line(exc)}") from None


class EgoBlurDetector(Detector):
    """One EgoBlur TorchScript model (faces or plates) as a :class:`Detector`."""

    def __init__(self, path: str | Path, label: int, device="cpu", half: bool = True,
                 thresh: float = 0.9, nms_iou: float = 0.3, channels: str = "BGR"):
        super().__init__(device, half=False)
        if channels not in ("BGR", "RGB"):
            raise ValueError(f"channels must be BGR or RGB, not {channels!r}")
        self.module = load_torchscript(path, self.device)
        self.label = int(label)
        self.labels = frozenset({self.label})
        self.thresh = float(thresh)
        self.nms_iou = float(nms_iou)
        self.channels = channels

    def _outputs(self, out) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(out, (tuple, list)) or len(out) not in (4, 5):
            raise WeightsError("EgoBlur model returned an unexpected output (expected boxes, "
                               "labels, scores, image size)")
        boxes, scores = (out[0], out[2]) if len(out) == 4 else (out[0], out[3])
        return boxes.reshape(-1, 4).float(), scores.reshape(-1).float()

    def detect(self, frames: Frames, thresh: float | None = None,
               size: int | None = None) -> list[Detections]:
        """``size`` is ignored: the TorchScript model resizes each frame itself."""
        thresh = self.thresh if thresh is None else float(thresh)
        results = []
        with torch.inference_mode():
            for img in frames_to_tensor(frames, self.device):
                x = img.permute(2, 0, 1).float()
                if self.channels == "BGR":
                    x = x.flip(0)
                boxes, scores = self._outputs(self.module(x.contiguous()))
                keep = nms(boxes, scores, self.nms_iou)
                boxes, scores = boxes[keep], scores[keep]
                above = scores >= thresh
                boxes, scores = boxes[above].cpu().numpy(), scores[above].cpu().numpy()
                det = Detections(boxes, scores, np.full(len(scores), self.label, np.int64))
                results.append(det.clipped(int(img.shape[1]), int(img.shape[0])))
        return results


def build(checkpoint_path: str | Path, device="cpu", half: bool = True, label: str = "face",
          **opts) -> EgoBlurDetector:
    """``label``: "face" or "plate"; ``opts``: thresh (0.9), nms_iou (0.3), channels."""
    name = opts.pop("name", f"egoblur-{label}")
    det = EgoBlurDetector(checkpoint_path, {"face": FACE, "plate": PLATE}[label], device=device,
                          half=half, **opts)
    det.name = name
    return det


def build_face(checkpoint_path, device="cpu", half: bool = True, **opts) -> EgoBlurDetector:
    return build(checkpoint_path, device, half, label="face", **opts)


def build_plate(checkpoint_path, device="cpu", half: bool = True, **opts) -> EgoBlurDetector:
    return build(checkpoint_path, device, half, label="plate", **opts)
