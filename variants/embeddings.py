"""Token embeddings and how they are tied to the output layer (Narang et al. 2021, "embeddings").

tied (baseline; Press & Wolf 2017, arXiv 1608.05859): one matrix E [V, d] embeds the encoder
input, the decoder input and scores the output (logits = h E^T); inputs are scaled by sqrt(d)
(Vaswani et al. 2017).
untied: every use has its own matrix.
tied_input: encoder and decoder inputs share one matrix; the output owns another.
tied_decoder: the decoder input and the output share one matrix; the encoder has its own.

factorized / factorized_shared (Lan et al. 2020, ALBERT, arXiv 1909.11942): the input
embedding is a V x E table followed by an E x d projection, e(w) = P T[w], with E = d_embed
<< d (128 at d 768 in ALBERT and Narang et al.; d_model / 4 here unless ``d_embed`` is set).
``factorized`` scores the output with its own full V x d matrix; ``factorized_shared`` ties
the output through the projection, logits = (h P) T^T, so nothing of size V x d remains.
That split is read off Narang et al.'s Table 1 parameter counts (d 768, V 32128, E 128,
198.2M non-embedding): "Factorized Embedding" 227M = 198.2 + (V E + E d = 4.2M) + (V d =
24.7M); "Factorized & shared embeddings" 202M = 198.2 + 4.2; the same holds for the block
sharing rows (45M and 20M).

adaptive_input (Baevski & Auli 2019, "Adaptive Input Representations for Neural Language
Modeling", arXiv 1809.10853): the vocabulary is cut into frequency clusters (the same cutoffs
as the adaptive softmax) embedded in E, E/k, E/k^2, ... dimensions (k = ``adaptive_div``) and
projected to d: e(w) = P_i T_i[w] for w in cluster i. Rare words get fewer parameters. This
ASSUMES TOKEN IDS ARE ORDERED BY FREQUENCY (id 0 the most frequent): a task that uses it
should build its vocabulary in frequency order. The output is tied to the effective matrix
[P_i T_i^T]_i (Baevski & Auli tie adaptive input and output), which is materialised once per
forward (sum_i |V_i| d_i d multiply-adds, independent of the batch size).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modtransfer.core.components import register_component
from modtransfer.core.spec import ModelSpec
from modtransfer.core.variant import selector
from modtransfer.variants.baseline.embeddings import TiedEmbedding, embedding_matrix, topology_stacks
from modtransfer.variants.output import adaptive_bounds, cluster_dims


class UnscaledTiedEmbedding(nn.Module):
    """One matrix E for every input and the output, inputs not multiplied by sqrt(d).

    x = E[w] and logits = (s h) E^T, with E ~ N(0, ``table_std``^2) and output scale s. The
    function at init can equal the baseline's ``tied`` (T5: E ~ N(0, 1), s = d^-0.5 is the
    baseline's N(0, 1/d) table times sqrt(d)); the parameterisation, and with it what an
    optimiser step does to the embedding, is what differs.
    """

    table_std = 1.0
    scale_output = False

    def __init__(self, spec: ModelSpec, topology: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(spec.vocab_size, spec.d_model) * self.table_std)
        self.output_scale = spec.d_model ** -0.5 if self.scale_output else 1.0
        self.output_dim = spec.d_model

    def embed(self, tokens: Tensor, stack: str) -> Tensor:
        return F.embedding(tokens, self.weight)

    def output_weight(self) -> Tensor | None:
        return self.weight

    def to_output(self, h: Tensor) -> Tensor:
        return h * self.output_scale if self.scale_output else h


@register_component("embedding", "tied_t5", paper="Raffel et al. 2020, arXiv 1910.10683")
class T5Embedding(UnscaledTiedEmbedding):
    """T5's shared embedding: E ~ N(0, 1) for the encoder and decoder inputs and the output,
    no input multiplier, the decoder output rescaled by d_model^-0.5 before the tied logits.

    Sources: Mesh TensorFlow's T5 (the ``shared`` embedding's N(0, 1) init and the
    ``d_model ** -0.5`` rescaling before the tied output layer, as ported to Hugging Face
    ``T5ForConditionalGeneration`` with ``tie_word_embeddings``); Raffel et al. 2020, section 2.1
    (input and output embeddings shared).
    """

    table_std = 1.0
    scale_output = True


@register_component("embedding", "tied_gpt2", paper="Radford et al. 2019 (GPT-2)")
class GPT2Embedding(UnscaledTiedEmbedding):
    """GPT-2's token embedding ``wte``: E ~ N(0, 0.02^2), no input multiplier, tied to the
    output layer (logits = h E^T). Sources: openai/gpt-2 ``src/model.py`` (``wte`` initialised
    N(0, 0.02), logits ``h @ wte^T``); karpathy/nanoGPT ``model.py`` (``lm_head`` tied to ``wte``).
    """

    table_std = 0.02
    scale_output = False


@register_component("embedding", "untied")
class UntiedEmbedding(nn.Module):
    """Separate input matrices per stack; the output layer owns its own matrix."""

    def __init__(self, spec: ModelSpec, topology: str) -> None:
        super().__init__()
        stacks = topology_stacks(topology)
        self.tables = nn.ParameterDict({s: embedding_matrix(spec.vocab_size, spec.d_model) for s in stacks})
        self.scale = math.sqrt(spec.d_model)
        self.output_dim = spec.d_model

    def embed(self, tokens: Tensor, stack: str) -> Tensor:
        return F.embedding(tokens, self.tables[stack]) * self.scale

    def output_weight(self) -> Tensor | None:
        return None

    def to_output(self, h: Tensor) -> Tensor:
        return h


@register_component("embedding", "tied_input", paper="Narang et al. 2021, arXiv 2102.11972")
class TiedInputEmbedding(TiedEmbedding):
    """Encoder and decoder inputs share one matrix; the output layer owns its own."""

    def output_weight(self) -> Tensor | None:
        return None


@register_component("embedding", "tied_decoder", paper="Press & Wolf 2017, arXiv 1608.05859")
class TiedDecoderEmbedding(nn.Module):
    """The decoder input and the output share one matrix; the encoder input has its own.

    Without a decoder (an encoder topology) the shared matrix serves the output alone.
    """

    def __init__(self, spec: ModelSpec, topology: str) -> None:
        super().__init__()
        stacks = ["decoder", *(["encoder"] if "encoder" in topology_stacks(topology) else [])]
        self.tables = nn.ParameterDict({s: embedding_matrix(spec.vocab_size, spec.d_model) for s in stacks})
        self.scale = math.sqrt(spec.d_model)
        self.output_dim = spec.d_model

    def embed(self, tokens: Tensor, stack: str) -> Tensor:
        return F.embedding(tokens, self.tables[stack]) * self.scale

    def output_weight(self) -> Tensor | None:
        return self.tables["decoder"]

    def to_output(self, h: Tensor) -> Tensor:
        return h


# -- factorized (ALBERT) ----------------------------------------------------------------
def factorized_dim(spec: ModelSpec) -> int:
    """``spec.d_embed``, else d_model / 4 (128 at d_model 512), at least 8."""
    return spec.d_embed or max(8, spec.d_model // 4)


@register_component("embedding", "factorized", paper="Lan et al. 2020, arXiv 1909.11942")
class FactorizedEmbedding(nn.Module):
    """e(w) = P T[w]: a V x E table and an E x d projection, shared by every input stack.

    The output layer owns its full V x d matrix (see ``factorized_shared`` for the tied form).
    """

    tied_output = False

    def __init__(self, spec: ModelSpec, topology: str) -> None:
        super().__init__()
        dim = factorized_dim(spec)
        self.table = embedding_matrix(spec.vocab_size, dim)
        self.proj = nn.Linear(dim, spec.d_model, bias=False)
        # N(0, 1/E): with sqrt(E)-scaled table rows, e(w) has unit-variance entries like the baseline
        nn.init.normal_(self.proj.weight, std=dim**-0.5)
        self.scale = math.sqrt(dim)
        self.output_dim = dim if self.tied_output else spec.d_model

    def embed(self, tokens: Tensor, stack: str) -> Tensor:
        return self.proj(F.embedding(tokens, self.table) * self.scale)

    def output_weight(self) -> Tensor | None:
        return self.table if self.tied_output else None

    def to_output(self, h: Tensor) -> Tensor:
        # tied through the projection: logits = (h P) T^T
        return h @ self.proj.weight if self.tied_output else h


@register_component("embedding", "factorized_shared", paper="Lan et al. 2020, arXiv 1909.11942")
class FactorizedSharedEmbedding(FactorizedEmbedding):
    """Factorized input embedding whose table and projection also score the output."""

    tied_output = True


# -- adaptive input (Baevski & Auli) ----------------------------------------------------
@register_component("embedding", "adaptive_input", paper="Baevski & Auli 2019, arXiv 1809.10853")
class AdaptiveInput(nn.Module):
    """Frequency clusters embedded at E, E/k, E/k^2, ... and projected to d_model.

    Token ids must be ordered by frequency; the cutoffs are ``adaptive_bounds(spec)``.
    """

    def __init__(self, spec: ModelSpec, topology: str) -> None:
        super().__init__()
        self.bounds = adaptive_bounds(spec)
        d = spec.d_model
        dims = cluster_dims(spec.embed_dim, len(self.bounds) - 1, spec.adaptive_div, project=True)
        self.dims = dims
        sizes = [hi - lo for lo, hi in zip(self.bounds, self.bounds[1:], strict=False)]
        self.tables = nn.ParameterList(embedding_matrix(size, dim) for size, dim in zip(sizes, dims, strict=True))
        self.projs = nn.ModuleList(nn.Linear(dim, d, bias=False) if dim != d else nn.Identity() for dim in dims)
        for proj in self.projs:  # N(0, 1/d): effective rows P_i T_i[w] have the baseline's N(0, 1/d) scale
            if isinstance(proj, nn.Linear):
                nn.init.normal_(proj.weight, std=d**-0.5)
        self.scale = math.sqrt(d)
        self.output_dim = d

    def effective_weight(self) -> Tensor:
        """The [V, d] matrix whose row w is P_i T_i[w] (cluster i holds w)."""
        return torch.cat([proj(table) for table, proj in zip(self.tables, self.projs, strict=True)], dim=0)

    def embed(self, tokens: Tensor, stack: str) -> Tensor:
        return F.embedding(tokens, self.effective_weight()) * self.scale

    def output_weight(self) -> Tensor | None:
        return self.effective_weight()

    def to_output(self, h: Tensor) -> Tensor:
        return h


# -- variants ---------------------------------------------------------------------------
selector("untied_embedding", slot="embedding", paper="Narang et al. 2021, arXiv 2102.11972", requires=("vocab",),
         embedding="untied",
         description="Separate input embeddings per stack and a separate output matrix (adds V x d per use).")
selector("tied_encoder_decoder_input", slot="embedding", paper="Narang et al. 2021, arXiv 2102.11972",
         requires=("vocab", "encoder_decoder"), embedding="tied_input",
         description="Encoder and decoder inputs share one embedding; the output softmax has its own matrix.")
selector("tied_decoder_input_output", slot="embedding", paper="Press & Wolf 2017, arXiv 1608.05859",
         requires=("vocab", "encoder_decoder"), embedding="tied_decoder",
         description="Decoder input and output share one embedding; the encoder input has its own.")
selector("factorized_embedding", slot="embedding", paper="Lan et al. 2020, arXiv 1909.11942", requires=("vocab",),
         embedding="factorized", d_embed=factorized_dim,
         description="Factorized input embedding V x E + E x d (E = d_model/4), output softmax untied.")
selector("factorized_shared_embedding", slot="embedding", paper="Lan et al. 2020, arXiv 1909.11942",
         requires=("vocab",), embedding="factorized_shared", d_embed=factorized_dim,
         description="Factorized embedding V x E + E x d (E = d_model/4) that also scores the output through P.")
selector("adaptive_input", slot="embedding", paper="Baevski & Auli 2019, arXiv 1809.10853", requires=("vocab",),
         embedding="adaptive_input",
         description="Adaptive input: frequency clusters at d, d/4, d/16 projected to d (frequency-ordered vocabulary).")
selector("block_sharing_factorized_embedding", slot="sharing", paper="Lan et al. 2020, arXiv 1909.11942",
         requires=("vocab",), embedding="factorized", d_embed=factorized_dim, sharing="all",
         description="Block sharing (one block per stack) + factorized input embedding (Narang et al. 2021).")
selector("block_sharing_factorized_shared_embedding", slot="sharing", paper="Lan et al. 2020, arXiv 1909.11942",
         requires=("vocab",), embedding="factorized_shared", d_embed=factorized_dim, sharing="all",
         description="Block sharing + factorized embedding tied to the output (Narang et al. 2021).")
