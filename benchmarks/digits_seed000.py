"""The first seed paper's Tables I and II on the digits world: partial labels, unsupervised CDUL, ablations.

Trains, with the digits presets' fixed small backbone: full-label BCE; AN, partial-BCE, PLMCL and G2NetPL at
30/50/70% partial labels; CDUL without any label; and the ablations of Table II (PLMCL without momentum /
without velocity, G2NetPL without the game penalty / without the scheduler at 50%; CDUL without local
similarity / without the aggregator). Writes mean ± std test mAP over seeds to benchmarks/RESULTS.md, next to
the seed paper's claims (MS-COCO) and the original CDUL paper's number.

    python benchmarks/digits_seed000.py [--out runs/bench-digits] [--size 2000] [--seeds 3] [--ablation-seeds 2]
"""

from __future__ import annotations

from digits_runs import Entry, ensure_world, mean_std, parser, run_entries, write_section

RATIOS = (0.3, 0.5, 0.7)
PARTIAL_METHODS = (("AN", "an"), ("partial-BCE", "partial-bce"), ("PLMCL", "plmcl"), ("G2NetPL", "g2netpl"))
ABLATIONS = [
    Entry("PLMCL w/o momentum", "plmcl-no-momentum", {"regime": "partial-0.5"}),
    Entry("PLMCL w/o velocity", "plmcl-no-velocity", {"regime": "partial-0.5"}),
    Entry("G2NetPL w/o game penalty (η = 0)", "g2netpl-eta0", {"regime": "partial-0.5"}),
    Entry("G2NetPL w/o scheduler", "g2netpl-no-scheduler", {"regime": "partial-0.5"}),
    Entry("CDUL w/o local similarity", "cdul-no-local"),
    Entry("CDUL w/o aggregator", "cdul-no-aggregator"),
]
ABLATION_OF = {
    "PLMCL w/o momentum": ("PLMCL", -2.1), "PLMCL w/o velocity": ("PLMCL", -1.2),
    "G2NetPL w/o game penalty (η = 0)": ("G2NetPL", -1.8), "G2NetPL w/o scheduler": ("G2NetPL", -1.2),
    "CDUL w/o local similarity": ("CDUL", -3.2), "CDUL w/o aggregator": ("CDUL", -1.8),
}
# docs/methods.md §5: the seed paper's MS-COCO claims at 50% partial labels (CDUL unsupervised); CDUL's own paper: 69.2
CLAIMED_50 = {"Full labels (BCE)": "85.2", "PLMCL": "82.3", "G2NetPL": "83.2",
              "CDUL (no labels)": "72.3 (CDUL paper: 69.2)"}


def entries() -> list[Entry]:
    out = [Entry("Full labels (BCE)", "bce-full"), Entry("CDUL (no labels)", "cdul")]
    for ratio in RATIOS:
        out += [Entry(f"{label} @ {int(ratio * 100)}%", method, {"regime": f"partial-{ratio}"})
                for label, method in PARTIAL_METHODS]
    return out


def main() -> None:
    ap = parser(__doc__.split("\n")[0])
    ap.add_argument("--ablation-seeds", type=int, default=2)
    args = ap.parse_args()
    table_1, ablations = entries(), list(ABLATIONS)
    if args.only:
        wanted = set(args.only.split(","))
        table_1 = [e for e in table_1 if e.label in wanted or e.method in wanted]
        ablations = [e for e in ablations if e.label in wanted or e.method in wanted]
    data, store = ensure_world(args.out, args.size, args.test_size)
    overrides = {"epochs": args.epochs} if args.epochs else None
    runs = args.out / "seed000"
    rows = run_entries(data, store, runs, table_1, tuple(range(args.seeds)), overrides)
    rows += run_entries(data, store, runs, ablations, tuple(range(args.ablation_seeds)), overrides)
    labels = {r["method"] for r in rows}

    def cell(label: str) -> str:
        if label not in labels:
            return "—"
        mean, std, _ = mean_std(rows, label)
        return f"{mean:.2f} ± {std:.2f}"

    lines = ["| method | 30% | 50% | 70% | seed paper, COCO 50% |", "|---|---|---|---|---|"]
    for label in ("Full labels (BCE)", "CDUL (no labels)"):
        lines.append(f"| {label} | {cell(label)} (any ratio) | | | {CLAIMED_50.get(label, '—')} |")
    for label, _ in PARTIAL_METHODS:
        per_ratio = [cell(f"{label} @ {int(r * 100)}%") for r in RATIOS]
        lines.append(f"| {label} | " + " | ".join(per_ratio) + f" | {CLAIMED_50.get(label, '—')} |")
    ablation_lines = ["| ablation | test mAP | change vs the full method | seed paper's change |", "|---|---|---|---|"]
    for entry in ablations:
        if entry.label not in labels:
            continue
        base_label, claimed = ABLATION_OF[entry.label]
        base = "CDUL (no labels)" if base_label == "CDUL" else f"{base_label} @ 50%"
        mean, _, _ = mean_std(rows, entry.label)
        change = f"{mean - mean_std(rows, base)[0]:+.2f}" if base in labels else "—"
        ablation_lines.append(f"| {entry.label} | {cell(entry.label)} | {change} | {claimed:+.1f} |")
    body = "\n\n".join([
        f"`python benchmarks/digits_seed000.py --size {args.size} --seeds {args.seeds} --ablation-seeds "
        f"{args.ablation_seeds}`: the digits world and store of the previous section; partial labels keep each "
        "cell of the ±1 label matrix with probability ρ (§1.4); CDUL sees no label. Test mAP, mean ± std "
        f"over {args.seeds} seeds (ablations: {args.ablation_seeds}).",
        "### Table I: partial labels and unsupervised\n\n" + "\n".join(lines),
        "### Table II: ablations (50% labels; CDUL without labels)\n\n" + "\n".join(ablation_lines),
    ])
    print(body)
    if not args.no_write:
        write_section("Digits world: partial labels and unsupervised (the seed paper's Tables I and II)", body)


if __name__ == "__main__":
    main()
