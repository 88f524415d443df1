"""A zoo of the architectures users bring, tiny, written here (torchvision does not import beside
the CPU build of torch CI installs). Each takes a batch of images `CHANNELS`×`SIDE`×`SIDE`; the
sequence models read an image row by row. Loaded in-process or by import path (`zoo_models:...`).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from nin_profile.inputs import InputSpec

CHANNELS, SIDE, CLASSES = 3, 16, 10
INPUTS = InputSpec.image(CHANNELS, SIDE)
WIDTH, HEADS = 32, 4  # token width and attention heads of the transformer blocks


def depthwise_separable() -> nn.Module:
    """MobileNet's unit: depthwise 3×3, BatchNorm, ReLU6, pointwise 1×1; then a classifier."""
    return nn.Sequential(
        nn.Conv2d(CHANNELS, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU6(inplace=True),
        nn.Conv2d(16, 32, 1, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, CLASSES),
    )


def grouped() -> nn.Module:
    """ResNeXt's grouped 3×3 between two 1×1 convs."""
    return nn.Sequential(
        nn.Conv2d(CHANNELS, 16, 1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=2, dilation=2, groups=4),
        nn.ReLU(),
        nn.Conv2d(32, 32, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, CLASSES),
    )


class Residual(nn.Module):
    """A ResNet basic block with in-place ReLUs, as torchvision writes it."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(CHANNELS, width, 3, padding=1)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.relu(out + x)
        return self.head(out.mean(dim=(2, 3)))


class Patches(nn.Module):
    """Image → tokens: a strided conv, flattened to (batch, tokens, WIDTH)."""

    def __init__(self, patch: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(CHANNELS, WIDTH, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x).flatten(2).transpose(1, 2)


class SdpaAttention(nn.Module):
    """timm's Attention: one qkv projection, `F.scaled_dot_product_attention`, a projection."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MhaAttention(nn.Module):
    """`nn.MultiheadAttention` as ViT-B/16 calls it (batch first, no weights returned)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x, need_weights=False)
        return out


class TransformerBlock(nn.Module):
    """A pre-norm ViT block: x + attention(norm(x)), x + MLP(norm(x)); then a class head."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.patches = Patches()
        self.norm1 = nn.LayerNorm(WIDTH)
        self.attention = attention
        self.norm2 = nn.LayerNorm(WIDTH)
        self.mlp = nn.Sequential(
            nn.Linear(WIDTH, 2 * WIDTH), nn.GELU(), nn.Linear(2 * WIDTH, WIDTH)
        )
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patches(x)
        x = x + self.attention(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(dim=1))


def sdpa_block() -> nn.Module:
    return TransformerBlock(SdpaAttention())


def mha_block() -> nn.Module:
    return TransformerBlock(MhaAttention())


class RowsClassifier(nn.Module):
    """An RNN over an image's rows (SIDE steps of CHANNELS·SIDE features); the last hidden
    state classifies."""

    def __init__(
        self,
        kind: Callable[..., nn.Module],
        layers: int = 2,
        bidirectional: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()
        self.rnn = kind(
            CHANNELS * SIDE, WIDTH, layers, batch_first=True, bidirectional=bidirectional, **options
        )
        width: int = options.get("proj_size") or WIDTH
        self.head = nn.Linear(width * (2 if bidirectional else 1), CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.permute(0, 2, 1, 3).flatten(2)  # (batch, SIDE, CHANNELS·SIDE)
        out, _ = self.rnn(rows)
        return self.head(out[:, -1])


def lstm() -> nn.Module:
    return RowsClassifier(nn.LSTM)


class PackedRows(nn.Module):
    """An LSTM over an image's rows given as a packed sequence, each example `shorter` rows
    shorter than the one before (0: all as long, which the CPU runs on oneDNN)."""

    def __init__(self, shorter: int) -> None:
        super().__init__()
        self.shorter = shorter
        self.rnn = nn.LSTM(CHANNELS * SIDE, WIDTH, batch_first=True)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.permute(0, 2, 1, 3).flatten(2)  # (batch, SIDE, CHANNELS·SIDE)
        lengths = torch.tensor([SIDE - self.shorter * i for i in range(len(x))])
        packed = nn.utils.rnn.pack_padded_sequence(rows, lengths, batch_first=True)
        out, _ = nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True)
        return self.head(out.mean(1))


def packed_lstm() -> nn.Module:
    return PackedRows(shorter=0)


def packed_lstm_ragged() -> nn.Module:
    return PackedRows(shorter=1)


def projected_lstm() -> nn.Module:
    """An LSTM whose hidden state is projected to 12 features (`proj_size`): the CPU runs the
    composite cell for it, not oneDNN."""
    return RowsClassifier(nn.LSTM, proj_size=12)


def rnn_relu() -> nn.Module:
    """An Elman RNN (`nn.RNN`, ReLU), bidirectional: the CPU's composite, as for the GRU."""
    return RowsClassifier(nn.RNN, bidirectional=True, nonlinearity="relu")


class FrozenRecurrent(RowsClassifier):
    """A recurrent encoder run under no_grad in training (frozen features): its ops stay apart
    as in any training step, and oneDNN's LSTM keeps no workspace there."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out, _ = self.rnn(x.permute(0, 2, 1, 3).flatten(2))
        return self.head(out[:, -1])


def frozen_gru() -> nn.Module:
    return FrozenRecurrent(nn.GRU)


def frozen_lstm() -> nn.Module:
    return FrozenRecurrent(nn.LSTM)


def gru() -> nn.Module:
    return RowsClassifier(nn.GRU)


def bigru() -> nn.Module:
    return RowsClassifier(nn.GRU, bidirectional=True)


class BatchNormToOnePixel(nn.Module):
    """Convs down to a 1×1 map, then BatchNorm: in train mode a batch of 1 cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(CHANNELS, 8, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2),
            nn.BatchNorm2d(8),
        )
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def frozen_backbone() -> nn.Module:
    """A pretrained-style backbone with requires_grad off; only the head trains."""
    backbone = nn.Sequential(nn.Conv2d(CHANNELS, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    backbone.requires_grad_(False)
    return nn.Sequential(backbone, nn.Flatten(), nn.Linear(16 * (SIDE // 2) ** 2, CLASSES))


class SharedTwice(nn.Module):
    """One conv applied twice (weights shared): its parameters count once, its FLOPs twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(CHANNELS, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.shared(torch.relu(self.shared(self.stem(x)))))
        return self.head(x.mean(dim=(2, 3)))


Outputs = namedtuple("Outputs", ["logits", "aux_logits"])


class AuxHeads(nn.Module):
    """GoogLeNet-style: a namedtuple of logits and auxiliary logits in train mode, the logits
    alone in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(CHANNELS, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, CLASSES)
        self.aux = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> Outputs | torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3))
        if self.training:
            return Outputs(self.head(pooled), self.aux(pooled))
        return self.head(pooled)


class MultiTask(nn.Module):
    """Two classification heads of different widths, in a dict: 10 species, 7 colours."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(CHANNELS, 8, 3, padding=1), nn.ReLU())
        self.species = nn.Linear(8, CLASSES)
        self.colour = nn.Linear(8, 7)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.features(x).mean(dim=(2, 3))
        return {"species": self.species(pooled), "colour": self.colour(pooled)}


class TupleOut(nn.Module):
    """(logits, feature map): cross-entropy on the first, the mean of the second."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(CHANNELS, 8, 3, padding=1)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.features(x)
        return self.head(maps.mean(dim=(2, 3))), maps


class Segmentation(nn.Module):
    """torchvision's segmentation models: a dict of per-pixel scores ('out', 'aux')."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(CHANNELS, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(8, 5, 1)
        self.aux_classifier = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {"out": self.classifier(features), "aux": self.aux_classifier(features)}


def computed_widths() -> nn.Module:
    """RegNet's builder computes its widths with tensors and `.tolist()`: on meta it cannot."""
    widths = (torch.arange(1, 3) * 8).tolist()  # [8, 16]
    return nn.Sequential(
        nn.Conv2d(CHANNELS, widths[0], 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(widths[0], widths[1], 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(widths[1], CLASSES),
    )


# A module instance made when this file is imported, with real CPU weights.
instance = nn.Sequential(nn.Conv2d(CHANNELS, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, CLASSES))


def raises() -> nn.Module:
    raise ValueError("boom")


class FlatHead(nn.Module):
    """One linear layer over the flattened image: the models below differ in their forward."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(CHANNELS * SIDE * SIDE, CLASSES)


class AssertsSize(FlatHead):
    """Like torchvision's ViT: asserts the image size it was built for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == SIDE, f"Wrong image width! Expected {SIDE} but got {x.shape[-1]}!"
        return self.head(x.flatten(1))


class BranchesOnValues(FlatHead):
    """A forward that reads a tensor's value: meta tensors have none."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            x = 2 * x
        return self.head(x.flatten(1))


class CountsDistinct(FlatHead):
    """`torch.unique`: an output whose size depends on the values (no meta kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1)) * torch.unique(x.round()).numel()


class RoutesByValue(FlatHead):
    """Routes the examples whose score is positive (a mixture of experts' way): `nonzero`,
    whose meta kernel declines to guess how many there are."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.head(x.flatten(1))
        routed = (scores[:, 0] > 0).nonzero().squeeze(1)
        return scores.index_add(0, routed, scores.index_select(0, routed))


class TokenClassifier(nn.Module):
    """Looks token ids up in an embedding: it wants integers, not images."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, WIDTH)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(1))


class InPlaceOnSaved(nn.Module):
    """Adds in place to what ReLU saved for backward: the forward runs, backward refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))
        y += 1
        return self.head(y.mean((2, 3)))


# Inputs other than images (--input-shape, --token-ids): TOKENS ids an example, below VOCAB;
# FEATURES channels of STEPS values
TOKENS, VOCAB, FEATURES, STEPS = 12, 100, 8, 20
TOKEN_IDS = InputSpec((TOKENS,), token_ids=True)
SEQUENCE = InputSpec((FEATURES, STEPS))


class TokenLSTM(nn.Module):
    """A text classifier: token ids, an embedding, an LSTM, the last hidden state classifies."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.rnn = nn.LSTM(WIDTH, WIDTH, batch_first=True)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(ids))
        return self.head(out[:, -1])


class TokenAttention(nn.Module):
    """Token ids, an embedding, then `nn.TransformerEncoderLayer` (post-norm) or a bare
    `nn.MultiheadAttention` (its weights returned, the default); the mean classifies. In eval
    mode without autograd both take PyTorch's fused fast path on the CPU."""

    def __init__(self, encoder: bool, masked: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.encoder, self.masked = encoder, masked
        self.attention = (
            nn.TransformerEncoderLayer(WIDTH, HEADS, 2 * WIDTH, dropout=0.0, batch_first=True)
            if encoder
            else nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        )
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        if self.masked:  # causal, and id 0 as padding: one (batch, heads, T, T) mask merged
            steps = ids.shape[1]
            causal = torch.ones(steps, steps, dtype=torch.bool, device=ids.device).triu(1)
            x = self.attention(x, src_mask=causal, src_key_padding_mask=ids == 0)
        else:
            x = self.attention(x) if self.encoder else self.attention(x, x, x)[0]
        return self.head(x.mean(1))


class SparseTokens(nn.Module):
    """An embedding with sparse gradients (`sparse=True`): only the rows the batch looked up."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH, sparse=True)
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(1))


class TiedLanguageModel(nn.Module):
    """Token ids, an embedding, causal self-attention (SDPA), a LayerNorm, and a head whose
    weight is the embedding's (tied, as GPT-2's): next-token scores (batch, TOKENS, VOCAB)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        x = F.scaled_dot_product_attention(x, x, x, is_causal=True)
        return self.head(self.norm(x))


def token_encoder() -> nn.Module:
    return TokenAttention(encoder=True)


def token_self_attention() -> nn.Module:
    return TokenAttention(encoder=False)


def token_masked_encoder() -> nn.Module:
    return TokenAttention(encoder=True, masked=True)


class PaddedEncoder(nn.Module):
    """`nn.TransformerEncoder` told where the padding (id 0) is, as text models write it: in
    eval mode it packs the batch into a nested tensor, whose size depends on the padding
    (`mask_check`: only where the padding is at the end of each sequence; `nested`: False
    keeps the padded batch)."""

    def __init__(self, mask_check: bool = True, nested: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        layer = nn.TransformerEncoderLayer(WIDTH, HEADS, 2 * WIDTH, batch_first=True)
        self.encoder = nn.TransformerEncoder(
            layer, 1, enable_nested_tensor=nested, mask_check=mask_check
        )
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.embed(ids), src_key_padding_mask=ids == 0)
        return self.head(x.mean(1))


def unchecked_padded_encoder() -> nn.Module:
    return PaddedEncoder(mask_check=False)


def padded_encoder_kept_padded() -> nn.Module:
    return PaddedEncoder(nested=False)


def conv1d_sequence() -> nn.Module:
    """A 1-d convolution over FEATURES channels of STEPS values, averaged over time."""
    return nn.Sequential(
        nn.Conv1d(FEATURES, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(16, CLASSES),
    )


class Checkpointed(nn.Module):
    """Two conv-ReLU blocks under activation checkpointing: the forward keeps each block's
    input only, backward runs the block again (`reentrant`: the older autograd.Function
    implementation, whose recompute in backward saves tensors of its own)."""

    def __init__(self, reentrant: bool = False) -> None:
        super().__init__()
        self.reentrant = reentrant
        self.stem = nn.Conv2d(CHANNELS, 8, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
            for _ in range(2)
        )
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).relu()
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=self.reentrant).relu()
        return self.head(x.mean((2, 3)))


def checkpointed_reentrant() -> nn.Module:
    return Checkpointed(reentrant=True)


class PartlyTrained(nn.Module):
    """Trainable parameters the loss never reaches: a reentrant checkpoint on the raw batch
    (which needs no gradient, so the checkpoint's output needs none either and its conv gets
    no gradient), and a layer the forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.checkpointed = nn.Sequential(nn.Conv2d(CHANNELS, 8, 3, padding=1), nn.ReLU())
        self.spare = nn.Linear(8, 8)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = checkpoint(self.checkpointed, x, use_reentrant=True)
        return self.head(x.mean((2, 3)))


class FoldUnfold(nn.Module):
    """Sliding blocks: `F.unfold` of a feature map into 3×3 columns (9× its size), scaled,
    then `F.fold` back, whose output the CPU keeps in a storage as large as the columns; a
    1×1 conv saves it for backward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(8 * 9, 1))
        self.mix = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).relu()
        columns = F.unfold(h, 3, padding=1) * self.scale
        folded = F.fold(columns, h.shape[-2:], 3, padding=1)
        return self.head(self.mix(folded).mean((2, 3)))


class CpuConstants(nn.Module):
    """A forward that makes tensors without `device=` (on the CPU): an index and a scale."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, 8, 3, padding=1)
        self.head = nn.Linear(3, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(x).mean((2, 3))
        picked = torch.index_select(pooled, 1, torch.tensor([0, 2, 4]))
        return self.head(picked * torch.ones(3))


class CpuOperands(nn.Module):
    """Matrix products with an operand made on the CPU in the forward: an einsum (meta's bmm
    takes the CPU operand's device) and a baddbmm, whose backward multiplies by it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, 8, 3, padding=1)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.einsum("bchw,cd->bdhw", self.conv(x), torch.ones(8, 8))
        rows = x.flatten(2)  # 4×8×256
        x = torch.baddbmm(rows, rows, torch.ones(x.shape[0], SIDE * SIDE, SIDE * SIDE) / 256)
        return self.head(x.mean(2))


class ValuesOnTheCpu(nn.Module):
    """A forward that selects with values a CPU step has: a boolean mask made on the CPU
    (indexing takes CPU indices on any device: the trace keeps its values)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, 8, 3, padding=1)
        self.head = nn.Linear(4, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3))[:, torch.tensor([True, False] * 4)])


class KeepsAConstant(nn.Module):
    """Keeps the channels it reads as a tensor on the module (not a buffer), read with
    `.tolist()`: an instance built on the CPU keeps the values; the copy must too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, 8, 3, padding=1)
        self.keep = torch.tensor([0, 2, 4])
        self.head = nn.Linear(3, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3))[:, self.keep.tolist()])


