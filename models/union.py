"""Several detectors of the same classes run as one: the union of what they find.

Two detectors trained on different data miss different objects; for
anonymization a miss leaks and an extra box costs little, so their union
is worth its cost where one detector alone misses too much (measured in
bench/recall_sweep.py). Each part runs on the same frames, the results of
one frame are concatenated and duplicates removed by NMS within each class
(:func:`models.tiling.merge`, the same merge that joins tiles).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .base import Detector, Frames, tiling_options
from .detections import Detections
from .tiling import merge


class UnionDetector(Detector):
    """Merged detections of ``parts``; named ``"a+b"`` after its parts.

    ``thresh`` and ``size`` are passed on to every part when given; left at
    ``None`` each part uses its own default, which is usually right: score
    scales and good input sizes differ between models.
    """

    def __init__(self, parts: Sequence[Detector], iou: float = 0.5) -> None:
        if not parts:
            raise ValueError("a union needs at least one detector")
        self.parts = list(parts)
        super().__init__(self.parts[0].device, self.parts[0].half)
        self.iou = float(iou)
        self.name = "+".join(p.name for p in self.parts)

    @staticmethod
    def _options(thresh: float | None, size: int | None) -> dict:
        return {k: v for k, v in (("thresh", thresh), ("size", size)) if v is not None}

    def _merged(self, per_part: list[list[Detections]]) -> list[Detections]:
        counts = {len(r) for r in per_part}
        if len(counts) != 1:
            raise RuntimeError(f"union parts returned {sorted(counts)} results for one batch")
        return [merge(list(found), self.iou) for found in zip(*per_part, strict=True)]

    @torch.inference_mode()
    def detect(self, frames: Frames, thresh: float | None = None,
               size: int | None = None, tile: bool = True) -> list[Detections]:
        """One merged :class:`Detections` per frame, highest score first; ``tile``
        goes to the parts that tile (see :func:`models.base.tiling_options`)."""
        opts = self._options(thresh, size)
        return self._merged([p.detect(frames, **opts, **tiling_options(p, tile))
                             for p in self.parts])

    @torch.inference_mode()
    def detect_crops(self, crops: Sequence[np.ndarray | torch.Tensor], thresh: float | None = None,
                     size: int | None = None) -> list[Detections]:
        """Merged detections per crop (the plate stage of two-stage mode); every part
        must have ``detect_crops``."""
        if len(crops) == 0:
            return []
        opts = self._options(thresh, size)
        return self._merged([p.detect_crops(crops, **opts) for p in self.parts])
