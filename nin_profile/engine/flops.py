"""FLOP formulas per aten op: PyTorch's own (`torch.utils.flop_counter`), ours where it is wrong.

FLOPs count a multiply-add as two (FLOPs = 2 × MACs); additions of a bias are not counted,
as PyTorch does not count them in the forward either.

Audit of PyTorch's formulas (torch 2.13, `torch/utils/flop_counter.py`):

- `mm`, `addmm`, `bmm`, `baddbmm`: 2·m·n·k per product; right.
- `convolution` (and `_convolution`, `cudnn_convolution`, ...): 2·N·C_out·(C_in/groups)·k·
  out-pixels (transposed: in-pixels); right for any groups, stride, dilation, since the weight's
  shape carries C_in/groups.
- `convolution_backward`: the input gradient is counted right, the weight gradient is not.
  PyTorch counts it as a convolution of the transposed input with the transposed output
  gradient, which multiplies every input channel with every output channel: `groups` times
  the real work. A depthwise conv (groups = channels = C) gets a backward of (1 + C) times its
  forward instead of 2. Ours is below.
- `_scaled_dot_product_flash_attention_for_cpu` and its backward (what the CPU runs for SDPA):
  PyTorch has no formula for them; ours uses PyTorch's attention formulas (below).
- `mkldnn_rnn_layer` and its backward (oneDNN's LSTM layer, what the CPU runs for `nn.LSTM`):
  PyTorch has none; ours count the gate products (below).
- `_cudnn_rnn` and its backward (cuDNN's LSTM and GRU, what CUDA runs): PyTorch has none;
  ours count the gate products of every layer and direction (below).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import (
    conv_flop_count,
    flop_registry,
    sdpa_backward_flop_count,
    sdpa_flop_count,
    shape_wrapper,
)

aten = torch.ops.aten

Formula = Callable[..., int]

# Ours replace PyTorch's for the same op; PyTorch's own registry is left as it is (it is the
# oracle FlopCounterMode uses in the tests).
_OURS: dict[Any, Formula] = {}


def register_flop_formula(*ops: Any) -> Callable[[Formula], Formula]:
    """Register a formula for `ops` (aten overload packets); it receives shapes, not tensors."""

    def decorator(formula: Formula) -> Formula:
        for op in ops:
            if op in _OURS:
                raise ValueError(f"a FLOP formula for {op} is already registered")
            _OURS[op] = shape_wrapper(formula)
        return formula

    return decorator


def flop_formula(op: Any) -> Formula | None:
    """The formula for an overload packet: ours where we have one, else PyTorch's, else None."""
    return _OURS.get(op) or flop_registry.get(op)


@register_flop_formula(aten.convolution_backward)
def conv_backward_flop(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: list[bool],
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """Each gradient a convolution's backward computes costs what its forward did.

    Forward, per output element: C_in/groups · k multiply-adds (k the kernel's size), for
    N · C_out · out-pixels elements. The input gradient is the transposed convolution of the
    output gradient with the same weight: every (input element, weight element) pair of the
    forward is one multiply-add again, so the same count. The weight gradient sums, for each
    of the C_out · C_in/groups · k weights, the product of output gradient and input over the
    N · out-pixels positions it touched: the same count once more. Both hold for any stride,
    dilation, padding and groups, transposed or not (transposed, swap input and output).
    Each is counted only when `output_mask` asks for it; the bias gradient (a sum) is not.
    `grad_out_shape` is the forward's output shape.
    """
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
def cpu_flash_attention_flop(
    query_shape: list[int], key_shape: list[int], value_shape: list[int], *args: Any, **kwargs: Any
) -> int:
    """Q·Kᵀ and P·V, as PyTorch counts its other fused attention kernels (a causal mask's
    skipped blocks are counted, as there)."""
    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


@register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
def cpu_flash_attention_backward_flop(
    grad_out_shape: list[int],
    query_shape: list[int],
    key_shape: list[int],
    value_shape: list[int],
    *args: Any,
    **kwargs: Any,
) -> int:
    """The scores recomputed, then the gradients of P·V and Q·Kᵀ: five products (PyTorch's
    formula for its other flash backward kernels)."""
    return int(sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape))


@register_flop_formula(aten.mkldnn_rnn_layer)
def onednn_lstm_layer_flop(
    input_shape: list[int], w_ih_shape: list[int], w_hh_shape: list[int], *args: Any, **kwargs: Any
) -> int:
    """One LSTM layer and direction on oneDNN: at each of T steps, for B sequences, the 4H gate
    pre-activations from the input (I) and from the last hidden state (H): 2·T·B·4H·(I + H).
    The gates' elementwise arithmetic is not counted (as for any elementwise op)."""
    steps_times_batch = input_shape[0] * input_shape[1]
    gates, input_size = w_ih_shape
    return 2 * steps_times_batch * gates * (input_size + w_hh_shape[1])


@register_flop_formula(aten.mkldnn_rnn_layer_backward)
def onednn_lstm_layer_backward_flop(
    input_shape: list[int], w_ih_shape: list[int], w_hh_shape: list[int], *args: Any, **kwargs: Any
) -> int:
    """Its backward: the gradients of the input and the hidden state (the gate gradients times
    each weight) and of both weights (gate gradients times inputs and hidden states), each as
    many multiply-adds as one of the forward's two products: twice the forward. oneDNN computes
    all four whether or not the input needs a gradient."""
    return 2 * onednn_lstm_layer_flop(input_shape, w_ih_shape, w_hh_shape)


@register_flop_formula(aten._cudnn_rnn)
def cudnn_rnn_flop(
    input_shape: list[int],
    weight_shapes: list[list[int]],
    weight_stride0: int,
    *args: Any,
    **kwargs: Any,
) -> int:
    """cuDNN's LSTM or GRU, every layer and direction: at each of T steps, for B sequences,
    the G·H gate pre-activations from the layer's input and from its last hidden state,
    2·T·B·(G·H·I_layer + G·H·H), read off each layer's two weight matrices (`weight_stride0`
    tensors a layer and direction, the matrices first). Elementwise arithmetic not counted."""
    steps_times_batch = input_shape[0] * input_shape[1]
    total = 0
    for first in range(0, len(weight_shapes), weight_stride0):
        w_ih, w_hh = weight_shapes[first], weight_shapes[first + 1]
        total += 2 * steps_times_batch * (w_ih[0] * w_ih[1] + w_hh[0] * w_hh[1])
    return total


@register_flop_formula(aten._cudnn_rnn_backward)
def cudnn_rnn_backward_flop(
    input_shape: list[int],
    weight_shapes: list[list[int]],
    weight_stride0: int,
    *args: Any,
    **kwargs: Any,
) -> int:
    """Its backward: the gradients of the inputs and hidden states (gate gradients times each
    weight), which cuDNN computes always, as many multiply-adds as the forward; the weights'
    (gate gradients times inputs and hidden states) as many again where asked
    (`output_mask[3]`, the last argument)."""
    output_mask = args[-1] if args else kwargs["output_mask"]
    forward = cudnn_rnn_flop(input_shape, weight_shapes, weight_stride0)
    return forward * (2 if output_mask[3] else 1)
