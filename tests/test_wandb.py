"""W&B as its users expect it: one run per cell (re-runs replace, never duplicate), groups that do
not merge across run folders, common summary keys, curves on the trainer's step, one report run
per report, and a W&B Report definition checked offline.

Everything is W&B offline mode, read back from the ``.wandb`` files themselves: they are LevelDB
log files of protobuf ``Record`` messages (wandb >= 0.19 no longer ships a Python reader, so
:func:`records` reads the framing: 32 KiB blocks of chunks, each with a 7-byte header).
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from modtransfer.run.store import Store
from modtransfer.run.wandb_folders import RUN_UID_KEY, remove_local_runs, run_folder_id, wandb_group

NAME = "smoke"
STEPS, EVAL_EVERY = 12, 4


def records(path: Path) -> Iterator[Any]:
    """Every ``Record`` of a ``.wandb`` file (LevelDB log format: FULL=1, FIRST=2, MIDDLE=3, LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def _key(item: Any) -> str:
    """An item's key: W&B stores it flat (``key``) or as a path (``nested_key``, one part per level)."""
    return item.key or ".".join(item.nested_key)


def read_run(folder: Path) -> dict[str, Any]:
    """The run record, history rows, final summary and step metrics of one offline run folder."""
    out: dict[str, Any] = {"run": None, "history": [], "summary": {}, "step_metric": {}}
    (log,) = folder.glob("*.wandb")
    for rec in records(log):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"] = rec.run
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out["summary"].update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "metric":
            out["step_metric"][rec.metric.glob_name or rec.metric.name] = rec.metric.step_metric
    return out


def offline_runs(run_dir: Path) -> dict[str, list[Path]]:
    """Run id -> its offline run folders under ``run_dir/wandb``."""
    out: dict[str, list[Path]] = {}
    for p in sorted((run_dir / "wandb" / "wandb").glob("offline-run-*")):
        out.setdefault(p.name.split("-", 3)[3], []).append(p)
    return out


def _cli(tmp: Path, plan: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "modtransfer", "run", str(plan), "--runs-dir", str(tmp / "runs"),
                           "--no-report"], env=env, capture_output=True, text=True, timeout=600, cwd=tmp)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 4-cell plan (baseline, gelu x 2 seeds) run once with the CLI, W&B offline, validation every 4 steps."""
    tmp = tmp_path_factory.mktemp("wb")
    plan = tmp / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "name": NAME, "size": "tiny", "seeds": 2, "variants": ["gelu"], "tasks": ["regression"],
        "spec": {"d_model": 16, "n_layers": 1, "d_ff": 32},
        "task_budget": {"regression": {"steps": STEPS, "batch_size": 8, "eval_every": EVAL_EVERY, "eval_batches": 1}},
        "wandb": {"mode": "offline", "project": "p"}}))
    first = _cli(tmp, plan)
    assert first.returncode == 0, first.stderr
    return {"tmp": tmp, "plan": plan, "run_dir": tmp / "runs" / NAME, "first": first}


def test_no_wandb_warning_is_printed_per_cell(tiny_run: dict[str, Any]) -> None:
    out = tiny_run["first"].stdout + tiny_run["first"].stderr
    assert "anonymous" not in out
    assert not [ln for ln in out.splitlines() if ln.lower().startswith("wandb:")], out


def test_one_run_per_cell_named_grouped_and_tagged(tiny_run: dict[str, Any]) -> None:
    run_dir = tiny_run["run_dir"]
    rows = {r["cell_id"]: r for r in Store(run_dir / "results.sqlite").rows()}
    runs = offline_runs(run_dir)
    assert len(rows) == 4 and set(runs) == set(rows) and all(len(f) == 1 for f in runs.values())
    uid = Store(run_dir / "results.sqlite").meta()[RUN_UID_KEY]
    for cell_id, (folder,) in runs.items():
        row, rec = rows[cell_id], read_run(folder)
        assert rec["run"].run_id == cell_id and rec["run"].run_group == f"{NAME}-{uid[:8]}"
        assert rec["run"].job_type == f"regression/{row['variant']}"
        assert rec["run"].display_name == f"{row['variant']}/regression/{row['seed']}"
        tags = set(rec["run"].tags)
        assert "impl:modtransfer" in tags and "size:tiny" in tags
        assert ("baseline" in tags) if row["variant"] == "baseline" else ("slot:activation" in tags)
        assert row["wandb_dir"] and (run_dir / row["wandb_dir"]).is_dir()


def test_summary_has_the_common_keys_and_the_row_values(tiny_run: dict[str, Any]) -> None:
    run_dir = tiny_run["run_dir"]
    for row in Store(run_dir / "results.sqlite").rows():
        (folder,) = offline_runs(run_dir)[row["cell_id"]]
        s = read_run(folder)["summary"]
        assert s["status"] == "done" and s["decides_on"] == "regression/val_mse"
        assert s["regression/val_mse"] == pytest.approx(row["primary_value"])
        assert s["regression/val_half_mse"] == pytest.approx(row["primary_value"] / 2)
        assert not [k for k in s if k.startswith(("val_", "primary/"))], "no key without its task and unit"
        assert s["params"] == row["params"] and s["flops_per_token"] == pytest.approx(row["flops_per_token"])
        assert s["tokens_per_s"] == pytest.approx(row["tokens_per_s"]) and s["mfu"] == pytest.approx(row["mfu"])
        assert 0 < s["wall_s"] <= row["wall_s"] and s["steps"] == STEPS


def test_validation_curve_on_the_trainer_step(tiny_run: dict[str, Any]) -> None:
    run_dir = tiny_run["run_dir"]
    row = Store(run_dir / "results.sqlite").rows()[0]
    (folder,) = offline_runs(run_dir)[row["cell_id"]]
    rec = read_run(folder)
    assert rec["step_metric"]["*"] == "trainer/global_step"
    val = [h for h in rec["history"] if "regression/val_mse" in h]  # the task's key, with its unit
    assert [h["trainer/global_step"] for h in val] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    train = [h for h in rec["history"] if "regression/train_half_mse" in h]
    assert train and all("trainer/global_step" in h for h in train)
    assert not [k for h in rec["history"] for k in h if k.startswith(("val_", "train_"))]
    stored = [c for c in row["curve"] if "val_mse" in c]  # the store's curve has the same points
    assert [c["step"] for c in stored] == [h["trainer/global_step"] for h in val]
    assert [c["val_mse"] for c in stored] == pytest.approx([h["regression/val_mse"] for h in val])


def test_rerun_keeps_one_run_per_cell(tiny_run: dict[str, Any]) -> None:
    run_dir, plan = tiny_run["run_dir"], tiny_run["plan"]
    before = offline_runs(run_dir)
    again = _cli(tiny_run["tmp"], plan)  # everything done: nothing trains, nothing is logged
    assert again.returncode == 0, again.stderr
    assert offline_runs(run_dir) == before
    victim = sorted(before)[0]  # a cell killed before its row was written: trained again on the next run
    with sqlite3.connect(run_dir / "results.sqlite") as con:
        con.execute("DELETE FROM cells WHERE cell_id = ?", (victim,))
    uid = Store(run_dir / "results.sqlite").meta()[RUN_UID_KEY]
    third = _cli(tiny_run["tmp"], plan)
    assert third.returncode == 0, third.stderr
    after = offline_runs(run_dir)
    assert set(after) == set(before) and all(len(f) == 1 for f in after.values()), "one run folder per cell id"
    assert after[victim] != before[victim], "the retrained cell's run was written anew"
    assert {k: v for k, v in after.items() if k != victim} == {k: v for k, v in before.items() if k != victim}
    assert read_run(after[victim][0])["run"].run_group == f"{NAME}-{uid[:8]}", "the run folder id is stable"


def test_two_run_folders_of_one_benchmark_get_different_groups(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / NAME, tmp_path / "b" / NAME
    assert run_folder_id(a, create=False) is None
    ids: list[str | None] = []
    workers = [threading.Thread(target=lambda: ids.append(run_folder_id(a))) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(set(ids)) == 1 and ids[0] == run_folder_id(a) == Store(a / "results.sqlite").meta()[RUN_UID_KEY]
    assert wandb_group(NAME, ids[0]) != wandb_group(NAME, run_folder_id(b))
    assert wandb_group(NAME, None) == NAME and len(wandb_group("x" * 300, ids[0])) == 128


def test_remove_local_runs_only_touches_that_id(tmp_path: Path) -> None:
    root = tmp_path / "wandb" / "wandb"
    for name in ("offline-run-20260101_000000-abc", "run-20260101_000001-abc", "offline-run-20260101_000000-xabc",
                 "offline-run-20260101_000000-abcd"):
        (root / name).mkdir(parents=True)
    assert remove_local_runs(tmp_path, "abc") == 2
    assert sorted(p.name for p in root.iterdir()) == ["offline-run-20260101_000000-abcd",
                                                      "offline-run-20260101_000000-xabc"]


def test_one_report_run_per_report_folder(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    from modtransfer.reports import build_report
    from modtransfer.reports.analysis import Settings
    from modtransfer.reports.summary import analyse_run
    from modtransfer.reports.wandb_push import report_run_id

    run_dir = tiny_run["run_dir"]
    a = analyse_run(run_dir, Settings(n_boot=100))
    rid = report_run_id(a, run_dir / "report")
    for _ in range(2):
        build_report(run_dir, wandb_mode="offline", settings=Settings(n_boot=100))
    reports = {k: v for k, v in offline_runs(run_dir).items() if k.startswith("report-")}
    assert list(reports) == [rid] and len(reports[rid]) == 1, "a rebuilt report replaces its run"
    rec = read_run(reports[rid][0])
    assert rec["run"].job_type == "report" and rec["run"].run_group == wandb_group(NAME, a.meta[RUN_UID_KEY])
    assert report_run_id(a, tmp_path / "elsewhere") != rid and report_run_id(a, run_dir / "report") == rid


def test_report_definition_offline(tiny_run: dict[str, Any], tmp_path: Path) -> None:
    from modtransfer.reports.analysis import Settings
    from modtransfer.reports.figures import Figures
    from modtransfer.reports.summary import analyse_run
    from modtransfer.reports.wandb_push import to_api, write_report_definition

    a = analyse_run(tiny_run["run_dir"], Settings(n_boot=100))
    (tmp_path / "main_table.md").write_text("| variant | regression |\n|---|---|\n| gelu | +0.1 |\n")
    figs = Figures(heatmap="heatmap.png", forest={"regression": "forest_regression.png"})
    write_report_definition(a, figs, tmp_path, "offline")
    defn = json.loads((tmp_path / "wandb_report.json").read_text())
    blocks = defn["blocks"]
    assert {"type": "MarkdownBlock", "text": (tmp_path / "main_table.md").read_text()} in blocks
    grids = [b for b in blocks if b["type"] == "PanelGrid"]
    assert grids[0]["panels"][-1]["media_keys"] == ["plots/forest_regression"]
    group = wandb_group(NAME, a.meta[RUN_UID_KEY])
    assert grids[1]["runsets"][0]["filters"] == f"Config('task') = 'regression' and Group = '{group}'"
    lines = [p for p in grids[1]["panels"] if p["type"] == "LinePlot"]
    assert [p["y"] for p in lines] == [["regression/val_mse"], ["regression/train_half_mse"]]
    (bars,) = [p for p in grids[1]["panels"] if p["type"] == "BarPlot"]
    assert bars["metrics"] == ["regression/paired_improvement_val_mse"], "bars show the paired improvement"
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    from wandb_workspaces.expr import expr_to_filters

    filters = expr_to_filters(grids[1]["runsets"][0]["filters"]).filters
    assert [(f.key.name, f.value) for f in filters] == [("task", "regression"), ("group", group)]
    report = to_api({**defn, "entity": "someone"})  # API objects from the saved definition; nothing is sent
    task_grid = [b for b in report.blocks if isinstance(b, wr.PanelGrid)][1]
    (key,) = task_grid.custom_run_colors
    assert key.runset_name == "regression" and key.keys[0].value == "baseline"
    for panel in task_grid.panels:
        config = panel._to_model().config  # the panel as W&B stores it (offline)
        assert (config.group_agg, config.group_area) == ("mean", "stderr")
        if isinstance(panel, wr.LinePlot):
            assert config.x_axis == "trainer/global_step"


def test_run_names_are_unique_and_configs_carry_the_task_card(tiny_run: dict[str, Any]) -> None:
    run_dir = tiny_run["run_dir"]
    names = []
    for row in Store(run_dir / "results.sqlite").rows():
        (folder,) = offline_runs(run_dir)[row["cell_id"]]
        rec = read_run(folder)
        names.append(rec["run"].display_name)
        config = {_key(i): json.loads(i.value_json) for i in rec["run"].config.update}
        card = config["task_card"]["value"] if isinstance(config["task_card"], dict) and "value" in config["task_card"] \
            else config["task_card"]
        assert card["decides_on"] == "val_mse" and card["unit"] == "squared target units"
        assert card["metrics"]["val_mse"]["key"] == "regression/val_mse" and "Synthetic" in card["data"]
        assert "positive = better" in str(config["sign_convention"])
    assert len(names) == len(set(names)) == 4


def test_each_variant_run_holds_its_paired_improvement(tiny_run: dict[str, Any]) -> None:
    """The summary's improvement is the same-seed baseline's val_mse minus the variant's (lower is better)."""
    run_dir = tiny_run["run_dir"]
    rows = Store(run_dir / "results.sqlite").rows()
    base = {r["seed"]: r for r in rows if r["variant"] == "baseline"}
    for row in rows:
        (folder,) = offline_runs(run_dir)[row["cell_id"]]
        s = read_run(folder)["summary"]
        if row["variant"] == "baseline":
            assert "regression/paired_improvement_val_mse" not in s
            continue
        b = base[row["seed"]]
        assert s["regression/paired_improvement_val_mse"] == pytest.approx(b["primary_value"] - row["primary_value"])
        assert s["paired/baseline_run"] == b["cell_id"] and "positive = better" in s["paired/sign_convention"]


