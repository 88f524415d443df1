"""How each target device differs from the meta device a step is traced on: the rules, written
down in one place with the PyTorch source each follows (torch 2.13), the selection code here,
and for each rule applied elsewhere the function that applies it. What the selected kernels
keep, traced op for op, is in kernels.py and fastpath.py; `DeviceKernels` (kernels.py) puts
the selection in place while a step is traced.

Allocation and libraries (`DeviceRules`, one per device)
- Rounding: CUDA's caching allocator rounds every block up to 512 B
  (c10/cuda/CUDACachingAllocator.cpp, `kMinBlockSize`); the CPU allocates exactly. What CUDA
  reserves beyond that is allocator.py's simulation.
- Dropout: CUDA runs out-of-place train-mode dropout as `native_dropout`, which saves a
  1-byte bool mask; elsewhere dropout multiplies by a float noise tensor and saves it
  (aten/src/ATen/native/Dropout.cpp, `is_fused_kernel_acceptable`).
- Optimizers: torch.optim defaults to foreach kernels on CUDA and to per-tensor loops on the
  CPU (torch/optim/optimizer.py, `_default_to_fused_or_foreach`).
- cuBLAS and cuBLASLt workspaces, one per thread that runs a matrix product (`BLAS_OPS`) and
  per thread that runs `addmm` (`BLASLT_OPS`), held for the life of the process.
- The CPU's random-number state (`torch.get_rng_state()`, 5,056 B for the Mersenne twister),
  which activation checkpointing copies at each call and keeps until its recompute
  (torch/utils/checkpoint.py, `preserve_rng_state`), and which the recompute copies once more
  while it runs (`torch.random.fork_rng`, which forks nothing for meta, the device type
  checkpointing infers in the trace): CPU memory, counted for a CPU step only (tracing.py's
  `StepTracer`); CUDA's state is a CPU tensor too, not CUDA memory.
- Fused ops: `mish_backward` is one kernel on the CPU and CUDA, a composite of ten ops on
  meta (native_functions.yaml: `CPU, CUDA: mish_backward` beside `CompositeImplicitAutograd`;
  no other op is the CPU's and CUDA's own where meta has a composite): kernels.py's
  `fused_on_meta`.

Kernels, CPU
- SDPA: `select_sdp_backend_cpp` (aten/src/ATen/native/transformers/sdp_utils_cpp.cpp): the
  flash kernel (`_scaled_dot_product_flash_attention_for_cpu`, which keeps the output and a
  float32 logsumexp of batch × heads × queries) where `use_flash_attention_cpp` allows it (no
  dropout, 4-D dense inputs, equal head dims, last dim contiguous, float/double/bf16/half),
  else the math path, as on meta. The answer is PyTorch's own: `torch._fused_sdp_choice` asked
  on CPU tensors of the same sizes, last-dim stride and dtype, expanded from one row so that
  nothing of batch size is allocated. A boolean mask is first made an additive float mask
  (`convert_boolean_attn_mask` in aten/src/ATen/native/transformers/attention.cpp).
- LSTM: `lstm` in aten/src/ATen/native/RNN.cpp takes oneDNN when `use_mkldnn` holds (the
  input and weights on the CPU, float32 or, where this CPU has the kernels, bfloat16 (CPU
  autocast runs `mkldnn_rnn_layer` in bfloat16), oneDNN enabled, a non-empty input), but for
  an LSTM with projections (`proj_size`), which keeps the composite; `mkldnn_rnn` in
  aten/src/ATen/native/mkldnn/RNN.cpp then transposes a batch-first input to time-first
  (a contiguous copy), and calls `mkldnn_rnn_layer` once per layer and direction. In
  training, each call returns oneDNN's workspace, which backward needs: its size is
  kernels.py's `onednn_lstm_workspace` (PyTorch's meta kernel says 0). What a call allocates
  and frees inside itself (reordered weights, the scratchpad) is its `kernel_scratch`. An LSTM
  oneDNN does not take runs the composite as the GRU does (below: kernels.py's
  `lstm_on_cpu`). A packed sequence whose sequences are all as long goes to oneDNN as the
  time-first batch it is (`packed_lstm_uses_onednn`); other packed sequences keep the
  composite cell, as on meta.
- GRU: PyTorch 2.13 has no oneDNN path for it; the CPU runs the composite of RNN.cpp, which
  (`FullLayer` and `FullBidirectionalLayer`, when the input is on the CPU) projects the whole
  sequence's input in one product where meta projects it step by step: kernels.py's
  `gru_on_cpu` follows the CPU's order, and what each layer keeps alive until its outputs are
  stacked (`rnn_runs_whole_sequence`); `nn.RNN` (tanh, ReLU) likewise (`rnn_on_cpu`). A
  packed sequence keeps meta's order.
- Embedding bags: the CPU's `_embedding_bag` sizes its bookkeeping its own way
  (aten/src/ATen/native/EmbeddingBag.cpp: `make_offset2bag_out`, `make_bag_size_out`,
  `make_max_indices_out`): kernels.py's `_embedding_bag_on_cpu`.
- CPU tensors in a forward: a tensor the user's forward makes without `device=` is a CPU
  tensor; a CPU step computes with it, a CUDA step refuses it in arithmetic (PyTorch lets a
  0-dim one join any device; indexing takes CPU indices on any device). For the CPU an op
  that fails on the mix takes it as a meta tensor (tracing.py's `CpuTensorsJoinTheTrace`).
- One op: under inference_mode, where the worker measures an inference pass, an op PyTorch
  composes of others (a CompositeImplicitAutograd kernel: `linear`, `einsum`, `rms_norm`,
  `cosine_similarity`, `scaled_dot_product_attention`, `lstm`, ...) runs as one op, as do
  the fused fast paths. The inference trace runs under inference_mode too: StepTracer
  follows a composite's parts inside one op (memory.py's `one_op`), and so do the stand-ins
  for attention and RNN layers (kernels.py's `_whole_in_inference`), so that the estimate
  has a peak with what they hold inside and one between ops without it (an RMSNorm with a
  weight read 40% high between ops, a cosine similarity 110%).
- Max-pooling: `torch.max_pool1d` computes no int64 indices on the CPU where the input needs
  no gradient (aten/src/ATen/native/MaxPooling.cpp; meta runs `max_pool2d_with_indices`):
  kernels.py's `cpu_outputs` leaves them out. `max_pool2d`/`max_pool3d` compute theirs and
  drop them as the op returns: held for an instant in a training step, inside the one
  composite op under inference_mode ("One op" above). A call that asks for the indices
  (`return_indices=True`) keeps them.
- Sliding blocks: `F.fold`/`F.unfold` (`col2im`/`im2col`, each the other's backward) allocate
  their output as `empty_like(input)` on the CPU and CUDA alike (aten/src/ATen/native/
  Col2Im.cpp, Im2Col.cpp and their cuda/ twins) and resize it: a fold's output keeps a storage
  as large as its columns, an unfold's grows (on the CPU the old storage is scratch while it
  is copied): kernels.py's `kernel_outputs` and `kernel_scratch`. Meta allocates the output's
  size.
- Normalization: the dtype of the statistics a 16-bit normalization saves (float32 on the
  CPU where a parameter is float32, on CUDA always: kernels.py's `norm_stats_dtype`); under
  inference_mode the statistics `layer_norm`/`group_norm` make are made and dropped inside
  the one composite op ("One op" above; unchecked on CUDA).
- GroupNorm: `group_norm` (aten/src/ATen/native/group_norm.cpp) makes its input contiguous in
  the input's suggested memory format on the CPU (a channels-last batch is not copied), in
  NCHW elsewhere (meta, CUDA: a copy): kernels.py's `_group_norm_on_cpu`.
- Inference fast paths (traced in fastpath.py): in eval mode without autograd,
  `nn.MultiheadAttention` self-attention runs `_native_multi_head_attention` and
  `nn.TransformerEncoderLayer` runs `_transformer_encoder_layer_fwd` (PyTorch's own Python
  decides for the first, its device check told that meta is the CPU; for the second, whose
  check refuses the trace's hooks, `encoder_layer_takes_fast_path` repeats it), which on
  the CPU keep the whole T×T scores beside packed q, k, v instead of running the flash kernel:
  traced op for op from attention.cpp and transformer.cpp.

Kernels, CUDA (written from the source, checked on an H200 with torch 2.11, cuDNN 9.19)
- SDPA: `select_sdp_backend` (aten/src/ATen/native/transformers/cuda/sdp_utils.cpp) tries
  cuDNN, flash, memory-efficient, math in that order on sm90/sm100 with a recent cuDNN
  (`check_prefer_cudnn_attention`: the H200 answered priority order [cuDNN, flash, efficient,
  math]; flash first elsewhere). cuDNN and flash need fp16 or bf16
  (`check_dtypes_low_precision`); cuDNN's dense checks as the H200 answered them are in
  `_cudnn_allows` (tests/data/sdpa_choices_h200.csv holds its answers). Float32 attention runs
  the memory-efficient kernel where `can_use_mem_efficient_attention` allows it: 4-D dense
  inputs, the same batch and heads for
  q, k, v (no grouped-query attention), head dims divisible by 4 on sm80+ (float32 with
  tensor cores, `minimum_gemm_alignment`), last dim contiguous; else math. The efficient
  kernel keeps the output, a float32 logsumexp of batch × heads × queries rounded up to 32
  (when an input requires grad), and two int64 RNG scalars. Not modelled: the copy of an
  attention mask padded to a multiple of 16 (`preprocess_mask`), and the head-dim padding the
  flash kernel applies to fp16/bf16 inputs.
- LSTM/GRU: `_cudnn_rnn` (aten/src/ATen/native/cudnn/RNN.cpp), whose reserve (what backward
  needs) is cuDNN's `cudnnGetRNNTrainingReserveSize`: a formula fitted to an H200's answers
  (`cudnn_rnn_reserve`), traced where it was measured (`cudnn_rnn_unpredicted`); autograd keeps the
  input, h0 and c0, the output and the reserve (the flat weights are the parameters, which
  `flatten_parameters` put in one buffer when the module moved to the GPU). The zoo's LSTM and
  GRU classifiers at batch 512: what autograd saved in a real step on the H200, 14,442,756 and
  16,408,836 B, to the byte. Elsewhere (projections, packed sequences, dropout, bfloat16,
  AMP; `nn.RNN`, whose reserve was not measured) the composite cell stands in and a note
  names the model and layer (`cudnn_rnn_unpredicted`). The workspace cuDNN takes inside a
  call is scratch, not estimated; `nn.LSTMCell`'s fused CUDA kernel is not modelled.
- Inference fast paths: not traced; the slow path stands in (CUDA's native attention runs
  in-projection, SDPA and out-projection, as the slow path does, where no weights are asked
  for and the head dim is a multiple of 8; otherwise it keeps the scores as the CPU's does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend
from torch.utils._python_dispatch import _disable_current_modes

from nin_profile.engine.memory import round_up

# ---- allocation and libraries -------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceRules:
    """How the target device differs from the meta device the step is traced on.

    block_bytes: the allocator's rounding (CUDA's caching allocator: 512 B; CPU: exact).
    fused_dropout: CUDA runs out-of-place train-mode dropout as `native_dropout`, saving a
    1-byte bool mask; elsewhere dropout multiplies by a float noise tensor and saves it.
    foreach_optimizer: torch.optim defaults to foreach kernels on CUDA, per-tensor loops on CPU.
    blas_workspace, blaslt_workspace: what torch allocates, through the caching allocator, for
    the cuBLAS handle of each thread that runs a matrix product, and for the cuBLASLt handle of
    each thread that runs `addmm` (a linear layer with bias); held for the life of the process.
    On CUDA, backward runs on autograd's device thread, forward on the caller's: a model with
    linear layers holds one workspace per thread in training. The sizes are torch's on Hopper,
    read off an H100 with torch 2.11 (bench/memory_snapshot.py: two 32 MiB blocks and one of
    1 MiB held after a training step; one 32 MiB and one 1 MiB block after inference); torch
    gives other GPUs smaller ones (`CUBLAS_WORKSPACE_CONFIG` sets them).
    """

    name: str
    block_bytes: int
    fused_dropout: bool
    foreach_optimizer: bool
    blas_workspace: int = 0
    blaslt_workspace: int = 0


DEVICE_RULES = {
    "cuda": DeviceRules(
        "cuda",
        block_bytes=512,
        fused_dropout=True,
        foreach_optimizer=True,
        blas_workspace=32 * 2**20,
        blaslt_workspace=2**20,
    ),
    "cpu": DeviceRules("cpu", block_bytes=1, fused_dropout=False, foreach_optimizer=False),
}

# Matrix products that run through cuBLAS on CUDA; `addmm` runs through cuBLASLt as well.
BLAS_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "dot"})
BLASLT_OPS = frozenset({"addmm"})


def workspace_size(rules: DeviceRules, library: str) -> int:
    """Bytes of one `library` workspace ("cuBLAS" or "cuBLASLt") on `rules`' device."""
    return {"cuBLAS": rules.blas_workspace, "cuBLASLt": rules.blaslt_workspace}[library]


