"""The detector interface every model implements.

A detector takes a batch of frames and returns one :class:`Detections` per
frame, in the frames' own pixel coordinates and canonical labels. Frames
come as an N×H×W×3 uint8 RGB numpy array, a list of such images (sizes may
differ), or a uint8 torch tensor N×H×W×3 already on the detector's device
(GPU workers decode straight to device memory and skip a copy).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

from .detections import Detections

Frames = np.ndarray | torch.Tensor | Sequence[np.ndarray]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``'auto'``/None -> CUDA when present, else CPU; validates 'cuda:N'."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} requested but CUDA is not available")
    return dev


def frames_to_tensor(frames: Frames, device: torch.device) -> list[torch.Tensor]:
    """Each frame as an H×W×3 uint8 tensor on ``device`` (no copy when already there)."""
    if isinstance(frames, torch.Tensor):
        if frames.ndim == 3:
            frames = frames[None]
        return list(frames.to(device))
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:
            frames = frames[None]
        return list(torch.from_numpy(np.ascontiguousarray(frames)).to(device))
    return [torch.from_numpy(np.ascontiguousarray(f)).to(device) for f in frames]


def frames_to_numpy(frames: Frames) -> list[np.ndarray]:
    """Each frame as an H×W×3 uint8 numpy array on the host (for backends that
    run third-party code wanting numpy images)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.cpu().numpy()
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = frames[None]
    return [np.asarray(f) for f in frames]


class Detector(ABC):
    """Base class: holds the torch module, its device and precision.

    Subclasses implement :meth:`detect`. ``half`` is honoured on CUDA only
    (fp16 convolutions on CPU are slow or missing).
    """

    #: registry name, set by the builder
    name: str = "detector"

    def __init__(self, device: str | torch.device | None = "cpu", half: bool = True):
        self.device = resolve_device(device)
        self.half = bool(half) and self.device.type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.half else torch.float32

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move a module to the detector's device/precision, in eval mode."""
        module = module.to(self.device).eval()
        return module.half() if self.half else module

    @abstractmethod
    def detect(self, frames: Frames, thresh: float | None = None) -> list[Detections]:
        """One :class:`Detections` per frame, boxes in that frame's pixels."""

    def __call__(self, frames: Frames, thresh: float | None = None) -> list[Detections]:
        with torch.inference_mode():
            return self.detect(frames, thresh)
