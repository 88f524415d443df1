"""Every model of the zoo (tests/zoo_models.py) against oracles computed on real CPU tensors:
its parameter count, FLOPs from FlopCounterMode (grouped convolutions split into one-group
convolutions, attention on the math path, where PyTorch's formulas are right), what autograd
saves (each storage once) and the CPU allocator's training peak between ops."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
import zoo_models
from test_kernels import real_train_peak
from test_memory import autograd_saved_bytes
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nin_profile.engine.analysis import AnalysisConfig, analyse_model
from nin_profile.engine.training import TrainingLoss, make_batch, make_optimizer, training_step
from nin_profile.measure.cpu_memory import cpu_peak_between_dispatched_ops, cpu_peak_between_ops
from nin_profile.results import ModelProfile

BATCH = 4
# the models the zoo builds; `instance` is one object shared with other tests
MODELS = [name for name in zoo_models.ZOO if name != "instance"]
ATTENTION = {"sdpa_block", "mha_block"}
SEQUENCE_MODELS = {*ATTENTION, "lstm", "projected_lstm", "rnn_relu", "gru", "bigru"}
SEQUENCE_MODELS |= {"packed_lstm", "packed_lstm_ragged"}


def profile(name: str) -> ModelProfile:
    cfg = AnalysisConfig(batch=BATCH, inputs=zoo_models.INPUTS, device="cpu")
    return analyse_model(f"zoo_models:{name}", cfg)


def real(name: str) -> nn.Module:
    torch.manual_seed(0)
    built: nn.Module = getattr(zoo_models, name)()
    return built.train()


class OneGroupEach(nn.Module):
    """A grouped convolution as `groups` convolutions of one group, with the same weights."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, parts = self.conv, self.conv.groups
        biases = c.bias.chunk(parts) if c.bias is not None else [None] * parts
        outputs = [
            nn.functional.conv2d(xi, w, b, c.stride, c.padding, c.dilation)
            for xi, w, b in zip(x.chunk(parts, 1), c.weight.chunk(parts, 0), biases, strict=True)
        ]
        return torch.cat(outputs, 1)


def one_group_each(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, nn.Conv2d) and child.groups > 1:
            setattr(model, name, OneGroupEach(child))
        else:
            one_group_each(child)
    return model


