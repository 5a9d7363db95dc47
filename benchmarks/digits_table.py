"""Table 1 and Table 2 of the AEVLP paper on the digits world: every single-positive method, 3 seeds.

Trains each registered single-positive method (and GPR/BCE with each pseudo-label source) on the built-in
digits world with the fixed small backbone of the digits presets, and writes mean ± std test mAP over seeds,
with full-label BCE as the upper bound, to benchmarks/RESULTS.md.

    python benchmarks/digits_table.py [--out runs/bench-digits] [--size 2000] [--seeds 3] [--only AN,GR]
"""

from __future__ import annotations

from digits_runs import Entry, ensure_world, mean_std, parser, run_entries, table, write_section

TABLE_1 = [
    Entry("Full labels (BCE)", "bce-full"),
    Entry("AN", "an"),
    Entry("AN-LS", "an-ls"),
    Entry("WAN", "wan"),
    Entry("EPR", "epr"),
    Entry("ROLE", "role"),
    Entry("EM", "em"),
    Entry("EM+APL", "em-apl"),
    Entry("LL-R", "ll-r"),
    Entry("LL-Ct", "ll-ct"),
    Entry("LL-Cp", "ll-cp"),
    Entry("BoostLU + LL-R", "boostlu"),
    Entry("GR", "gr"),
    Entry("VLPL", "vlpl"),
    Entry("SMILE", "smile"),
    Entry("MIME", "mime"),
    Entry("AEVLP (GPR + DAMP)", "aevlp"),
]
TABLE_2 = [
    Entry("GPR + Random", "gpr", {"pseudo": "random"}),
    Entry("GPR + VLPL", "gpr", {"pseudo": "vlpl"}),
    Entry("GPR + LL-Ct", "gpr", {"pseudo": "ll-ct"}),
    Entry("BCE + DAMP", "bce-pl", {"pseudo": "damp"}),
]
# docs/methods.md §6, COCO column (for the shape of the comparison; the digits world is not COCO)
REPORTED = {
    "Full labels (BCE)": "76.78", "AN": "64.92", "AN-LS": "67.15", "WAN": "64.8", "EPR": "63.3", "ROLE": "67.04",
    "EM": "70.70", "EM+APL": "70.87", "LL-R": "71.0", "LL-Ct": "70.5", "LL-Cp": "70.7", "BoostLU + LL-R": "72.89",
    "GR": "73.17", "VLPL": "71.45", "SMILE": "63.33", "MIME": "72.92", "AEVLP (GPR + DAMP)": "73.54",
    "GPR + Random": "70.00", "GPR + VLPL": "72.83", "GPR + LL-Ct": "71.66", "BCE + DAMP": "71.89",
}


def sweep_command(size: int, seeds: int) -> str:
    """The `mlpl sweep` + `mlpl report` commands that make Table 1 on this benchmark's world."""
    methods = ",".join(e.method for e in TABLE_1)
    world = f"--dataset runs/bench-digits/data-{size} --pseudo-store runs/bench-digits/store-{size}"
    return (f"mlpl sweep {world} --methods {methods} --seeds 0-{seeds - 1} --out runs/digits-table1\n"
            "mlpl report runs/digits-table1 --metrics map,cf1,of1 --plots runs/digits-table1/plots")


def shape_checks(rows: list[dict]) -> list[str]:
    """The literature's expected shape, checked on the measured means (recorded whatever the outcome)."""
    means = {label: mean_std(rows, label)[0] for label in dict.fromkeys(r["method"] for r in rows)}
    single = {k: v for k, v in means.items() if k != "Full labels (BCE)" and k in {e.label for e in TABLE_1}}
    out = []
    if "Full labels (BCE)" in means and "AEVLP (GPR + DAMP)" in means:
        ok = means["Full labels (BCE)"] >= means["AEVLP (GPR + DAMP)"]
        out.append(f"- full labels ≥ AEVLP: {'yes' if ok else 'no'} "
                   f"({means['Full labels (BCE)']:.2f} vs {means['AEVLP (GPR + DAMP)']:.2f})")
    if "AN" in single and len(single) > 1:
        weakest = min(single, key=single.get)
        out.append(f"- AN the weakest single-positive method: {'yes' if weakest == 'AN' else 'no'} "
                   f"(weakest: {weakest}, {single[weakest]:.2f}; AN {single['AN']:.2f})")
    if single:
        best = max(single, key=single.get)
        out.append(f"- best single-positive method: {best} ({single[best]:.2f})")
    return out


def main() -> None:
    args = parser(__doc__.split("\n")[0]).parse_args()
    entries = TABLE_1 + TABLE_2
    if args.only:
        wanted = set(args.only.split(","))
        entries = [e for e in entries if e.label in wanted or e.method in wanted]
    data, store = ensure_world(args.out, args.size, args.test_size)
    overrides = {"epochs": args.epochs} if args.epochs else None
    rows = run_entries(data, store, args.out / "table", entries, tuple(range(args.seeds)), overrides)
    labels = [e.label for e in entries]
    t1 = [e.label for e in TABLE_1 if e in entries]
    t2 = [e.label for e in TABLE_2 if e in entries]
    body = "\n\n".join([
        f"`python benchmarks/digits_table.py --size {args.size} --seeds {args.seeds}`: digits world of "
        f"{args.size} official train canvases (80/20 train/val) and {args.test_size} test canvases of 64 px; "
        f"built-in teacher; store with {4} augment seeds, 3×3 grid; every method with its digits preset "
        "(small-cnn from scratch, Adam 1e-3, batch 32, 10 epochs unless the preset says otherwise; "
        "best-validation checkpoint; test mAP of that checkpoint). Single positive (`spml`) except full-label "
        "BCE. The last column is docs/methods.md §6's COCO number, for the shape of the comparison only.",
        "Table 1 is one sweep and one report (this script adds the literature's column and the shape checks):\n\n"
        f"```bash\n{sweep_command(args.size, args.seeds)}\n```",
        "### Table 1: single-positive methods\n\n" + table(rows, t1, REPORTED),
        "### Table 2: GPR and BCE with each pseudo-label source\n\n" + table(rows, t2, REPORTED) if t2 else "",
        "### Expected shape (the literature's) on the digits world\n\n" + "\n".join(shape_checks(rows)),
    ])
    print(table(rows, labels, REPORTED))
    print("\n".join(shape_checks(rows)))
    if not args.no_write:
        write_section("Digits world: the single-positive method zoo (AEVLP Tables 1 and 2)", body)


if __name__ == "__main__":
    main()
