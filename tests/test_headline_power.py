"""Power of the headline "better everywhere": the function the README's figures come from, and the table itself.

Run ``.venv/bin/python -m pytest -q -s tests/test_headline_power.py`` to print the table (kept in
``notes/h1_power.md``).
"""

from __future__ import annotations

import math

import pytest

from modtransfer.reports import stats
from modtransfer.reports.power import headline_power_table

#: (margin, SD of the paired differences) measured on the transfer-cpu study (issue 21)
REAL = {"regression": (0.05, 0.054), "lm": (0.02, 0.027), "mt": (0.5, 0.91)}


def test_headline_power_is_the_product_of_one_sided_task_powers() -> None:
    one = stats.iut_power([1.0], [1.0], 10)
    # one task: the two-sided paired t test's power, less its (negligible) wrong-sign tail
    assert one == pytest.approx(stats.power_paired_t(1.0, 1.0, 10), abs=1e-4)
    assert stats.iut_power([1.0, 0.5], [1.0, 1.0], 10) == pytest.approx(one * stats.iut_power([0.5], [1.0], 10))
    assert stats.iut_power([1.0] * 3, [1.0] * 3, 10) < one < stats.iut_power([1.0], [1.0], 20)
    assert stats.iut_power([1.0], [1.0], 10, family=5) < one              # worst case of BH over 5 variants
    assert stats.iut_power([1.0], [1.0], [10]) == one and math.isnan(stats.iut_power([1.0], [1.0], 1))
    assert stats.iut_power([0.0], [1.0], 10) == pytest.approx(0.025, abs=1e-9)   # no effect: alpha / 2


def test_seeds_needed_for_the_headline() -> None:
    margins, sds = [m for m, _ in REAL.values()], [s for _, s in REAL.values()]
    n = stats.iut_seeds_needed(margins, sds)
    assert n is not None and stats.iut_power(margins, sds, n) >= 0.8 > stats.iut_power(margins, sds, n - 1)
    assert stats.iut_seeds_needed([1e-4], [1.0]) is None


def test_print_the_power_table(capsys: pytest.CaptureFixture[str]) -> None:
    table = headline_power_table()
    lines = table.splitlines()
    assert len(lines) == 2 + 4 * 2 and lines[0].startswith("| gain / SD of paired differences | tasks |")
    one_sd_3 = next(ln for ln in lines if ln.startswith("| 1 | 3 |"))
    assert f"{stats.iut_power([1.0] * 3, [1.0] * 3, 12):.2f}" == one_sd_3.split(" | ")[4]
    real = realistic_table()
    with capsys.disabled():
        print("\n" + table + "\n\n" + real)


def realistic_table(seeds: tuple[int, ...] = (6, 12, 20, 40)) -> str:
    """Power of "better everywhere" for a one-margin gain on regression, lm and mt at the measured noise."""
    margins, sds = [m for m, _ in REAL.values()], [s for _, s in REAL.values()]
    head = "| tasks (margin / SD of paired differences) | " + " | ".join(f"n = {n}" for n in seeds) + " | seeds for 80% |"
    label = ", ".join(f"{t} {m / s:.2f}" for t, (m, s) in REAL.items())
    cells = " | ".join(f"{stats.iut_power(margins, sds, n):.2f}" for n in seeds)
    return "\n".join([head, "|---|" + "---|" * (len(seeds) + 1),
                      f"| {label} | {cells} | {stats.iut_seeds_needed(margins, sds)} |"])