def workspace_sizes(rules: DeviceRules, blas_users: set[tuple[str, str]]) -> list[int]:
    """The library workspaces a step holds on `rules`' device: one per (thread, library) used."""
    sizes = (workspace_size(rules, library) for _, library in sorted(blas_users))
    return [size for size in sizes if size]


# ---- scaled dot-product attention ---------------------------------------------------------------


def _cpu_like(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor with `t`'s sizes, dtype and last-dim stride, one row of storage."""
    last = t.stride(-1) if t.dim() else 1
    row = torch.zeros(max(1, (t.shape[-1] - 1) * last + 1), dtype=t.dtype)
    return row.as_strided((t.shape[-1],), (last,)).expand(t.shape)


def cpu_sdpa_backend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    enable_gqa: bool,
) -> SDPBackend:
    """The kernel the CPU runs for these inputs, as PyTorch's own selection answers (asked on
    real CPU tensors, outside the trace's modes)."""
    with _disable_current_modes():
        mask = None if attn_mask is None else _cpu_like(attn_mask)
        choice = torch._fused_sdp_choice(
            _cpu_like(q),
            _cpu_like(k),
            _cpu_like(v),
            mask,
            dropout_p,
            is_causal,
            enable_gqa=enable_gqa,
        )
    return SDPBackend(choice)


