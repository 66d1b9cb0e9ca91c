"""Command line: ``python -m fastopt {compare,bench,profile,download-mnist} ...``."""
import argparse
import os
import sys
import warnings

import numpy as np


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line, no usage dump and no traceback
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return v


def _seed(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= v < 2 ** 63:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 2**63) (a random seed)")
    return v


def _lr(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (v >= 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} must be finite and >= 0")
    return v


def _non_negative_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return v


def _non_negative_float(text):
    return _lr(text)


def _positive_float(text):
    v = _lr(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return v


def _optimizer_list(text):
    from .experiment import OPTIMIZERS
    names = [s.strip() for s in text.split(",") if s.strip()]
    if [n.lower() for n in names] == ["all"]:
        return list(OPTIMIZERS)
    lookup = {k.lower(): k for k in OPTIMIZERS}
    lookup["mini_sgd"] = "SGD"
    out = []
    for n in names:
        if n.lower() not in lookup:
            raise argparse.ArgumentTypeError(
                f"unknown optimizer {n!r}; choose from {','.join(OPTIMIZERS)}")
        if lookup[n.lower()] not in out:
            out.append(lookup[n.lower()])
    if not out:
        raise argparse.ArgumentTypeError("no optimizer given")
    return out


def _state_dtypes(text):
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    allowed = ("float32", "float64", "bfloat16", "int8")
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown state dtype {', '.join(bad) or repr(text)}; choose from "
            f"{','.join(allowed)}")
    return list(dict.fromkeys(names))


def _cmd_compare(args):
    from .datasets import MNISTError, load_mnist
    from .experiment import run_compare, write_outputs
    if not _writable_dir(args.out, "compare"):
        return 2
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data, source = load_mnist(root=args.data_dir, download=not args.no_download,
                                      return_source=True)
    except (MNISTError, OSError) as e:
        print(f"fastopt compare: error: {e}", file=sys.stderr)
        return 1
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"data: {source}; {len(data[0][0]):,} training / {len(data[1][0]):,} test images")
    if args.batch_size > len(data[0][0]):
        print(f"fastopt compare: error: --batch-size {args.batch_size} is larger than the "
              f"{len(data[0][0]):,} training images", file=sys.stderr)
        return 2
    if args.state_dtype and "bfloat16" in args.state_dtype and args.dtype != "float32":
        print("fastopt compare: error: --state-dtype bfloat16 needs --dtype float32",
              file=sys.stderr)
        return 2
    if args.state_dtype and "float64" in args.state_dtype and args.dtype != "float64" or (
            args.state_dtype and "float32" in args.state_dtype and args.dtype != "float32"):
        print(f"fastopt compare: error: --state-dtype takes the parameter's dtype "
              f"({args.dtype}), bfloat16 or int8", file=sys.stderr)
        return 2
    if args.no_decay_bias and not args.weight_decay:
        print("fastopt compare: error: --no-decay-bias needs --weight-decay > 0",
              file=sys.stderr)
        return 2
    loop = "".join(f" {k}={v}" for k, v in (("clip", args.clip), ("warmup", args.warmup),
                                            ("weight_decay", args.weight_decay))
                   if v) + (f" schedule={args.schedule}" if args.schedule != "constant"
                            else "") + (" no_decay_bias" if args.no_decay_bias else "") + (
        f" state_dtype={','.join(args.state_dtype)}" if args.state_dtype else "")
    lr = "default" if args.lr is None else args.lr
    print(f"settings: iters={args.iters} batch={args.batch_size} lr={lr} "
          f"optimizers={','.join(args.optimizers)} backend={args.backend} dtype={args.dtype} "
          f"seed={args.seed}{loop}")
    rank = 0
    if args.distributed:
        try:
            from mpi4py import MPI
        except ImportError as e:
            print(f'fastopt compare: error: --distributed needs mpi4py: pip install '
                  f'"fastopt[mpi]" ({e})', file=sys.stderr)
            return 2
        rank = MPI.COMM_WORLD.Get_rank()
        if rank == 0:
            print(f"distributed: {MPI.COMM_WORLD.Get_size()} ranks, each takes its part of "
                  f"every batch; state sharded")
    quiet = open(os.devnull, "w") if rank else None
    try:
        result = run_compare(data, iters=args.iters, batch_size=args.batch_size, lr=args.lr,
                             optimizers=args.optimizers, backend=args.backend,
                             dtype=np.dtype(args.dtype), seed=args.seed, clip=args.clip,
                             schedule=args.schedule, warmup=args.warmup,
                             weight_decay=args.weight_decay,
                             decay_bias=not args.no_decay_bias,
                             state_dtypes=args.state_dtype, distributed=args.distributed,
                             out=quiet, show_progress=False if rank else None)
    except ValueError as e:
        print(f"fastopt compare: error: {e}", file=sys.stderr)
        return 2
    finally:
        if quiet is not None:
            quiet.close()
    if rank:                                    # rank 0 reports and writes the outputs
        return 0
    result["data_source"] = source
    if result["interrupted"]:
        paths = write_outputs(result, args.out) if result["completed_iters"] else []
        print(f"interrupted after {result['completed_iters']} iterations"
              + (f"; the losses so far are in {', '.join(paths)}" if paths else ""),
              file=sys.stderr)
        return 130
    print("========== result ==========")
    width = max(len(k) for k in result["test_accuracy"])
    print(f"{'optimizer':<{width}}  final smoothed loss  test accuracy  "
          f"model (fwd+bwd) s  optimizer s  optimizer share")
    tm = result["timing_s"]
    for k in result["test_accuracy"]:
        share = tm["optimizer"][k] / max(tm["optimizer"][k] + tm["model"][k], 1e-12)
        print(f"{k:<{width}}  {result['final_smoothed_loss'][k]:19.4f}  "
              f"{result['test_accuracy'][k]:13.4f}  {tm['model'][k]:17.3f}  "
              f"{tm['optimizer'][k]:11.3f}  {share:14.1%}")
    print(f"wall time {tm['wall']:.2f} s: model {tm['model_total']:.2f} s, optimizer "
          f"{tm['optimizer_total']:.2f} s ({tm['optimizer_total'] / tm['wall']:.1%}); "
          f"kernel load/compile before the run {tm['warmup']:.2f} s")
    if "SAMPLE" in source:
        print("note: this ran on the embedded MNIST sample, not the full data set")
    for p in write_outputs(result, args.out):
        print(f"wrote {p}")
    return 0


