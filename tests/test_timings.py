"""Throughput marks count separate timings: the seeds of one stacked group share one."""

from __future__ import annotations

import math

from modtransfer.reports.records import timings
from modtransfer.reports.table import _cv


def _row(seed: int, train_s: float, stacked: bool) -> dict:
    env = {"stack": {"members": 3, "member": seed, "group_wall_s": 10.0}} if stacked else {}
    return {"cell_id": f"c{seed}", "steps": 100, "train_s": train_s, "env": env}


def test_stacked_members_are_one_timing_and_their_spread_is_unknown():
    stacked = [_row(s, 3.0, True) for s in range(3)]
    alone = [_row(s, t, False) for s, t in enumerate((3.0, 3.3, 2.7))]
    assert timings(stacked) == 1 and timings(alone) == 3
    assert math.isnan(_cv(stacked))   # one timing: no seed-to-seed variation to report (it would read 0.0)
    assert _cv(alone) > 0.05
