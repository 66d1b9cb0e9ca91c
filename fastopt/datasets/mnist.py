"""MNIST: reading and verifying IDX files, finding or downloading them, the embedded sample.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J. C. Burges, licensed CC BY-SA 3.0.
The sample shipped with fastopt (``fastopt/datasets/data``) is its first 10,000 training and
first 2,000 test images and labels, made by ``python -m fastopt.datasets.make_sample``.
"""
import gzip
import hashlib
import http.client
import json
import os
import struct
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path

import numpy as np

from .._progress import progress

# SHA-256 of the *decompressed* official files (../shared/data/mnist/README.md).
FILES = {
    "train_images": ("train-images-idx3-ubyte",
                     "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                     2051, 60000),
    "train_labels": ("train-labels-idx1-ubyte",
                     "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                     2049, 60000),
    "test_images": ("t10k-images-idx3-ubyte",
                    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                    2051, 10000),
    "test_labels": ("t10k-labels-idx1-ubyte",
                    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                    2049, 10000),
}

# Public mirrors of the original gzip files, tried in order (override with
# FASTOPT_MNIST_MIRRORS, a comma-separated list of base URLs).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
TIMEOUT = 15.0                 # seconds a mirror may stay silent
DEADLINE = 300.0               # seconds one file's download may take in all
                               # (FASTOPT_DOWNLOAD_DEADLINE overrides)
MAX_IDX_BYTES = 16 + 60000 * 784   # the largest MNIST file, decompressed
SAMPLE_DIR = Path(__file__).with_name("data")
SAMPLE_PREFIX = "sample-"


class MNISTError(ValueError):
    """An MNIST file is missing, malformed or corrupted; the message names it."""


# ------------------------------------------------------------------ IDX reading

def expected_size(magic, count):
    """The exact size of a decompressed IDX file of ``count`` MNIST images (magic 2051) or
    labels (2049); without a count, the largest MNIST file."""
    if count is None:
        return MAX_IDX_BYTES
    return 16 + count * 784 if magic == 2051 else 8 + count


def _read_bytes(path, limit=MAX_IDX_BYTES):
    """The (decompressed) bytes of ``path``, never more than ``limit`` + 64 KiB of them: a
    gzip stream is decompressed incrementally and abandoned as soon as it exceeds the size the
    file can have (a "gzip bomb" costs a few MB, not gigabytes). Up to 64 KiB too many are
    returned, so that the IDX parser can say "trailing bytes"."""
    path = Path(path)
    limit += 1 << 16
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if path.suffix == ".gz" or head == b"\x1f\x8b":
            try:
                with gzip.GzipFile(fileobj=f) as z:
                    raw = z.read(limit + 1)
            except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
                raise MNISTError(f"{path}: broken gzip stream ({e})") from None
            if len(raw) > limit:
                raise MNISTError(f"{path}: decompresses to more than the {limit} bytes an "
                                 f"MNIST file has (not an MNIST file, or a gzip bomb)")
            return raw
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise MNISTError(f"{path}: {size} bytes, more than the {limit} an MNIST file has")
        return f.read(limit + 1)


def parse_idx(raw, path, magic, count=None):
    """Parse IDX bytes (images: magic 2051, labels: 2049), checking every header field."""
    if len(raw) < 8:
        raise MNISTError(f"{path}: truncated ({len(raw)} bytes, no IDX header)")
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise MNISTError(f"{path}: wrong magic number {found} (expected {magic})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MNISTError(f"{path}: truncated header")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    if magic == 2051 and (ndim != 3 or dims[1:] != (28, 28)):
        raise MNISTError(f"{path}: image dimensions {dims} are not (n, 28, 28)")
    if count is not None and dims[0] != count:
        raise MNISTError(f"{path}: holds {dims[0]} items, expected {count}")
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise MNISTError(f"{path}: {what} ({len(raw)} bytes, header says {expected})")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_idx(path, magic, count=None, sha256=None):
    """Read and verify one IDX file (gzip or raw)."""
    raw = _read_bytes(path, expected_size(magic, count))
    array = parse_idx(raw, path, magic, count)   # structure first: the clearer message
    if sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != sha256:
            raise MNISTError(f"{path}: SHA-256 of the content is {digest}, expected {sha256} "
                             f"(corrupted or not the official file)")
    return array


def _find_file(directory, stem):
    for name in (stem + ".gz", stem):
        p = Path(directory) / name
        if p.is_file():
            return p
    return None


def read_dir(directory, files=None):
    """Read the four official files from ``directory``; ``None`` if any is absent.
    A present but bad file raises :class:`MNISTError`."""
    files = FILES if files is None else files
    paths = {k: _find_file(directory, stem) for k, (stem, *_rest) in files.items()}
    if not all(paths.values()):
        return None
    return {k: read_idx(paths[k], magic, count, sha)
            for k, (stem, sha, magic, count) in files.items()}


# ------------------------------------------------------------------ locations

def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastopt" / "mnist"


def mirrors():
    env = os.environ.get("FASTOPT_MNIST_MIRRORS")
    if env:
        return tuple(m.strip().rstrip("/") + "/" for m in env.split(",") if m.strip())
    return MIRRORS


def _deadline():
    raw = os.environ.get("FASTOPT_DOWNLOAD_DEADLINE", "").strip()
    try:
        return float(raw) if raw else DEADLINE
    except ValueError:
        raise ValueError(f"FASTOPT_DOWNLOAD_DEADLINE={raw!r} is not a number of seconds") \
            from None


def _clean_stale_parts(directory, older_than):
    """Remove ``.part-*`` files that a killed download left behind (older than any live
    download can be)."""
    now = time.time()
    for p in Path(directory).glob(".part-*"):
        try:
            if now - p.stat().st_mtime > older_than:
                p.unlink()
        except OSError:
            pass


def _fetch(url, dest, expected_sha, show_progress, limit=MAX_IDX_BYTES):
    """Download ``url`` to a temporary file beside ``dest``, verify, then rename. The
    download must finish within the deadline and stay under the size an MNIST file can have
    (a gzip file is never much larger than its content)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + _deadline()
    cap = limit + (1 << 20)
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            if total is not None and total > cap:
                raise MNISTError(f"{url}: announces {total} bytes, more than an MNIST file")
            bar = progress(total, desc=dest.name, unit="B", enabled=show_progress)
            got = 0
            try:
                while True:
                    chunk = r.read1(1 << 16)
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > cap:
                        raise MNISTError(f"{url}: sent more than {cap} bytes, more than an "
                                         f"MNIST file")
                    if time.monotonic() > deadline:
                        raise MNISTError(f"{url}: too slow (not finished within "
                                         f"{_deadline():.0f} s; FASTOPT_DOWNLOAD_DEADLINE "
                                         f"sets the limit)")
                    out.write(chunk)
                    bar.update(len(chunk))
            finally:
                bar.close()
            if total is not None and got != total:
                raise MNISTError(f"{url}: sent {got} bytes, announced {total}")
        raw = _read_bytes(tmp, limit)
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected_sha:
            raise MNISTError(f"{url}: downloaded content has SHA-256 {digest}, "
                             f"expected {expected_sha}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def download_mnist(directory=None, show_progress=None, files=None):
    """Download the four files into ``directory`` (default: the cache), trying each mirror.

    Returns the directory. A mirror that fails is skipped for the remaining files. Raises
    :class:`OSError` when no mirror delivers a verified file.
    """
    directory = cache_dir() if directory is None else Path(directory)
    files = FILES if files is None else files
    live = list(mirrors())
    if directory.is_dir():
        _clean_stale_parts(directory, older_than=2 * _deadline() + 60)
    for key, (stem, sha, _magic, _count) in files.items():
        dest = directory / (stem + ".gz")
        if dest.is_file():
            try:
                read_idx(dest, _magic, _count, sha)
                continue
            except MNISTError:
                pass
        errors = []
        for base in list(live):
            try:
                _fetch(base + stem + ".gz", dest, sha, show_progress,
                       expected_size(_magic, _count))
                break
            except (OSError, urllib.error.URLError, http.client.HTTPException, MNISTError,
                    ValueError) as e:
                errors.append(f"{base}: {e}")
                live.remove(base)
        else:
            raise OSError(f"could not download {stem}.gz from any mirror: " + "; ".join(errors))
    return directory


# ------------------------------------------------------------------ sample

def sample_files():
    """The embedded sample's files: key -> (stem, sha256, magic, count)."""
    manifest = json.loads((SAMPLE_DIR / "manifest.json").read_text())
    return {k: (v["file"], v["sha256"], v["magic"], v["count"]) for k, v in manifest.items()}


def load_sample():
    return read_dir(SAMPLE_DIR, sample_files())


# ------------------------------------------------------------------ public loader

def _format(data, normalize, flatten, one_hot):
    out = []
    for split in ("train", "test"):
        x = data[f"{split}_images"]
        t = data[f"{split}_labels"].astype(np.int64)
        if normalize:
            x = x.astype(np.float32) / np.float32(255.0)
        if flatten:
            x = x.reshape(len(x), 784)
        else:
            x = x.reshape(len(x), 1, 28, 28)
        if one_hot:
            t = np.eye(10, dtype=np.float32)[t]
        out.append((x, t))
    return tuple(out)


def load_mnist(normalize=True, flatten=True, one_hot=False, root=None, download=True,
               return_source=False):
    """Load MNIST as ``((x_train, t_train), (x_test, t_test))``.

    Looks, in order, in ``root``, ``$FASTOPT_DATA``, the cache (``~/.cache/fastopt/mnist``,
    honouring ``XDG_CACHE_HOME``), then downloads into the cache (if ``download``), and
    finally falls back to the embedded sample (10,000 train / 2,000 test images) with a
    warning. Every file is verified (magic, dimensions, counts, SHA-256 of the content); a bad
    file in ``root`` or ``$FASTOPT_DATA`` raises :class:`MNISTError`, a bad file in the cache
    is ignored and downloaded again.

    Args:
        normalize: scale pixels to float32 in [0, 1] (else uint8).
        flatten: images as (n, 784) (else (n, 1, 28, 28)).
        one_hot: labels as float32 one-hot rows (else int64 class indices).
        root: a directory holding the four IDX files (``.gz`` or raw).
        download: allow downloading.
        return_source: also return a string saying where the data came from.
    """
    data, source = None, None
    if root is not None:
        if Path(root).exists() and not Path(root).is_dir():
            raise MNISTError(f"data directory {root} is not a directory (it is a file); pass "
                             f"the directory that holds the four IDX files")
        if not Path(root).is_dir():
            raise MNISTError(f"data directory {root} does not exist")
        data, source = read_dir(root), f"full MNIST from {root}"
        if data is None:
            warnings.warn(f"{root} does not hold the four MNIST files "
                          f"({', '.join(s for s, *_ in FILES.values())}, .gz or raw); "
                          f"looking elsewhere", stacklevel=2)
    env = os.environ.get("FASTOPT_DATA")
    if data is None and env:
        if not Path(env).exists():
            warnings.warn(f"$FASTOPT_DATA={env} does not exist; ignoring it", stacklevel=2)
        elif not Path(env).is_dir():
            warnings.warn(f"$FASTOPT_DATA={env} is not a directory; ignoring it",
                          stacklevel=2)
        else:
            for d in (Path(env), Path(env) / "mnist"):
                if d.is_dir():
                    data = read_dir(d)
                    if data is not None:
                        source = f"full MNIST from $FASTOPT_DATA ({d})"
                        break
            if data is None:
                warnings.warn(f"$FASTOPT_DATA={env} does not hold the four MNIST files "
                              f"({', '.join(s for s, *_ in FILES.values())}, .gz or raw, "
                              f"there or in its mnist/ folder); ignoring it", stacklevel=2)
    if data is None:
        try:
            data = read_dir(cache_dir())
            source = f"full MNIST from the cache ({cache_dir()})"
        except MNISTError as e:
            warnings.warn(f"ignoring a corrupt file in the cache: {e}", stacklevel=2)
            data = None
    if data is None and download:
        try:
            d = download_mnist()
            data = read_dir(d)
            source = f"full MNIST, downloaded to {d}"
        except OSError as e:
            warnings.warn(f"MNIST download failed ({e})", stacklevel=2)
            data = None
    if data is None:
        data = load_sample()
        source = ("the embedded MNIST SAMPLE (10,000 train / 2,000 test images), not the full "
                  "data set")
        warnings.warn("using fastopt's embedded MNIST sample (10,000 train / 2,000 test "
                      "images). For the full set, pass --data-dir DIR (CLI) or root=DIR "
                      "(Python) with the four IDX files, set FASTOPT_DATA, or download it "
                      "(python -m fastopt download-mnist).", stacklevel=2)
    result = _format(data, normalize, flatten, one_hot)
    return (result, source) if return_source else result