@contextlib.contextmanager
def onednn_off() -> Iterator[None]:
    """Without oneDNN (torch.backends.mkldnn.flags would also set its TF32 flag, and warn)."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def oracle_flops(name: str, classes: int | None) -> tuple[int, int]:
    """FlopCounterMode over a real training step of the model decomposed where PyTorch's
    formulas are wrong or missing: grouped convolutions split, attention on the math path,
    the LSTM on its composite cell (oneDNN off)."""
    model = one_group_each(real(name))
    x, y = make_batch(BATCH, zoo_models.INPUTS, zoo_models.CLASSES, "cpu")
    with sdpa_kernel(SDPBackend.MATH), onednn_off():
        with FlopCounterMode(display=False) as forward:
            loss = TrainingLoss(classes)(model(x), y)
        with FlopCounterMode(display=False) as backward:
            loss.backward()
    return forward.get_total_flops(), backward.get_total_flops()


@pytest.mark.parametrize("name", MODELS)
def test_parameters_match_the_real_model(name: str) -> None:
    model = real(name)
    ours = profile(name)
    assert ours.params == sum(p.numel() for p in model.parameters())
    assert ours.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", MODELS)
def test_flops_match_flopcountermode_on_the_decomposed_model(name: str) -> None:
    ours = profile(name)
    forward, backward = oracle_flops(name, ours.classes)
    assert ours.flops_forward == forward
    if name in ATTENTION:
        # the CPU's flash backward recomputes Q·Kᵀ (a fifth product); the math path keeps the
        # scores: one more 2·4·4·16·16·8 = 65_536 FLOPs (4 examples, 4 heads, 16 tokens, dim 8)
        backward += 2 * BATCH * 4 * 16 * 16 * 8
    if name in ("lstm", "packed_lstm"):
        # oneDNN computes the gradients the composite cell skips: the first layer's input's
        # (the image needs none), 2·T·B·4H·I = 2·16·4·128·48 = 786_432 FLOPs, and each layer's
        # initial hidden state's (zeros), 2·B·4H·H = 2·4·128·32 = 32_768 FLOPs per layer (two
        # layers for `lstm`, one for the packed sequence of sequences all as long)
        layers = 2 if name == "lstm" else 1
        backward += 2 * 16 * BATCH * 4 * 32 * 48 + layers * (2 * BATCH * 4 * 32 * 32)
    assert ours.flops_backward == backward


@pytest.mark.parametrize("name", MODELS)
def test_saved_bytes_match_what_autograd_saves(name: str) -> None:
    ours = profile(name)
    x, y = make_batch(BATCH, zoo_models.INPUTS, zoo_models.CLASSES, "cpu")
    saved = autograd_saved_bytes(real(name), x, y, TrainingLoss(ours.classes))
    assert ours.activation_bytes_saved == saved


def test_frozen_backbone_saves_nothing_for_its_frozen_layers() -> None:
    # only the head trains: the backbone's conv needs no weight gradient and its input none,
    # so nothing below the Flatten is saved; the head saves its input, 4·16·8·8 floats
    layers = {layer.name: layer for layer in profile("frozen_backbone").layers}
    assert layers["0.0"].flops_backward == 0 and layers["0.0"].saved_bytes == 0
    assert layers["2"].saved_bytes == BATCH * 16 * 8 * 8 * 4 == 16_384


def test_a_shared_module_counts_its_parameters_once_and_its_flops_twice() -> None:
    # 8→8 3×3 conv applied twice to 16×16 maps: 8*8*9 + 8 = 584 parameters, once;
    # 2·4·8·16·16·8·9 = 1_179_648 FLOPs per call, two calls
    row = {layer.name: layer for layer in profile("SharedTwice").layers}["shared"]
    assert row.params == 584 and row.calls == 2
    assert row.flops_forward == 2 * 1_179_648


def real_peak_between_ops(model: nn.Module, classes: int | None, dispatched: bool = False) -> int:
    """The CPU allocator's peak over a steady training step without the scratch a kernel frees
    inside its op (CPU convolutions' im2col columns and oneDNN reorders, which no trace of
    tensors sees), with what the step started with. An op: an outermost aten op of the
    profile, or with `dispatched` each op a dispatch mode sees, as the worker measures it."""
    x, y = make_batch(BATCH, zoo_models.INPUTS, zoo_models.CLASSES, "cpu")
    loss_fn, opt = TrainingLoss(classes), make_optimizer("sgd", model.parameters())
    training_step(model, loss_fn, opt, x, y)
    opt.zero_grad(set_to_none=True)
    start = sum(t.untyped_storage().nbytes() for t in [*model.parameters(), x, y])

    def step() -> None:
        training_step(model, loss_fn, opt, x, y)

    if dispatched:
        return start + cpu_peak_between_dispatched_ops(step).peak
    return start + cpu_peak_between_ops(step)


def real_inference_peak_between_ops(model: nn.Module) -> int:
    """The same for a forward in eval mode under inference_mode, as the worker runs it."""
    x, _ = make_batch(BATCH, zoo_models.INPUTS, zoo_models.CLASSES, "cpu")
    model.eval()
    start = sum(t.untyped_storage().nbytes() for t in [*model.parameters(), x])
    with torch.inference_mode():
        return start + cpu_peak_between_ops(lambda: model(x))


@pytest.mark.parametrize("name", ["Checkpointed", "checkpointed_reentrant"])
def test_checkpointing_holds_the_cpu_rng_states_as_the_cpu_does(name: str) -> None:
    # each checkpoint copies the CPU RNG state (5,056 B) in forward, and its recompute forks
    # the RNG again (one more state while it runs): both CPU memory, in the CPU's step exactly
    ours = profile(name)
    assert ours.train.peak == real_peak_between_ops(real(name), ours.classes)


@pytest.mark.parametrize(
    ("name", "recomputed"), [("Checkpointed", 1), ("checkpointed_reentrant", 2)]
)
def test_a_recomputed_forward_is_charged_to_its_own_layers(name: str, recomputed: int) -> None:
    # an 8→8 3×3 conv on 4·16·16: 2·4·8·16·16·8·9 = 1_179_648 FLOPs a forward; its backward
    # computes the input's and the weight's gradients (two forwards' worth) plus, in backward,
    # the block's forward again: both convs under reentrant checkpointing, the first only
    # without (it stops recomputing once it has what backward needs: the ReLU's output)
    conv = 2 * BATCH * 8 * 16 * 16 * 8 * 9
    rows = {layer.name: layer for layer in profile(name).layers}
    assert rows["blocks.0.0"].flops_backward == 2 * conv + conv
    assert rows["blocks.0.2"].flops_backward == 2 * conv + (conv if recomputed == 2 else 0)
    assert "(root)" not in rows or rows["(root)"].flops_backward == 0


def test_a_pool_that_needs_no_gradient_holds_its_indices_an_instant_in_training() -> None:
    # max_pool2d on the CPU computes its int64 indices (4·3·8·8·8 = 6_144 B) even where its
    # input needs no gradient (here the batch itself) and drops them as it returns: between
    # the ops the worker's dispatch mode sees (`max_pool2d_with_indices` among them) they are
    # held, and the step peaks there; the profiler's outermost aten op (`max_pool2d`) frees
    # them inside itself, and that measure peaks lower
    ours = profile("pool_stem")
    assert ours.train.peak == real_peak_between_ops(real("pool_stem"), ours.classes, True)
    assert ours.train.site.op == "max_pool2d_with_indices"
    assert ours.train.peak > real_peak_between_ops(real("pool_stem"), ours.classes)


def test_max_pooling_keeps_its_indices_on_the_cpu_only_where_asked_for() -> None:
    # in inference the CPU's max-pooling computes no int64 indices (1-, 2- and 3-d) unless the
    # call asks for them (return_indices=True, here for MaxUnpool2d): 4·8·8·8·8 = 16_384 B
    ours = profile("Pools")
    assert ours.inference.peak == real_inference_peak_between_ops(real("Pools"))


def test_norm_statistics_are_scratch_in_inference() -> None:
    # under inference_mode layer_norm and group_norm are one op each: the mean and inverse
    # deviation they make (4·16·16 positions · 2 · 4 B = 8_192 B for the LayerNorm) are freed
    # inside it, not held between ops; the whole peak holds them
    ours = profile("Norms")
    assert ours.inference.between_ops == real_inference_peak_between_ops(real("Norms"))
    # the whole peak: those statistics on top, inside the LayerNorm's op (the CPU's whole
    # peak also holds its convolution's scratch, which the estimate does not see)
    assert ours.inference.between_ops is not None
    assert ours.inference.peak - ours.inference.between_ops == 8_192


@pytest.mark.parametrize("name", ["Activations", "Resamples", "Norms"])
def test_composite_ops_are_one_op_in_inference(name: str) -> None:
    # under inference_mode an RMSNorm, an einsum, a LayerNorm are one op each: between ops
    # none of what they make inside is held; eval-mode dropout passes its input on (the C++
    # composite; torch's Python decomposition clones it) and resampling runs as the CPU's
    ours = profile(name)
    estimate = ours.inference.between_ops or ours.inference.peak
    assert estimate == real_inference_peak_between_ops(real(name))


def test_amp_inference_runs_composite_ops_as_one_op() -> None:
    # the worker measures an AMP inference pass under inference_mode too, where LayerNorm and
    # GroupNorm are one op each; the trace runs AMP under no_grad (autocast's casts are above
    # autograd), where PyTorch takes them apart: their statistics read as held between ops
    # (8,192 B high here; VGG-11's max-pooling indices 5.3% high on an H200)
    cfg = AnalysisConfig(batch=BATCH, inputs=zoo_models.INPUTS, device="cpu", precision="amp-bf16")
    ours = analyse_model("zoo_models:Norms", cfg)
    model = real("Norms").eval()
    x, _ = make_batch(BATCH, zoo_models.INPUTS, zoo_models.CLASSES, "cpu")
    start = sum(t.untyped_storage().nbytes() for t in [*model.parameters(), x])

    def forward() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)

    with torch.inference_mode():  # casts as ops of their own, as the trace sees them
        real_between_ops = start + cpu_peak_between_dispatched_ops(forward).peak
    assert ours.inference.between_ops == real_between_ops


def test_mishs_backward_is_one_kernel_that_makes_its_output() -> None:
    # the CPU's mish_backward makes the input's gradient only; meta's composite made
    # temporaries (softplus, tanh, sigmoid, products) of the 4·3·16·32 activation, 24 KiB
    # each, and the peak read 20,096 B high
    ours = profile("Activations")
    assert ours.train.peak == real_peak_between_ops(real("Activations"), ours.classes)


@pytest.mark.parametrize("name", ["TupleOut", "Segmentation"])
def test_two_gradients_of_one_tensor_are_added_in_place(name: str) -> None:
    # the feature map feeds two outputs: the CPU adds its second gradient into the first
    # (InputBuffer's in-place accumulation), where autograd under the trace's dispatch mode
    # adds out of place and held one 4·8·16·16 gradient, 32 KiB, more at the peak; so did the
    # worker's measure between ops, which runs under a dispatch mode too
    ours = profile(name)
    assert ours.train.peak == real_peak_between_ops(real(name), ours.classes)
    assert ours.train.peak == real_peak_between_ops(real(name), ours.classes, dispatched=True)


CONV_MODELS = [
    name
    for name in MODELS
    if name not in SEQUENCE_MODELS and name != "pool_stem"  # held to the worker's ops above
]


@pytest.mark.parametrize("name", CONV_MODELS)
def test_training_peak_is_within_5_percent_of_the_cpu_peak_between_ops(name: str) -> None:
    # the sequence models' kernels (attention, LSTM, GRU) are held against the full peak, with
    # the LSTM's in-kernel scratch, in test_kernels.py
    ours = profile(name)
    measured = real_peak_between_ops(real(name), ours.classes)
    assert abs(ours.train.peak - measured) <= 0.05 * measured, (ours.train.peak, measured)


@pytest.mark.parametrize("name", ["grouped", "computed_widths"])
def test_cpu_convolutions_allocate_scratch_the_estimate_does_not_see(name: str) -> None:
    # what the issue calls out for NiN's 11×11 convolution holds for these 3×3 ones: the CPU's
    # full peak is well above the estimate (im2col columns inside the convolution kernels)
    ours = profile(name)
    assert ours.train.peak < 0.8 * real_train_peak(real(name))
