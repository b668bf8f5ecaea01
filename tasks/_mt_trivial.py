"""Trivial systems of the translation task (:mod:`modtransfer.tasks.mt`), one per metric it decides on.

A baseline that is not clearly better than the trivial score of the metric a comparison is
decided on has not learned the task, and no call is made on it
(:meth:`modtransfer.core.task.Task.gate_info`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from modtransfer.core.model import IGNORE_INDEX
from modtransfer.core.task import Batch

from ._mt_data import PaddedSplit, corpus_bleu

#: Add-k smoothing constant of the count models (additive smoothing, Chen & Goodman 1999,
#: "An Empirical Study of Smoothing Techniques for Language Modeling").
TRIVIAL_ADD_K = 0.5


def trivial_bleu(val: PaddedSplit, train: PaddedSplit, tok: Any, rows: list[int]) -> dict[str, float]:
    """Corpus BLEU on the validation ``rows`` of two systems that translate nothing.

    ``copy``: the source sentence itself (names, numbers and cognates survive translation);
    ``frequent``: the most frequent target-side training words (whitespace-separated, from the
    detokenised training targets), in order of frequency, as many as the source's tokens times
    the training ratio of target words to source tokens.
    """
    assert val.refs is not None
    src_len = val.src_len - 1                          # without </s>
    sources = [tok.decode(val.src[i, : int(src_len[i])].tolist(), skip_special_tokens=True).strip() for i in rows]
    refs = [val.refs[i] for i in rows]
    lengths = (train.tgt_len - 1).tolist()
    texts = tok.decode_batch([r[:n] for r, n in zip(train.tgt_in[:, 1:].tolist(), lengths, strict=True)])
    words = Counter(w for text in texts for w in text.split())
    ratio = sum(words.values()) / float((train.src_len - 1).sum())  # target words per source token
    ranked = [w for w, _ in words.most_common(max(1, round(ratio * int(src_len.max()))))]
    frequent = [" ".join(ranked[: max(1, round(ratio * int(src_len[i])))]) for i in rows]
    return {"copy": corpus_bleu(sources, refs), "frequent": corpus_bleu(frequent, refs)}


def target_count_losses(train: PaddedSplit, batches: list[Batch], vocab: int,
                        k: float = TRIVIAL_ADD_K) -> dict[str, float]:
    """Nats per target token, on the targets of ``batches``, of two count models of the training targets.

    ``unigram``: add-k smoothed target-token frequencies; ``bigram``: add-k smoothed
    ``p(y | previous target token)``, ``<s>`` before the first. Both ignore the source: a
    translation model that does no better has learned the target language, not to translate.
    """
    kept = train.tgt_out != IGNORE_INDEX
    prev_train, next_train = train.tgt_in[kept].long(), train.tgt_out[kept].long()
    unigram = torch.bincount(next_train, minlength=vocab).double()
    pairs = torch.bincount(prev_train * vocab + next_train, minlength=vocab * vocab).double().view(vocab, vocab)
    prev = torch.cat([b["tgt_in"][b["tgt_out"] != IGNORE_INDEX] for b in batches]).long()
    target = torch.cat([b["tgt_out"][b["tgt_out"] != IGNORE_INDEX] for b in batches]).long()
    p_uni = (unigram[target] + k) / (unigram.sum() + k * vocab)
    p_bi = (pairs[prev, target] + k) / (pairs.sum(1)[prev] + k * vocab)
    return {"unigram": float(-p_uni.log().mean()), "bigram": float(-p_bi.log().mean())}
