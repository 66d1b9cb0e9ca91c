"""MNIST loading: verification, search order, download, sample, malformed files."""
import gzip
import hashlib
import http.server
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from fastopt.datasets import MNISTError, load_mnist, mnist

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
needs_full = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/mnist not present")
CLOSED = "http://127.0.0.1:9/"   # discard port: connection refused at once, no network used


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTOPT_DATA", raising=False)
    monkeypatch.setenv("FASTOPT_MNIST_MIRRORS", CLOSED)


def _idx(array, magic):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) \
        + array.astype(np.uint8).tobytes()


def _write(path, raw, gz=True):
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


# ------------------------------------------------------------------ IDX verification
def test_parse_valid_images_and_labels(tmp_path):
    imgs = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    p = _write(tmp_path / "x.gz", _idx(imgs, 2051))
    np.testing.assert_array_equal(mnist.read_idx(p, 2051, 3), imgs)
    q = _write(tmp_path / "y", _idx(np.array([1, 2, 3]), 2049), gz=False)
    np.testing.assert_array_equal(mnist.read_idx(q, 2049, 3), [1, 2, 3])


@pytest.mark.parametrize("damage,match", [
    ("truncate", "truncated"), ("magic", "wrong magic number 2049"),
    ("count", "holds 3 items, expected 4"), ("checksum", "SHA-256"),
    ("gzip", "broken gzip"), ("trailing", "trailing bytes"), ("dims", "not \\(n, 28, 28\\)"),
    ("empty", "truncated")])
def test_malformed_files_raise_naming_the_file(tmp_path, damage, match):
    imgs = np.ones((3, 28, 28))
    raw = _idx(imgs, 2051)
    sha, count, gz = hashlib.sha256(raw).hexdigest(), 3, True
    if damage == "truncate":
        raw = raw[:-10]
        sha = None
    elif damage == "magic":
        raw = _idx(imgs, 2049)
        sha = None
    elif damage == "count":
        count = 4
    elif damage == "checksum":
        raw = bytearray(raw)
        raw[100] ^= 1
        raw = bytes(raw)
    elif damage == "trailing":
        raw += b"\0"
        sha = None
    elif damage == "dims":
        raw = _idx(np.ones((3, 27, 28)), 2051)
        sha = None
    elif damage == "empty":
        raw, sha = b"", None
    path = tmp_path / "bad-images.gz"
    if damage == "gzip":
        path.write_bytes(gzip.compress(raw)[:-20])
    else:
        _write(path, raw, gz)
    with pytest.raises(MNISTError, match=match) as e:
        mnist.read_idx(path, 2051, count, sha)
    assert "bad-images.gz" in str(e.value)


# ------------------------------------------------------------------ sample
def test_embedded_sample_is_verified_and_small():
    data = mnist.load_sample()
    assert data["train_images"].shape == (10000, 28, 28)
    assert data["test_images"].shape == (2000, 28, 28)
    assert list(data["train_labels"][:8]) == [5, 0, 4, 1, 9, 2, 1, 3]
    total = sum(p.stat().st_size for p in mnist.SAMPLE_DIR.iterdir())
    assert total < 2.5e6


@needs_full
def test_sample_is_the_head_of_the_full_set():
    full = mnist.read_dir(SHARED)
    sample = mnist.load_sample()
    np.testing.assert_array_equal(sample["train_images"], full["train_images"][:10000])
    np.testing.assert_array_equal(sample["test_labels"], full["test_labels"][:2000])


@needs_full
def test_full_set_sanity_facts():
    (x, t), (xt, tt) = load_mnist(root=SHARED)
    assert x.shape == (60000, 784) and x.dtype == np.float32 and 0 <= x.min() < x.max() <= 1
    assert list(t[:8]) == [5, 0, 4, 1, 9, 2, 1, 3]
    assert list(np.bincount(t)) == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert list(np.bincount(tt)) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_formats():
    with pytest.warns(UserWarning, match="embedded MNIST sample"):
        (x, t), _ = load_mnist(normalize=False, flatten=False, one_hot=True, download=False)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.uint8
    assert t.shape == (10000, 10) and t.dtype == np.float32 and t.sum() == 10000


