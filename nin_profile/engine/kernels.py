"""Which kernel the target device runs where the meta device runs another, and what it keeps.

The meta device selects no kernels of its own. `scaled_dot_product_attention` on meta takes
the math path (`_fused_sdp_choice_meta` answers "math" for anything not CUDA), which keeps the
attention matrix for backward; `nn.LSTM` on meta runs the composite cell, several ops a step.
The devices run fused kernels that keep other tensors. `DeviceKernels`, a TorchFunctionMode
active while a step is traced, sends these calls to the kernel the target device would pick,
called on meta tensors: PyTorch's own autograd formula for that kernel then saves what the
real kernel saves, and `kernel_outputs` gives a kernel's outputs the sizes the device gives
them where PyTorch's meta kernel does not know them.

The selection rules, with the PyTorch source each follows, are devices.py's.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

from nin_profile.engine.devices import (
    CUDNN_GRU,
    CUDNN_LSTM,
    cpu_sdpa_backend,
    cuda_sdpa_backend,
    cudnn_rnn_reserve,
    cudnn_rnn_unpredicted,
    lstm_uses_onednn,
    packed_lstm_uses_onednn,
    rnn_runs_cudnn,
    rnn_runs_whole_sequence,
)
from nin_profile.engine.fastpath import cpu_fast_paths, nested_packing_refused
from nin_profile.engine.memory import one_op, traced

aten = torch.ops.aten

LSTM_MODE = 2  # ideep::rnn_kind::LSTM, as `mkldnn_rnn_layer` takes it
CUDNN_NAMES = {CUDNN_LSTM: "LSTM", CUDNN_GRU: "GRU"}
PAGE = 4096  # oneDNN places each workspace part on its own page


# ---- scaled dot-product attention -------------------------------------------------------------


def _additive_mask(attn_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """`convert_boolean_attn_mask`: a boolean mask becomes 0 where kept, -inf where masked."""
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return attn_mask
    return torch.where(attn_mask.logical_not(), float("-inf"), 0.0).to(dtype)


def _needs_logsumexp(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


SdpaChooser = Callable[..., SDPBackend]


def sdpa_on(
    device: str,
    math: Callable[..., torch.Tensor],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """`F.scaled_dot_product_attention` as `device` runs it, on meta tensors; `math` is
    PyTorch's own function, which on meta takes the math path. In an AMP trace (autocast.py,
    where the CPU's autocast is on for either device) the inputs are first cast as autocast
    casts them: `scaled_dot_product_attention` is on both devices' lower-precision lists, and
    the kernel is chosen for the half inputs (flash or cuDNN on CUDA)."""
    if torch.is_autocast_enabled("cpu"):
        half = torch.get_autocast_dtype("cpu")
        q, k, v = (t.to(half) if t.is_floating_point() else t for t in (q, k, v))
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(half)
    choose: SdpaChooser = cpu_sdpa_backend if device == "cpu" else cuda_sdpa_backend
    backend = choose(q, k, v, attn_mask, dropout_p, is_causal, enable_gqa)
    if backend == SDPBackend.FLASH_ATTENTION and device == "cpu":
        mask = _additive_mask(attn_mask, q.dtype)
        out = aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, dropout_p, is_causal, attn_mask=mask, scale=scale
        )
        return out[0]
    if backend == SDPBackend.EFFICIENT_ATTENTION:
        mask = _additive_mask(attn_mask, q.dtype)
        out = aten._scaled_dot_product_efficient_attention(
            q, k, v, mask, _needs_logsumexp(q, k, v), dropout_p, is_causal, scale=scale
        )
        return out[0]
    if backend == SDPBackend.FLASH_ATTENTION:
        out = aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, scale=scale)
        return out[0]
    if backend == SDPBackend.CUDNN_ATTENTION:
        mask = _additive_mask(attn_mask, q.dtype)
        out = aten._scaled_dot_product_cudnn_attention(
            q, k, v, mask, _needs_logsumexp(q, k, v), dropout_p, is_causal, scale=scale
        )
        return out[0]
    return math(
        q,
        k,
        v,
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=enable_gqa,
    )


# ---- LSTM on oneDNN -------------------------------------------------------------------------


def packed_lstm_on_onednn(
    data: torch.Tensor,
    batch_sizes: torch.Tensor,
    hx: list[torch.Tensor],
    params: list[torch.Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A packed sequence of sequences all as long (devices.py's `packed_lstm_uses_onednn`):
    its data, viewed as the time-first batch, through `mkldnn_rnn`, the output flattened
    back (views, as the CPU's ops are)."""
    steps, batch = len(batch_sizes), int(batch_sizes[0])
    layers = (has_biases, num_layers, dropout, train, bidirectional)
    out, h, c = lstm_on_onednn(data.view(steps, batch, -1), hx, params, *layers, False)
    return out.view(steps * batch, -1), h, c


