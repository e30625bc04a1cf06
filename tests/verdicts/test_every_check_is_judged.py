"""Every automated check is observe-then-judge: the code its @check function reaches (its own body, the
module-level functions it calls, transitively) includes a pure `judge_*` function and keeps the observation
(in details["observation"] through _observe.judged/judged_by or security._kept, or as the "observation"
evidence of the drills), and a table test in tests/verdicts/ calls each judge it reaches. Read from the code
objects, so a check that stops calling its judge, or a judge whose table test is deleted, fails here."""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import pytest

from asap_runbook.catalog import load_catalog
from asap_runbook.checks import registered

VERDICT_TESTS = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py")
                          if p.name != Path(__file__).name)
KEEPS_OBSERVATION = {"judged", "judged_by", "_judged", "_kept"}  # the helpers that put it in details


def _codes(code: types.CodeType):
    yield code
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from _codes(c)


def reached(fn) -> tuple[set[str], set]:
    """Names of the runbook's functions `fn` calls, transitively (globals of each function's module), and
    the constants of all that code."""
    seen: set[str] = set()
    consts: set = set()
    todo = [fn]
    while todo:
        f = todo.pop()
        for code in _codes(f.__code__):
            consts |= {c for c in code.co_consts if isinstance(c, str)}
            for name in code.co_names:
                g = f.__globals__.get(name)
                if name in seen or not inspect.isfunction(g) or not g.__module__.startswith("asap_runbook"):
                    continue
                seen.add(name)
                todo.append(g)
    return seen, consts


def audit() -> list[dict]:
    """Per automated item: its check, the judges it reaches, whether it keeps the observation, and which
    judges a verdict table test calls."""
    regs, rows = registered(), []
    for item in load_catalog():
        if not item.automated:
            continue
        fn = regs[item.id].fn
        names, consts = reached(fn)
        judges = sorted(n for n in names if n.startswith("judge_"))
        rows.append({"item": item.id, "check": f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}",
                     "judges": judges, "keeps_observation": bool(names & KEEPS_OBSERVATION) or "observation" in consts,
                     "table_tested": [j for j in judges if re.search(rf"\b{j}\(", VERDICT_TESTS)]})
    return rows


AUDIT = audit()


@pytest.mark.parametrize("row", AUDIT, ids=[r["item"] for r in AUDIT])
def test_the_check_judges_keeps_its_observation_and_a_table_test_calls_the_judge(row):
    assert row["judges"], f"{row['check']} reaches no judge_* function: its verdict is inline"
    assert row["keeps_observation"], f"{row['check']} keeps no observation with its finding"
    assert row["table_tested"] == row["judges"], \
        f"{row['check']}: no table test in tests/verdicts calls {sorted(set(row['judges']) - set(row['table_tested']))}"


def test_the_audit_sees_inline_verdicts():
    """The reach is real: a check with its verdict inline reaches no judge and keeps nothing."""
    from asap_runbook.checks._registry import CheckContext, Finding

    async def inline(ctx: CheckContext) -> Finding:
        return Finding.passed("looked")
    names, consts = reached(inline)
    assert not names & KEEPS_OBSERVATION and "observation" not in consts
    assert not [n for n in names if n.startswith("judge_")]
    assert "judge_rate_burst" in reached(registered()["SEC-RATE-1"].fn)[0]


def test_judged_by_keeps_the_arguments_the_judge_read_not_the_evidence():
    from asap_runbook.checks._observe import judged_by
    from asap_runbook.checks.security import judge_hsts
    f = judged_by(judge_hsts, "max-age=60", 31536000, "default", [("GET manifest", {"status": 200})])
    assert f.details["observation"] == {"header": "max-age=60", "need": 31536000, "need_source": "default"}
    assert f.details["max_age"] == 60 and f.evidence[0].label == "GET manifest"


if __name__ == "__main__":  # the audit as a table: python tests/verdicts/test_every_check_is_judged.py
    for r in AUDIT:
        print(f"{r['item']:15} {r['check']:42} judge:{'Y' if r['judges'] else '-'} "
              f"observation:{'Y' if r['keeps_observation'] else '-'} table:{'Y' if r['table_tested'] else '-'}  "
              f"{', '.join(r['judges'])}")
