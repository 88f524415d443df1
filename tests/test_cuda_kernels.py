"""The kernels CUDA runs (nin_profile/engine/kernels.py) against a real GPU: issue 11's CUDA half.
Skipped without one.

First run on an H200 (torch 2.11, cuDNN 9.19, 2026-11-28: reports/nvidia-h200-logs/
cuda_tests.txt); what failed there was mended from its answers, not yet rerun on a GPU. They
hold `cuda_sdpa_backend`, the attention rules, to PyTorch's own answer on real CUDA tensors
(`torch._fused_sdp_choice`) over a grid of dtypes, head dims, layouts, masks and causality;
what a transformer block and the recurrent classifiers save to autograd's own count; their
peaks between ops to the worker's. cuDNN's RNN reserve is a formula fitted to what
bench/cuda_kernels.py recorded on that H200 (devices.py's `cudnn_rnn_reserve`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
import zoo_models
from test_cuda_precision import estimated_and_measured
from test_memory import step_saved_bytes
from test_precision import real_amp
from torch.nn.attention import SDPBackend

from nin_profile.engine.analysis import AnalysisConfig, analyse_model
from nin_profile.engine.kernels import cuda_sdpa_backend, kernel_outputs
from nin_profile.engine.training import make_batch
from nin_profile.measure.worker import Request

pytestmark = pytest.mark.cuda
BATCH = 512  # 16 tokens of 32 a row: the activations are megabytes, above the fixed costs
ATTENTION = ("sdpa_block", "mha_block")

# ---- the choice: ours on meta tensors, PyTorch's on CUDA tensors of the same layout --------

Layout = Callable[[int, int, int, int, torch.dtype, str], torch.Tensor]


def bhsd(b: int, h: int, s: int, d: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.empty(b, h, s, d, dtype=dtype, device=device)


def bshd(b: int, h: int, s: int, d: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.empty(b, s, h, d, dtype=dtype, device=device).transpose(1, 2)


def packed(
    b: int, h: int, s: int, d: int, dtype: torch.dtype, device: str
) -> tuple[torch.Tensor, ...]:
    """q, k and v of timm's Attention: one qkv projection reshaped (b, s, 3, h, d), permuted
    and unbound (k and v at their offsets in the one storage)."""
    qkv = torch.empty(b, s, 3, h, d, dtype=dtype, device=device)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


LAYOUTS: dict[str, Layout] = {"bhsd": bhsd, "bshd": bshd}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def qkv_of(
    layout: str,
    heads: tuple[int, int],
    tokens: tuple[int, int],
    d: int,
    dtype: torch.dtype,
    device: str,
) -> tuple[torch.Tensor, ...]:
    """q, k, v as a training step passes them (requiring grad: the kernels' rules differ)."""
    (hq, hkv), (sq, sk) = heads, tokens
    if layout == "packed":
        tensors = packed(2, hq, sq, d, dtype, device)
    else:
        make = LAYOUTS[layout]
        tensors = (
            make(2, hq, sq, d, dtype, device),
            *(make(2, hkv, sk, d, dtype, device) for _ in range(2)),
        )
    return tuple(t.detach().requires_grad_() for t in tensors)


def choices(dtype: torch.dtype) -> list[tuple[str, SDPBackend, SDPBackend]]:
    """(case, ours, PyTorch's) over head dims, layouts, masks, causality, dropout, GQA."""
    rows = []
    shapes = ((4, 4, 16, 16), (4, 2, 16, 16), (4, 4, 1, 16), (4, 4, 16, 1))  # heads, tokens
    grid = itertools.product(
        (6, 8, 64, 72, 128, 160, 192, 256, 320),  # head dims: not /4, /8 only, /64, over 256
        ("bhsd", "bshd", "packed"),
        ("none", "bool", "float"),
        (False, True),  # causal
        (0.0, 0.1),  # dropout
        shapes,
    )
    for d, layout, mask_kind, causal, dropout, (hq, hkv, sq, sk) in grid:
        if mask_kind != "none" and causal:
            continue  # SDPA refuses a mask together with is_causal
        if layout == "packed" and (hq != hkv or sq != sk):
            continue  # one projection: as many heads and tokens in q as in k and v
        tensors = {}
        for device in ("meta", "cuda"):
            q, k, v = qkv_of(layout, (hq, hkv), (sq, sk), d, dtype, device)
            mask = None
            if mask_kind == "bool":
                mask = torch.ones(sq, sk, dtype=torch.bool, device=device)
            elif mask_kind == "float":
                mask = torch.zeros(sq, sk, dtype=dtype, device=device)
            tensors[device] = (q, k, v, mask)
        gqa = hq != hkv
        ours = cuda_sdpa_backend(*tensors["meta"], dropout, causal, gqa)
        theirs = SDPBackend(
            torch._fused_sdp_choice(*tensors["cuda"], dropout, causal, enable_gqa=gqa)
        )
        case = f"d={d} {layout} mask={mask_kind} causal={causal} dropout={dropout}"
        case += f" heads={hq}/{hkv} tokens={sq}/{sk}"
        rows.append((case, ours, theirs))
    return rows


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_the_attention_kernel_is_the_one_pytorch_picks(dtype: torch.dtype) -> None:
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the rules are written for sm90 (H100, H200)")
    rows = choices(dtype)
    wrong = [
        f"{case}: ours {ours.name}, PyTorch {theirs.name}"
        for case, ours, theirs in rows
        if ours != theirs
    ]
    # what the rules depend on, for whoever fits them to this GPU's answers
    versions = f"cuDNN {torch.backends.cudnn.version()}, torch {torch.__version__}, "
    versions += f"priority order {torch._C._get_sdp_priority_order()}"
    assert not wrong, f"{len(wrong)} of {len(rows)} cases differ ({versions}):\n" + "\n".join(
        wrong[:60]
    )


# ---- what the block keeps, and its peaks --------------------------------------------------


def config(precision: str) -> AnalysisConfig:
    return AnalysisConfig(
        batch=BATCH,
        inputs=zoo_models.INPUTS,
        device="cuda",
        precision=precision,
    )


def zoo_peaks(name: str, precision: str, phase: str) -> tuple[int, int]:
    """The estimated and the worker's peak between ops of the zoo's `name` at BATCH."""
    request = Request(
        model=f"zoo_models:{name}",
        phase=phase,
        batch=BATCH,
        device="cuda",
        input_shape=zoo_models.INPUTS.shape,
        classes=zoo_models.CLASSES,
        warmup=2,
        iterations=3,
        precision=precision,
        per_layer=False,
    )
    return estimated_and_measured(f"zoo_models:{name}", request, config(precision))


def real_saved_bytes(name: str, precision: str) -> int:
    """What autograd saves in a real CUDA training step, each storage once, the model's own
    parameters and buffers left out."""
    torch.manual_seed(0)
    model = getattr(zoo_models, name)().cuda()
    x, y = make_batch(BATCH, zoo_models.INPUTS, zoo_models.CLASSES, "cuda")
    return step_saved_bytes(model, x, y, zoo_models.CLASSES, real_amp(precision, "cuda"))


@pytest.mark.parametrize("precision", ["fp32", "amp-fp16", "amp-bf16"])
@pytest.mark.parametrize("name", ATTENTION)
def test_attention_saved_bytes_are_within_2_percent(name: str, precision: str) -> None:
    est = analyse_model(f"zoo_models:{name}", config(precision)).activation_bytes_saved
    real = real_saved_bytes(name, precision)
    assert abs(est - real) <= 0.02 * real, (est, real)


@pytest.mark.usefixtures("worker_finds_the_zoo")
@pytest.mark.parametrize("phase", ["train", "inference"])
@pytest.mark.parametrize("precision", ["fp32", "amp-bf16"])
@pytest.mark.parametrize("name", ATTENTION)
def test_attention_peaks_between_ops_are_within_5_percent(
    name: str, precision: str, phase: str
) -> None:
    peak, measured = zoo_peaks(name, precision, phase)
    assert abs(peak - measured) <= 0.05 * measured, (peak, measured)


# ---- cuDNN's RNN: the reserve formula fitted to an H200's answers (2026-11-28) -----------------

RECURRENT = ("lstm", "gru", "bigru", "frozen_lstm", "frozen_gru")


@pytest.mark.parametrize("name", RECURRENT)
def test_recurrent_saved_bytes_are_within_1_percent(name: str) -> None:
    # lstm and gru were exact on the H200 that measured the formula; bigru (two directions)
    # and the frozen ones (no weight gradients) were not run then
    est = analyse_model(f"zoo_models:{name}", config("fp32")).activation_bytes_saved
    real = real_saved_bytes(name, "fp32")
    assert abs(est - real) <= 0.01 * real, (est, real)


@pytest.mark.usefixtures("worker_finds_the_zoo")
@pytest.mark.parametrize("phase", ["train", "inference"])
@pytest.mark.parametrize("name", ("lstm", "gru"))
def test_recurrent_peaks_between_ops_are_within_5_percent(name: str, phase: str) -> None:
    peak, measured = zoo_peaks(name, "fp32", phase)
    assert abs(peak - measured) <= 0.05 * measured, (peak, measured)


# ---- storage rules written from CUDA's source, checked on its kernels --------------------------

SLIDING = [  # (channels, kernel, side, stride, padding): fold smaller than its columns, and not
    (4, 3, 8, 1, 1),
    (4, 2, 8, 2, 0),
    (2, 4, 16, 4, 0),
]


@pytest.mark.parametrize(("channels", "kernel", "side", "stride", "padding"), SLIDING)
def test_fold_and_unfold_keep_the_storage_the_rule_says_on_cuda(
    channels: int, kernel: int, side: int, stride: int, padding: int
) -> None:
    # kernels.py's `_SLIDING_BLOCKS` (from cuda/Col2Im.cu, cuda/Im2Col.cu: the output made like
    # the input, then resized), for the device="cuda" trace
    blocks = ((side + 2 * padding - kernel) // stride + 1) ** 2
    columns = torch.randn(2, channels * kernel * kernel, blocks, device="cuda")
    image = torch.randn(2, channels, side, side, device="cuda")
    cases = [
        (torch.ops.aten.col2im.default, (columns, [side, side], [kernel] * 2, [1, 1])),
        (torch.ops.aten.im2col.default, (image, [kernel] * 2, [1, 1])),
    ]
    for op, head in cases:
        args = (*head, [padding] * 2, [stride] * 2)
        real = op(*args)
        on_meta = tuple(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args)
        ours = kernel_outputs(op, on_meta, op(*on_meta), device="cuda")
        assert ours.untyped_storage().nbytes() == real.untyped_storage().nbytes(), op
