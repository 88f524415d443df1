"""PyTorch's inference fast paths for transformer layers, as the CPU runs them, op for op on
meta or fake tensors (for `kernels.DeviceKernels`).

In eval mode without autograd (the measured inference pass runs under `inference_mode`),
`nn.MultiheadAttention` self-attention calls `torch._native_multi_head_attention` and
`nn.TransformerEncoderLayer` calls `torch._transformer_encoder_layer_fwd`, C++ functions that
neither the meta device (no kernel) nor a fake tensor (outputs only) see inside. On the CPU
(aten/src/ATen/native/transformers/attention.cpp, `native_multi_head_attention_cpu`) the
attention keeps its whole T×T score matrix beside the packed q, k and v: more than the flash
kernel the slow path would run. Each function below follows its C++ source allocation for
allocation. For `nn.MultiheadAttention`, PyTorch's own Python decides when the fast path runs
(its device check is told that meta is the CPU); `nn.TransformerEncoderLayer`'s check also
refuses any forward hook, which the trace attaches to every module, so
`encoder_layer_takes_fast_path` repeats its conditions (torch 2.13).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import activation

from nin_profile.engine.devices import encoder_layer_takes_fast_path, encoder_may_pack_nested
from nin_profile.engine.memory import one_op
from nin_profile.errors import PackedByValues

aten = torch.ops.aten


def native_mha_on_cpu(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    embed_dim: int,
    num_head: int,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor,
    mask: torch.Tensor | None = None,
    need_weights: bool = True,
    average_attn_weights: bool = True,
    mask_type: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`_native_multi_head_attention` on the CPU. Under autocast the op is on the CPU's
    lower-precision list: each floating-point argument is cast on its own (query, key and
    value, the same tensor, three times), and the kernel runs on the casts. `mask_type` (which
    shape the mask has) allocates nothing here: the softmax is over the last dim, where
    `_masked_softmax` reads a (B, L) or (L, L) mask as it is."""
    args = [query, key, value, qkv_weight, qkv_bias, proj_weight, proj_bias]
    options = (embed_dim, num_head, mask, need_weights, average_attn_weights)
    if not torch.is_autocast_enabled("cpu"):
        return _native_mha(args, *options)
    half = torch.get_autocast_dtype("cpu")
    with torch.autocast("cpu", enabled=False):
        return _native_mha([t.to(half) if t.is_floating_point() else t for t in args], *options)


