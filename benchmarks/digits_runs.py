"""Shared harness of the digits learning benchmarks: one world and store, method entries × seeds, a table.

The learning benchmarks (`digits_table.py`, `digits_seed000.py`) train registered methods on the built-in
digits world with a fixed small backbone and write their tables into `benchmarks/RESULTS.md`. Finished runs
are reused, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGIMES = ("full", "spml", "none", "partial-0.3", "partial-0.5", "partial-0.7")
STORE_SEEDS = 4
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass(frozen=True)
class Entry:
    """One table row: a method with overrides of its preset (e.g. another pseudo-label source or regime)."""

    label: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9.]+", "-", self.label.lower()).strip("-")


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-digits"), help="world, store and runs")
    ap.add_argument("--size", type=int, default=2000, help="digits official train canvases (train + val)")
    ap.add_argument("--test-size", type=int, default=500)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=None, help="override every method's epochs")
    ap.add_argument("--only", default=None, help="comma-separated labels to run (default: all)")
    ap.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    return ap


def ensure_world(out: Path, size: int, test_size: int) -> tuple[Path, Path]:
    """The prepared digits world (every regime the benchmarks use) and its store (4 augment seeds, 3×3 grid)."""
    from mlpl.commands.precompute import precompute_clip
    from mlpl.commands.prepare import prepare

    data, store = out / f"data-{size}", out / f"store-{size}"
    if not (data / "dataset.json").exists():
        prepare(dataset="digits", out=data, regime=list(REGIMES), size=size, test_size=test_size)
    precompute_clip(dataset=str(data), out=store, seeds=STORE_SEEDS, grid=3)
    return data, store


def run_entries(data: Path, store: Path, runs: Path, entries: list[Entry], seeds: tuple[int, ...],
                overrides: dict[str, Any] | None = None) -> list[dict]:
    """Sweep every entry over `seeds` (`mlpl sweep`'s engine: finished runs are read, not retrained); one row
    per run with its test metrics, read back as `mlpl report` reads runs."""
    from mlpl.stages.evaluate.runs import find_runs
    from mlpl.sweep import SweepRunner, plan

    rows = []
    for entry in entries:
        t0 = time.time()
        base = {"pseudo_store": str(store), **(overrides or {}), **entry.overrides}
        runner = SweepRunner(data, runs / entry.slug, base, None, [], lambda line: print(line, flush=True))
        result = runner.run(plan([entry.method], seeds, [], []))
        if result.failed:
            raise SystemExit(f"{entry.label}: {result.failed}")
        for run in find_runs([runs / entry.slug]):
            if run.summary.seed in seeds:
                test, quality = run.summary.test, run.summary.pseudo_quality
                rows.append({"method": entry.label, "preset": entry.method, "seed": run.summary.seed,
                             "test_map": test.map, "cf1": test.cf1, "of1": test.of1, "hamming": test.hamming,
                             "pseudo_precision": quality.get("precision", float("nan")), "run": str(run.path)})
        print(json.dumps({"entry": entry.label, "seconds": round(time.time() - t0, 1),
                          "test_map": [round(r["test_map"], 2) for r in rows if r["method"] == entry.label]}),
              flush=True)
    return rows


def mean_std(rows: list[dict], label: str) -> tuple[float, float, list[float]]:
    from mlpl.stages.evaluate.tables import Cell

    cell = Cell(tuple(r["test_map"] for r in rows if r["method"] == label))
    return cell.mean, cell.std, list(cell.values)


def table(rows: list[dict], labels: list[str], reported: dict[str, str] | None = None) -> str:
    """A markdown table: mean ± std test mAP over seeds, the per-seed values, and an optional column of the
    literature's numbers."""
    head = "| method | test mAP (mean ± std) | per seed |" + (" reported (COCO) |" if reported else "")
    sep = "|---|---|---|" + ("---|" if reported else "")
    lines = [head, sep]
    for label in labels:
        mean, std, maps = mean_std(rows, label)
        cells = [label, f"{mean:.2f} ± {std:.2f}", " / ".join(f"{m:.1f}" for m in maps)]
        if reported:
            cells.append(reported.get(label, "—"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_section(title: str, body: str, path: Path = RESULTS_MD) -> None:
    """Replace (or append) the `## title` section of RESULTS.md."""
    text = path.read_text()
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)