def cuda_sdpa_backend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    enable_gqa: bool,
) -> SDPBackend:
    """The kernel CUDA would run on sm90 (an H100), following `select_sdp_backend`."""
    dense = all(t.dim() == 4 and t.stride(-1) == 1 for t in (q, k, v))
    low_precision = q.dtype in (torch.float16, torch.bfloat16)
    if not dense:
        return SDPBackend.MATH
    same_heads = q.shape[:2] == k.shape[:2] == v.shape[:2]
    head_dims = q.shape[-1], k.shape[-1], v.shape[-1]
    grouped = enable_gqa and q.shape[0] == k.shape[0] == v.shape[0] and _groups(q, k, v)
    if low_precision and (same_heads or grouped) and _cudnn_allows(q, k, v, dropout_p):
        return SDPBackend.CUDNN_ATTENTION
    causal_non_square = is_causal and q.shape[-2] != k.shape[-2]
    flash_dims = len(set(head_dims)) == 1 and head_dims[0] <= 256
    if low_precision and attn_mask is None and flash_dims and not causal_non_square:
        return SDPBackend.FLASH_ATTENTION
    alignment = 8 if low_precision else 4  # minimum_gemm_alignment on sm80+
    if (
        q.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and same_heads  # no grouped-query attention
        and q.shape[-1] == k.shape[-1]
        and q.shape[-1] % alignment == 0
        and v.shape[-1] % alignment == 0
        and min(q.shape[-2], k.shape[-2]) > 0
    ):
        return SDPBackend.EFFICIENT_ATTENTION
    return SDPBackend.MATH


