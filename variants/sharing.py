"""Parameter sharing across layers (Lan et al. 2020, ALBERT, arXiv 1909.11942).

A sharing component says, per stack, whether the stack reuses one block n_layers times
(h_{l+1} = Block(h_l) with the same weights at every depth): the stack keeps its depth and
compute but holds one block's parameters. Narang et al. 2021 test it for all stacks and for the
encoder or the decoder alone of an encoder-decoder.

none (baseline): every layer has its own block.
all: every stack shares one block.
encoder / decoder: only the encoder (or the decoder) shares.
"""

from __future__ import annotations

from modtransfer.core.components import register_component
from modtransfer.core.variant import selector

_ALBERT = "Lan et al. 2020, arXiv 1909.11942"


@register_component("sharing", "all", paper=_ALBERT)
def share_all(stack: str) -> bool:
    return True


@register_component("sharing", "encoder", paper=_ALBERT)
def share_encoder(stack: str) -> bool:
    """Only the encoder reuses one block."""
    return stack == "encoder"


@register_component("sharing", "decoder", paper=_ALBERT)
def share_decoder(stack: str) -> bool:
    """Only the decoder reuses one block."""
    return stack == "decoder"


selector("block_sharing", slot="sharing", paper=_ALBERT, sharing="all",
         description="Every stack applies one shared block n_layers times (ALBERT cross-layer sharing).")
selector("encoder_block_sharing", slot="sharing", paper=_ALBERT, requires=("encoder_decoder",), sharing="encoder",
         description="Only the encoder of an encoder-decoder shares one block across its layers.")
selector("decoder_block_sharing", slot="sharing", paper=_ALBERT, requires=("encoder_decoder",), sharing="decoder",
         description="Only the decoder of an encoder-decoder shares one block across its layers.")
