"""The layering of issue 9, checked on the source: no import cycle inside fastopt/ (every
import statement counts, lazy ones too), the step path imports no benchmark, profile, compat or
CLI code, and a kernel record whose names do not match its per-element function is refused
when its first kernel is built."""
import ast
import os

import pytest

from fastopt import registry
from fastopt.kernels.record import KernelRecord, KernelRecordError
from helpers import ROOT

PKG = os.path.join(ROOT, "fastopt")


def _graph():
    mods = {}
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                name = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
                mods[name.removesuffix(".__init__")] = path
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        base = m if path.endswith("__init__.py") else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    parts = base.split(".")
                    mod = ".".join(parts[:len(parts) - node.level + 1]) + ("." + mod if mod
                                                                           else "")
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            edges[m] |= {t for t in targets if t in mods and t not in (m, "fastopt")}
    return edges


def _reachable(edges, start):
    seen, todo = set(), [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_import_cycle_inside_fastopt():
    edges = _graph()
    cycles = sorted(m for m in edges if m in _reachable(edges, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


STEP_PATH = sorted({"fastopt._step", "fastopt._backends", "fastopt._spec", "fastopt._core",
                    "fastopt._cuda_backend", "fastopt.registry", "fastopt.checkpoint",
                    "fastopt.scaling", "fastopt.schedules"}
                   | {spec.step_fn.__module__ for spec in registry.REGISTRY.values()
                      if spec.step_fn.__module__.startswith("fastopt.")})
FORBIDDEN = {"fastopt.benchmarks", "fastopt.profile", "fastopt.compat", "fastopt.__main__",
             "fastopt.experiment", "fastopt.trainloop"}


@pytest.mark.parametrize("module", STEP_PATH)
def test_step_path_imports_no_benchmark_profile_compat_or_cli(module):
    edges = _graph()
    assert module in edges
    assert not _reachable(edges, module) & FORBIDDEN


def _elem(p, g, lr, mom, flag):
    return p - lr * g, g


def _body(flag):
    def kernel(p, g, s):
        pass
    return kernel


@pytest.mark.parametrize("scalars, match", [
    (("lr", "momentum"), r"missing: \['momentum'\], unknown: \['mom'\]"),
    (("lr",), "options|scalars"),
    (("lr", "lr"), "duplicate"),
])
def test_a_record_with_wrong_scalar_names_is_refused_at_first_build(scalars, match):
    from fastopt.kernels import cpu
    record = KernelRecord("wrong", _elem, _body, ("param", "grad"), scalars)
    with pytest.raises(KernelRecordError, match=match):
        cpu.family(record)


def test_options_must_match_the_body():
    def body(other):
        return _body(other)
    with pytest.raises(KernelRecordError, match="options"):
        KernelRecord("wrong", _elem, body, ("param", "grad"), ("lr", "mom")).check()


def test_scalars_are_placed_by_name_not_position():
    src = KernelRecord("ok", _elem, _body, ("param", "grad"), ("mom", "lr")).adapter_source()
    assert "_elem(x0, x1, sc[1], sc[0], flag)" in src


_NORMS_RECORD = '''
from fastopt.kernels.record import KernelRecord, elem, loop, unpack  # noqa: F401


def probe_elem(p, g, lr, flag):
    r = g * FACTOR
    return p - lr * r, p, r


def probe_body(flag):
    def probe(p, g, s):
        sc = unpack(s)
        for i in loop(p.shape[0]):
            pn, _, _ = elem(p[i], g[i], sc, flag)
            p[i] = pn
    return probe


RECORD = KernelRecord(name="probe", elem=probe_elem, body=probe_body,
                      arrays=("param", "grad"), scalars=("lr",),
                      norm_arrays=("param",), norms=(2,), norm_names=("param", "update"))
'''

_RUN_PROBE = '''
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import probe_record
from fastopt.kernels import cpu, reductions
p, g = np.full(1000, 2.0), np.ones(1000)
s = np.array([0.5])
sums = reductions.segment_norms(probe_record.RECORD, False, False, dict(flag=False))(
    (p, g), s, 4096)
cpu.family(probe_record.RECORD).get(False, flag=False)(p, g, s)
print(sums[0], sums[1], p[0])
'''


def test_a_changed_per_element_function_is_not_run_from_numbas_disk_cache(tmp_path):
    """Numba checks a cached function against its own file only; the pre-pass
    (``kernels.reductions``) and the kernel bodies call a record's per-element function bound in
    from another file. Editing that function must recompile both, not load the old code."""
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    module = tmp_path / "probe_record.py"

    def run(factor):
        module.write_text(f"FACTOR = 1.0\n{_NORMS_RECORD}".replace("g * FACTOR",
                                                                      f"g * {factor}"))
        out = subprocess.run([sys.executable, "-c", _RUN_PROBE, str(tmp_path)], env=env,
                             capture_output=True, text=True, check=True).stdout.split()
        return [float(x) for x in out]

    assert run(3.0) == [4000.0, 9000.0, 2.0 - 0.5 * 3.0]
    assert list((tmp_path / "cache").rglob("*.nbi")), "nothing was cached"
    assert run(5.0) == [4000.0, 25000.0, 2.0 - 0.5 * 5.0]


def test_source_tag_follows_the_files_and_survives_a_missing_source_directory(tmp_path,
                                                                              monkeypatch):
    from fastopt.kernels import decorators
    f = tmp_path / "elem.py"
    f.write_text("x = 1\n")
    first = decorators.source_tag((str(f),))
    f.write_text("x = 2\n")
    decorators.source_tag.cache_clear()
    assert decorators.source_tag((str(f),)) != first
    assert decorators.source_tag(()) != decorators.source_tag((str(f),))

    def no_dir(path):
        raise FileNotFoundError(path)
    monkeypatch.setattr(decorators.os, "listdir", no_dir)
    decorators.source_tag.cache_clear()
    try:        # a frozen or zipped install: the package's own files are not on disk
        assert len(decorators.source_tag((str(f),))) == 12
        assert decorators.source_tag((str(tmp_path / "gone.py"),))
    finally:
        decorators.source_tag.cache_clear()
