"""Collect ``--json`` outputs of several benchmark runs into one Markdown table.

    python -m bench.report RUN.json [RUN.json ...]

One row per measure, one column per run (in the order given): the ratio (or the
figure, for absolute targets) and whether it met its target.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson

from bench.common import table


def _cell(m: dict[str, Any]) -> str:
    mark = "" if m["met"] else " ✗"
    if m.get("ratio") is not None and m["unit"] not in ("fraction fewer",):
        return f"{m['ratio']:.2f}x{mark}"
    value = m["ours"]
    if m["unit"] == "fraction fewer":
        return f"{value:.1%} fewer{mark}"
    return f"{value:.3g} {m['unit']}{mark}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    runs = [orjson.loads(p.read_bytes()) for p in args.runs if p.stat().st_size]
    names: dict[str, str] = {}
    for run in runs:
        for name, m in run["measures"].items():
            names.setdefault(name, m["target"])
    rows = []
    for name, target in names.items():
        cells = [_cell(run["measures"][name]) if name in run["measures"] else "-" for run in runs]
        rows.append((name, target, *cells))
    header = ("measure", "target", *(f"run {i + 1}" for i in range(len(runs))))
    print(table(rows, header))
    loads = ", ".join(f"{r['bench']} {r['loadavg'][0]:.1f}" for r in runs)
    print(f"\n1-minute load average at the end of each run: {loads}")


if __name__ == "__main__":
    main()