def _cmd_download(args):
    from .datasets.mnist import download_mnist
    try:
        d = download_mnist(args.dir, show_progress=None)
    except OSError as e:
        print(f"fastopt download-mnist: error: {e}", file=sys.stderr)
        return 1
    print(f"MNIST verified in {d}")
    return 0


PEERS = ("torch", "pytorch-optimizer", "jax", "optax", "bitsandbytes", "torchao", "deepspeed")


def _peer_versions():
    """``{distribution: version}`` of the installed peers the benchmarks may time (read from
    the installed metadata, without importing them)."""
    from importlib import metadata
    out = {}
    for name in PEERS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _cmd_bench(args):
    import json
    import platform

    import numba

    from . import benchmarks as B, config, trainloop
    if not _writable_dir(args.out, "bench"):
        return 2
    rows = B.run_bench(quick=args.quick)
    print(B.format_table(rows))
    from . import loopbench
    loop_rows = loopbench.measure(
        sizes=(B.MLP_SIZE, 1_000_000) if args.quick else (B.MLP_SIZE, 10_000_000),
        min_time=0.05 if args.quick else 0.25)
    print(loopbench.format_table(loop_rows))
    print("\noptimizer state precision (float32 parameters):")
    state_rows = B.state_precision_rows(
        sizes=(B.MLP_SIZE, 1_000_000) if args.quick else (B.MLP_SIZE, 10_000_000),
        min_time=0.05 if args.quick else 0.25)
    print(B.format_state_table(state_rows))
    print("\ntorch models (fastopt.torch.Adam vs torch.optim.Adam, DeepSpeed's CPU Adam if "
          "installed; -bf16: bfloat16 models, fastopt with master_weights=True, 'masters' "
          "torch's fused Adam on float32 masters kept by hand):")
    torch_rows = B.torch_model_rows(sizes=B.TORCH_QUICK if args.quick else B.TORCH_SIZES,
                                    min_time=0.05 if args.quick else 0.25)
    print(B.format_torch_table(torch_rows) if torch_rows else "torch is not installed")
    loops = default_rows = []
    if not args.no_loops:
        print("\nunder the default thread policy (a fresh process that sets nothing):")
        default_rows = trainloop.default_policy_step_rows(
            cases=(("adam", B.MLP_SIZE),) if args.quick else
            (("adam", B.MLP_SIZE), ("adam", 10_000_000)),
            min_time=0.05 if args.quick else 0.25)
        print(B.format_table(default_rows))
        print("\ntraining loops (batch 128, float32 Adam; each configuration in fresh "
              "processes):")
        loops = trainloop.measure(models=("mlp",) if args.quick else ("mlp", "large"),
                                  repeats=1 if args.quick else 3,
                                  iters=100 if args.quick else None)
        print(trainloop.format_table(loops))
    os.makedirs(args.out, exist_ok=True)
    meta = {"machine": platform.machine(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "numba_threads": numba.get_num_threads(),
            "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "quick": args.quick,
            "thread_wait": config.thread_wait()}
    meta.update(_peer_versions())
    path = os.path.join(args.out, "bench.json")
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows, "loop_option_rows": loop_rows,
                   "state_precision_rows": state_rows, "torch_model_rows": torch_rows,
                   "default_policy_rows": default_rows,
                   "training_loops": loops}, f, indent=1)
    print(f"wrote {path}")
    png = B.plot_bench(rows, os.path.join(args.out, "bench.png"))
    if png:
        print(f"wrote {png}")
    return 0


