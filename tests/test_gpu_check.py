"""benchmarks/gpu_check.py runs end to end at a tiny size on the CPU and prints its table."""

from __future__ import annotations

import sys

from tests.conftest import REPO


def test_gpu_check_runs_on_the_cpu_at_a_tiny_size(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check

    gpu_check.main(["--device", "cpu", "--tiny", "--workers", "1"])
    out = capsys.readouterr().out
    assert "device: CPU" in out
    rows = [line for line in out.splitlines() if line.startswith("| one:") or line.startswith("| two:")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        numbers = [float(c.replace(",", "")) for c in cells[2:]]
        assert len(numbers) == 5 and all(n > 0 for n in numbers), row
    sys.modules.pop("gpu_check", None)
