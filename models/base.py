"""The detector interface every model implements.

A detector takes a batch of frames and returns one :class:`Detections` per
frame, in the frames' own pixel coordinates and canonical labels. Frames
come as an N×H×W×3 uint8 RGB numpy array, a list of such images (sizes may
differ), or a uint8 torch tensor N×H×W×3 already on the detector's device
(GPU workers decode straight to device memory and skip a copy).

The protocol is two calls, the same for every backend, so the pipeline can
put any model in any slot (faces, one-stage plates, two-stage vehicles and
plates-in-crops) without knowing where its weights came from:

* ``detect(frames, thresh=None, size=None)``: whole frames;
* ``detect_crops(crops, thresh=None, size=None)``: a list of image crops of
  any sizes (the plate stage of the two-stage mode), boxes in each crop's
  pixels.

``thresh=None`` means the detector's own default score threshold;
``size=None`` its own input size. Detectors whose input size is fixed by the
model (a TorchScript graph that resizes internally, a 512×512 graph) accept
``size`` and ignore it.
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch

from .detections import Detections
from .errors import DeviceError

Frames = np.ndarray | torch.Tensor | Sequence[np.ndarray]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``'auto'``/None -> CUDA when present, else CPU; validates 'cuda:N'."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {device} requested but this machine has "
                          f"{torch.cuda.device_count()} CUDA device(s) (cuda:0 and up)")
    return dev


def honours_half(device: torch.device) -> bool:
    """Whether a detector asked for half precision runs its torch modules in fp16
    on ``device``: on CUDA only (fp16 convolutions on a CPU are slow or missing;
    CPU graphs take bf16 where it pays, models/runtime.py). The CPU test suite
    turns it on to run the GPU's precision path on real images."""
    return device.type == "cuda"


def side_for_min_object(height: int, width: int, min_object: float, smallest: float) -> int:
    """Long side of the network input at which an object of ``min_object`` frame
    pixels measures ``smallest`` pixels, the least its detector finds reliably.

    Why: a fixed input size either wastes work (a small frame upscaled many
    times) or loses small objects (a large frame shrunk); the smallest object
    the user must not miss says how far each frame has to be scaled.
    """
    if min_object <= 0:
        raise ValueError(f"smallest object size must be positive, got {min_object}")
    return max(1, round(max(height, width) * float(smallest) / float(min_object)))


def frames_to_tensor(frames: Frames, device: torch.device) -> list[torch.Tensor]:
    """Each frame as an H×W×3 uint8 tensor on ``device`` (no copy when already there).

    A sequence may hold tensors (the vehicle crops of a frame on the GPU, which
    the two-stage search hands to ``detect_crops``): they go to ``device`` as
    they are (contiguous, as numpy made them); numpy cannot read a CUDA tensor."""
    if isinstance(frames, torch.Tensor):
        if frames.ndim == 3:
            frames = frames[None]
        return list(frames.to(device))
    if isinstance(frames, np.ndarray):
        if frames.ndim == 3:
            frames = frames[None]
        return list(torch.from_numpy(np.ascontiguousarray(frames)).to(device))
    return [f.to(device).contiguous() if isinstance(f, torch.Tensor)
            else torch.from_numpy(np.ascontiguousarray(f)).to(device) for f in frames]


def frames_to_numpy(frames: Frames) -> list[np.ndarray]:
    """Each frame as an H×W×3 uint8 numpy array on the host (for backends that
    run third-party code wanting numpy images)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.cpu().numpy()
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = frames[None]
    return [f.cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f) for f in frames]


def tiling_options(detector, tile: bool) -> dict:
    """``{"tile": tile}`` for a detector whose ``detect`` takes a ``tile`` switch
    (the plate detectors that tile large frames), else nothing: every detector
    is called the same way whether or not it tiles."""
    if tile:
        return {}
    return {"tile": False} if "tile" in inspect.signature(detector.detect).parameters else {}


class Detector(ABC):
    """Base class: holds the torch module, its device and precision.

    Subclasses implement :meth:`detect`; :meth:`detect_crops` defaults to
    one :meth:`detect` call per crop, which is right for detectors that
    batch only equal-sized images anyway. ``half`` is honoured on CUDA only
    (fp16 convolutions on CPU are slow or missing).
    """

    #: registry name, set by the builder
    name: str = "detector"
    #: label ids (models.detections) this detector can return; None when not known.
    #: The loader checks it against the slot a model is put in (a face model
    #: passed as the plate model is refused).
    labels: frozenset[int] | None = None

    def __init_subclass__(cls, **kwargs) -> None:
        """A ``detect`` written without ``size`` (a fixed-input model) still
        takes the protocol's ``size`` argument, and ignores it."""
        super().__init_subclass__(**kwargs)
        detect = cls.__dict__.get("detect")
        if detect is None or "size" in inspect.signature(detect).parameters:
            return

        @functools.wraps(detect)
        def sized(self, frames: Frames, thresh: float | None = None,
                  size: int | None = None) -> list[Detections]:
            return detect(self, frames, thresh)

        del sized.__wrapped__  # its signature is the protocol's, not the wrapped one's
        cls.detect = sized

    def __init__(self, device: str | torch.device | None = "cpu", half: bool = True):
        self.device = resolve_device(device)
        self.half = bool(half) and honours_half(self.device)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.half else torch.float32

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move a module to the detector's device/precision, in eval mode."""
        module = module.to(self.device).eval()
        return module.half() if self.half else module

    @abstractmethod
    def detect(self, frames: Frames, thresh: float | None = None,
               size: int | None = None) -> list[Detections]:
        """One :class:`Detections` per frame, boxes in that frame's pixels."""

    def detect_crops(self, crops: Sequence[np.ndarray] | Sequence[torch.Tensor],
                     thresh: float | None = None, size: int | None = None
                     ) -> list[Detections]:
        """One :class:`Detections` per crop (crops may differ in size), boxes in
        that crop's pixels. Default: :meth:`detect` on each crop alone."""
        out = []
        with torch.inference_mode():
            for crop in crops:
                if crop.shape[0] == 0 or crop.shape[1] == 0:
                    out.append(Detections.empty())
                else:
                    out.append(self.detect([crop], thresh, size)[0])
        return out

    def __call__(self, frames: Frames, thresh: float | None = None,
                 size: int | None = None) -> list[Detections]:
        with torch.inference_mode():
            return self.detect(frames, thresh, size)