def _writable_dir(path, command):
    """Check before a long run that ``path`` is, or can be made, a writable directory."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        print(f"fastopt {command}: error: cannot use --out {path!r}: {e.strerror or e}",
              file=sys.stderr)
        return False
    if not os.path.isdir(path) or not os.access(path, os.W_OK):
        print(f"fastopt {command}: error: --out {path!r} is not a writable directory",
              file=sys.stderr)
        return False
    return True


def _sizes(text):
    try:
        sizes = [int(float(s)) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of "
                                         f"sizes") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def _cmd_profile(args):
    from . import profile
    if not _writable_dir(args.out, "profile"):
        return 2
    return profile.main(args)


def build_parser():
    ap = _Parser(prog="python -m fastopt", description="fastopt command line")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("compare", help="the blog's experiment: SGD, Momentum, RMSprop, Adam "
                                       "training the 784-100-100-100-100-10 MLP on MNIST")
    c.add_argument("--iters", type=_positive_int, default=2000)
    c.add_argument("--batch-size", type=_positive_int, default=128)
    c.add_argument("--lr", type=_lr, default=None,
                   help="learning rate of every optimizer (default: 0.01 for the blog's four, "
                        "each other optimizer's own)")
    from . import registry
    from .experiment import BLOG_OPTIMIZERS, OPTIMIZERS
    c.add_argument("--optimizers", type=_optimizer_list, default=list(BLOG_OPTIMIZERS),
                   help=f"comma-separated names ({', '.join(OPTIMIZERS)}) or 'all'; default: "
                        "the blog's four")
    c.add_argument("--backend", choices=["numpy", "cpu"], default="cpu")
    c.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    c.add_argument("--seed", type=_seed, default=0, help="random seed (>= 0)")
    c.add_argument("--data-dir", default=None,
                   help="directory with the four MNIST IDX files (default: search, "
                        "download, then the embedded sample)")
    c.add_argument("--no-download", action="store_true", help="never download")
    c.add_argument("--out", default="results/compare", help="output directory")
    c.add_argument("--clip", type=_positive_float, default=None,
                   help="clip the gradient to this global L2 norm (inside the step)")
    c.add_argument("--schedule", choices=["constant", "cosine", "linear", "wsd"],
                   default="constant", help="learning-rate schedule over --iters")
    c.add_argument("--warmup", type=_non_negative_int, default=0,
                   help="linear learning-rate warmup steps")
    c.add_argument("--weight-decay", type=_non_negative_float, default=0.0,
                   help="weight decay (AdamW-style for Adam; none for Momentum)")
    c.add_argument("--state-dtype", type=_state_dtypes, default=None,
                   help="optimizer state precision(s), comma-separated: float32, bfloat16, int8 "
                        "(each optimizer trains once per precision, one plot)")
    c.add_argument("--no-decay-bias", action="store_true",
                   help="no weight decay on the biases (a parameter group)")
    c.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI with sharded optimizer state (run under "
                        "mpiexec; each rank takes its part of every batch)")
    c.set_defaults(func=_cmd_compare)

    b = sub.add_parser("bench", help="time every optimizer and implementation "
                                     "(checked against the reference first)")
    b.add_argument("--quick", action="store_true", help="fewer sizes, shorter timings (~1 min)")
    b.add_argument("--out", default="results/bench", help="output directory")
    b.add_argument("--no-loops", action="store_true",
                   help="skip the default-policy rows and the training-loop benchmark")
    b.set_defaults(func=_cmd_bench)

    pr = sub.add_parser("profile", help="GPU-vs-CPU profile: NumPy reference, CPU kernels, "
                                        "CUDA kernels (kernel-only and end-to-end)")
    pr.add_argument("--sizes", type=_sizes, default=None,
                    help="comma-separated, e.g. 1e4,1e6 (default 1e4..1e8 within memory)")
    pr.add_argument("--optimizers", default=None,
                    help=f"comma-separated subset of {', '.join(registry.REGISTRY)} "
                         "(default: all)")
    pr.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    pr.add_argument("--out", default="results/profile", help="output directory")
    pr.set_defaults(func=_cmd_profile)

    d = sub.add_parser("download-mnist", help="download and verify MNIST into the cache")
    d.add_argument("--dir", default=None, help="target directory (default: the cache)")
    d.set_defaults(func=_cmd_download)
    return ap


class _SafeStdout:
    """stdout that survives its reader going away (``python -m fastopt compare | head -1``):
    the run goes on and writes its files; what it prints after that is dropped."""

    def __init__(self, stream):
        self._stream = stream
        self.closed_by_reader = False

    def write(self, text):
        if not self.closed_by_reader:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def flush(self):
        if not self.closed_by_reader:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self):
        self.closed_by_reader = True
        try:     # no "Exception ignored ... BrokenPipeError" when Python flushes at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv=None):
    args = build_parser().parse_args(argv)
    # Training (compare) runs under fastopt's default wait policy, as a user's loop does
    # (fastopt._threads); timing back-to-back steps wants short spinning instead (README,
    # "Threads"). Must be set before any pool starts.
    if args.func in (_cmd_bench, _cmd_profile):
        from . import config
        config.set_thread_wait("bench")
    return args.func(args)


def _entry():
    sys.stdout = _SafeStdout(sys.stdout)
    try:
        return main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(_entry())