def _groups(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """`check_grouped_query_attention`: key and value have as many heads, a divisor of the
    query's."""
    return k.shape[1] == v.shape[1] and q.shape[1] % k.shape[1] == 0


def _cudnn_allows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> bool:
    """`can_use_cudnn_attention`'s dense checks on sm90 with cuDNN 9.19, as torch 2.11
    answered on an H200 (2026-11-28): head dims multiples of 8 and at most 256, no key sequence
    of length 1, no query of length 1 with dropout, batch and heads at most 65535; masks,
    causality, grouped-query heads and any layout with a contiguous last dim allowed
    (contiguous q, k, v of shape (batch, heads, tokens, dim) ran on cuDNN: no
    `check_cudnn_layout`). PyTorch's main branch since lowers the head-dim limit to 128 where
    cuDNN is 9.22 or older (192 for q and k with 128 for v), and refuses a dropout that is not
    a multiple of 1/16."""
    d_qk, d_v, s_q, s_k = q.shape[-1], v.shape[-1], q.shape[-2], k.shape[-2]
    return (
        d_qk <= 256
        and d_v <= 256
        and d_qk % 8 == 0
        and d_v % 8 == 0
        and s_k != 1
        and not (s_q == 1 and dropout_p)
        and max(q.shape[0], q.shape[1]) <= 65535
    )


# ---- recurrent layers on the CPU ----------------------------------------------------------------


def lstm_uses_onednn(
    device: str, input: torch.Tensor, hx: object, params: list[torch.Tensor]
) -> bool:
    """For `torch._VF.lstm(input, hx, params, ...)`: `use_mkldnn` of aten/src/ATen/native/RNN.cpp
    on the CPU, and `lstm` there, which runs the composite anyway for an LSTM with projections
    (`proj_size`: h is narrower than c; "LSTM with projections is not supported with
    oneDNN"). A packed sequence's call passes its batch sizes, a tensor, where `hx` is."""
    if device != "cpu" or not isinstance(hx, (list, tuple)):
        return False
    h0, c0 = hx
    return (
        torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
        and _onednn_takes(input.dtype)
        and input.numel() > 0
        and all(p.dim() <= 2 for p in params)
        and h0.shape[-1] == c0.shape[-1]
    )


def packed_lstm_uses_onednn(
    device: str,
    data: torch.Tensor,
    batch_sizes: torch.Tensor,
    hx: object,
    params: list[torch.Tensor],
) -> bool:
    """For a packed sequence's `torch._VF.lstm(data, batch_sizes, hx, params, ...)`: torch
    2.13's CPU runs oneDNN's layer, as for a padded batch, where every sequence has the same
    length (its batch sizes all equal: `data` is then the time-first batch, flattened), and
    the composite packed cell otherwise (seen on the CPU: `mkldnn_rnn_layer` for lengths
    12, 12, 12, 12; `sigmoid_` for 12, 11, 10, 9 and 12, 12, 12, 5). The batch sizes are a
    CPU tensor, with their values, in the trace too."""
    sizes = batch_sizes.tolist()
    return len(set(sizes)) == 1 and lstm_uses_onednn(device, data, hx, params)


def _onednn_takes(dtype: torch.dtype) -> bool:
    """`use_mkldnn`'s dtypes: float32; bfloat16 where this CPU has oneDNN's bfloat16 kernels
    (`mkldnn_bf16_device_check`: AVX-512 and newer); float16 likewise, and only without
    grad mode. The CPU asked is this machine's: the one `--device cpu` measures."""
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return not torch.is_grad_enabled() and bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return dtype == torch.float32


def rnn_runs_whole_sequence(device: str, hx_or_params: object) -> bool:
    """For `torch._VF.gru` and, where oneDNN does not take it, `torch._VF.lstm`: the CPU
    projects a whole sequence's input at once (RNN.cpp's `FullLayer`), where the call is not a
    packed sequence's (whose argument there is `hx`, a tensor, where the unpacked call's is
    the list of weights: the GRU's third argument, the LSTM's second, its hx, a list)."""
    return device == "cpu" and isinstance(hx_or_params, (list, tuple))


# ---- recurrent layers on CUDA -------------------------------------------------------------------

# cuDNN's RNN modes (cudnnRNNMode_t, as `_cudnn_rnn` takes them) and, for each, what its reserve
# keeps per layer, direction, step, example and hidden unit, in hidden states (see below)
CUDNN_LSTM, CUDNN_GRU = 2, 3
_RESERVE_STATES = {CUDNN_LSTM: 5, CUDNN_GRU: 6}


def rnn_runs_cudnn(device: str, input: object) -> bool:
    """For `torch._VF.lstm`, `torch._VF.gru` and `torch._VF.rnn_tanh/relu` in a step for CUDA:
    `use_cudnn` of aten/src/ATen/native/RNN.cpp (a CUDA input cuDNN accepts, cuDNN enabled)
    sends them to `_cudnn_rnn`. The trace follows it for LSTM and GRU calls of the kinds its
    reserve was measured for (`cudnn_rnn_reserve`; sizes beyond that grid follow the formula
    unmeasured); `cudnn_rnn_unpredicted` names the others, where it keeps the composite cell.
    cuDNN's workspace inside a call (8-140 MB on the H200) is scratch, not estimated, like a
    convolution's."""
    return (
        device == "cuda"
        and bool(torch.backends.cudnn.enabled)
        and isinstance(input, torch.Tensor)
        and input.numel() > 0
    )


def cudnn_rnn_unpredicted(
    input: torch.Tensor, hx: object, dropout: float, train: bool
) -> str | None:
    """Why a call CUDA runs on cuDNN is not traced as cuDNN's (its reserve not measured for
    it), in words; None where it is: a padded batch (a packed sequence's call passes its
    batch sizes, a 1-D tensor, where `hx` is), float32 or float16, no projections (h0 as wide
    as c0), no dropout between layers in training, not under autocast (which re-flattens the
    weights into a 16-bit copy: `_cudnn_rnn_cast_reflatten`)."""
    if isinstance(hx, torch.Tensor) and hx.dim() == 1:
        return "over a packed sequence"
    states = tuple(hx) if isinstance(hx, (list, tuple)) else (hx,)
    if torch.is_autocast_enabled("cuda"):
        return "under autocast"
    if input.dtype not in (torch.float32, torch.float16):
        return f"in {str(input.dtype).removeprefix('torch.')}"
    if len({s.shape[-1] for s in states if isinstance(s, torch.Tensor)}) > 1:
        return "with projections"
    if dropout and train:
        return "with dropout between layers"
    return None


def cudnn_rnn_reserve(
    mode: int, layers: int, directions: int, steps: int, batch: int, hidden: int, itemsize: int
) -> int:
    """Bytes of the reserve `_cudnn_rnn` keeps for backward in training (what
    `cudnnGetRNNTrainingReserveSize` answers; PyTorch's meta kernel returns an empty one).
    Measured on an H200 with cuDNN 9.19 (bench/cuda_kernels.py, 2026-11-28; 864 shapes: LSTM
    and GRU, 1-2 layers and directions, 1-100 steps, batch 1-64, input 32-100, hidden
    32-256, float32 and float16) and equal to, on every one:
    ⌈s·L·D·T·N·H·b⌉₃₂ + ⌈(L−1)·D·T·N·H·b⌉₃₂ + 256, with b the element's bytes, ⌈·⌉₃₂ rounded up
    to 32 bytes, and s = 5 hidden states a unit for an LSTM (its four gates and the cell
    state), 6 for a GRU: each layer's gates for every step, and the outputs of all but the
    last layer (the next layer's input). Not measured, so not predicted: projections, packed
    sequences, dropout, bfloat16, the RNN_TANH/RELU modes."""
    unit = directions * steps * batch * hidden * itemsize
    states = _RESERVE_STATES[mode] * layers * unit
    return round_up(states, 32) + round_up((layers - 1) * unit, 32) + 256


# ---- inference fast paths on the CPU ------------------------------------------------------------


def encoder_layer_takes_fast_path(
    layer: nn.TransformerEncoderLayer,
    src: torch.Tensor,
    src_mask: torch.Tensor | None,
    src_key_padding_mask: torch.Tensor | None,
) -> bool:
    """The conditions of `nn.TransformerEncoderLayer.forward` (torch/nn/modules/transformer.py)
    for `_transformer_encoder_layer_fwd`, but for the three a trace fails by its nature: the
    device (meta), forward hooks (the trace's own) and a torch function on the arguments."""
    attn = layer.self_attn
    tensors = (
        src,
        *(attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias),
        *(layer.norm1.weight, layer.norm1.bias, layer.norm2.weight, layer.norm2.bias),
        *(layer.linear1.weight, layer.linear1.bias, layer.linear2.weight, layer.linear2.bias),
    )
    return (
        torch.backends.mha.get_fastpath_enabled()
        and src.dim() == 3
        and not layer.training
        and attn.batch_first
        and attn.in_proj_bias is not None
        and attn._qkv_same_embed_dim
        and bool(layer.activation_relu_or_gelu)
        and layer.norm1.eps == layer.norm2.eps
        and not (src.is_nested and (src_mask is not None or src_key_padding_mask is not None))
        and attn.num_heads % 2 == 0
        and not torch.is_autocast_enabled()
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    )


def encoder_may_pack_nested(
    encoder: nn.TransformerEncoder,
    src: torch.Tensor,
    mask: torch.Tensor | None,
    src_key_padding_mask: torch.Tensor | None,
    cuda_autocast: bool,
) -> bool:
    """Whether `nn.TransformerEncoder.forward` (torch/nn/modules/transformer.py) may pack its
    batch into a nested tensor on the CPU or CUDA, which keeps each sequence only as long as
    its padding mask leaves it: sized by the mask's values, not its shape. Its conditions but
    the device (meta passes here, as the CPU would), a torch function on the arguments, and
    `mask_check`'s test that the padding is at the end (a question of values too). The
    autocast it asks about is CUDA's (`torch.is_autocast_enabled()`), on for a CUDA AMP run
    only: under the CPU's autocast the CPU run packs too."""
    first = encoder.layers[0]
    attn = first.self_attn
    tensors = (
        src,
        *(attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight, attn.out_proj.bias),
        *(first.norm1.weight, first.norm1.bias, first.norm2.weight, first.norm2.bias),
        *(first.linear1.weight, first.linear1.bias, first.linear2.weight, first.linear2.bias),
    )
    return (
        torch.backends.mha.get_fastpath_enabled()
        and bool(getattr(encoder, "use_nested_tensor", False))
        and not first.training
        and src.dim() == 3
        and src_key_padding_mask is not None
        and not src.is_nested
        and mask is None
        and not cuda_autocast
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    )
