"""Stand-in for mmcv's compiled ``_ext`` module, backed by torchvision.ops.

mmdet 3.3.0 refuses mmcv 2.2.0 at import, and mmcv 2.1.0 ships no wheels
with compiled ops for current torch builds; ``mmcv-lite`` 2.1.0 has the
Python side of ``mmcv.ops`` but no ``mmcv._ext``. Every op module loads its
kernels with ``ext_loader.load_ext('_ext', [...])``, which only imports
``mmcv._ext`` and checks the names exist. Registering this module as
``mmcv._ext`` makes ``mmcv.ops`` import unchanged (so layer classes,
parameter names and registry entries stay mmcv's own) while the few
kernels the research detectors run (Cascade R-CNN, DetectoRS) are served by
torchvision: ``nms``, ``roi_align_forward`` (aligned, average pooling),
``deform_conv_forward`` and ``modulated_deform_conv_forward`` (DCN,
DetectoRS' SAC). When torchvision does not import beside the installed
torch (PyPI torchvision is built for one torch release), the same kernels
fall back to the pure-torch versions below, which follow mmcv's sampling
rules. Any other kernel raises a one-line error naming itself. Inference
only: no backward kernels.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import torch


def _tv_ops():
    """torchvision.ops, or None when it is missing or built for another torch."""
    try:
        import torchvision.ops as ops
    except Exception:
        return None
    return ops


# -- pure-torch kernels ---------------------------------------------------

def roi_align_torch(feat: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int],
                    spatial_scale: float, sampling_ratio: int, aligned: bool,
                    chunk: int = 64) -> torch.Tensor:
    """mmcv/torchvision RoIAlign (average pooling) without compiled code.

    Each bin averages ``gh × gw`` bilinear samples placed at the centres of a
    regular sub-grid (``sampling_ratio``, or ceil(roi size / bins) when 0).
    Samples more than one pixel outside the map count as 0; others are
    clamped to the border, as in the CUDA kernel. Rois are processed in
    groups of equal sub-grid size, ``chunk`` at a time, to bound memory.
    """
    ph, pw = output_size
    n_img, c, h, w = feat.shape
    k = rois.shape[0]
    out = feat.new_zeros((k, c, ph, pw))
    if k == 0:
        return out
    rois = rois.to(torch.float32)
    off = 0.5 if aligned else 0.0
    b = rois[:, 0].long()
    x1, y1 = rois[:, 1] * spatial_scale - off, rois[:, 2] * spatial_scale - off
    roi_w = rois[:, 3] * spatial_scale - off - x1
    roi_h = rois[:, 4] * spatial_scale - off - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / pw, roi_h / ph
    if sampling_ratio > 0:
        gw = torch.full((k,), sampling_ratio, dtype=torch.long, device=rois.device)
        gh = gw.clone()
    else:
        gw, gh = torch.ceil(roi_w / pw).long(), torch.ceil(roi_h / ph).long()
    flat = feat.permute(1, 0, 2, 3).reshape(c, n_img * h * w)
    pairs = torch.stack([gh, gw], 1)
    for gy, gx in torch.unique(pairs, dim=0).tolist():
        if gy <= 0 or gx <= 0:
            continue  # empty roi: no samples, output stays 0
        idx_all = torch.nonzero((pairs[:, 0] == gy) & (pairs[:, 1] == gx)).flatten()
        for idx in idx_all.split(chunk):
            ky = (torch.arange(ph, device=rois.device)[:, None]
                  + (torch.arange(gy, device=rois.device)[None] + 0.5) / gy).flatten()
            kx = (torch.arange(pw, device=rois.device)[:, None]
                  + (torch.arange(gx, device=rois.device)[None] + 0.5) / gx).flatten()
            ys = y1[idx, None] + ky[None] * bin_h[idx, None]  # (n, ph*gy)
            xs = x1[idx, None] + kx[None] * bin_w[idx, None]  # (n, pw*gx)
            yl, yh, wy, vy = _axis_weights(ys, h)
            xl, xh, wx, vx = _axis_weights(xs, w)
            base = (b[idx] * h * w)[:, None, None]
            val = 0
            for yi, wyi in ((yl, 1 - wy), (yh, wy)):
                for xi, wxi in ((xl, 1 - wx), (xh, wx)):
                    gathered = flat[:, base + yi[:, :, None] * w + xi[:, None, :]]
                    val = val + gathered * (wyi * vy)[None, :, :, None] * (wxi * vx)[None, :, None, :]
            val = val.permute(1, 0, 2, 3).reshape(len(idx), c, ph, gy, pw, gx)
            out[idx] = (val.sum((3, 5)) / (gy * gx)).to(out.dtype)
    return out


def _axis_weights(p: torch.Tensor, size: int):
    """RoIAlign bilinear rule along one axis: low/high index, high weight, validity."""
    valid = ((p >= -1.0) & (p <= size)).to(torch.float32)
    p = p.clamp(min=0.0)
    low = p.floor().long()
    at_end = low >= size - 1
    low = torch.where(at_end, torch.full_like(low, size - 1), low)
    high = torch.where(at_end, low, low + 1)
    p = torch.where(at_end, low.to(p.dtype), p)
    return low, high, p - low.to(p.dtype), valid


def deform_conv2d_torch(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None, stride, padding, dilation,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Deformable convolution v1/v2 (torchvision's layout and sampling) in plain torch.

    Offsets are (dy, dx) pairs per offset group and kernel position; a
    sample outside the map reads 0, corners outside it contribute 0. One
    kernel position at a time keeps memory at four input-sized gathers.
    """
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    groups = cin // cin_g
    ho, wo = offset.shape[2], offset.shape[3]
    n_off = offset.shape[1] // (2 * kh * kw)
    sh, sw = stride
    pad_h, pad_w = padding
    dh, dw = dilation
    out = x.new_zeros((n, cout, ho, wo))
    base_y = (torch.arange(ho, device=x.device) * sh - pad_h).to(x.dtype)[:, None]
    base_x = (torch.arange(wo, device=x.device) * sw - pad_w).to(x.dtype)[None, :]
    flat = x.reshape(n, cin, h * w)
    ch_group = torch.arange(cin, device=x.device) // (cin // n_off)  # offset group per channel
    for i in range(kh):
        for j in range(kw):
            kidx = i * kw + j
            dy = offset[:, 2 * kidx::2 * kh * kw][:, :n_off]  # (n, G, ho, wo)
            dx = offset[:, 2 * kidx + 1::2 * kh * kw][:, :n_off]
            py = (base_y + i * dh)[None, None] + dy
            px = (base_x + j * dw)[None, None] + dx
            sampled = _deform_sample(flat, py[:, ch_group], px[:, ch_group], h, w)
            if mask is not None:
                sampled = sampled * mask[:, kidx::kh * kw][:, :n_off][:, ch_group]
            sampled = sampled.view(n, groups, cin_g, ho, wo)
            wk = weight[:, :, i, j].view(groups, cout // groups, cin_g)
            out += torch.einsum("goc,ngchw->ngohw", wk, sampled).reshape(n, cout, ho, wo)
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    return out


def _deform_sample(flat: torch.Tensor, py: torch.Tensor, px: torch.Tensor, h: int, w: int
                   ) -> torch.Tensor:
    """Bilinear samples (n, C, ho, wo) of ``flat`` (n, C, h*w) at per-channel positions."""
    inside = (py > -1) & (py < h) & (px > -1) & (px < w)
    y0, x0 = py.floor(), px.floor()
    ly, lx = py - y0, px - x0
    y0, x0 = y0.long(), x0.long()
    val = torch.zeros_like(py)
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            ok = inside & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).flatten(2)
            g = torch.gather(flat, 2, idx).view_as(py)
            val = val + g * wy * wx * ok.to(py.dtype)
    return val


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0
        ) -> torch.Tensor:
    """Indices kept by NMS, highest score first (mmcv's ``offset`` is 0 in mmdet 3)."""
    if offset:
        boxes = boxes.clone()
        boxes[:, 2:] += offset
    ops = _tv_ops()
    if ops is not None:
        return ops.nms(boxes.float(), scores.float(), float(iou_threshold))
    from models.ops import nms as torch_nms

    return torch_nms(boxes.float(), scores.float(), float(iou_threshold))


def roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width,
                      spatial_scale, sampling_ratio, pool_mode, aligned) -> None:
    if pool_mode != 1:
        raise NotImplementedError("RoIAlign max pooling is not available (only 'avg')")
    ops, size = _tv_ops(), (aligned_height, aligned_width)
    if ops is not None:
        out = ops.roi_align(input, rois.to(input.dtype), size, spatial_scale=spatial_scale,
                            sampling_ratio=sampling_ratio, aligned=bool(aligned))
    else:
        out = roi_align_torch(input, rois, size, spatial_scale, sampling_ratio, bool(aligned))
    output.copy_(out)


def deform_conv_forward(input, weight, offset, output, columns, ones, kW, kH, dW, dH, padW,
                        padH, dilationW, dilationH, group, deformable_group, im2col_step
                        ) -> None:
    ops, args = _tv_ops(), ((dH, dW), (padH, padW), (dilationH, dilationW))
    if ops is not None:
        out = ops.deform_conv2d(input, offset, weight, None, stride=args[0], padding=args[1],
                                dilation=args[2])
    else:
        out = deform_conv2d_torch(input, offset, weight, None, *args)
    output.copy_(out)


def modulated_deform_conv_forward(input, weight, bias, ones, offset, mask, output, columns,
                                  kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                  dilation_h, dilation_w, group, deformable_group, with_bias
                                  ) -> None:
    ops, bias = _tv_ops(), (bias if with_bias else None)
    args = ((stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w))
    if ops is not None:
        out = ops.deform_conv2d(input, offset, weight, bias, stride=args[0], padding=args[1],
                                dilation=args[2], mask=mask)
    else:
        out = deform_conv2d_torch(input, offset, weight, bias, *args, mask=mask)
    output.copy_(out)


_PROVIDED = {"nms": nms, "roi_align_forward": roi_align_forward,
             "deform_conv_forward": deform_conv_forward,
             "modulated_deform_conv_forward": modulated_deform_conv_forward}


def _missing(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(f"mmcv op {name} has no torchvision stand-in; install an "
                                  f"mmcv build with compiled ops for this model")
    op.__name__ = name
    return op


class _ExtModule(types.ModuleType):
    """``mmcv._ext``: the provided kernels, and a raising stub for any other name."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _PROVIDED.get(name) or _missing(name)


def install() -> bool:
    """Register the stand-in as ``mmcv._ext`` unless a compiled one imports.

    Returns True when the stand-in was installed. Call before importing mmdet.
    """
    if "mmcv._ext" in sys.modules:
        return isinstance(sys.modules["mmcv._ext"], _ExtModule)
    try:
        import mmcv._ext  # noqa: F401  (a full mmcv build)
        return False
    except ImportError:
        pass
    module = _ExtModule("mmcv._ext", __doc__)
    # a spec without a loader: mmengine's "is mmcv-full here?" probe answers no
    module.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
    for name, fn in _PROVIDED.items():
        setattr(module, name, fn)
    sys.modules["mmcv._ext"] = module
    return True