class WritesIntoACpuTensor(nn.Module):
    """Adds the model's features into a tensor made on the CPU: in place, which the trace
    cannot follow on a copy."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(CHANNELS * SIDE * SIDE, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(x.shape[0], CLASSES)
        total += self.head(x.flatten(1))
        return total


class OldStyleNorms(nn.Module):
    """`torch.nn.utils.weight_norm` and `spectral_norm` (the hooks, not the parametrizations):
    each keeps the weight it computes before every forward as a plain attribute, a tensor
    `copy.deepcopy` refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.utils.spectral_norm(nn.Conv2d(CHANNELS, 8, 3, padding=1))
        self.head = nn.utils.weight_norm(nn.Linear(8, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).relu().mean((2, 3)))


class Pools(nn.Module):
    """Max-pooling of every kind: with its indices asked for (and unpooled), without, and in
    3-d (the image as one 3-d channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        self.plain = nn.MaxPool2d(2)
        self.pool3d = nn.MaxPool3d((1, 2, 2))
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        pooled, indices = self.pool(y)
        y = self.unpool(pooled, indices) + y
        y = self.pool3d(self.plain(y).unsqueeze(1)).squeeze(1)
        return self.head(y.mean((2, 3)))


class Float64(nn.Module):
    """A model in float64 throughout (scientific code): its input made double, its weights too."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(CHANNELS * SIDE * SIDE, 32), nn.ReLU())
        self.head = nn.Linear(32, CLASSES)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.double()))


