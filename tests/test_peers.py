"""--compare-peers: torchinfo's and fvcore's figures beside ours, scaled from batch 1."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torchinfo
import zoo_models
from fvcore.nn import FlopCountAnalysis
from run_configs import small_run

import nin_profile
from nin_profile.inputs import IMAGES_224
from nin_profile.models import get_model
from nin_profile.peers import peer_figures
from nin_profile.render.markdown import render_report
from nin_profile.run import run_profile


def test_figures_at_batch_1_scaled_are_the_tools_own_at_the_batch() -> None:
    """The oracle is each tool run at batch 4 itself."""
    peers = peer_figures("nin", IMAGES_224, classes=10, batch=4)
    model = get_model("nin").eval()
    stats = torchinfo.summary(model, input_size=(4, 1, 224, 224), verbose=0, device="cpu")
    assert peers.torchinfo_params == stats.total_params == 1_992_166
    assert peers.torchinfo_mult_adds == stats.total_mult_adds
    assert peers.torchinfo_total_bytes == (
        stats.total_input + stats.total_output_bytes + stats.total_param_bytes
    )
    with torch.no_grad():
        count = FlopCountAnalysis(model, torch.randn(4, 1, 224, 224))
        count.unsupported_ops_warnings(False)
        assert peers.fvcore_flops == count.total()
        assert peers.fvcore_unsupported == {"aten::max_pool2d": 3}


def test_the_report_says_why_each_peer_differs() -> None:
    profile = run_profile(small_run(("nin", "alexnet"), batch=2, static=True, compare_peers=True))
    nin, alexnet = profile["nin"], profile["alexnet"]
    assert nin.peers is not None and alexnet.peers is not None
    assert nin.peers.fvcore_flops is not None and nin.peers.torchinfo_mult_adds is not None
    text = render_report(profile)
    assert "## Beside torchinfo and fvcore" in text
    # fvcore counts NiN's global average pooling, 10×5×5 = 250 a example, that we do not
    assert nin.peers.fvcore_flops - nin.macs_forward == 250 * 2
    assert (
        "it differs by +500 for nin: +500 it counts for `adaptive_avg_pool2d` (500), ops we "
        "list under *not counted*" in text
    )
    assert "equals our forward MACs for alexnet" in text
    extra = nin.peers.torchinfo_mult_adds - nin.macs_forward
    assert f"torchinfo's mult-adds are our forward MACs plus {extra / 1e6:,.2f} M for nin" in text


def test_tied_weights_and_attention_are_explained_from_the_tools_figures() -> None:
    profile = nin_profile.profile(
        "zoo_models:TiedLanguageModel",
        input_size=(zoo_models.TOKENS,),
        token_ids=True,
        batch=2,
        compare_peers=True,
    )
    (model,) = profile.models
    assert model.peers is not None
    text = render_report(profile)
    # the head's weight is the embedding's, 100·32 = 3,200 parameters: torchinfo counts it
    # for both layers
    assert model.peers.torchinfo_params == model.params + zoo_models.VOCAB * zoo_models.WIDTH
    assert (
        "it counts 6,464 for zoo_models:TiedLanguageModel, +3,200 (a parameter that several "
        "layers share, tied weights, counts there once for each layer" in text
    )
    # fvcore counts the LayerNorm (which we list as not counted) and skips attention: its
    # count less ours is the LayerNorm's count less attention's two batched products,
    # 2 examples·12 queries·12 keys·32 (scores, then their mean of values) each
    by_op = model.peers.fvcore_by_operator
    attention = 2 * (2 * 12 * 12 * 32)
    assert (model.peers.fvcore_flops or 0) - model.macs_forward == by_op["layer_norm"] - attention
    assert f"+{by_op['layer_norm']:,} it counts for `layer_norm`" in text
    assert f"{-attention:+,}, the products of the ops it skips" in text


def test_without_the_peers_installed_it_is_one_line(tmp_path: Path) -> None:
    blocked = tmp_path / "fvcore"
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ImportError('fvcore', name='fvcore')\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nin_profile",
            "--static",
            "--compare-peers",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "nin-profile: error: --compare-peers needs torchinfo and fvcore (fvcore is missing): "
        'pip install "nin-profile[peers]"'
    ]
    assert not (tmp_path / "o").exists()


def test_a_model_a_peer_cannot_run_leaves_its_columns_empty_and_says_why() -> None:
    # fvcore traces with torch.jit, which fails on reentrant checkpointing (a Python
    # autograd.Function) that PyTorch and torchinfo run; the run goes on and says so
    from zoo_models import CHANNELS, SIDE

    run = replace(
        small_run(
            ("zoo_models:checkpointed_reentrant", "zoo_models:Checkpointed"),
            static=True,
            compare_peers=True,
        ),
        channels=CHANNELS,
        image_size=SIDE,
    )
    profile = run_profile(run)
    failed, traced = (
        profile["zoo_models:checkpointed_reentrant"],
        profile["zoo_models:Checkpointed"],
    )
    assert failed.peers is not None and traced.peers is not None
    assert failed.peers.fvcore_flops is None and failed.peers.fvcore_error is not None
    assert failed.peers.torchinfo_params == failed.params  # torchinfo ran it
    assert traced.peers.fvcore_flops is not None and traced.peers.fvcore_error is None
    text = render_report(profile)
    line = "fvcore failed on zoo_models:checkpointed_reentrant, so its columns are empty there: "
    assert line in text and "(zoo_models.py:" in text.split(line)[1].splitlines()[0]
    assert "Parameters: torchinfo counts the same for every model." in text
