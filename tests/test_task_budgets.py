"""The CPU transfer plan (``configs/bench/transfer-cpu.yaml``) asks for what the budgets need.

The budgets were measured on one CPU thread (see the ``Translation`` and ``LanguageModelling``
docstrings and the README's *Budgets that learn on one CPU* section): the ``lm`` default budget
reaches under 2.0 nats/char at ``tiny``, and ``mt`` reaches BLEU above 5 only with the plan's
``max_len: 48`` and 2000 steps of 32 pairs. These tests read the plan without training, so a
later edit that drops one of those settings, or a modification the design card lists, fails
here instead of after three hours of training.
"""

from __future__ import annotations

from pathlib import Path

from modtransfer.core.task import TASKS
from modtransfer.run.plan import load_plan

PLAN = Path(__file__).resolve().parents[1] / "configs" / "bench" / "transfer-cpu.yaml"
#: The modifications the design card names for the CPU transfer study.
CARD = {"gelu", "swish", "glu", "geglu", "reglu", "swiglu", "liglu", "rmsnorm", "rezero", "fixup",
        "factorized_embedding", "block_sharing", "adaptive_softmax", "mixture_of_softmaxes"}


def test_transfer_cpu_plan_covers_the_card() -> None:
    plan = load_plan(PLAN)
    assert set(plan.variants) - {"baseline"} == CARD
    assert set(plan.tasks) == {"regression", "lm", "mt"}
    assert plan.size == "tiny"
    assert plan.looks and plan.looks[0] >= 3, "verdicts need at least 3 paired seeds"


def test_transfer_cpu_plan_uses_the_budgets_that_learn() -> None:
    plan = load_plan(PLAN)
    by_task = {c.task: c for c in plan.all_cells if c.variant == "baseline" and c.seed == 0}
    mt, lm, reg = by_task["mt"], by_task["lm"], by_task["regression"]
    assert mt.task_config["max_len"] == 48
    assert (mt.budget.steps, mt.budget.batch_size, mt.budget.lr, mt.budget.schedule) == (2000, 32, 6e-3, "cosine")
    # lm and regression learn at their defaults (measured): the plan must not shorten them
    assert lm.budget == TASKS.get("lm").default_budget.replace(eval_every=lm.budget.eval_every)
    assert reg.budget == TASKS.get("regression").default_budget
