"""Data for the translation task (:mod:`modtransfer.tasks.mt`): BLEU, greedy decoding, and the
tokenised corpus as padded, length-capped splits.

BLEU: Papineni et al. 2002, "BLEU: a Method for Automatic Evaluation of Machine Translation"
(ACL 2002), computed with sacrebleu (Post 2018, "A Call for Clarity in Reporting BLEU Scores",
WMT 2018) at pinned settings. Decoding length cap as fairseq's ``max_len_a``/``max_len_b``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from modtransfer.core.errors import UserError
from modtransfer.core.model import IGNORE_INDEX
from modtransfer.core.task import Batch

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
#: sacrebleu settings every BLEU in this project uses.
BLEU_SETTINGS: dict[str, Any] = {"tokenize": "13a", "lowercase": False, "smooth_method": "exp"}
CACHE_VERSION = 1
#: Greedy decoding stops after ``DECODE_LEN_A * source length + DECODE_LEN_B`` tokens.
DECODE_LEN_A, DECODE_LEN_B = 1.5, 10


# -- BLEU and decoding ------------------------------------------------------------------------
def _bleu() -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(**BLEU_SETTINGS)


def corpus_bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus BLEU (0-100) of detokenised hypotheses against one reference each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return float(_bleu().corpus_score(hypotheses, [references]).score)


def bleu_signature() -> str:
    """sacrebleu's signature of :data:`BLEU_SETTINGS` (names the version and every setting)."""
    bleu = _bleu()
    bleu.corpus_score(["a"], [["a"]])  # the signature is complete after one scoring
    return str(bleu.get_signature())


@torch.no_grad()
def greedy_decode(model: Any, src: Tensor, src_pad: Tensor | None, bos: int, eos: int, max_len: int) -> Tensor:
    """Greedy translations ``[B, <= max_len]`` (without ``bos``); after a row's ``eos``, ``eos``.

    No key/value cache: the decoder re-reads the whole prefix each step, which is simple and
    fast enough for evaluation-sized batches. A row that has produced ``eos`` leaves the batch;
    decoding stops when every row has.
    """
    n = src.shape[0]
    memory = model.encode(src, src_pad)
    out = torch.full((n, max_len), eos, dtype=torch.long, device=src.device)
    rows = torch.arange(n, device=src.device)           # rows still decoding
    ys = torch.full((n, 1), bos, dtype=torch.long, device=src.device)
    steps = 0
    for step in range(max_len):
        h = model.decode(ys, None, memory, src_pad)
        nxt = model.log_probs(h[:, -1:])[:, -1].argmax(-1)
        out[rows, step] = nxt
        steps = step + 1
        going = nxt != eos
        if not bool(going.any()):
            break
        if not bool(going.all()):
            rows, nxt, memory = rows[going], nxt[going], memory[going]
            ys = ys[going]
            src_pad = src_pad[going] if src_pad is not None else None
        ys = torch.cat([ys, nxt[:, None]], dim=1)
    return out[:, :steps]


def decode_limit(src_len: int, max_len: int) -> int:
    """Longest translation decoded for a source of ``src_len`` tokens: ``1.5 * src_len + 10``.

    A length cap proportional to the source (as fairseq's ``max_len_a``/``max_len_b``); on the
    Bible only 0.3% of references are longer, and it saves a third of the decoding time.
    """
    return max(1, min(max_len, int(DECODE_LEN_A * src_len) + DECODE_LEN_B))


def strip_after_eos(ids: list[int], eos: int) -> list[int]:
    """Tokens before the first ``eos``."""
    return ids[: ids.index(eos)] if eos in ids else ids


# -- preprocessing ----------------------------------------------------------------------------
def _pack(seqs: list[list[int]], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int32)
    flat = torch.tensor([t for s in seqs for t in s], dtype=dtype)
    return flat, lengths


