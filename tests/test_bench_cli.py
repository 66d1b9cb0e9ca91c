"""``python -m fastopt bench``: runs, checks every implementation, writes table, JSON and plot
(on small cases, so that the default test run stays fast)."""
import json
from importlib import metadata

import numpy as np

from fastopt import benchmarks, registry, testinfo
from fastopt.__main__ import PEERS, main


def test_cli_bench_writes_table_json_and_plot(tmp_path, capsys, monkeypatch, no_wait_policy):
    cases = [(spec, 1000, np.float32) for spec in registry.REGISTRY.values()]
    cases.append((registry.get("adam"), benchmarks.MLP_SIZE, np.float64))   # the MLP's tensors
    monkeypatch.setattr(benchmarks, "_plan", lambda quick: cases)
    out = tmp_path / "out"
    assert main(["bench", "--quick", "--no-loops", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ceiling" in text and "roofline" in text

    result = json.loads((out / "bench.json").read_text())
    assert result["meta"]["thread_wait"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "1000"}
    for name in PEERS:                  # the installed peers' versions, and only theirs
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = None
        assert result["meta"].get(name) == version, name
    rows = result["rows"]
    ok = {(r["optimizer"], r["size"], r["dtype"], r["impl"]) for r in rows
          if r["status"] == "ok"}
    for spec, n, dtype in cases:
        impls = ("blog",) if testinfo.info(spec).blog else ()
        for impl in impls + ("numpy", "cpu-serial", "cpu-parallel"):
            assert (spec.name, n, np.dtype(dtype).name, impl) in ok, (spec.name, n, impl)
    for r in rows:
        if r["status"] != "ok":
            assert r["reason"]                      # every skipped implementation says why
            continue
        assert r["seconds"] > 0 and r["gb_per_s"] > 0 and r["roofline_fraction"] > 0
        if testinfo.info(r["optimizer"]).blog:
            assert r["speedup_vs_blog"] > 0 and r["blog_over_traffic_equal"] > 0
        assert r["roofline_fraction"] < 1.5     # timed interleaved with its reference
        spec = registry.get(r["optimizer"])
        n_state = len(spec.required_state(spec.validate(spec.defaults)))
        # every array read once, every array but the gradient written once; a per-tensor
        # pre-pass (LAMB) reads every array once more
        arrays = 2 + n_state
        passes = 2 * arrays - 1 + (arrays if spec.kernel.norm_names else 0)
        assert r["bytes_per_element"] == passes * np.dtype(r["dtype"]).itemsize
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_loop_benchmark_compares_default_tuned_and_blog():
    from fastopt import trainloop
    rows = trainloop.measure(models=("mlp",), configs=["default", "serial step", "blog's Adam"],
                             repeats=1, iters=3, show_progress=False)
    by = {r["config"]: r for r in rows}
    assert set(by) == {"default", "serial step", "blog's Adam"}
    for r in rows:
        assert r["parameters"] == benchmarks.MLP_SIZE
        assert 0 < r["model_ms"] < r["iter_ms"] and r["step_ms"] > 0
        assert r["best_tuned"] == "serial step"
        assert r["vs_best_tuned"] == r["iter_ms"] / by["serial step"]["iter_ms"]
        assert r["vs_blog"] == r["iter_ms"] / by["blog's Adam"]["iter_ms"]
    # a fresh process with no policy variables reports fastopt's default threshold
    assert by["default"]["parallel_threshold"] == 131072
    assert by["serial step"]["parallel_threshold"] == 1 << 62
    text = trainloop.format_table(rows)
    assert "blog's Adam" in text and "vs best tuned" in text


def test_default_policy_step_rows_run_in_a_clean_process():
    from fastopt import trainloop
    rows = trainloop.default_policy_step_rows(cases=(("sgd", 1000),), min_time=0.01)
    assert {r["impl"] for r in rows} == {"cpu", "torch-fused"}
    cpu = next(r for r in rows if r["impl"] == "cpu")
    assert cpu["status"] == "ok" and cpu["policy"] == "default" and cpu["seconds"] > 0
