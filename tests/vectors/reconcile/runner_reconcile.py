"""Runs this folder's vectors through crev.reconcile; the same code on CPython
(imported by tests/test_reconcile.py) and on MicroPython (run there by
micropython_main.py), so the two can be compared result for result."""

from crev import reconcile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def case_result(case: "dict[str, Any]") -> "list[Any]":
    p = case["params"]
    params = reconcile.Params(p["basis_points"], p["steps"], p["step_mwh"], p["digits"])
    intervals = [tuple(item) for item in case["intervals"]]
    verdict = reconcile.reconcile_slot(case["slot_t0"], intervals, case["sm_start"], case["sm_end"], params)
    return verdict.as_list()


def run_all(doc: "dict[str, Any]") -> "list[Any]":
    return [[case["name"], case_result(case)] for case in doc["cases"]]