def build_corpus(pairs: dict[str, list[tuple[str, str]]], vocab_size: int) -> dict[str, Any]:
    """Train the shared BPE on the training split; tokenise every split compactly.

    Each split is stored as flat token tensors plus lengths (no padding, no length cap), so
    one cache serves every ``max_len``.
    """
    from ._tokenise import train_byte_bpe

    train = pairs["train"]
    if not train:
        raise UserError("task 'mt': the training split is empty")
    texts = (t for pair in train for t in pair)
    tok = train_byte_bpe(texts, vocab_size, SPECIAL_TOKENS, add_prefix_space=True)
    if [tok.token_to_id(t) for t in SPECIAL_TOKENS] != [PAD, BOS, EOS, UNK]:
        raise RuntimeError("special tokens did not receive ids 0-3")
    dtype = torch.int16 if tok.get_vocab_size() < 2**15 else torch.int32
    out: dict[str, Any] = {"version": CACHE_VERSION, "tokenizer_json": tok.to_str()}
    for split in ("train", "val", "test"):
        src = [e.ids for e in tok.encode_batch([s for s, _ in pairs[split]], add_special_tokens=False)]
        tgt = [e.ids for e in tok.encode_batch([t for _, t in pairs[split]], add_special_tokens=False)]
        out[f"{split}_src"], out[f"{split}_src_len"] = _pack(src, dtype)
        out[f"{split}_tgt"], out[f"{split}_tgt_len"] = _pack(tgt, dtype)
        if split != "train":
            out[f"{split}_refs"] = [t for _, t in pairs[split]]
    return out


def _padded(flat: Tensor, lengths: Tensor, width: int, fill: int, prefix: int | None = None,
            suffix: int | None = None) -> Tensor:
    """Rows ``[prefix] + seq + [suffix]`` left-aligned in a ``[N, width]`` matrix of ``fill``.

    Vectorised: every token's (row, column) is computed at once, no per-row Python.
    """
    n = len(lengths)
    lengths = lengths.long()
    out = torch.full((n, width), fill, dtype=torch.int32)
    shift = 1 if prefix is not None else 0
    if prefix is not None:
        out[:, 0] = prefix
    rows = torch.repeat_interleave(torch.arange(n), lengths)
    starts = torch.cumsum(lengths, 0) - lengths
    cols = torch.arange(len(flat)) - torch.repeat_interleave(starts, lengths) + shift
    out[rows, cols] = flat.to(torch.int32)
    if suffix is not None:
        out[torch.arange(n), lengths + shift] = suffix
    return out


class PaddedSplit:
    """One split as padded matrices (length-capped), ready to be indexed into batches."""

    def __init__(self, data: dict[str, Any], split: str, max_len: int) -> None:
        src_len, tgt_len = data[f"{split}_src_len"].long(), data[f"{split}_tgt_len"].long()
        keep = (src_len + 1 <= max_len) & (tgt_len + 1 <= max_len) & (src_len > 0) & (tgt_len > 0)
        self.total = len(keep)
        self.rows = keep.nonzero().squeeze(1)          # indices into the uncapped split

        def select(flat: Tensor, lens: Tensor) -> Tensor:  # the tokens of the kept rows
            return flat[keep[torch.repeat_interleave(torch.arange(len(lens)), lens)]]

        self.src_len = src_len[keep] + 1               # + eos
        self.tgt_len = tgt_len[keep] + 1               # + bos (input) / eos (output)
        src_flat = select(data[f"{split}_src"], src_len)
        tgt_flat = select(data[f"{split}_tgt"], tgt_len)
        self.src = _padded(src_flat, src_len[keep], max_len, PAD, suffix=EOS)
        self.tgt_in = _padded(tgt_flat, tgt_len[keep], max_len, PAD, prefix=BOS)
        self.tgt_out = _padded(tgt_flat, tgt_len[keep], max_len, IGNORE_INDEX, suffix=EOS)
        refs = data.get(f"{split}_refs")
        self.refs = [refs[i] for i in self.rows.tolist()] if refs is not None else None

    def __len__(self) -> int:
        return len(self.src_len)

    def batch(self, idx: Tensor) -> Batch:
        s = int(self.src_len[idx].max())
        t = int(self.tgt_len[idx].max())
        return {
            "src": self.src[idx, :s].long(),
            "src_pad": torch.arange(s) >= self.src_len[idx, None],
            "tgt_in": self.tgt_in[idx, :t].long(),
            "tgt_out": self.tgt_out[idx, :t].long(),
            "tgt_pad": torch.arange(t) >= self.tgt_len[idx, None],
        }
