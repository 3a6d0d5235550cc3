"""TFJS op semantics in torch terms: which ops a generated module supports,
the torch function each elementwise op maps to, and the TF arithmetic that
torch lacks (SAME padding, the legacy ResizeBilinear sampling).

Separate from the code generator (:mod:`models.tfjs_torch`) because the
converter (:mod:`models.tfjs_convert`) checks a graph's ops against
:data:`MODULE_OPS` at fetch time, and because these are plain functions of
numbers, testable and readable without the generator's state.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

CONV_OPS = {"Conv2D", "_FusedConv2D"}
DEPTHWISE_OPS = {"DepthwiseConv2dNative", "FusedDepthwiseConv2dNative"}
BINARY = {"Add": operator.add, "AddV2": operator.add, "BiasAdd": operator.add,
          "Sub": operator.sub, "Mul": operator.mul, "RealDiv": operator.truediv}
UNARY = {"Relu": F.relu, "Relu6": F.relu6, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
         "Elu": F.elu}
#: ops that :func:`models.tfjs_torch.build_module` turns into torch code
MODULE_OPS = frozenset(CONV_OPS | DEPTHWISE_OPS | set(BINARY) | set(UNARY) | {
    "Placeholder", "Const", "Identity", "LeakyRelu", "Mean", "ConcatV2", "ResizeBilinear",
    "MaxPool", "Pad", "PadV2", "Transpose", "SplitV", "Reshape", "Cast", "SparseToDense"})
TF_DTYPES = {"DT_FLOAT": torch.float32, "DT_INT32": torch.int32, "DT_BOOL": torch.bool,
             "DT_INT64": torch.int64}


def same_pads(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding (before, after): the extra pixel goes after."""
    eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def legacy_resize_matrix(n_in: int, n_out: int, align_corners: bool,
                         half_pixel: bool) -> torch.Tensor:
    """(n_out, n_in) bilinear interpolation weights with TF's sampling rule.

    TF's default ResizeBilinear (both flags false) samples at ``dst * in/out``
    with no half-pixel offset, which ``F.interpolate`` has no mode for.
    """
    dst = torch.arange(n_out, dtype=torch.float64)
    if align_corners and n_out > 1:
        src = dst * ((n_in - 1) / (n_out - 1))
    elif half_pixel:
        src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    else:
        src = dst * (n_in / n_out)
    lo = src.floor()
    frac = src - lo
    lo = lo.long().clamp(0, n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.float()


def resize_by_matrices(x: torch.Tensor, ry: torch.Tensor, rx: torch.Tensor) -> torch.Tensor:
    """Separable resize of NCHW ``x`` by row and column matrices, in channels-last order.

    Exact, and faster on CPU than gathering; the batch stays a free dimension.
    """
    _, c, h, w = x.shape
    oh, ow = ry.shape[0], rx.shape[0]
    nhwc = x.permute(0, 2, 3, 1).reshape(-1, h, w * c)  # no copy when channels-last
    rows = torch.matmul(ry.to(x.dtype), nhwc).reshape(-1, w, c)
    out = torch.matmul(rx.to(x.dtype), rows).reshape(-1, oh, ow, c)
    return out.permute(0, 3, 1, 2)  # NCHW shape, channels-last memory


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Channels-last memory: depthwise convolutions and max-pooling run several
    times faster that way on CPU, and the graph's own NHWC views need no copy."""
    return x.contiguous(memory_format=torch.channels_last)
