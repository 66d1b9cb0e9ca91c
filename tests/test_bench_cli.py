"""``python -m fastopt bench``: runs, checks every implementation, writes table, JSON and plot
(on small cases, so that the default test run stays fast)."""
import json

import numpy as np

from fastopt import benchmarks, registry
from fastopt.__main__ import main


def test_cli_bench_writes_table_json_and_plot(tmp_path, capsys, monkeypatch, no_wait_policy):
    cases = [(spec, 1000, np.float32) for spec in registry.REGISTRY.values()]
    cases.append((registry.get("adam"), benchmarks.MLP_SIZE, np.float64))   # the MLP's tensors
    monkeypatch.setattr(benchmarks, "_plan", lambda quick: cases)
    out = tmp_path / "out"
    assert main(["bench", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ceiling" in text and "roofline" in text

    result = json.loads((out / "bench.json").read_text())
    assert result["meta"]["thread_wait"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "1000"}
    rows = result["rows"]
    ok = {(r["optimizer"], r["size"], r["dtype"], r["impl"]) for r in rows
          if r["status"] == "ok"}
    for spec, n, dtype in cases:
        for impl in ("seed", "numpy", "cpu-serial", "cpu-parallel"):
            assert (spec.name, n, np.dtype(dtype).name, impl) in ok, (spec.name, n, impl)
    for r in rows:
        if r["status"] != "ok":
            assert r["reason"]                      # every skipped implementation says why
            continue
        assert r["seconds"] > 0 and r["gb_per_s"] > 0 and r["roofline_fraction"] > 0
        assert r["speedup_vs_seed"] > 0 and r["seed_over_traffic_equal"] > 0
        spec = registry.get(r["optimizer"])
        n_state = len(spec.required_state(spec.validate(spec.defaults)))
        # every array read once, every array but the gradient written once
        assert r["bytes_per_element"] == (2 * (2 + n_state) - 1) * np.dtype(r["dtype"]).itemsize
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