def lstm_on_onednn(
    input: torch.Tensor,
    hx: list[torch.Tensor],
    params: list[torch.Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`mkldnn_rnn` (aten/src/ATen/native/mkldnn/RNN.cpp), op for op, on meta tensors."""
    h0, c0 = hx
    # `input` (made time-first and contiguous) lives to the end, as the C++ variable does
    input = layer_input = (input.transpose(0, 1) if batch_first else input).contiguous()
    directions = 2 if bidirectional else 1
    per_layer = 4 if has_biases else 2
    hidden = h0.shape[2]
    hy, cy = [], []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            w = params[index * per_layer : (index + 1) * per_layer]
            b_ih, b_hh = (w[2], w[3]) if has_biases else (w[0].new_zeros(w[0].shape[0]),) * 2
            out, h, c, workspace = aten.mkldnn_rnn_layer(
                layer_input,
                w[0],
                w[1],
                b_ih,
                b_hh,
                h0[index],
                c0[index],
                direction > 0,
                [],
                LSTM_MODE,
                hidden,
                num_layers,
                has_biases,
                bidirectional,
                batch_first,
                train,
            )
            del workspace  # autograd keeps it where it must; C++ drops its tuple here
            outputs.append(out)
            hy.append(h)
            cy.append(c)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, -1)
        if dropout and train and layer < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, True)
    output = layer_input.transpose(0, 1) if batch_first else layer_input
    return output, torch.stack(hy), torch.stack(cy)


# ---- LSTM and GRU on cuDNN --------------------------------------------------------------------


def rnn_on_cudnn(mode: int) -> Callable[..., tuple[torch.Tensor, ...]]:
    """`torch._VF.lstm`/`torch._VF.gru` as CUDA runs them where `rnn_runs_cudnn` and the trace
    can follow (`cudnn_rnn_unpredicted`): RNN.cpp's `_cudnn_impl`, one `_cudnn_rnn` for all
    layers and directions, which `kernel_outputs` gives its reserve. Its weight buffer stands
    in empty: on the GPU it is the parameters' own storage (`flatten_parameters`), which
    autograd saves and nothing new holds."""

    def layers(
        input: torch.Tensor,
        hx: Any,
        params: list[torch.Tensor],
        has_biases: bool,
        num_layers: int,
        dropout: float,
        train: bool,
        bidirectional: bool,
        batch_first: bool,
    ) -> tuple[torch.Tensor, ...]:
        h0, c0 = hx if mode == CUDNN_LSTM else (hx, None)
        weight_buf = input.new_empty(0)
        out = aten._cudnn_rnn(
            input,
            params,
            4 if has_biases else 2,
            weight_buf,
            h0,
            c0,
            mode,
            h0.shape[2],
            0,
            num_layers,
            batch_first,
            dropout,
            train,
            bidirectional,
            [],
            None,
        )
        return (out[0], out[1], out[2]) if mode == CUDNN_LSTM else (out[0], out[1])

    return layers


def _cudnn_rnn_reserve_of(args: tuple[Any, ...]) -> torch.Tensor:
    """The reserve a training-mode `_cudnn_rnn` call returns (`cudnn_rnn_reserve`)."""
    input, mode, hidden, layers, batch_first = args[0], args[6], args[7], args[9], args[10]
    steps, batch = (input.shape[1], input.shape[0]) if batch_first else input.shape[:2]
    directions = 2 if args[13] else 1
    size = cudnn_rnn_reserve(mode, layers, directions, steps, batch, hidden, input.element_size())
    return torch.empty(size, dtype=torch.uint8, device=input.device)


def cudnn_rnn_backward_on_meta(*args: Any) -> tuple[Any, ...]:
    """`_cudnn_rnn_backward` for meta tensors (PyTorch has no meta kernel), as RNN.cpp's:
    refused for a call made in eval mode (a frozen-in-eval RNN in a training step fails on the
    GPU: "cudnn RNN backward can only be called in training mode"); the gradients of the
    input, h0 and c0 always (computed unconditionally, "because it mutates reserve"), the
    weights' where `output_mask[3]`, as views into one buffer of all the weights (`dw`). The
    zeros it makes inside for gradients that did not arrive, and cuDNN's workspace, are
    scratch, not estimated."""
    input, weights, hx, cx, train, output_mask = (
        args[0],
        args[1],
        args[4],
        args[5],
        args[16],
        args[-1],
    )
    if not train:
        raise RuntimeError("cudnn RNN backward can only be called in training mode")
    grad_weights = []
    if output_mask[3]:
        flat = input.new_empty(sum(w.numel() for w in weights))
        starts = itertools.accumulate((w.numel() for w in weights), initial=0)
        grad_weights = [
            flat[start : start + w.numel()].view(w.shape)
            for start, w in zip(starts, weights, strict=False)  # one start more than weights
        ]
    grad_cx = torch.empty_like(cx) if cx is not None else None
    return torch.empty_like(input), torch.empty_like(hx), grad_cx, grad_weights


def _linear_on_cpu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """`at::linear` of a 3-D input as it runs without a dispatch mode (ATen's Linear.cpp): a
    contiguous input is flattened into one `addmm`; another is multiplied, then the bias added
    in place. (Under any dispatch mode ATen adds the bias out of place, one more output-sized
    tensor, so the trace spells the CPU's path out.)"""
    if bias is not None and x.is_contiguous():
        flat = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight.t())
        return flat.view(*x.shape[:-1], weight.shape[0])
    out = torch.matmul(x, weight.t())
    return out if bias is None else out.add_(bias)


# One direction of one layer over a sequence: the step outputs and the final hidden state.
Steps = Callable[[Sequence[torch.Tensor], Any, list[torch.Tensor]], tuple[list[torch.Tensor], Any]]


def _with_one_hidden_state(steps: Steps) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """`_rnn_impl_with_concat` of RNN.cpp for the layers whose hidden state is one tensor
    (`gru`, `rnn_tanh`, `rnn_relu`, called as `torch._VF` calls them), with `steps` their
    cell: each layer's `FullLayer` (`FullBidirectionalLayer` for two directions) computes a
    direction's input projections for the whole sequence in one product when the input is
    on the CPU (on meta, one per step), then runs the cell with `pre_compute_input`."""

    def run(
        input: torch.Tensor,
        hx: torch.Tensor,
        params: list[torch.Tensor],
        has_biases: bool,
        num_layers: int,
        dropout: float,
        train: bool,
        bidirectional: bool,
        batch_first: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        per_cell = 4 if has_biases else 2
        output, finals = _layer_stack(
            input, list(hx.unbind(0)), params, per_cell, steps, num_layers, dropout, train,
            bidirectional, batch_first,
        )  # fmt: skip
        return output, torch.stack(finals, 0)

    return run


def rnn_on_cpu(activation: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    """`rnn_tanh`/`rnn_relu` as the CPU runs them: `SimpleCell`, whose step adds the hidden
    projection to the step's projected input in place, then applies `activation`
    (`at::tanh`, `at::relu`: a new tensor)."""

    def steps(
        inputs: Sequence[torch.Tensor], h: torch.Tensor, cell: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        w_hh, b_hh = cell[1], (cell[3] if len(cell) == 4 else None)
        outputs = []
        for step in inputs:
            h = activation(F.linear(h, w_hh, b_hh).add_(step))
            outputs.append(h)
        return outputs, h

    return _with_one_hidden_state(steps)


def lstm_on_cpu(
    input: torch.Tensor,
    hx: list[torch.Tensor],
    params: list[torch.Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`lstm` where the CPU does not take oneDNN (an LSTM with projections, `proj_size`):
    `_lstm_impl` of RNN.cpp, whose `FullLayer` projects the whole sequence's input at once on
    the CPU as for the GRU, then runs `LSTMCell` with `pre_compute_input`, op for op. Each
    cell of an LSTM with projections has a fifth weight (`w_hr`, a fourth without biases)."""
    h0, c0 = hx
    projections = h0.shape[-1] != c0.shape[-1]
    per_cell = (4 if has_biases else 2) + (1 if projections else 0)
    hiddens = list(zip(h0.unbind(0), c0.unbind(0), strict=True))
    output, finals = _layer_stack(
        input,
        hiddens,
        params,
        per_cell,
        _lstm_steps,
        num_layers,
        dropout,
        train,
        bidirectional,
        batch_first,
    )
    return output, torch.stack([h for h, _ in finals], 0), torch.stack([c for _, c in finals], 0)


def _layer_stack(
    input: torch.Tensor,
    hiddens: list[Any],
    params: list[torch.Tensor],
    per_cell: int,
    steps: Steps,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
) -> tuple[torch.Tensor, list[Any]]:
    """`apply_layer_stack` of RNN.cpp: the layers in turn, dropout between them in training."""
    x = input.transpose(0, 1) if batch_first else input
    cells = [params[i : i + per_cell] for i in range(0, len(params), per_cell)]
    directions = 2 if bidirectional else 1
    finals: list[Any] = []
    for layer in range(num_layers):
        first = layer * directions
        layer_cells = cells[first : first + directions]
        layer_hiddens = hiddens[first : first + directions]
        if bidirectional:
            x, layer_finals = _full_bidirectional_layer(x, layer_hiddens, layer_cells, steps)
        else:
            x, layer_finals = _full_layer(x, layer_hiddens[0], layer_cells[0], steps)
        finals += layer_finals
        if dropout and train and layer < num_layers - 1:
            x = F.dropout(x, dropout, True)
    return (x.transpose(0, 1) if batch_first else x), finals


def _full_layer(
    x: torch.Tensor, hidden: Any, cell: list[torch.Tensor], steps: Steps
) -> tuple[torch.Tensor, list[Any]]:
    """`FullLayer`: the projection (`inputs_w`) and the steps' outputs live until the outputs
    are stacked."""
    projection = _linear_on_cpu(x, cell[0], _bias_ih(cell))
    outputs, hidden = steps(projection.unbind(0), hidden, cell)
    return torch.stack(outputs, 0), [hidden]


def _full_bidirectional_layer(
    x: torch.Tensor, hiddens: Sequence[Any], cells: list[list[torch.Tensor]], steps: Steps
) -> tuple[torch.Tensor, list[Any]]:
    """`FullBidirectionalLayer`: the forward direction's outputs stacked; the reverse
    direction's projection made before the forward one is let go; the reverse projection and
    both directions' step outputs live until the two outputs are concatenated."""
    forward_cell, reverse_cell = cells
    projection = _linear_on_cpu(x, forward_cell[0], _bias_ih(forward_cell))
    forward_steps, forward_hidden = steps(projection.unbind(0), hiddens[0], forward_cell)
    forward_output = torch.stack(forward_steps, 0)
    projection = _linear_on_cpu(x, reverse_cell[0], _bias_ih(reverse_cell))
    reverse_steps, reverse_hidden = steps(projection.unbind(0)[::-1], hiddens[1], reverse_cell)
    reverse_output = torch.stack(reverse_steps[::-1], 0)
    return torch.cat([forward_output, reverse_output], -1), [forward_hidden, reverse_hidden]


def _bias_ih(cell: list[torch.Tensor]) -> torch.Tensor | None:
    """b_ih where the cell has biases: its third tensor (then b_hh, then an LSTM's w_hr)."""
    return cell[2] if len(cell) in (4, 5) else None


def _lstm_steps(
    steps: Sequence[torch.Tensor],
    hidden: tuple[torch.Tensor, torch.Tensor],
    cell: list[torch.Tensor],
) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """`LSTMCell` with `pre_compute_input` over each step's projected input: the hidden
    projection plus the step's, the gates activated in place, the new cell state, then the
    hidden state (projected by `w_hr` where the LSTM has projections); the step outputs (h)
    and the last (h, c)."""
    w_hh = cell[1]
    b_hh = cell[3] if len(cell) in (4, 5) else None
    w_hr = cell[-1] if len(cell) in (3, 5) else None
    h, c = hidden
    outputs = []
    for gates_in in steps:
        gates = F.linear(h, w_hh, b_hh).add_(gates_in)
        in_gate, forget_gate, cell_gate, out_gate = gates.unsafe_chunk(4, 1)
        in_gate, forget_gate = in_gate.sigmoid_(), forget_gate.sigmoid_()
        cell_gate, out_gate = cell_gate.tanh_(), out_gate.sigmoid_()
        c = (forget_gate * c).add_(in_gate * cell_gate)
        h = out_gate * c.tanh()
        if w_hr is not None:
            h = torch.matmul(h, w_hr.t())
        outputs.append(h)
        del gates, in_gate, forget_gate, cell_gate, out_gate  # C++ frees them here
    return outputs, (h, c)


def _gru_steps(
    steps: Sequence[torch.Tensor], h: torch.Tensor, cell: list[torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """`GRUCell` with `pre_compute_input` over each step's projected input: the hidden
    projection, then in-place gate arithmetic; the step outputs and the last hidden state."""
    w_hh, b_hh = cell[1], (cell[3] if len(cell) == 4 else None)
    outputs = []
    for gates_in in steps:
        i_r, i_z, i_n = gates_in.unsafe_chunk(3, 1)
        h_r, h_z, h_n = F.linear(h, w_hh, b_hh).unsafe_chunk(3, 1)
        reset = h_r.add_(i_r).sigmoid_()
        update = h_z.add_(i_z).sigmoid_()
        new = i_n.add(h_n.mul_(reset)).tanh_()
        h = (h - new).mul_(update).add_(new)
        outputs.append(h)
        del i_r, i_z, i_n, h_r, h_z, h_n, reset, update, new  # C++ frees them here
    return outputs, h


# `gru` as the CPU runs it: `GRUCell`, op for op (`_gru_steps`)
gru_on_cpu = _with_one_hidden_state(_gru_steps)


def _good_ld(dim: int, itemsize: int = 4) -> int:
    """oneDNN's `get_good_ld`: rounded up to 64 bytes, and not a multiple of 256 elements."""
    step = 64 // itemsize
    ld = -(-dim // step) * step
    return ld + step if ld % 256 == 0 else ld


def _keeps_workspace(args: tuple[Any, ...]) -> bool:
    """Whether a `mkldnn_rnn_layer` call keeps a workspace for backward: in train mode (its
    last argument) and with grad mode on (the CPU returns none under no_grad, a frozen LSTM
    in a training step); else it runs as in eval mode."""
    return bool(args[-1]) and torch.is_grad_enabled()


def _page(nbytes: int) -> int:
    return -(-nbytes // PAGE) * PAGE


def onednn_lstm_workspace(
    steps: int, batch: int, input_size: int, hidden: int, itemsize: int = 4
) -> int:
    """Bytes of the workspace oneDNN's LSTM forward keeps for backward, one layer and
    direction, for float32 (`itemsize` 4) or bfloat16 (2) cells: `set_workspace_sizes` and
    `set_offsets` (oneDNN src/cpu/rnn/rnn_utils.*; element types from ref_rnn.hpp), each part
    starting on a page of 4096 B, the end rounded up to a page. Parts, in order: gates
    (T·B·ld(4H)), ht (T·B·ld(H)), the layer states ((L+1)·(T+1)·B·ld(max(I, H)) with L = 1;
    the iteration states share their place), the cell states ((L+1)·(T+1)·B·H), all in the
    cell's dtype; then the gradients of the layer states, of the iteration states (each
    (L+1)·(T+1)·B·ld(max(I, H)) with ld for 4-byte elements) and of the cell states, in
    float32, the accumulation type of both. Checked against the workspace the CPU returned
    (tests/test_kernels.py; 207 shapes in each dtype when the bfloat16 rule was derived)."""
    acc = 4  # gemm_acc_t: float32 for float32 and bfloat16 cells
    states = 2 * (steps + 1) * batch
    width = max(input_size, hidden)
    parts = [  # (elements, bytes each), in set_offsets' order
        (steps * batch * _good_ld(4 * hidden, itemsize), itemsize),
        (steps * batch * _good_ld(hidden, itemsize), itemsize),
        (states * _good_ld(width, itemsize), itemsize),
        (states * hidden, itemsize),
        (states * _good_ld(width, acc), acc),
        (states * _good_ld(width, acc), acc),
        (states * hidden, acc),
    ]
    offset = 0
    for elements, size in parts:
        offset = _page(offset) + elements * size
    return _page(offset)


def kernel_outputs(func: Any, args: tuple[Any, ...], out: Any, device: str = "cpu") -> Any:
    """`out` with the sizes and dtypes `device`'s kernel gives where the meta or fake kernel
    does not know them: oneDNN's LSTM workspace and cuDNN's RNN reserve in training
    (PyTorch's meta kernels return empty ones), the statistics a normalization keeps for
    backward (norm_stats_dtype), a fold's storage (`_SLIDING_BLOCKS`) and an embedding bag's
    bookkeeping on the CPU."""
    if func is aten._cudnn_rnn.default and args[12]:  # train: a reserve for backward
        return (*out[:3], _cudnn_rnn_reserve_of(args), out[4])
    if func is aten.mkldnn_rnn_layer.default and _keeps_workspace(args):
        input, w_ih, hidden = args[0], args[1], args[10]
        steps, batch = input.shape[:2]  # time-first: `mkldnn_rnn` transposed a batch-first input
        size = onednn_lstm_workspace(steps, batch, w_ih.shape[1], hidden, input.element_size())
        workspace = torch.empty(size, dtype=torch.uint8, device=input.device)
        return (*out[:3], workspace)
    if func in _SLIDING_BLOCKS:
        return _in_input_sized_storage(args[0], out)
    if func in _EMBEDDING_BAGS and device == "cpu":
        return _embedding_bag_on_cpu(func, args, out)
    if func in _NORMS and isinstance(out, tuple) and len(out) == 3:
        dtype = norm_stats_dtype(args, device)
        stats = (s if s.dtype == dtype else torch.empty_like(s, dtype=dtype) for s in out[1:])
        return (out[0], *stats)
    return out


# `F.fold`/`F.unfold` (and each other's backward): CPU and CUDA allocate the output as
# `empty_like(input)` and resize it to its shape (aten/src/ATen/native/Col2Im.cpp, Im2Col.cpp,
# cuda/Col2Im.cu, cuda/Im2Col.cu), and a resize never shrinks a storage
_SLIDING_BLOCKS = frozenset({aten.col2im.default, aten.im2col.default})


def _in_input_sized_storage(input: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out` in a storage as large as `input` where that is larger: what a fold (whose
    output is smaller than its columns) holds until the output dies."""
    if input.numel() <= out.numel():
        return out
    return out.new_empty(input.numel()).as_strided(out.shape, out.stride())


_EMBEDDING_BAGS = frozenset({aten._embedding_bag.default, aten._embedding_bag_forward_only.default})


def _embedding_bag_on_cpu(func: Any, args: tuple[Any, ...], out: Any) -> Any:
    """`_embedding_bag_cpu_impl` (aten/src/ATen/native/EmbeddingBag.cpp): `offset2bag`
    (which bag each index is in) is made one longer than the indices and resized down, and
    not made at all for a sum over float, half or bfloat16 weights without a padding index
    (`is_fast_path`); `bag_size` is made as long as the offsets (one more than the bags with
    `include_last_offset`); `max_indices`, outside max mode, is a bag-sized tensor (meta: an
    empty one). Checked against the CPU's outputs in the tests."""
    weight, indices, offsets = args[:3]
    mode = args[4] if len(args) > 4 else 0
    weights = args[6] if len(args) > 6 else None
    last = bool(args[7]) if len(args) > 7 else False
    padding_idx = args[8] if len(args) > 8 else -1
    output, offset2bag, bag_size, max_indices = out
    bags = offsets.shape[0] - (1 if last else 0)
    if func is aten._embedding_bag_forward_only.default and mode == 0:
        bags = offsets.shape[0]  # `make_bag_size_out` without grad: the offsets' size
    fast_sum = (
        mode == 0
        and weight.dtype in (torch.float32, torch.float16, torch.bfloat16)
        and weight.stride(1) == 1
        and padding_idx < 0
        and (weights is None or weights.stride(0) == 1)
    )
    count = indices.shape[0]
    offset2bag = offset2bag.new_empty(0) if fast_sum else _held_in(count + 1, (count,), offset2bag)
    bag_size = _held_in(offsets.shape[0], (bags,), bag_size)
    shape = (bags, weight.shape[1]) if mode == 2 else (bags,)
    max_indices = _held_in(math.prod(shape), shape, max_indices)
    return output, offset2bag, bag_size, max_indices


def _held_in(elements: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor of `shape` in a storage of `elements` (a resize that shrank it)."""
    return like.new_empty(elements).as_strided(shape, torch.empty(shape, device="meta").stride())


_NORMS = frozenset(
    {
        aten.native_batch_norm.default,
        aten._native_batch_norm_legit.default,
        aten._native_batch_norm_legit.no_stats,
        aten.native_layer_norm.default,
        aten.native_group_norm.default,
    }
)


def norm_stats_dtype(args: tuple[Any, ...], device: str) -> torch.dtype:
    """The dtype of the mean and inverse deviation a normalization saves for backward. For an
    input of 16 bits: on the CPU, float32 where a parameter or running statistic is float32
    (AMP: BatchNorm's input in half, its weights float32: the "mixed type" of
    aten/src/ATen/native/batch_norm.cpp and layer_norm.cpp), else the input's dtype (checked
    against the CPU for batch, layer and group norm, bf16 and fp16 inputs); on CUDA, float32
    (the accumulate type), as PyTorch's meta kernels for batch and layer norm give it (not yet
    validated on a GPU). The meta and fake kernels disagree with each other and with the CPU
    here (meta: float32 for batch and layer norm, the input's dtype for group norm; fake:
    the input's dtype)."""
    input = args[0]
    if input.dtype not in (torch.float16, torch.bfloat16):
        return input.dtype
    if device == "cuda":
        return torch.float32
    params = [a for a in args[1:] if isinstance(a, torch.Tensor)]
    return torch.float32 if any(p.dtype == torch.float32 for p in params) else input.dtype


def cpu_outputs(
    func: Any, args: tuple[Any, ...], outputs: list[torch.Tensor]
) -> list[torch.Tensor]:
    """The outputs the CPU's kernel allocates. `torch.max_pool1d` on the CPU computes no
    indices where its input needs no gradient (`max_pool1d_impl`, aten/src/ATen/native/
    MaxPooling.cpp; the CPU allocator: the output alone), where meta runs it as
    `max_pool2d_with_indices`: its int64 indices are left out. (`max_pool2d` and `max_pool3d`
    compute theirs and drop them as the op returns: under inference_mode inside that one
    composite op.)"""
    if (
        func is aten.max_pool2d_with_indices.default
        and POOLING.running[-1:] == ["max_pool1d"]
        and not args[0].requires_grad
    ):
        return outputs[:1]
    return outputs


class _Pooling:
    """The `torch.max_poolNd` calls (which return no indices) running, innermost last
    (DeviceKernels keeps the list while a CPU step is traced)."""

    def __init__(self) -> None:
        self.running: list[str] = []


POOLING = _Pooling()


def _onednn_lstm_scratch(steps: int, batch: int, input_size: int, hidden: int) -> int:
    """What oneDNN's LSTM layer allocates and frees inside one call (measured with the CPU
    allocator, one call at a time): the two biases summed (4H), both weights reordered to
    oneDNN's gate layout (I·ld(4H) and H·ld(4H)), and its scratchpad, whose gate buffer is
    T·B·ld(4H) when oneDNN merges the time steps' GEMMs (batch < 128), B·ld(4H) otherwise.
    Not modelled: about 12.6 KiB more of scratchpad per call on this project's 2-core machine
    (per-thread GEMM buffers). Measured in float32; a bfloat16 layer is given the same figure
    (not measured)."""
    gates_ld = _good_ld(4 * hidden)
    merged = steps if batch < 128 else 1
    floats = 4 * hidden + (input_size + hidden) * gates_ld
    return 4 * floats + _page(4 * merged * batch * gates_ld)


def _onednn_lstm_inference_scratch(steps: int, batch: int, input_size: int, hidden: int) -> int:
    """The same in eval mode (no workspace: oneDNN keeps the states in its scratchpad), as
    measured at 13 shapes: the summed biases (4H); both weights in a layout of 128-wide gate
    blocks (I·⌈4H⌉₁₂₈ and H·⌈4H⌉₁₂₈); and a scratchpad of, each on its own page, the layer
    states (2·(T+1)·B·ld(max(I, H))), the cell states (2·(T+1)·B·H), one step's gates
    (B·ld(4H)) and hidden state (B·ld(H)). Exact at 12 of the 13 shapes but for about 4.8 KiB
    of per-thread buffers not modelled (one page more at batch 1)."""
    gate_blocks = -(-4 * hidden // 128) * 128
    weights = 4 * (4 * hidden + (input_size + hidden) * gate_blocks)
    states = 2 * (steps + 1) * batch
    parts = [
        states * _good_ld(max(input_size, hidden)),
        states * hidden,
        batch * _good_ld(4 * hidden),
        batch * _good_ld(hidden),
    ]
    offset = 0
    for part in parts:
        offset = _page(offset) + 4 * part
    return weights + _page(offset)


def kernel_scratch(func: Any, args: tuple[Any, ...], out: Any = None) -> int:
    """Bytes a CPU kernel allocates and frees inside itself, where we know them (oneDNN's LSTM
    layer and its backward; an unfold, whose input-sized output storage is grown to its
    output's size), else 0. Backward reorders the weights to the gradients' layout too where
    oneDNN pads their rows (ld(I) ≠ I or ld(H) ≠ H)."""
    if func in _SLIDING_BLOCKS:  # a storage grown by a resize: the old one during the copy
        input = args[0]
        grown = out is not None and out.numel() > input.numel()
        return input.numel() * input.element_size() if grown else 0
    if func not in (aten.mkldnn_rnn_layer.default, aten.mkldnn_rnn_layer_backward.default):
        return 0
    input, w_ih, w_hh = args[0], args[1], args[2]
    gates, input_size = w_ih.shape
    hidden = w_hh.shape[1]
    shape = (input.shape[0], input.shape[1], input_size, hidden)
    if func is aten.mkldnn_rnn_layer.default and not _keeps_workspace(args):
        return _onednn_lstm_inference_scratch(*shape)
    scratch = _onednn_lstm_scratch(*shape)
    if func is aten.mkldnn_rnn_layer_backward.default:
        for width in (input_size, hidden):
            scratch += 4 * gates * _good_ld(width) if _good_ld(width) != width else 0
    return scratch


# ---- while a step is traced -------------------------------------------------------------------


class DeviceKernels:
    """While tracing on meta, run attention, LSTM, GRU, pooling and GroupNorm as `device`
    ("cpu" or "cuda") would.

    The entry points are replaced for the duration of the block, where Python code finds
    them: `torch.nn.functional.scaled_dot_product_attention` (called by user code and by
    `F.multi_head_attention_forward`, a Python function a TorchFunctionMode could intercept
    but not look inside), `torch._VF.lstm`, `torch._VF.gru`, `torch._VF.rnn_tanh` and
    `torch._VF.rnn_relu` (what `nn.LSTM`, `nn.GRU` and `nn.RNN` call),
    `nn.TransformerEncoder.forward` (its nested path refused); for the
    CPU also `torch.max_pool1d/2d/3d` (noted in `POOLING`), `torch.group_norm` and the
    attention layers' inference fast paths (fastpath.py)."""

    def __init__(self, device: str) -> None:
        self.device = device
        # for CUDA, the recurrent calls cuDNN runs that the trace follows as the composite cell
        # (`cudnn_rnn_unpredicted`): "LSTM under autocast"
        self.unpredicted: set[str] = set()
        self._saved: dict[str, Any] = {}
        self._replaced = contextlib.ExitStack()  # put back in reverse when the block ends

    def __enter__(self) -> DeviceKernels:
        sdpa, lstm, gru = F.scaled_dot_product_attention, torch._VF.lstm, torch._VF.gru
        rnn_tanh, rnn_relu = torch._VF.rnn_tanh, torch._VF.rnn_relu
        self._saved = {"sdpa": sdpa}
        device = self.device

        def scaled_dot_product_attention(*args: Any, **kwargs: Any) -> torch.Tensor:
            with _whole_in_inference():
                return sdpa_on(device, sdpa, *args, **kwargs)

        def on_cudnn(mode: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            """The call run as cuDNN's RNN where CUDA would and the trace can follow it, else
            None; where it cannot, why, in `unpredicted`. `args` as `torch._VF` takes them:
            (input, hx or batch sizes, params, has_biases, num_layers, dropout, train, ...)."""
            if not rnn_runs_cudnn(device, args[0]):
                return None
            if (why := cudnn_rnn_unpredicted(args[0], args[1], *args[5:7])) is None:
                return rnn_on_cudnn(mode)(*args, **kwargs)
            self.unpredicted.add(f"{CUDNN_NAMES[mode]} {why}")
            return None

        def lstm_layers(*args: Any, **kwargs: Any) -> Any:
            with _whole_in_inference():
                if (out := on_cudnn(CUDNN_LSTM, args, kwargs)) is not None:
                    return out
                if lstm_uses_onednn(device, *args[:3]):
                    return lstm_on_onednn(*args, **kwargs)
                if isinstance(args[1], torch.Tensor) and packed_lstm_uses_onednn(device, *args[:4]):
                    return packed_lstm_on_onednn(*args, **kwargs)
                if rnn_runs_whole_sequence(device, args[1]):
                    return lstm_on_cpu(*args, **kwargs)
                return lstm(*args, **kwargs)

        def one_state_layers(
            original: Callable[..., Any], on_cpu: Callable[..., Any], cudnn_mode: int | None = None
        ) -> Callable[..., Any]:
            def layers(*args: Any, **kwargs: Any) -> Any:
                with _whole_in_inference():
                    if cudnn_mode and (out := on_cudnn(cudnn_mode, args, kwargs)) is not None:
                        return out
                    if not cudnn_mode and rnn_runs_cudnn(device, args[0]):
                        self.unpredicted.add("RNN (tanh or relu: its reserve not measured)")
                    if rnn_runs_whole_sequence(device, args[2]):
                        return on_cpu(*args, **kwargs)
                    return original(*args, **kwargs)

            return layers

        F.scaled_dot_product_attention = scaled_dot_product_attention
        torch._VF.lstm = lstm_layers
        torch._VF.gru = one_state_layers(gru, gru_on_cpu, CUDNN_GRU)
        torch._VF.rnn_tanh = one_state_layers(rnn_tanh, rnn_on_cpu(torch.tanh))
        torch._VF.rnn_relu = one_state_layers(rnn_relu, rnn_on_cpu(torch.relu))
        try:  # what is in place is put back if the rest cannot be
            self._replaced.enter_context(nested_packing_refused(device))
            self._replaced.enter_context(fused_on_meta())
            if device == "cuda":
                self._replaced.enter_context(cudnn_rnn_backward_meta())
            if device == "cpu":
                for name in _POOLS:
                    pool = _without_indices(name, getattr(torch, name))
                    self._replaced.enter_context(_replaced(torch, name, pool))
                group_norm = _group_norm_on_cpu(torch.group_norm)
                self._replaced.enter_context(_replaced(torch, "group_norm", group_norm))
                self._replaced.enter_context(cpu_fast_paths())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._replaced.close()
        F.scaled_dot_product_attention = self._saved["sdpa"]
        del torch._VF.lstm  # the instance attributes: torch._VF answers from torch._C again
        del torch._VF.gru
        del torch._VF.rnn_tanh
        del torch._VF.rnn_relu


# ops the CPU and CUDA run as one kernel of their own where meta has none and runs PyTorch's
# composite of other ops (native_functions.yaml: `CPU, CUDA: mish_backward` beside
# `CompositeImplicitAutograd: math_mish_backward`; the only such op both devices have)
FUSED_ON_DEVICE = ("mish_backward",)


@contextlib.contextmanager
def fused_on_meta() -> Iterator[None]:
    """While a step is traced: each op of FUSED_ON_DEVICE reaches the trace whole, as one op
    that allocates its output, as on the device (Mish's backward as a composite held its
    temporaries: a Linear-Mish model's training peak read 161% high). An autograd
    kernel for meta hands the op below autograd whole (PyTorch refuses a meta kernel for an
    op with a composite), where the trace's dispatch mode sees it and runs it: its parts
    then pass unseen, as the device's kernel makes no temporaries. Fake tensors (AMP) reach
    the trace whole already."""
    impls = [
        (n, _below_autograd(getattr(aten, n).default), "AutogradMeta") for n in FUSED_ON_DEVICE
    ]
    with aten_kernels(impls):
        yield


def cudnn_rnn_backward_meta() -> contextlib.AbstractContextManager[None]:
    """While a step for CUDA is traced: `_cudnn_rnn_backward` has a meta kernel."""
    return aten_kernels([("_cudnn_rnn_backward", cudnn_rnn_backward_on_meta, "Meta")])


@contextlib.contextmanager
def aten_kernels(impls: Iterable[tuple[str, Callable[..., Any], str]]) -> Iterator[None]:
    """Each (op name, kernel, dispatch key) of `impls` registered for aten while the block
    runs, PyTorch's own kernels in place again however it ends."""
    library = torch.library.Library("aten", "IMPL")
    try:
        for name, kernel, key in impls:
            library.impl(name, kernel, key)
        yield
    finally:
        library._destroy()


def _below_autograd(op: Any) -> Callable[..., Any]:
    def whole(*args: Any, **kwargs: Any) -> Any:
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args, **kwargs)

    return whole


def _whole_in_inference() -> contextlib.AbstractContextManager[None]:
    """An inference pass is measured under inference_mode, where an op PyTorch composes of
    others (`scaled_dot_product_attention`, `lstm`, `gru`) runs as one op: what it frees
    inside is no memory held between ops. The inference trace sees its steps (the stand-in
    runs them; a trace of the training step may run a frozen part under no_grad, where the
    ops stay apart)."""
    return one_op() if traced("inference") is True else contextlib.nullcontext()


@contextlib.contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """`owner.name` is `value` inside the block, its own again however the block ends."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


# what F.max_pool1d/2d/3d call where no indices are asked for (torch/nn/functional.py)
_POOLS = ("max_pool1d", "max_pool2d", "max_pool3d")


def _without_indices(name: str, pool: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def noted(*args: Any, **kwargs: Any) -> torch.Tensor:
        POOLING.running.append(name)
        try:
            return pool(*args, **kwargs)
        finally:
            POOLING.running.pop()

    return noted


def _group_norm_on_cpu(group_norm: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`torch.group_norm` as the CPU runs it (aten/src/ATen/native/group_norm.cpp): the CPU
    makes its input contiguous in the input's own suggested memory format, so a channels-last
    batch goes to `native_group_norm` as it is, where meta (as CUDA) copies it to NCHW first.
    Under autocast PyTorch's own path stays (its casts are registered on `group_norm`)."""

    def on_cpu(
        input: torch.Tensor,
        num_groups: int,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        eps: float = 1e-5,
        cudnn_enabled: bool = True,
    ) -> torch.Tensor:
        layout = _suggested_format(input)
        if layout is torch.contiguous_format or torch.is_autocast_enabled("cpu"):
            return group_norm(input, num_groups, weight, bias, eps, cudnn_enabled)
        with _whole_in_inference():  # its statistics are made and dropped inside
            x = input.contiguous(memory_format=layout)
            batch, channels = x.shape[:2]
            return torch.native_group_norm(
                x, weight, bias, batch, channels, x[0, 0].numel(), num_groups, eps
            )[0]

    return on_cpu


def _suggested_format(t: torch.Tensor) -> torch.memory_format:
    """`suggest_memory_format` for a 4-d or 5-d tensor: channels-last where its strides are
    (and it is not also contiguous the default way)."""
    layouts = {4: torch.channels_last, 5: torch.channels_last_3d}
    layout = layouts.get(t.dim())
    if layout is not None and t.is_contiguous(memory_format=layout) and not t.is_contiguous():
        return layout
    return torch.contiguous_format
