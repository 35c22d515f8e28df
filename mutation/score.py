"""The mutation score per module of bnlit/, from a finished ``mutmut run``.

Usage: ``python mutation/score.py build/mutation`` (``make mutation`` runs it).

A mutant counts as *killed* when the tests failed on it (or it timed out or
crashed); as *equivalent* when it survived and ``mutation/equivalent.txt`` lists
it with a reason; else as *survived*. The score is killed / (all - equivalent).
Survivors that are not listed are printed with their diff, so that each gets a
test or a line in the list. Exits 1 when a target module scores below 90%.

Each line of the list is ``function | line before | line after | reason``; the
lines are compared without surrounding spaces, so the list survives renumbering.

Every module mutmut mutated is printed, targets or not. A survivor for which no
test ran at all ("no tests") is counted as survived and noted. bnlit/engines/numba.py
is no target: mutmut does not mutate decorated functions, so the ``@_jit`` kernels
themselves are never mutated, only the Python around them; and that is tested
only where numba is installed (``make mutation`` does not install it: each mutant
would recompile the kernels, about 20 s, for 328 mutants of glue code).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

TARGET = 0.90
TARGET_MODULES = [
    "bnlit/layer.py", "bnlit/graph.py", "bnlit/engines/numpy.py", "bnlit/_validate.py",
    "bnlit/_threads.py", "bnlit/exercise.py",
]
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}
HERE = Path(__file__).resolve().parent


def function_of(mutant: str) -> str:
    """``bnlit.layer.xǁBatchNormalizationǁforward__mutmut_3`` -> ``bnlit.layer.BatchNormalization.forward``."""
    module, _, generated = mutant.rpartition(".")
    name = generated.rsplit("__mutmut_", 1)[0]
    name = name[2:] if name.startswith("x_") else name[1:].strip("ǁ").replace("ǁ", ".")
    return f"{module}.{name}"


def change(diff: str) -> tuple[str, str]:
    """The removed and the added lines of a mutant's diff, each joined and stripped."""
    lines = diff.splitlines()[2:]
    before = " ".join(l[1:].strip() for l in lines if l.startswith("-"))
    after = " ".join(l[1:].strip() for l in lines if l.startswith("+"))
    return before, after


def load_equivalent(path: Path) -> dict[tuple[str, str], str]:
    listed = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        # The lines of code may hold " | " themselves: the function is the first field and
        # the reason the last, and the middle is compared whole (before | after).
        parts = [p.strip() for p in line.split(" | ")]
        if len(parts) < 4 or not parts[-1]:
            sys.exit(f"{path}:{number}: expected 'function | before | after | reason', got {line!r}")
        listed[(parts[0], " | ".join(parts[1:-1]))] = parts[-1]
    return listed


def main(workdir: Path) -> int:
    os.chdir(workdir)  # mutmut reads its files relative to the folder it ran in
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code

    listed = load_equivalent(HERE / "equivalent.txt")
    used: set[tuple[str, str]] = set()
    counts: dict[str, Counter] = defaultdict(Counter)
    unlisted: list[tuple[str, str]] = []
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        module = str(meta.relative_to("mutants"))[: -len(".meta")]
        exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
        for mutant, code in exit_codes.items():
            status = status_by_exit_code[code]
            if status == "no tests":
                counts[module]["no tests"] += 1
            if status == "not checked":
                counts[module]["not checked"] += 1
                continue
            counts[module]["all"] += 1
            if status in DETECTED:
                counts[module]["killed"] += 1
                continue
            diff = get_diff_for_mutant(mutant, path=Path(module))
            key = (function_of(mutant), " | ".join(change(diff)))
            if key in listed:
                used.add(key)
                counts[module]["equivalent"] += 1
            else:
                counts[module]["survived"] += 1
                unlisted.append((f"{mutant} ({status})", diff))

    print(f"{'module':28} {'mutants':>8} {'killed':>7} {'equiv.':>7} {'survived':>9} {'score':>7}")
    failed = False
    for module in sorted(counts):
        c = counts[module]
        live = c["all"] - c["equivalent"]
        score = c["killed"] / live if live else 1.0
        low = module in TARGET_MODULES and c["all"] and score < TARGET
        failed |= bool(low)
        note = ((f"  ({c['not checked']} not checked)" if c["not checked"] else "")
                + (f"  ({c['no tests']} survived with no test run)" if c["no tests"] else "")
                + ("  < target" if low else ""))
        print(f"{module:28} {c['all']:8} {c['killed']:7} {c['equivalent']:7} {c['survived']:9} {score:7.1%}{note}")
    total = sum((counts[m] for m in counts), Counter())
    live = total["all"] - total["equivalent"]
    print(f"{'all':28} {total['all']:8} {total['killed']:7} {total['equivalent']:7} {total['survived']:9} "
          f"{total['killed'] / max(live, 1):7.1%}")
    stale = [key for key in listed if key not in used]
    print(f"\n{len(listed)} equivalent mutants listed in mutation/equivalent.txt, {len(used)} matched this run"
          + (f"; {len(stale)} not seen (killed now, or their code changed):" if stale else "."))
    for key in stale:
        print("   ", " | ".join(key))
    if unlisted:
        print(f"\n{len(unlisted)} surviving mutants are neither killed nor listed as equivalent:")
        for name, diff in unlisted:
            print(f"\n{name}\n" + "\n".join(diff.splitlines()[2:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "build/mutation")))
