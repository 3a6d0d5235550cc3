"""serengil ``retina-face`` (ResNet-50 RetinaFace) on its torch backend, offline.

The package downloads ``retinaface.pth`` on first use; here it never does.
The weights must already be at ``$DEEPFACE_HOME/.deepface/weights/retinaface.pth``
(``DEEPFACE_HOME`` defaults to the home directory) or be passed as a path;
otherwise the build fails with one line naming the expected file. The
package's own ``detect_faces`` does the pre/post-processing (BGR input,
its own scaling, NMS 0.4), so results match the package; the network runs
on the detector's device through a small wrapper.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.base import Detector, Frames, frames_to_numpy
from models.detections import FACE, Detections
from models.errors import one_line
from models.fetch import WeightsError

from . import require


def expected_weights_path() -> Path:
    """Where retina-face looks for its weights (``$DEEPFACE_HOME`` or ``~``)."""
    home = os.environ.get("DEEPFACE_HOME") or str(Path.home())
    return Path(home) / ".deepface" / "weights" / "retinaface.pth"


class _OnDevice(nn.Module):
    """Runs the package's network on our device and hands CPU float outputs back."""

    def __init__(self, net: nn.Module, device: torch.device):
        super().__init__()
        self.net, self.device = net.to(device).eval(), device

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            return [o.float().cpu() for o in self.net(x.to(self.device))]


def _load_package():
    """Import retina-face forced onto its torch backend (never TensorFlow)."""
    os.environ.setdefault("DEEPFACE_BACKEND_ENGINE", "pytorch")
    backend_utils = require("retinaface.commons.backend_utils", "serengil")
    if backend_utils.get_backend_engine() != "pytorch":
        raise ImportError("retina-face is set to another backend engine; unset "
                          "DEEPFACE_BACKEND_ENGINE or set it to pytorch")
    api = require("retinaface.RetinaFace", "serengil")
    pth = require("retinaface.model.retinaface_pth_model", "serengil")
    return api, pth


class SerengilRetinaFace(Detector):
    name = "serengil-retinaface"
    labels = frozenset({FACE})

    def __init__(self, weights: str | Path | None = None, device="cpu", half: bool = True,
                 thresh: float = 0.9, allow_upscaling: bool = True):
        super().__init__(device, half=False)
        path = Path(weights) if weights else expected_weights_path()
        if not path.is_file():
            raise WeightsError(f"serengil retinaface weights not found at {path} (place "
                               f"retinaface.pth there; it is not downloaded)")
        self._api, pth = _load_package()
        net = pth.RetinaFace()
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:
            raise WeightsError(f"{path.name} is not serengil's retinaface.pth: {one_line(exc)}"
                               ) from None
        self.model = _OnDevice(net, self.device)
        self.thresh = float(thresh)
        self.allow_upscaling = bool(allow_upscaling)

    def detect(self, frames: Frames, thresh: float | None = None,
               size: int | None = None) -> list[Detections]:
        """``size`` is ignored: the package scales each frame its own way."""
        thresh = self.thresh if thresh is None else float(thresh)
        frames = frames_to_numpy(frames)
        results = []
        for frame in frames:
            bgr = np.ascontiguousarray(np.asarray(frame)[..., ::-1])
            faces = self._api.detect_faces(bgr, threshold=thresh, model=self.model,
                                           allow_upscaling=self.allow_upscaling)
            rows = list(faces.values()) if isinstance(faces, dict) else []
            results.append(Detections(
                [[float(v) for v in r["facial_area"]] for r in rows],
                [float(r["score"]) for r in rows], [FACE] * len(rows)))
        return results


def build(checkpoint_path: str | Path | None = None, device="cpu", half: bool = True,
          **opts) -> SerengilRetinaFace:
    """``checkpoint_path``: retinaface.pth (default: the package's own location)."""
    return SerengilRetinaFace(checkpoint_path, device=device, half=half, **opts)
