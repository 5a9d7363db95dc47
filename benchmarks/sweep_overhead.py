"""A sweep of 10 short digits runs against the same 10 runs as separate `mlpl train` processes, and a sweep's
fixed cost per run.

Part 1, side by side in interleaved rounds (the order alternates between rounds): `mlpl sweep` of 5 methods
× 2 seeds (1 epoch each) in one process, against the same 10 runs as 10 `mlpl train` processes; the ratio
of wall times per round. Part 2: a sweep of 3-epoch small-cnn runs; per run, its fixed cost (its wall time
in the sweep minus its epochs' time from `metrics.jsonl`) as a fraction of the run. Writes
benchmarks/RESULTS.md.

    python benchmarks/sweep_overhead.py [--out runs/bench-sweep] [--rounds 2] [--size 600] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from digits_runs import write_section

METHODS = ("an", "gr", "aevlp", "bce-full", "wan")
SEEDS = (0, 1)
RUN_LINE = re.compile(r"\] (\S+): .*\(([\d.]+) s\)")


def mlpl(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, "-m", "mlpl.cli", *map(str, args)], env=env, check=True,
                          capture_output=True, text=True)


def world(out: Path, size: int) -> tuple[Path, Path]:
    data, store = out / "data", out / "store"
    if not (data / "dataset.json").exists():
        mlpl("prepare", "--dataset", "digits", "--out", data, "--size", size, "--test-size", size // 4,
             "--regime", "full", "--regime", "spml")
    mlpl("precompute-clip", "--dataset", data, "--out", store, "--seeds", 4, "--grid", 3)
    return data, store


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-sweep"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size", type=int, default=600, help="digits official train canvases")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    data, store = world(args.out, args.size)
    common = ["--dataset", data, "--pseudo-store", store, "--epochs", 1]
    rounds = []
    for index in range(args.rounds):
        folder = args.out / f"round{index}"
        shutil.rmtree(folder, ignore_errors=True)

        def sweep(folder: Path = folder) -> None:
            mlpl("sweep", *common, "--methods", ",".join(METHODS), "--seeds", f"{SEEDS[0]}-{SEEDS[-1]}",
                 "--out", folder / "sweep")

        def separate(folder: Path = folder) -> None:
            for method in METHODS:
                for seed in SEEDS:
                    mlpl("train", *common, "--method", method, "--seed", seed,
                         "--out", folder / "train" / f"{method}-seed{seed}")

        order = (("sweep", sweep), ("separate", separate)) if index % 2 == 0 else \
                (("separate", separate), ("sweep", sweep))
        times = {name: timed(fn) for name, fn in order}
        rounds.append({**times, "ratio": times["sweep"] / times["separate"], "first": order[0][0]})
        print(json.dumps(rounds[-1]), flush=True)

    fixed_out = args.out / "fixed"
    shutil.rmtree(fixed_out, ignore_errors=True)
    done = mlpl("sweep", "--dataset", data, "--pseudo-store", store, "--methods", "an,gr,aevlp", "--seeds", "0-1",
                "--epochs", 3, "--out", fixed_out)
    fixed = []
    for name, seconds in RUN_LINE.findall(done.stdout):
        records = [json.loads(line) for line in (fixed_out / name / "metrics.jsonl").read_text().splitlines()]
        epochs = sum(r["seconds"] for r in records if r["split"] == "train")
        fixed.append({"run": name, "run_s": float(seconds), "epochs_s": epochs,
                      "fixed_fraction": (float(seconds) - epochs) / float(seconds)})
    print(json.dumps(fixed), flush=True)
    # the first run also pays what a sweep pays once (imports torch.optim's compiler hooks, opens the store)
    median_fixed = statistics.median(f["fixed_fraction"] for f in fixed[1:])

    lines = ["| round | first | sweep (s) | 10 × `mlpl train` (s) | ratio |", "|---|---|---|---|---|"]
    lines += [f"| {i + 1} | {r['first']} | {r['sweep']:.1f} | {r['separate']:.1f} | {r['ratio']:.2f} |"
              for i, r in enumerate(rounds)]
    fixed_lines = ["| run (3 epochs) | wall in the sweep (s) | epochs (s) | fixed share |", "|---|---|---|---|"]
    fixed_lines += [f"| {f['run']} | {f['run_s']:.1f} | {f['epochs_s']:.1f} | {100 * f['fixed_fraction']:.1f}% |"
                    for f in fixed]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s) visible"
    body = "\n\n".join([
        f"`python benchmarks/sweep_overhead.py --size {args.size} --rounds {args.rounds}` on {machine} (shared "
        f"and noisy: ratios are measured side by side, the order alternating by round). Digits world of "
        f"{args.size} canvases, store of 4 augment seeds; the 10 runs are {', '.join(METHODS)} × seeds "
        f"{SEEDS[0]}–{SEEDS[-1]}, 1 epoch each, small-cnn (the digits presets). Target: ratio ≤ 0.5.",
        "\n".join(lines),
        "Fixed cost of a run inside a sweep (everything but its epochs: building the model, checking and "
        "writing the run record, test prediction, summary) against a 3-epoch run; target ≤ 10%:",
        "\n".join(fixed_lines),
        f"Median fixed share of the runs after the first: {100 * median_fixed:.1f}% (the first run also pays what "
        "the sweep pays once per process: importing the optimiser's compiler hooks, opening the store).",
    ])
    print(body)
    if not args.no_write:
        write_section("Sweep against separate processes (10 short digits runs)", body)


if __name__ == "__main__":
    main()
