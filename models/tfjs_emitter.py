"""The machinery under TFJS code generation: values and the fx calls that make them.

A :class:`Value` is an activation as the generator sees it: an fx node, its
result on an example input, which physical dimension holds each logical (TF)
axis, and padding not emitted yet. :class:`Emitter` emits torch calls and
buffers into an fx graph and moves values between layouts (a permute or a
pad only when one is needed). Separate from :mod:`models.tfjs_torch`, which
translates each TFJS op using these primitives: this part knows no ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx

from .tfjs_convert import ref

NHWC = (0, 2, 3, 1)  # logical NHWC axes held in a physical NCHW tensor


@dataclass
class Traced:
    """A generated value: the fx node and what it computes for the example input."""

    node: fx.Node
    ex: torch.Tensor


@dataclass
class Value:
    """An activation during code generation.

    ``t`` is a physical tensor whose dimension ``perm[i]`` holds logical (TF)
    axis ``i``. ``pad`` maps physical dims to a (before, after) padding with
    ``pad_value`` that is not emitted yet: a following convolution or
    max-pool takes it over as its own padding.
    """

    t: Traced
    perm: tuple[int, ...]
    pad: dict[int, tuple[int, int]] = field(default_factory=dict)
    pad_value: float = 0.0

    @property
    def rank(self) -> int:
        return self.t.ex.ndim

    @property
    def logical_shape(self) -> list[int]:
        return [self.t.ex.shape[p] for p in self.perm]


def inverse_perm(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def identity_perm(rank: int) -> tuple[int, ...]:
    return tuple(range(rank))


class Emitter:
    """Emits torch calls into an fx graph and keeps the values of graph nodes.

    ``env`` maps node names to constants (tensors), values, or tuples of
    values (ops with several outputs).
    """

    def __init__(self):
        self.root = torch.nn.Module()
        self.graph = fx.Graph()
        self.env: dict[str, Value | tuple[Value, ...] | torch.Tensor] = {}

    def call(self, fn, *args, **kwargs) -> Traced:
        """Emit ``fn(*args, **kwargs)``; :class:`Traced` arguments (also inside lists)
        stand for generated values and are run on their examples too."""
        node_args, node_kwargs = fx.node.map_aggregate(
            (args, kwargs), lambda a: a.node if isinstance(a, Traced) else a)
        ex_args, ex_kwargs = fx.node.map_aggregate(
            (args, kwargs), lambda a: a.ex if isinstance(a, Traced) else a)
        node = self.graph.call_function(fn, tuple(node_args), dict(node_kwargs))
        ex = fn(*ex_args, **ex_kwargs)
        if isinstance(ex, torch.Tensor):
            node.meta["shape"] = tuple(ex.shape)  # read back by output_shapes()
        return Traced(node, ex)

    def buffer(self, tensor: torch.Tensor, before: fx.Node | None = None) -> Traced:
        """A constant as a module buffer (read where ``before`` is, else at the end)."""
        name = f"c{len(self.root._buffers)}"
        self.root.register_buffer(name, tensor.detach().clone().contiguous())
        if before is None:
            return Traced(self.graph.get_attr(name), getattr(self.root, name))
        with self.graph.inserting_before(before):
            return Traced(self.graph.get_attr(name), getattr(self.root, name))

    def const(self, r: str) -> torch.Tensor:
        value = self.env.get(ref(r)[0])
        if not isinstance(value, torch.Tensor):
            raise NotImplementedError(f"{r} must be a constant")
        return value

    def is_const(self, r: str) -> bool:
        return isinstance(self.env.get(ref(r)[0]), torch.Tensor)

    def value(self, r: str) -> Value:
        name, index = ref(r)
        v = self.env[name]
        if isinstance(v, tuple):
            return v[index]
        if isinstance(v, torch.Tensor):
            raise NotImplementedError(f"{r}: constant where an activation was expected")
        return v

    def flush(self, v: Value) -> Value:
        """``v`` with any pending padding emitted."""
        if not v.pad:
            return v
        pads: list[int] = []
        for dim in reversed(range(v.rank)):
            pads.extend(v.pad.get(dim, (0, 0)))
        return Value(self.call(F.pad, v.t, pads, value=v.pad_value), v.perm)

    def physical(self, v: Value, perm: tuple[int, ...]) -> Value:
        """``v`` with logical axis ``i`` at physical dim ``perm[i]`` (a permute if needed)."""
        v = self.flush(v)
        if v.perm == perm:
            return v
        order = tuple(v.perm[j] for j in inverse_perm(perm))
        return Value(self.call(torch.permute, v.t, order), perm)

    def take_pad(self, v: Value, value: float) -> tuple[Value, list[list[int]]]:
        """``v`` in NHWC order and the pending H/W padding it had, if that padding
        used ``value`` and needs no permute (the caller folds it into its op)."""
        if v.pad and v.pad_value == value and v.perm == NHWC and set(v.pad) <= {2, 3}:
            pads = [list(v.pad.get(2, (0, 0))), list(v.pad.get(3, (0, 0)))]
            return Value(v.t, v.perm), pads
        return self.physical(v, NHWC), [[0, 0], [0, 0]]

    def layout_const(self, c: torch.Tensor, like: Value) -> torch.Tensor:
        """A logical (TF-broadcast) constant laid out for ``like``'s physical dims."""
        if c.ndim > like.rank:
            raise NotImplementedError("constant of higher rank than the activation")
        c = c.reshape((1,) * (like.rank - c.ndim) + tuple(c.shape))
        return c.permute(inverse_perm(like.perm))