@one_op()  # the CPU runs these steps inside one op
def _native_mha(
    args: list[torch.Tensor],
    embed_dim: int,
    num_head: int,
    mask: torch.Tensor | None,
    need_weights: bool,
    average_attn_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`native_multi_head_attention_cpu`: the projection [B, T, 3D] (`qkv_projection`: one
    product for self-attention, where query, key and value are one tensor; three and a `cat`
    where they are not, as after autocast cast each on its own); q, k and v packed in one
    [3B, H, T, d] tensor (`_transform_bias_rescale_qkv`), which lives to the end, after which
    the projection is let go; the scores [B·H, T, T] (`bmm_nt`), softmaxed in place without a
    mask; with one, the mask made boolean (`masked_softmax`) and a new output
    (`_masked_softmax`) that replaces the scores; let go after the context unless the weights
    are returned;
    the context written into q's storage (`bmm_nn`), reordered to [B, T, D]
    (`transform_0213`, let go after) and projected (`linear`); the weights averaged over
    the heads where asked. `args`: query, key, value, qkv_weight, qkv_bias (added inside the
    packing, no tensor of its own), proj_weight, proj_bias."""
    query, key, value, qkv_weight, _, proj_weight, proj_bias = args
    batch, steps, _ = query.shape
    head_dim = embed_dim // num_head
    if query is key and key is value:
        qkv = torch.matmul(query, qkv_weight.t())
    else:
        parts = zip((query, key, value), qkv_weight.split(embed_dim, 0), strict=True)
        qkv = torch.cat([torch.matmul(x, w.t()) for x, w in parts], 2)
    packed = torch.empty((3 * batch, num_head, steps, head_dim), dtype=qkv.dtype, device=qkv.device)
    del qkv
    q, k, v = packed.split(batch, 0)
    flat = (batch * num_head, steps, head_dim)
    scores = torch.bmm(q.reshape(flat), k.reshape(flat).transpose(1, 2))
    if mask is None:
        aten._softmax.out(scores, -1, False, out=scores)
    else:  # `masked_softmax`: the mask made boolean, then `_masked_softmax`'s new output
        boolean = mask if mask.dtype == torch.bool else mask.to(torch.bool)
        scores = torch.empty_like(scores)
        del boolean
    context = torch.bmm(scores, v.reshape(flat), out=q.view(flat))
    weights = scores.view(batch, num_head, steps, steps) if need_weights else None
    del scores
    reordered = context.view(batch, num_head, steps, head_dim).permute(0, 2, 1, 3).contiguous()
    out = F.linear(reordered.view(batch * steps, embed_dim), proj_weight, proj_bias)
    del reordered
    if weights is not None and average_attn_weights:
        weights = weights.sum(1)
        weights /= num_head
    return out.view(batch, steps, embed_dim), weights


@one_op()  # the CPU runs these steps inside one op
def transformer_encoder_layer_on_cpu(
    layer: nn.TransformerEncoderLayer, src: torch.Tensor, mask: Any, mask_type: Any
) -> torch.Tensor:
    """`transformer_encoder_layer_forward` (transformers/transformer.cpp): attention through
    `_native_multi_head_attention`, its output added to the input in place, layer norms as
    `at::layer_norm`, and the feed-forward as `_addmm_activation` (the first product and its
    ReLU or GELU in one output) then `addmm`, each output added to in place."""
    attn, eps = layer.self_attn, layer.norm1.eps
    embed_dim = attn.embed_dim

    def norm(x: torch.Tensor, which: nn.LayerNorm) -> torch.Tensor:
        return F.layer_norm(x, (embed_dim,), which.weight, which.bias, eps)

    x = norm(src, layer.norm1) if layer.norm_first else src
    x = native_mha_on_cpu(
        x, x, x, embed_dim, attn.num_heads, attn.in_proj_weight, attn.in_proj_bias,
        attn.out_proj.weight, attn.out_proj.bias, mask, False, True, mask_type,
    )[0]  # fmt: skip
    x.add_(src)
    if not layer.norm_first:
        x = norm(x, layer.norm1)
    residual = x
    if layer.norm_first:
        x = norm(x, layer.norm2)
    x = _feed_forward(x, layer)
    x.add_(residual)
    del residual
    return x if layer.norm_first else norm(x, layer.norm2)


def _feed_forward(x: torch.Tensor, layer: nn.TransformerEncoderLayer) -> torch.Tensor:
    """`ffn`: `_addmm_activation(b1, x, w1ᵀ)` then `addmm(b2, ·, w2ᵀ)` on [B·T, ·] views."""
    batch, steps, width = x.shape
    gelu = layer.activation_relu_or_gelu == 2
    hidden = torch._addmm_activation(
        layer.linear1.bias, x.view(batch * steps, width), layer.linear1.weight.t(), use_gelu=gelu
    )
    out = torch.addmm(layer.linear2.bias, hidden, layer.linear2.weight.t())
    return out.view(batch, steps, -1)


@contextlib.contextmanager
def cpu_fast_paths() -> Iterator[None]:
    """While a CPU inference is traced: the attention fast paths run as above. Meta tensors
    pass `nn.MultiheadAttention`'s device check; `nn.TransformerEncoderLayer` decides by
    `encoder_layer_takes_fast_path`."""
    check_device = activation._check_arg_device
    native_mha = torch._native_multi_head_attention
    encoder_forward = nn.TransformerEncoderLayer.forward

    def meta_is_cpu(x: torch.Tensor | None) -> bool:
        return x is None or x.device.type == "meta" or check_device(x)

    nn.TransformerEncoderLayer.forward = _encoder_forward(encoder_forward)  # type: ignore[method-assign]
    activation._check_arg_device = meta_is_cpu
    torch._native_multi_head_attention = native_mha_on_cpu  # type: ignore[assignment]
    try:
        yield
    finally:
        torch._native_multi_head_attention = native_mha
        activation._check_arg_device = check_device
        nn.TransformerEncoderLayer.forward = encoder_forward  # type: ignore[method-assign]


def _encoder_forward(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def forward(
        self: nn.TransformerEncoderLayer,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        # as the layer's forward begins: boolean masks made additive float ones, which
        # `merge_masks` then adds into one (batch, heads, T, T) float mask
        src_key_padding_mask = F._canonical_mask(
            mask=src_key_padding_mask,
            mask_name="src_key_padding_mask",
            other_type=F._none_or_dtype(src_mask),
            other_name="src_mask",
            target_type=src.dtype,
        )
        src_mask = F._canonical_mask(
            mask=src_mask,
            mask_name="src_mask",
            other_type=None,
            other_name="",
            target_type=src.dtype,
            check_other=False,
        )
        if not encoder_layer_takes_fast_path(self, src, src_mask, src_key_padding_mask):
            return original(self, src, src_mask, src_key_padding_mask, is_causal)
        mask, mask_type = self.self_attn.merge_masks(src_mask, src_key_padding_mask, src)
        return transformer_encoder_layer_on_cpu(self, src, mask, mask_type)

    return forward


@contextlib.contextmanager
def nested_packing_refused(device: str) -> Iterator[None]:
    """While a step is traced for `device`: an `nn.TransformerEncoder` that would pack its
    batch into a nested tensor raises `PackedByValues`. The trace cannot follow it (the nested
    tensor is as long as the padding mask's values make it; meta passes the encoder's own test
    only where `mask_check` asks for the values, fake tensors run it on made-up values), so the
    run refuses rather than give the padded batch's figures for the packed one."""
    forward = nn.TransformerEncoder.forward

    def refusing_forward(
        self: nn.TransformerEncoder,
        src: torch.Tensor,
        mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
    ) -> torch.Tensor:
        # a CUDA AMP trace holds CUDA's autocast state on, as the encoder asks it (autocast.py)
        cuda_autocast = device == "cuda" and torch.is_autocast_enabled("cuda")
        if encoder_may_pack_nested(self, src, mask, src_key_padding_mask, cuda_autocast):
            raise PackedByValues()
        return forward(self, src, mask, src_key_padding_mask, is_causal)

    nn.TransformerEncoder.forward = refusing_forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.TransformerEncoder.forward = forward  # type: ignore[method-assign]
