"""The training-loop benchmark: whole iterations (matmul forward/backward + Adam step) of the
blog's MLP and of a 14.2M-parameter MLP, each configuration in fresh processes (the thread
pools' policies are fixed when they start), under the default policy, the tuned ones and with
the blog's Adam (``fastopt.trainloop``). The timed call is the whole measurement; the
per-iteration medians and their ratios are in ``extra_info``. Plain ``pytest`` runs the MLP
case once, with a few iterations, as a smoke test."""
import pytest

from fastopt import trainloop


@pytest.mark.parametrize("model", ["mlp", pytest.param("large", marks=pytest.mark.slow)])
def test_training_loop(benchmark, model):
    if benchmark.disabled and model == "large":
        pytest.skip("the large-model loop runs only when benchmarking")
    smoke = benchmark.disabled
    result = {}

    def run():
        result["rows"] = trainloop.measure(
            models=(model,), configs=["default", "serial step", "blog's Adam"] if smoke
            else None, repeats=1 if smoke else 3, iters=3 if smoke else None,
            show_progress=False)

    benchmark.group = f"training-loop|{model}"
    benchmark.name = "all configurations"
    benchmark.pedantic(run, rounds=1, iterations=1)
    rows = result["rows"]
    default = next(r for r in rows if r["config"] == "default")
    benchmark.extra_info.update({
        r["config"]: {k: r[k] for k in ("model_ms", "step_ms", "iter_ms", "vs_best_tuned",
                                        "vs_blog") if k in r} for r in rows})
    assert default["iter_ms"] > 0 and default["vs_best_tuned"] > 0
