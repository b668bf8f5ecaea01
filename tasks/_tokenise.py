"""Tokenisers shared by the text tasks: byte-level BPE (Sennrich et al. 2016, "Neural Machine
Translation of Rare Words with Subword Units", ACL 2016; GPT-2's byte alphabet, Radford et al.
2019) and character ids, each stored in the smallest integer type that holds the vocabulary."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


def byte_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of byte-level BPE (Radford et al. 2019).

    Printable Latin-1 bytes stand for themselves; the other bytes are shifted to code points
    from 256 up, so every byte string is a string of visible characters.
    """
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def train_byte_bpe(
    texts: Iterable[str], vocab_size: int, special_tokens: list[str], add_prefix_space: bool,
) -> Any:
    """A byte-level BPE (Sennrich et al. 2016; GPT-2's byte alphabet) trained on ``texts``.

    Byte level means every string is encodable (no unknown tokens) and decoding is exact.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def bpe_chars_per_id(tok: Any) -> Tensor:
    """Characters each byte-level token contributes to decoded UTF-8 text (0 for specials).

    A character starts at every byte that is not a UTF-8 continuation byte (0x80-0xBF), so
    summing over any token sequence counts exactly the characters it decodes to.
    """
    to_byte = {c: b for b, c in byte_to_unicode().items()}
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    counts = torch.zeros(tok.get_vocab_size(), dtype=torch.int32)
    for piece, idx in tok.get_vocab().items():
        if piece in specials:
            continue
        counts[idx] = sum(1 for ch in piece if not 0x80 <= to_byte[ch] <= 0xBF)
    return counts


def smallest_int(n: int) -> torch.dtype:
    return torch.int16 if n < 2**15 else torch.int32


def encode_chars(text: str, vocab: list[str]) -> Tensor:
    """Character ids of ``text`` under ``vocab`` (characters outside it map to ``<unk>``, id 0)."""
    if not text:
        return torch.zeros(0, dtype=smallest_int(len(vocab)))
    points = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()
    known = torch.tensor([ord(c) for c in vocab[1:]], dtype=torch.long)
    size = int(max(points.max().item(), known.max().item() if len(known) else 0)) + 1
    lut = torch.zeros(size, dtype=torch.long)
    lut[known] = torch.arange(1, len(vocab))
    return lut[points].to(smallest_int(len(vocab)))


def encode_bpe(text: str, tok: Any) -> Tensor:
    """BPE ids of ``text``, encoded line by line (in parallel) and concatenated."""
    lines = text.splitlines(keepends=True)
    ids: list[int] = []
    for enc in tok.encode_batch(lines, add_special_tokens=False):
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=smallest_int(tok.get_vocab_size()))
