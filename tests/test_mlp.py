"""The seed's MLP on a flat arena, and the compare experiment / CLI."""
import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import fastopt
from fastopt.__main__ import main
from fastopt.experiment import run_compare, smooth_curve
from fastopt.mlp import MLP, BLOG_SIZES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(n_train=300, n_test=100, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n_train + n_test, 784), dtype=np.float32)
    t = rng.integers(0, 10, n_train + n_test)
    return (x[:n_train], t[:n_train]), (x[n_train:], t[n_train:])


def test_seed_network_shapes_and_he_init():
    net = MLP()
    assert net.flat.size == 109_810
    assert [net.params[f"W{i}"].shape for i in range(1, 6)] == \
        [(784, 100), (100, 100), (100, 100), (100, 100), (100, 10)]
    assert net.flat.param.dtype == np.float32
    assert abs(net.params["W1"].std() - np.sqrt(2 / 784)) < 0.002
    assert abs(net.params["W2"].std() - np.sqrt(2 / 100)) < 0.01
    assert not net.params["b3"].any()


def test_gradient_matches_numerical_differentiation():
    net = MLP((12, 7, 6, 4), dtype=np.float64, seed=3)
    rng = np.random.default_rng(1)
    x, t = rng.standard_normal((5, 12)), rng.integers(0, 4, 5)
    net.gradient(x, t)
    analytic = net.flat.grad.copy()
    numeric = np.empty_like(analytic)
    h = 1e-6
    p = net.flat.param

    def exact_loss():
        # the seed's loss adds 1e-7 inside the log; the backward pass (like the seed's) is
        # the gradient of the exact cross-entropy, so differentiate that
        y = net.predict(x)
        return -np.mean(np.log(y[np.arange(len(t)), t]))
    for i in range(p.size):
        old = p[i]
        p[i] = old + h
        fp = exact_loss()
        p[i] = old - h
        fm = exact_loss()
        p[i] = old
        numeric[i] = (fp - fm) / (2 * h)
    err = np.abs(analytic - numeric) / np.maximum(1e-8, np.abs(analytic) + np.abs(numeric))
    assert err.max() < 1e-6, err.max()


def test_training_step_allocates_nothing_parameter_sized():
    net = MLP()
    x = np.random.default_rng(0).random((16, 784), dtype=np.float32)
    t = np.arange(16) % 10
    buffers = fastopt.AdamBuffers.zeros(net.flat.param, net.flat.grad)
    grad_before = net.flat.grad
    for _ in range(2):  # warm up workspaces and kernels
        net.gradient(x, t)
        fastopt.adam_step(buffers)
    tracemalloc.start()
    net.gradient(x, t)
    fastopt.adam_step(buffers)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert net.flat.grad is grad_before
    assert peak < net.flat.param.nbytes / 4, peak  # far below one parameter-sized array


def test_smooth_curve_matches_the_seed_definition():
    x = np.random.default_rng(0).random(50)
    window_len = 11
    s = np.r_[x[window_len - 1:0:-1], x, x[-1:-window_len:-1]]
    w = np.kaiser(window_len, 2)
    y = np.convolve(w / w.sum(), s, mode="valid")
    np.testing.assert_array_equal(smooth_curve(x), y[5:len(y) - 5])
    assert len(smooth_curve(x)) == 50


def test_compare_backends_are_bitwise_identical_and_deterministic():
    data = _data()
    kw = dict(iters=25, batch_size=32, report_every=0, out=open(os.devnull, "w"))
    a = run_compare(data, backend="numpy", **kw)
    b = run_compare(data, backend="cpu", **kw)
    c = run_compare(data, backend="cpu", **kw)
    d = run_compare(data, backend="cpu", seed=1, **kw)
    for k in a["losses"]:
        assert a["losses"][k] == b["losses"][k] == c["losses"][k]
        assert a["losses"][k] != d["losses"][k]
    assert a["test_accuracy"] == b["test_accuracy"]
    assert set(a["losses"]) == {"SGD", "Momentum", "RMSprop", "Adam"}