class Norms(nn.Module):
    """LayerNorm over channels (ConvNeXt's way: channels last, normalized, back) and
    GroupNorm, whose statistics inference_mode keeps inside the op."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, 32, 3, padding=1)
        self.layer_norm = nn.LayerNorm(32)
        self.group_norm = nn.GroupNorm(4, 32)
        self.head = nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.layer_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.group_norm(x)
        return self.head(x.mean((2, 3)))


class Activations(nn.Module):
    """The activations of recent networks between linear layers over each position's
    channels: Mish (whose backward the CPU runs as one kernel, `mish_backward`, where meta
    has none and runs PyTorch's composite), SiLU, Hardswish, GELU (tanh), after an RMSNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(SIDE, 32),
            nn.Mish(),
            nn.Linear(32, 32),
            nn.RMSNorm(32),
            nn.SiLU(),
            nn.Linear(32, 32),
            nn.Hardswish(),
            nn.Linear(32, 16),
            nn.GELU(approximate="tanh"),
        )
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x).mean((1, 2)))


class Resamples(nn.Module):
    """Dropout (which eval mode passes through, the input itself) and resampling, bilinear
    up and bicubic down: ops whose Python decompositions in torch differ from the C++
    composite the device runs (a clone for dropout)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, 8, 3, padding=1)
        self.drop = nn.Sequential(nn.Dropout(0.1), nn.Dropout(0.1))
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.conv(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        x = F.interpolate(self.drop(x), scale_factor=0.5, mode="bicubic", align_corners=False)
        return self.head(x.mean((2, 3)))


def pool_stem() -> nn.Module:
    """Max-pooling on the batch itself, which needs no gradient: on the CPU `max_pool2d`
    computes the indices even so, and drops them as it returns."""
    return nn.Sequential(
        nn.MaxPool2d(2),
        nn.Conv2d(CHANNELS, 1, 3, padding=1),
        nn.Flatten(),
        nn.Linear(8 * 8, CLASSES),
    )


class TwoInputs(nn.Module):
    """A forward that takes two tensors (an image and a mask, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(CHANNELS * SIDE * SIDE, CLASSES)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head((x * mask).flatten(1))


class BilinearHead(nn.Module):
    """`nn.Bilinear`, which CPU autocast cannot run: it casts one input to bfloat16 (a matrix
    product) and leaves the other float32, and the op wants one dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(CHANNELS * SIDE * SIDE, 16))
        self.head = nn.Bilinear(16, 16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return self.head(features, features.float())


def scripted_head() -> nn.Module:
    """A TorchScript layer inside an eager model: no hooks, no Python to trace."""
    return nn.Sequential(nn.Flatten(), torch.jit.script(nn.Linear(CHANNELS * SIDE * SIDE, CLASSES)))


def compiled() -> nn.Module:
    """`torch.compile` of a residual block (nothing compiles until it is called)."""
    compiled: nn.Module = torch.compile(Residual())  # type: ignore[assignment]
    return compiled


def needs_width(width: int) -> nn.Module:
    return nn.Linear(width, CLASSES)


# What each test may profile, by the name an import path gives it (`zoo_models:NAME`).
ZOO = (
    "depthwise_separable",
    "grouped",
    "Residual",
    "sdpa_block",
    "mha_block",
    "lstm",
    "projected_lstm",
    "packed_lstm",
    "packed_lstm_ragged",
    "rnn_relu",
    "gru",
    "bigru",
    "BatchNormToOnePixel",
    "frozen_backbone",
    "SharedTwice",
    "AuxHeads",
    "TupleOut",
    "MultiTask",
    "Segmentation",
    "computed_widths",
    "Checkpointed",
    "checkpointed_reentrant",
    "FoldUnfold",
    "CpuConstants",
    "CpuOperands",
    "ValuesOnTheCpu",
    "OldStyleNorms",
    "Pools",
    "Float64",
    "Norms",
    "Activations",
    "Resamples",
    "pool_stem",
    "instance",
)