# ------------------------------------------------------------------ search order
def test_offline_empty_cache_falls_back_to_sample_with_warning():
    with pytest.warns(UserWarning) as record:
        ((x, t), (xt, tt)), source = load_mnist(return_source=True)
    assert "SAMPLE" in source and len(x) == 10000 and len(xt) == 2000
    messages = " ".join(str(w.message) for w in record)
    assert "download failed" in messages and "embedded MNIST sample" in messages


@needs_full
def test_root_then_env_then_cache(tmp_path, monkeypatch):
    _, source = load_mnist(root=SHARED, return_source=True)
    assert str(SHARED) in source
    monkeypatch.setenv("FASTOPT_DATA", str(SHARED))
    _, source = load_mnist(return_source=True)
    assert "FASTOPT_DATA" in source
    monkeypatch.delenv("FASTOPT_DATA")
    cache = mnist.cache_dir()
    cache.mkdir(parents=True)
    for f in SHARED.glob("*.gz"):
        shutil.copy(f, cache / f.name)
    _, source = load_mnist(return_source=True)
    assert "cache" in source


def test_missing_root_directory_is_an_error(tmp_path):
    with pytest.raises(MNISTError, match="does not exist"):
        load_mnist(root=tmp_path / "nope")


def test_corrupt_file_in_root_is_an_error(tmp_path):
    for key, (stem, sha, magic, count) in mnist.FILES.items():
        _write(tmp_path / (stem + ".gz"), _idx(np.zeros((2,) + ((28, 28) if magic == 2051
                                                               else ())), magic))
    with pytest.raises(MNISTError, match="expected 60000|expected 10000"):
        load_mnist(root=tmp_path)


class _Server:
    def __init__(self, directory):
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(  # noqa: E731
            *a, directory=str(directory), **k)
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@needs_full
def test_download_from_second_mirror_verifies_and_renames(tmp_path, monkeypatch):
    server = _Server(SHARED)
    try:
        monkeypatch.setenv("FASTOPT_MNIST_MIRRORS", f"{CLOSED},{server.url}")
        ((x, t), _), source = load_mnist(return_source=True)
    finally:
        server.close()
    assert "downloaded" in source and len(x) == 60000
    cached = sorted(p.name for p in mnist.cache_dir().iterdir())
    assert cached == sorted(p.name for p in SHARED.glob("*.gz"))  # no .part leftovers


def test_download_of_wrong_content_leaves_no_file(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    for stem, sha, magic, count in mnist.FILES.values():
        _write(served / (stem + ".gz"), _idx(np.zeros((count,) + ((28, 28) if magic == 2051
                                                                  else ())), magic))
    server = _Server(served)
    try:
        monkeypatch.setenv("FASTOPT_MNIST_MIRRORS", server.url)
        with pytest.raises(OSError, match="SHA-256"):
            mnist.download_mnist()
    finally:
        server.close()
    left = list(mnist.cache_dir().iterdir()) if mnist.cache_dir().exists() else []
    assert left == []


@needs_full
def test_corrupt_cache_file_is_ignored_and_replaced(tmp_path, monkeypatch):
    cache = mnist.cache_dir()
    cache.mkdir(parents=True)
    for f in SHARED.glob("*.gz"):
        shutil.copy(f, cache / f.name)
    victim = cache / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(victim.read_bytes()))
    raw[50] ^= 0xFF
    victim.write_bytes(gzip.compress(bytes(raw)))
    server = _Server(SHARED)
    try:
        monkeypatch.setenv("FASTOPT_MNIST_MIRRORS", server.url)
        with pytest.warns(UserWarning, match="corrupt file in the cache"):
            _, source = load_mnist(return_source=True)
    finally:
        server.close()
    assert "downloaded" in source
    assert victim.read_bytes() == (SHARED / victim.name).read_bytes()
