"""The command line end to end on the regression task (no downloads): ls, run, resume,
plugins, W&B offline folders, interruption, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from modtransfer.cli.commands import main
from modtransfer.run.store import Store

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = Path(__file__).parent / "plugins"


def write_plan(tmp_path: Path, **over) -> Path:
    plan = {
        "name": "t", "size": "tiny", "seeds": 1, "tasks": ["regression"], "variants": ["gelu"],
        "spec": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
        "budget": {"steps": 6, "batch_size": 4, "eval_batches": 1}, "wandb": {"mode": "disabled"},
    }
    plan.update(over)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan))
    return path


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "modtransfer", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT, timeout=600)


def test_ls_variants_and_tasks(capsys):
    assert main(["ls", "variants", "*glu", "--size", "tiny"]) == 0
    out = capsys.readouterr().out
    for name in ("swiglu", "geglu", "reglu", "liglu", "glu"):
        assert f"\n{name} " in out
    assert "Shazeer 2020" in out and "%" in out and "rmsnorm" not in out
    assert main(["ls", "tasks"]) == 0
    out = capsys.readouterr().out
    assert "regression" in out and "lm" in out and "mt" in out and "encoder_decoder" in out


def test_ls_does_not_import_lightning_or_wandb():
    code = ("import sys; from modtransfer.cli.commands import main; main(['ls', 'variants', '--size', 'tiny']); "
            "main(['ls', 'tasks']); print('HEAVY', sorted(m for m in ('lightning', 'wandb', 'pytorch_lightning') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout
    assert "HEAVY []" in out


def test_dry_run_trains_and_writes_nothing(tmp_path, capsys):
    plan = write_plan(tmp_path, variants=["*glu", "rmsnorm"], seeds=2)
    runs = tmp_path / "runs"
    assert main(["run", str(plan), "--runs-dir", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "regression/baseline/0" in out and "regression/swiglu/1" in out
    assert "14 to train, 0 already done" in out  # (baseline + 5 glu + rmsnorm) x 2 seeds
    assert not runs.exists()


def test_cli_overrides_select_variants_tasks_seeds(tmp_path, capsys):
    plan = write_plan(tmp_path, variants=["gelu"])
    assert main(["run", str(plan), "--variants", "*glu,rmsnorm", "--seeds", "3", "--dry-run",
                 "--runs-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "regression/baseline/2" in out and "regression/liglu/2" in out and "regression/gelu/" not in out
    assert "21 to train" in out


def test_run_then_resume_trains_nothing_new(tmp_path, capsys):
    plan = write_plan(tmp_path)
    runs = tmp_path / "runs"
    assert main(["run", str(plan), "--runs-dir", str(runs), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "results store:" in out and "val_mse" in out
    store = Store(runs / "t" / "results.sqlite")
    rows = store.rows()
    assert sorted(r["variant"] for r in rows) == ["baseline", "gelu"]
    assert all(r["status"] == "done" and r["primary_value"] > 0 and r["params"] > 0 for r in rows)
    assert all(r["env"]["torch"] and r["env"]["lightning"] and r["env"]["commit"] for r in rows)
    assert all(0 < r["mfu"] < 2 and r["tokens_per_s"] > 0 and r["flops_per_token"] > 0 for r in rows)
    assert all(r["curve"] and r["curve"][-1]["step"] == 6 and "val_mse" in r["curve"][-1] for r in rows)
    stamps = {r["cell_id"]: r["finished_at"] for r in rows}
    assert main(["run", str(plan), "--runs-dir", str(runs), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "0 cells to train (2 already done)" in out
    assert {r["cell_id"]: r["finished_at"] for r in store.rows()} == stamps


def test_same_seed_same_metrics(tmp_path, capsys):
    plan = write_plan(tmp_path, variants=[])
    for d in ("a", "b"):
        assert main(["run", str(plan), "--runs-dir", str(tmp_path / d), "--no-report"]) == 0
    a = Store(tmp_path / "a" / "t" / "results.sqlite").rows()[0]
    b = Store(tmp_path / "b" / "t" / "results.sqlite").rows()[0]
    assert a["cell_id"] == b["cell_id"] and a["metrics"] == b["metrics"]


def test_wandb_offline_folders_stay_in_run_folder(tmp_path):
    plan = write_plan(tmp_path, variants=[], wandb={"mode": "offline", "project": "p"})
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"))
    proc = subprocess.run([sys.executable, "-m", "modtransfer", "run", str(plan), "--runs-dir", str(tmp_path / "runs"),
                           "--no-report"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "runs" / "t"
    offline = list((run_dir / "wandb").rglob("offline-run-*"))
    assert len([p for p in offline if p.is_dir()]) == 1
    assert list(run_dir.rglob("*.wandb")), "the offline run has no .wandb file to sync"
    row = Store(run_dir / "results.sqlite").rows()[0]
    assert row["wandb_dir"] and (run_dir / row["wandb_dir"]).is_dir()
    assert not (tmp_path / "wandb").exists()
    leaked = [p for p in home.rglob("*") if "wandb" in p.name.lower()]
    assert not leaked, leaked


def test_plugin_file_shows_in_ls_and_runs(tmp_path, capsys):
    good = str(PLUGINS / "good_plugin.py")
    assert main(["ls", "variants", "squared*", "--plugin", good, "--size", "tiny"]) == 0
    assert "squared_relu" in capsys.readouterr().out
    plan = write_plan(tmp_path, variants=["squared_relu"])
    assert main(["run", str(plan), "--plugin", good, "--runs-dir", str(tmp_path / "r"), "--no-report"]) == 0
    rows = Store(tmp_path / "r" / "t" / "results.sqlite").rows(variant="squared_relu")
    assert rows and rows[0]["status"] == "done" and rows[0]["spec"]["activation"] == "squared_relu"


def test_broken_plugin_is_reported_and_skipped():
    proc = cli("ls", "variants", "gelu", "--no-counts", "--plugin", str(PLUGINS / "broken_plugin.py"))
    assert proc.returncode == 0
    assert "broken_plugin.py" in proc.stderr and "skipped" in proc.stderr
    assert "gelu" in proc.stdout


def test_entry_point_plugin(tmp_path):
    """An installed distribution declaring the entry point group is discovered."""
    site = tmp_path / "site"
    (site / "mt_ep_plugin").mkdir(parents=True)
    (site / "mt_ep_plugin" / "__init__.py").write_text(textwrap.dedent('''
        from modtransfer import ModelSpec, register_variant

        @register_variant("ep_wide_ffn", slot="shape", paper="test")
        def ep_wide_ffn(spec: ModelSpec) -> ModelSpec:
            """Doubles d_ff (entry-point test)."""
            return spec.replace(d_ff=spec.d_ff * 2)
    '''))
    dist = site / "mt_ep_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mt-ep-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[modtransfer.variants]\nwide = mt_ep_plugin\n")
    proc = cli("ls", "variants", "ep_*", "--size", "tiny", env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr
    assert "ep_wide_ffn" in proc.stdout and "Doubles d_ff" in proc.stdout


def test_interrupted_cell_leaves_no_row(tmp_path):
    plan = write_plan(tmp_path, variants=["gelu", "interrupting"], budget={"steps": 8, "batch_size": 4,
                                                                          "eval_batches": 1})
    runs = tmp_path / "runs"
    proc = cli("run", str(plan), "--plugin", str(PLUGINS / "interrupt_plugin.py"), "--runs-dir", str(runs),
               "--no-report")
    assert proc.returncode == 130, proc.stderr
    rows = Store(runs / "t" / "results.sqlite").rows()
    assert sorted(r["variant"] for r in rows) == ["baseline", "gelu"]
    assert Store(runs / "t" / "results.sqlite").running() == []


@pytest.mark.parametrize("args, fragment", [
    (["run", "nope.yaml"], "not found"),
    (["run", "{plan}", "--variants", "swiglu,rmsnrom"], "did you mean 'rmsnorm'"),
    (["run", "{plan}", "--tasks", "translation"], "unknown task 'translation'"),
    (["run", "{plan}", "--seeds", "0"], "--seeds must be >= 1"),
    (["run", "{plan}", "--plugin", "missing_plugin.py"], "plugin file"),
    (["run", "{plan}", "--variants", "swiglu+geglu"], "both change"),
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, args, fragment):
    plan = write_plan(tmp_path)
    runs = tmp_path / "runs"
    argv = [a.replace("{plan}", str(plan)) for a in args] + ["--runs-dir", str(runs)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]
    assert not runs.exists()


def test_bad_plan_field(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nvariant: [gelu]\n")
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'variant'" in err and "did you mean 'variants'" in err


@pytest.mark.parametrize("plan", sorted((ROOT / "configs" / "bench").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_plans_validate(plan, tmp_path, capsys):
    assert main(["run", str(plan), "--dry-run", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "to train" in out and not (tmp_path / "runs").exists()


def test_readme_variant_table_is_generated_from_the_registry():
    # a fresh process: the built-in registry only, without the test session's plugins
    proc = subprocess.run([sys.executable, "-m", "modtransfer.bench.readme", "--check"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_hparam_axes_cross_variants_including_init(tmp_path, capsys):
    plan = write_plan(tmp_path, variants=["swiglu"], hparams={"lr": [0.001, 0.002],
                                                             "init": ["default", "normal(std=0.01)"]})
    assert main(["run", str(plan), "--dry-run", "--runs-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "8 to train" in out  # (baseline + swiglu) x 2 lr x 2 init x 1 seed
    assert "regression/swiglu/0[init=normal(std=0.01),lr=0.002]" in out
    from modtransfer.run.plan import load_plan

    cells = load_plan(str(plan)).cells
    inits = {(c.variant, c.hparams["init"]): (c.spec.init, c.spec.init_scale) for c in cells}
    assert inits[("baseline", "normal(std=0.01)")] == ("normal", 0.01)
    assert inits[("swiglu", "default")] == ("default", 0.0)


def test_dry_run_first_line_names_implementation_and_precision(tmp_path, capsys):
    """Issue 24: the dry run's first line says what each part of the plan runs on."""
    plan = write_plan(tmp_path, implementation="torch", precision="fp32")
    assert main(["run", str(plan), "--runs-dir", str(tmp_path / "runs"), "--dry-run", "--device", "cpu"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "size tiny, implementation torch, precision fp32 (on cpu)" in first, first
    plan = write_plan(tmp_path, sizes=["tiny", "small"], size=None, implementations=["modtransfer", "torch"])
    text = plan.read_text().replace("size: null\n", "")
    plan.write_text(text)
    assert main(["run", str(plan), "--runs-dir", str(tmp_path / "runs"), "--dry-run", "--device", "cpu"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "sizes tiny, small, implementations modtransfer, torch (every size on each)" in first, first
    assert "precision fp32 (auto, on cpu, every part)" in first, first


def test_dry_run_piped_into_head_is_quiet(tmp_path):
    """`modtransfer run PLAN --dry-run | head -1`: no BrokenPipeError traceback when the reader stops."""
    plan = write_plan(tmp_path, seeds=200, variants=["*glu", "rmsnorm"])
    proc = subprocess.run(f"{sys.executable} -m modtransfer run {plan} --runs-dir {tmp_path / 'runs'} --dry-run "
                          "| head -1", shell=True, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.stdout.startswith("plan 't'") and len(proc.stdout.splitlines()) == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