def test_compare_float64_uses_float64_arenas(monkeypatch):
    import fastopt.experiment as experiment
    made = []

    class Recording(experiment.MLP):
        def copy(self):
            net = super().copy()
            made.append(net)
            return net
    monkeypatch.setattr(experiment, "MLP", Recording)
    res = run_compare(_data(), iters=3, batch_size=8, optimizers=["Adam"], dtype=np.float64,
                      report_every=1, out=open(os.devnull, "w"))
    assert res["settings"]["dtype"] == "float64"
    assert made and all(n.flat.param.dtype == n.flat.grad.dtype == np.float64 for n in made)
    f32 = run_compare(_data(), iters=3, batch_size=8, optimizers=["Adam"], dtype=np.float32,
                      report_every=1, out=open(os.devnull, "w"))
    assert f32["losses"]["Adam"] != res["losses"]["Adam"]


def test_cli_compare_writes_outputs(tmp_path, capsys, monkeypatch, no_wait_policy):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FASTOPT_MNIST_MIRRORS", "http://127.0.0.1:9/")
    monkeypatch.delenv("FASTOPT_DATA", raising=False)
    out = tmp_path / "out"
    fastopt.config.reset()          # the defaults of a process that sets no policy
    rc = main(["compare", "--iters", "101", "--batch-size", "16", "--optimizers",
               "sgd,Adam", "--out", str(out), "--dtype", "float64"])
    assert rc == 0
    assert not os.environ.get("OMP_WAIT_POLICY")        # compare sets no policy of its own
    assert fastopt.config.PARALLEL_THRESHOLD == 131072   # the MLP's step runs serially
    text = capsys.readouterr().out
    assert "========== iteration: 0 ==========" in text
    assert "========== iteration: 100 ==========" in text
    assert "\nSGD:" in text and "\nAdam:" in text and "RMSprop:" not in text
    assert "embedded MNIST sample" in text
    result = json.loads((out / "losses.json").read_text())
    assert set(result["losses"]) == {"SGD", "Adam"} and len(result["losses"]["SGD"]) == 101
    assert result["settings"]["dtype"] == "float64"
    rows = (out / "losses.csv").read_text().splitlines()
    assert rows[0] == "iteration,SGD,Adam" and len(rows) == 102
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv,msg", [
    (["compare", "--iters", "0"], "must be > 0"),
    (["compare", "--lr", "nan"], "finite"),
    (["compare", "--optimizers", "adagrat"], "unknown optimizer 'adagrat'"),
    (["compare", "--backend", "gpu"], "invalid choice"),
    (["compare", "--dtype", "float16"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_bad_options_one_line(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_bad_data_dir_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "fastopt", "compare", "--iters", "1",
                          "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_default_network_is_the_blogs():
    """The blog's MultiLayerNet(input_size=784, hidden_size_list=[100] * 4, output_size=10):
    ten tensors in order W1, b1, ..., W5, b5, and the parameter count the benchmarks use."""
    from fastopt.benchmarks import MLP_SHAPES, MLP_SIZE
    sizes = [784] + [100] * 4 + [10]
    net = MLP()
    expected = {}
    for i in range(5):
        expected[f"W{i + 1}"] = (sizes[i], sizes[i + 1])
        expected[f"b{i + 1}"] = (sizes[i + 1],)
    assert [(k, v.shape) for k, v in net.params.items()] == list(expected.items())
    assert net.flat.size == MLP_SIZE == sum(int(np.prod(s)) for s in MLP_SHAPES)
    assert MLP(BLOG_SIZES).flat.size == net.flat.size


def test_compare_training_loop_options_are_the_fused_step_features():
    """--clip / --schedule / --warmup / --weight-decay / --no-decay-bias: each network's
    step equals a hand-written loop with fastopt's step functions and the same options."""
    import fastopt
    from fastopt import experiment
    data = _data()
    kw = dict(iters=12, batch_size=16, report_every=0, out=open(os.devnull, "w"),
              optimizers=["Adam", "Momentum"], clip=0.5, schedule="cosine", warmup=4,
              weight_decay=0.1, decay_bias=False)
    res = run_compare(data, **kw)
    assert res["settings"]["clip"] == 0.5 and res["settings"]["decay_bias"] is False
    plain = run_compare(data, **dict(kw, clip=None, schedule="constant", warmup=0,
                                     weight_decay=0.0))
    assert res["losses"]["Adam"] != plain["losses"]["Adam"]
    # the same run by hand: the blog's Adam hyperparameters, AdamW-style decay on the
    # weights only, the cosine schedule with warmup, clipping inside the step
    (x_train, t_train), _ = data
    base = experiment.MLP(experiment.BLOG_SIZES, dtype=np.float32, seed=0)
    net = base.copy()
    hyper = dict(fastopt.compat.Adam(lr=0.01)._hyper(), weight_decay=0.1,
                 decoupled_weight_decay=True, lr=experiment.lr_schedule("cosine", 0.01, 12, 4))
    groups = fastopt.Groups(net.flat, [{"params": [k for k in net.flat.layout
                                                   if k.startswith("b")],
                                        "weight_decay": 0.0}])
    b = fastopt.AdamBuffers.zeros(net.flat.param, net.flat.grad)
    rng = np.random.default_rng(1)
    losses = []
    for _ in range(12):
        mask = rng.choice(len(x_train), 16)
        x = np.ascontiguousarray(x_train[mask], np.float32)
        t = t_train[mask]
        net.gradient(x, t)
        fastopt.adam_step(b, **hyper, max_grad_norm=0.5, groups=groups)
        losses.append(net.loss(x, t))
    assert res["losses"]["Adam"] == [float(v) for v in losses]
    assert b.grad_norm is not None


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear", "wsd"])
def test_compare_schedules_start_and_end_where_they_say(schedule):
    from fastopt.experiment import lr_schedule
    s = lr_schedule(schedule, 0.1, 100, warmup=10)
    assert s(0) == pytest.approx(0.1 / 3)
    assert s(10) == pytest.approx(0.1)
    if schedule != "constant":
        assert s(100) == pytest.approx(0.0, abs=1e-12)
    assert lr_schedule("constant", 0.1, 100) == 0.1
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_schedule("cosin", 0.1, 100)


def test_compare_runs_every_optimizer_on_one_plot(tmp_path):
    from fastopt.experiment import OPTIMIZERS, write_outputs
    res = run_compare(_data(), iters=4, batch_size=8, optimizers=list(OPTIMIZERS),
                      report_every=0, out=open(os.devnull, "w"))
    assert list(res["losses"]) == list(OPTIMIZERS)
    assert all(np.isfinite(v).all() for v in res["losses"].values())
    assert res["settings"]["lr"]["Lion"] == 1e-4 and res["settings"]["lr"]["SGD"] == 0.01
    one = run_compare(_data(), iters=4, batch_size=8, optimizers=["Lion", "SGD"], lr=0.02,
                      report_every=0, out=open(os.devnull, "w"))
    assert one["settings"]["lr"] == {"Lion": 0.02, "SGD": 0.02}
    paths = write_outputs(res, str(tmp_path))
    assert any(p.endswith(".json") for p in paths)


def test_compare_state_dtypes_train_each_optimizer_once_per_precision():
    """--state-dtype float32,bfloat16: float32 state is the plain run bit for bit; bfloat16
    state trains its own network, close to it."""
    data = _data()
    kw = dict(iters=15, batch_size=16, report_every=0, out=open(os.devnull, "w"),
              optimizers=["Adam", "Momentum"])
    res = run_compare(data, state_dtypes=["float32", "bfloat16"], **kw)
    plain = run_compare(data, **kw)
    assert list(res["losses"]) == ["Adam (float32)", "Adam (bfloat16)", "Momentum (float32)",
                                   "Momentum (bfloat16)"]
    assert res["settings"]["state_dtypes"] == ["float32", "bfloat16"]
    for k in ("Adam", "Momentum"):
        assert res["losses"][f"{k} (float32)"] == plain["losses"][k]
        assert res["losses"][f"{k} (bfloat16)"] != plain["losses"][k]
        np.testing.assert_allclose(res["losses"][f"{k} (bfloat16)"], plain["losses"][k],
                                   rtol=0.05)


def test_compare_cli_refuses_bfloat16_state_with_float64(tmp_path):
    from fastopt.__main__ import main
    assert main(["compare", "--iters", "2", "--dtype", "float64", "--state-dtype", "bfloat16",
                 "--out", str(tmp_path)]) == 2