def test_a_baseline_that_ends_after_its_variant_fills_in_the_variant_run(tmp_path: Path) -> None:
    """One seed at a time, rotated: gelu's seed 1 ends before the baseline's; the report build adds its
    paired improvement, and the rewritten run keeps its curve, its folder and one run per cell."""
    from modtransfer.reports import build_report
    from modtransfer.reports.analysis import Settings

    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "name": NAME, "size": "tiny", "seeds": 2, "variants": ["gelu"], "tasks": ["regression"], "stack": 1,
        "spec": {"d_model": 16, "n_layers": 1, "d_ff": 32},
        "task_budget": {"regression": {"steps": 8, "batch_size": 8, "eval_every": 4, "eval_batches": 1}},
        "wandb": {"mode": "offline", "project": "p"}}))
    assert _cli(tmp_path, plan).returncode == 0
    run_dir = tmp_path / "runs" / NAME
    rows = Store(run_dir / "results.sqlite").rows()
    base = {r["seed"]: r for r in rows if r["variant"] == "baseline"}
    late = [r for r in rows if r["variant"] == "gelu" and r["finished_at"] < base[r["seed"]]["finished_at"]]
    assert late, "the rotation puts one baseline after its variant"
    key = "regression/paired_improvement_val_mse"
    before = {r["cell_id"]: offline_runs(run_dir)[r["cell_id"]] for r in late}
    assert all(key not in read_run(f[0])["summary"] for f in before.values())
    build_report(run_dir, wandb_mode="offline", settings=Settings(n_boot=100))
    for r in late:
        folders = offline_runs(run_dir)[r["cell_id"]]
        assert folders == before[r["cell_id"]], "the same single folder (the store's wandb_dir still points at it)"
        rec = read_run(folders[0])
        assert rec["summary"][key] == pytest.approx(base[r["seed"]]["primary_value"] - r["primary_value"])
        assert rec["summary"]["regression/val_mse"] == pytest.approx(r["primary_value"])
        assert [h["trainer/global_step"] for h in rec["history"] if "regression/val_mse" in h] == [4, 8]
        assert rec["run"].display_name == f"gelu/regression/{r['seed']}"
