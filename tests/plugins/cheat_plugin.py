"""A planted cheat (test-only): causal self-attention that also sees the next token.

Position i of a decoder attends to keys j <= i + 1, so in language modelling it can read the
very token it has to predict (its target y_i = x_{i+1}). An honest model cannot do that, so a
budget under which this variant does *not* come out far ahead of the baseline cannot tell a
cheating model from an honest one: it has not trained long enough for attention to matter.
``tests/test_task_gate.py`` uses it to check that the lm task's default budget learns.

Registered with the public decorators only, like an outside plugin, and trained through the
same model path as every real variant (the ``attention`` slot of the spec):
``modtransfer run PLAN.yaml --plugin tests/plugins/cheat_plugin.py`` with variant
``cheat_peek_ahead``. The contract suite (``modtransfer check``) rejects it as non-causal.
Encoder (non-causal) self-attention and cross-attention are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from modtransfer import ModelSpec, register_component, register_variant
from modtransfer.variants.baseline.attention import MultiHeadAttention, additive_mask

#: How many tokens beyond its own position a causal query may see.
PEEK = 1


@register_component("attention", "peek_ahead")
class PeekAheadAttention(MultiHeadAttention):
    """Scaled dot-product attention whose causal mask lets position i see keys j <= i + PEEK.

    The mask is always passed explicitly (never ``is_causal``), so the leak is really there.
    """

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, pad_mask: Tensor | None, bias: Tensor | None) -> Tensor:
        if not self.causal:
            return super().attend(q, k, v, pad_mask=pad_mask, bias=bias)
        if k.shape[1] != q.shape[1]:
            k = k.expand(-1, q.shape[1], -1, -1)
            v = v.expand(-1, q.shape[1], -1, -1)
        q_len, k_len = q.shape[2], k.shape[2]
        mask = additive_mask(q_len, k_len, causal=False, pad_mask=pad_mask, bias=bias, device=q.device, dtype=q.dtype)
        beyond = torch.ones(q_len, k_len, device=q.device, dtype=torch.bool).triu(1 + PEEK + k_len - q_len)
        mask = mask.masked_fill(beyond, float("-inf"))
        drop = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, scale=self.scale)


@register_variant("cheat_peek_ahead", slot="attention", requires_any=("decoder", "encoder_decoder"))
def cheat_peek_ahead(spec: ModelSpec) -> ModelSpec:
    """Causal self-attention that also sees one token ahead (a planted leak, for tests only)."""
    return spec.replace(attention="peek_ahead")
