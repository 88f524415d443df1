"""Models as users bring them (tests/zoo_models.py): outputs that are not one tensor, classes read
from the output, builders that need real tensors, the user's own errors in one line, and the
smallest image the step really runs at."""

from __future__ import annotations

import inspect
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import zoo_models
from test_cli import refusal, run_cli
from test_memory import autograd_saved_bytes, recording_saved
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nin_profile.cli import main
from nin_profile.engine.analysis import (
    AnalysisConfig,
    analyse,
    analyse_model,
    meta_copy,
    smallest_image_size,
)
from nin_profile.engine.training import TrainingLoss, make_batch
from nin_profile.errors import InvalidConfig, LayerFailed
from nin_profile.models import ModelConfig
from nin_profile.results import ModelProfile

BATCH = 4


def profile(name: str, batch: int = BATCH, classes: int | None = None) -> ModelProfile:
    cfg = AnalysisConfig(
        batch=batch,
        inputs=zoo_models.INPUTS,
        classes=classes,
        device="cpu",
    )
    return analyse_model(f"zoo_models:{name}", cfg)


def real(name: str) -> nn.Module:
    torch.manual_seed(0)
    built = getattr(zoo_models, name)
    return built if isinstance(built, nn.Module) else built()


def real_batch(batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    return make_batch(batch, zoo_models.INPUTS, zoo_models.CLASSES, "cpu")


# ---- outputs of any shape --------------------------------------------------------------------

OUTPUTS = {  # model → the loss the report names
    "AuxHeads": "sum of cross-entropy over 10 classes on output .logits, .aux_logits",
    "TupleOut": "sum of cross-entropy over 10 classes on output [0] and the mean of output [1]",
    "Segmentation": "sum of the means of output ['out'], ['aux']",
    "Residual": "cross-entropy over 10 classes",
}


@pytest.mark.parametrize("name", OUTPUTS)
def test_outputs_of_any_shape_train_through_every_output(name: str) -> None:
    ours = profile(name)
    assert ours.loss == OUTPUTS[name]
    model = real(name).train()
    x, y = real_batch()
    loss_fn = TrainingLoss(ours.classes)
    with FlopCounterMode(display=False) as forward:
        loss = loss_fn(model(x), y)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    assert ours.flops_forward == forward.get_total_flops()
    assert ours.flops_backward == backward.get_total_flops()


def test_the_loss_by_hand_for_a_tuple() -> None:
    # (logits, maps): cross-entropy of the logits plus the mean of the maps
    model = real("TupleOut")
    x, y = real_batch()
    logits, maps = model(x)
    expected = nn.functional.cross_entropy(logits, y) + maps.mean()
    assert torch.equal(TrainingLoss(10)(model(x), y), expected)


def test_saved_bytes_of_a_dict_output_match_autograd() -> None:
    model = real("Segmentation").train()
    x, y = real_batch()
    saved = autograd_saved_bytes(model, x, y, TrainingLoss(None))
    assert profile("Segmentation").activation_bytes_saved == saved


def test_a_language_model_is_trained_on_each_tokens_cross_entropy() -> None:
    # scores (batch, tokens, vocabulary) for token-id input: cross-entropy at every token, as
    # a language model's training loop takes it over its flattened scores; the oracle is that
    # loop with (batch, tokens) targets, its saved storages counted
    cfg = AnalysisConfig(batch=BATCH, inputs=zoo_models.TOKEN_IDS, device="cpu")
    ours = analyse_model("zoo_models:TiedLanguageModel", cfg)
    vocabulary, tokens = zoo_models.VOCAB, zoo_models.TOKENS
    assert ours.classes == vocabulary
    assert ours.loss == f"cross-entropy over {vocabulary} classes at each of the {tokens} tokens"
    torch.manual_seed(0)
    model = zoo_models.TiedLanguageModel().train()
    ids = torch.randint(0, vocabulary, (BATCH, tokens))
    targets = torch.randint(0, vocabulary, (BATCH, tokens))
    with recording_saved(list(model.parameters())) as saved:
        scores = model(ids)
        nn.functional.cross_entropy(scores.view(-1, vocabulary), targets.view(-1))
    assert ours.activation_bytes_saved == sum(saved.values())


def test_per_token_scores_are_taken_only_where_no_output_is_batch_by_classes() -> None:
    # (hidden states (batch, tokens, width), logits (batch, classes)) from token ids: the
    # logits are the classes, the hidden states enter by their mean
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(zoo_models.VOCAB, 32)
            self.head = nn.Linear(32, 5)

        def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = self.embed(ids)
            return hidden, self.head(hidden.mean(1))

    cfg = AnalysisConfig(batch=BATCH, inputs=zoo_models.TOKEN_IDS, device="cpu")
    ours = analyse(meta_copy(Encoder(), always=True), cfg, name="encoder")
    assert ours.classes == 5
    assert (
        ours.loss == "sum of cross-entropy over 5 classes on output [1] and the mean of output [0]"
    )


def test_classes_are_read_from_the_output() -> None:
    assert profile("TupleOut").classes == zoo_models.CLASSES
    assert profile("Segmentation").classes is None  # per-pixel scores: no (batch, classes)
    assert profile("TupleOut", classes=zoo_models.CLASSES).classes == zoo_models.CLASSES


def test_classes_given_that_disagree_are_refused() -> None:
    with pytest.raises(InvalidConfig, match=r"outputs 10 classes .* but --classes 7 was given"):
        profile("TupleOut", classes=7)


def test_classes_given_pick_the_head_of_a_model_with_several() -> None:
    # heads of 10 and 7 classes: the first by default, the 7-class one where asked for, each
    # time cross-entropy on that one and the mean of the other (what autograd saves: the
    # log-softmax of 4×7 logits for the colour head, of 4×10 for the species head)
    ours = profile("MultiTask", classes=7)
    assert ours.classes == 7
    assert ours.loss == (
        "sum of cross-entropy over 7 classes on output ['colour'] "
        "and the mean of output ['species']"
    )
    x, _ = real_batch()
    y = torch.randint(0, 7, (BATCH,))
    assert ours.activation_bytes_saved == autograd_saved_bytes(
        real("MultiTask").train(), x, y, TrainingLoss(7)
    )
    assert profile("MultiTask").classes == zoo_models.CLASSES


def test_classes_no_head_has_are_refused_naming_the_heads() -> None:
    with pytest.raises(
        InvalidConfig,
        match=r"no output of 5 classes \(its outputs: \['species'\] 4×10, \['colour'\] 4×7\), "
        r"but --classes 5 was given; give --classes 10 or 7",
    ):
        profile("MultiTask", classes=5)


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")
def test_parameters_the_loss_never_reaches_are_named() -> None:
    ours = profile("PartlyTrained")
    model = real("PartlyTrained").train()
    x, y = real_batch()
    loss = TrainingLoss(ours.classes)(model(x), y)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    no_grad = {n: p.numel() for n, p in model.named_parameters() if p.grad is None}
    # conv 3→8: 3*8*3*3 = 216 and 8; the spare 8→8 linear: 64 and 8
    assert (
        ours.without_grad
        == no_grad
        == {
            "checkpointed.0.weight": 216,
            "checkpointed.0.bias": 8,
            "spare.weight": 64,
            "spare.bias": 8,
        }
    )
    assert ours.flops_backward == backward.get_total_flops()  # the head's alone
    assert profile("Residual").without_grad == {}


# ---- builders and instances ------------------------------------------------------------------


def test_a_builder_that_computes_with_tensors_is_built_on_the_cpu() -> None:
    # torch.arange(1, 3) * 8 → widths [8, 16]: conv 3→8 (3*8*9 + 8 = 224), conv 8→16
    # (8*16*9 + 16 = 1_168), linear 16→10 (170)
    assert profile("computed_widths").params == 224 + 1_168 + 170 == 1_562


@pytest.mark.filterwarnings("ignore:.*weight_norm is deprecated")
def test_a_module_holding_computed_tensors_is_copied_to_meta() -> None:
    # weight_norm and spectral_norm keep `weight` as a plain non-leaf tensor, which deepcopy
    # refuses: a model built on the CPU (or given to the API) is copied with it made meta
    torch.manual_seed(0)
    copied = meta_copy(zoo_models.OldStyleNorms(), always=True)
    assert copied.get_submodule("head").weight.device.type == "meta"
    cfg = AnalysisConfig(batch=BATCH, inputs=zoo_models.INPUTS, device="cpu")
    name = "zoo_models:OldStyleNorms"
    assert analyse(copied, cfg, name) == replace(analyse_model(name, cfg), description="")


def test_a_compiled_model_is_profiled_as_its_eager_module() -> None:
    # torch.compile wraps the model (its parameters named "_orig_mod.…"); the estimate is of
    # the eager step, layer names as the user wrote them
    eager = profile("Residual")
    assert profile("compiled") == replace(
        eager, name="zoo_models:compiled", description="user model from zoo_models:compiled"
    )


def test_a_frozen_sparse_embedding_makes_no_sparse_gradient_and_is_profiled() -> None:
    model = zoo_models.SparseTokens()
    model.embed.weight.requires_grad_(False)
    cfg = AnalysisConfig(batch=BATCH, inputs=zoo_models.TOKEN_IDS, device="cpu")
    ours = analyse(meta_copy(model, always=True), cfg, name="frozen")
    assert ours.trainable_params == zoo_models.WIDTH * zoo_models.CLASSES + zoo_models.CLASSES


def test_a_constant_kept_on_a_module_is_copied_with_its_values() -> None:
    # the analysis' meta copy keeps a plain tensor attribute as it is (its forward reads it
    # with .tolist()); only the tensors autograd computed (weight_norm's) are made meta
    cfg = AnalysisConfig(batch=BATCH, inputs=zoo_models.INPUTS, device="cpu")
    ours = analyse(meta_copy(zoo_models.KeepsAConstant(), always=True), cfg, name="constant")
    assert ours.params == 3 * 8 * 9 + 8 + 3 * 10 + 10  # = 264


def test_a_hook_closing_over_the_users_module_writes_into_the_copy() -> None:
    # a forward hook written as a lambda over the module (features captured into a list):
    # deepcopy shares the function, whose `self` was the user's module
    class Captures(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(zoo_models.CHANNELS, 4, 3)
            self.head = nn.Linear(4, zoo_models.CLASSES)
            self.features: list[torch.Tensor] = []
            self.conv.register_forward_hook(lambda m, i, o: self.features.append(o.detach()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.conv(x).mean((2, 3)))

    user = Captures()
    # and two hooks sharing a variable of their scope: a pre-hook that notes the batch's
    # shape, a forward hook that reshapes by it (both close over the module too)
    shape: list[int] = []

    def note(m: nn.Module, i: tuple[torch.Tensor]) -> None:
        nonlocal shape
        shape = [*i[0].shape[:1], -1]
        user.features.clear()

    user.conv.register_forward_pre_hook(note)
    user.conv.register_forward_hook(lambda m, i, o: o.reshape(*shape).view(o.shape))
    copied = meta_copy(user, always=True)
    cfg = AnalysisConfig(batch=BATCH, inputs=zoo_models.INPUTS, device="cpu")
    analyse(copied, cfg, name="captures")
    assert user.features == []
    captured: list[torch.Tensor] = vars(copied)["features"]
    assert captured and all(f.device.type == "meta" for f in captured)


def test_what_the_users_hooks_run_belongs_to_their_layer() -> None:
    # a forward pre-hook that applies a ReLU to the second conv's input, and a forward hook
    # that keeps two of its channels: both run in the second conv's row, the row's output
    # shape is what the hook returned
    model = nn.Sequential(nn.Conv2d(zoo_models.CHANNELS, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten())
    model[1].register_forward_pre_hook(lambda m, i: (nn.functional.relu(i[0]),))
    model[1].register_forward_hook(lambda m, i, o: o[:, :2] * 2)
    cfg = AnalysisConfig(batch=BATCH, inputs=zoo_models.INPUTS, device="cpu")
    rows = {r.name: r for r in analyse(meta_copy(model, always=True), cfg, name="hooks").layers}
    assert "(root)" not in rows  # the ReLU's saves were charged to the root's row
    assert rows["1"].output_shape == (BATCH, 2, 12, 12)
    # the ReLU's output, 4·4·14·14 floats, which it saves (and the conv too): once, here
    assert rows["1"].saved_bytes == BATCH * 4 * 14 * 14 * 4  # = 12,544
    # its FLOPs: the conv's 2·4·4·12·12·4·9 = 331,776 and the ReLU's none
    assert rows["1"].flops_forward == 2 * BATCH * 4 * 12 * 12 * 4 * 9


def test_a_pre_hooks_input_is_what_a_failure_names() -> None:
    # the pre-hook hands the conv 3 channels where it wants 4: the failure names the input
    # the conv got and the channels it expects
    model = nn.Sequential(nn.Conv2d(zoo_models.CHANNELS, 4, 3), nn.Conv2d(4, 4, 3))
    model[1].register_forward_pre_hook(lambda m, i: (i[0][:, :3],))
    cfg = AnalysisConfig(batch=BATCH, inputs=zoo_models.INPUTS, device="cpu")
    with pytest.raises(
        LayerFailed, match=r"layer 1 \(Conv2d\) cannot run on input 4×3×14×14"
    ) as failed:
        analyse(meta_copy(model, always=True), cfg, name="hooks")
    assert failed.value.expected_channels == 4


def test_the_users_module_is_left_as_it_was() -> None:
    module = zoo_models.instance
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    module.eval()
    p = profile("instance")
    assert p.params == sum(t.numel() for t in before.values())
    assert not module.training
    for name, param in module.named_parameters():
        assert param.device.type == "cpu" and param.grad is None, name
        assert torch.equal(param, before[name]), name


# ---- the user's errors, one line each --------------------------------------------------------

EMBEDDING_LINE = inspect.getsourcelines(zoo_models.TokenClassifier.forward)[1] + 1
USER_ERRORS = [
    (["--models", "json:dumps"], "json:dumps needs arguments (obj)"),
    (
        ["--models", "zoo_models:raises"],
        "zoo_models:raises raised ValueError: boom (zoo_models.py:",
    ),
    (
        ["--models", "zoo_models:AssertsSize", "--channels", "3", "--image-size", "20"],
        "AssertionError: Wrong image width! Expected 16 but got 20! (zoo_models.py:",
    ),
    (
        ["--models", "zoo_models:Residual", "--image-size", "16"],
        "expects 3 channels (--channels 3 or --input-shape 3,16,16, input_size=(3, 16, 16) "
        "from Python)",
    ),
    (
        ["--models", "zoo_models:TwoInputs", "--channels", "3", "--image-size", "16"],
        "forward() missing 1 required positional argument: 'mask'; nin_profile feeds "
        "zoo_models:TwoInputs one input, the batch: wrap a model that takes more",
    ),
    (
        # as torch.autocast("cpu", torch.bfloat16) itself refuses it: the line names the
        # precision, which is what to change
        [
            *("--models", "zoo_models:BilinearHead", "--channels", "3", "--image-size", "16"),
            *("--precision", "amp-bf16", "--device", "cpu"),
        ],
        "zoo_models:BilinearHead on 3×16×16 images in amp-bf16: layer head (Bilinear) cannot "
        "run on input 1×16: RuntimeError: All tensors must have the same dtype",
    ),
    (
        ["--models", "zoo_models:scripted_head", "--channels", "3", "--image-size", "16"],
        "zoo_models:scripted_head: its layer '1' is a TorchScript module (torch.jit.script or "
        "trace), which runs no Python for a trace to follow and takes no hooks: give the eager "
        "nn.Module it was made from",
    ),
    (["--models", "zoo_models:CLASSES"], "'zoo_models:CLASSES' gave an int, not a torch.nn"),
    (
        ["--models", "zoo_models:SparseTokens", "--input-shape", "12", "--token-ids"],
        "zoo_models:SparseTokens: layer 'embed' makes sparse gradients (sparse=True), which the "
        "analysis cannot follow",
    ),
    (
        [
            *("--models", "zoo_models:WritesIntoACpuTensor", "--channels", "3"),
            *("--image-size", "16", "--device", "cpu"),
        ],
        "a tensor made on the CPU in the forward (without device=) is written in place with "
        "the model's tensors: make it on the input's device (device=x.device)",
    ),
    (
        # for the CPU the tensors join the trace (test_zoo.py); CUDA's arithmetic refuses them
        [
            *("--models", "zoo_models:CpuConstants", "--channels", "3", "--image-size", "16"),
            *("--device", "cuda"),
        ],
        "a tensor zoo_models:CpuConstants makes on the CPU in its forward (torch.tensor, "
        "torch.zeros, torch.arange without device=) meets its other tensors",
    ),
    (["--models", "zoo_models:TupleOut", "--channels", "3", "--classes", "7"], "--classes 7"),
    (["--models", "nin,alexnet,nin"], "--models names nin more than once"),
    (
        ["--models", "zoo_models:BranchesOnValues", "--channels", "3", "--image-size", "16"],
        "layer (root) (BranchesOnValues) needs the values of its tensors (RuntimeError: "
        "Tensor.item() cannot be called on meta tensors (zoo_models.py:",
    ),
    (
        # under AMP the trace runs on fake tensors, which raise their own exceptions and log
        [
            *("--models", "zoo_models:BranchesOnValues", "--channels", "3", "--image-size"),
            *("16", "--precision", "amp-bf16", "--device", "cpu"),
        ],
        "layer (root) (BranchesOnValues) needs the values of its tensors "
        "(DataDependentOutputException",
    ),
    (
        [
            *("--models", "zoo_models:Residual", "--image-size", "16"),
            *("--precision", "amp-bf16", "--device", "cpu"),
        ],
        "expects 3 channels",
    ),
    (
        ["--models", "zoo_models:CountsDistinct", "--channels", "3", "--image-size", "16"],
        "layer (root) (CountsDistinct) needs the values of its tensors (NotImplementedError: "
        "aten::_unique2",
    ),
    (  # the op, not torch's setting that would make its meta kernel guess
        ["--models", "zoo_models:RoutesByValue", "--channels", "3", "--image-size", "16"],
        "layer (root) (RoutesByValue) needs the values of its tensors (NotImplementedError: "
        "aten::nonzero (zoo_models.py:",
    ),
    (
        ["--models", "zoo_models:TokenClassifier", "--image-size", "16"],
        "layer embed (Embedding) cannot run on input 1×1×16×16: RuntimeError: Expected tensor "
        "for argument #1 'indices' to have one of the following scalar types: Long, Int; but "
        f"got torch.float32 instead (zoo_models.py:{EMBEDDING_LINE}); nin_profile fed "
        "zoo_models:TokenClassifier float 1×16×16 images, not the integer token ids an "
        "embedding looks up: give --token-ids and --input-shape LENGTH, the tokens of an "
        "example (token_ids=True, input_size=(LENGTH,) from Python)",
    ),
    (
        ["--models", "zoo_models:InPlaceOnSaved", "--channels", "3", "--image-size", "16"],
        "zoo_models:InPlaceOnSaved: the training step failed after the forward (in backward or "
        "the optimizer's step): one of the variables needed for gradient computation has been "
        "modified by an inplace operation",
    ),
    (
        # 8 → 3 → 1: BatchNorm on one value per channel in train mode cannot run at batch 1;
        # at 11 → 5 → 2 it can (see the test below)
        ["--models", "zoo_models:BatchNormToOnePixel", "--channels", "3", "--image-size", "8"],
        "smallest --image-size zoo_models:BatchNormToOnePixel accepts is 11",
    ),
]


@pytest.mark.parametrize(("args", "message"), USER_ERRORS)
def test_user_errors_are_one_line_and_exit_code_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stderr = refusal(capsys, *args, "--static", "--batch", "1", "--no-charts")
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert message in lines[0]


def test_debug_shows_the_traceback_too() -> None:
    result = run_cli("--models", "zoo_models:raises", "--static", "--debug")
    assert result.returncode == 2
    assert "Traceback" in result.stderr and 'raise ValueError("boom")' in result.stderr
    raise_line = inspect.getsourcelines(zoo_models.raises)[1] + 1  # the line under the def
    assert result.stderr.strip().splitlines()[-1].endswith(f"(zoo_models.py:{raise_line})")


# ---- the smallest image the step runs at ------------------------------------------------------


def step_runs(batch: int, side: int) -> bool:
    """A real training-mode forward of BatchNormToOnePixel on the CPU (the oracle)."""
    model = real("BatchNormToOnePixel").train()
    try:
        model(torch.randn(batch, zoo_models.CHANNELS, side, side))
    except (ValueError, RuntimeError):
        return False
    return True


@pytest.mark.parametrize(("batch", "smallest"), [(1, 11), (2, 7)])
def test_smallest_image_is_where_the_real_step_runs(batch: int, smallest: int) -> None:
    # side s → (s-3)//2+1 → (that-3)//2+1 pixels: 1×1 from s = 7 to 10, 2×2 at 11. At batch 1
    # in train mode BatchNorm refuses a 1×1 map (one value per channel); at batch 2 it runs.
    cfg = ModelConfig(channels=zoo_models.CHANNELS, image_size=4)
    found = smallest_image_size("zoo_models:BatchNormToOnePixel", cfg, batch)
    assert found == smallest
    assert step_runs(batch, smallest) and not step_runs(batch, smallest - 1)


def test_parameter_counts_of_a_builder_that_needs_real_tensors(tmp_path: Path) -> None:
    path = tmp_path / "params.json"
    assert main(["--models", "zoo_models:computed_widths", "--write-params", str(path)]) == 0
    counts = json.loads(path.read_text())["models"]["zoo_models:computed_widths"]
    assert counts["params"] == 224 + 1_168 + 170  # as above: 1_562


def test_a_user_models_counts_are_checked_whatever_the_model_options(tmp_path: Path) -> None:
    # a model given by import path is built by calling it bare: --classes 7 (its own, not the
    # file's 10) changes nothing and is not refused
    path = tmp_path / "params.json"
    assert main(["--models", "zoo_models:TupleOut", "--write-params", str(path)]) == 0
    assert main(["--check-params", str(path), "--classes", "7", "--channels", "3"]) == 0
    # nor does the file record the options the built-in models are built with
    assert json.loads(path.read_text())["config"] == {}


class TiedToAnUnusedLayer(nn.Module):
    """`body.0` runs with the weight of `unused`, a layer whose forward never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(8, 8)
        self.body = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.body[0].weight = self.unused.weight
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))


def test_a_shared_weight_counts_with_the_layer_that_runs() -> None:
    import nin_profile

    layers = {
        layer.name: layer.params
        for layer in nin_profile.profile(TiedToAnUnusedLayer(), input_size=(2, 2, 2), batch=2)
        .models[0]
        .layers
    }
    assert layers["body.0"] == 8 * 8 + 8 == 72  # the shared weight and its own bias
    assert layers["unused"] == 8  # its bias alone
    assert sum(layers.values()) == 72 + 8 + (8 * 3 + 3) == 107
