"""Checkpoints of optimizer buffers: parameter, state arrays and step, in one file.

File layout (all little-endian)::

    b"FASTOPTCKPT\\n"                12-byte magic
    uint64 header_length
    header                             UTF-8 JSON: format_version, buffers class, optimizer,
                                       dtype, step, and for each array its shape and offset
    payload                            the arrays' bytes, C order, in header order
    sha256(magic .. payload)           32 bytes

The gradient is not saved (the next backward pass recomputes it). Writes are atomic: the file
is written to a temporary name in the same directory, flushed to disk and renamed over the
target, so a crash never leaves a half-written checkpoint under the real name. Loading
verifies the checksum and every field against the target buffers *before* copying anything.
"""
import hashlib
import json
import os
import struct
import tempfile

import numpy as np

from ._core import Buffers, is_cuda_array

FORMAT_VERSION = 1
MAGIC = b"FASTOPTCKPT\n"
_DIGEST = 32


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupted, or does not match the target buffers."""


def _host(a):
    return a.copy_to_host() if is_cuda_array(a) and hasattr(a, "copy_to_host") else \
        np.asarray(a)


def save_checkpoint(path, buffers):
    """Atomically write ``buffers`` (param, state arrays, step) to ``path``."""
    if not isinstance(buffers, Buffers):
        raise TypeError(f"save_checkpoint needs fastopt buffers, got {type(buffers).__name__}")
    names = ["param"] + [f for f in buffers.state_fields if getattr(buffers, f) is not None]
    arrays = {n: np.ascontiguousarray(_host(getattr(buffers, n))) for n in names}
    meta, offset = {}, 0
    for n, a in arrays.items():
        meta[n] = {"shape": list(a.shape), "offset": offset, "nbytes": a.nbytes}
        offset += a.nbytes
    header = json.dumps({
        "format_version": FORMAT_VERSION, "buffers": type(buffers).__name__,
        "optimizer": buffers.optimizer, "dtype": buffers.dtype.str, "step": buffers.step,
        "arrays": meta}, sort_keys=True).encode()
    h = hashlib.sha256()
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastopt-ckpt-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in (MAGIC, struct.pack("<Q", len(header)), header):
                f.write(chunk)
                h.update(chunk)
            for a in arrays.values():
                data = memoryview(a.astype(a.dtype.newbyteorder("<"), copy=False)).cast("B")
                f.write(data)
                h.update(data)
            f.write(h.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def _read(path):
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path!r} does not exist") from None
    if len(blob) < len(MAGIC) + 8 + _DIGEST or blob[:len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path!r} is not a fastopt checkpoint (bad magic or too short)")
    body, digest = blob[:-_DIGEST], blob[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{path!r} is corrupted or truncated (SHA-256 mismatch)")
    (hlen,) = struct.unpack("<Q", body[len(MAGIC):len(MAGIC) + 8])
    start = len(MAGIC) + 8
    try:
        header = json.loads(body[start:start + hlen].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path!r} has an unreadable header: {e}") from None
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path!r} has format version {header.get('format_version')!r};"
                              f" this fastopt reads version {FORMAT_VERSION}")
    payload = body[start + hlen:]
    dtype = np.dtype(header["dtype"])
    arrays = {}
    for name, m in header["arrays"].items():
        count = int(np.prod(m["shape"], dtype=np.int64))
        if m["offset"] + m["nbytes"] > len(payload) or m["nbytes"] != count * dtype.itemsize:
            raise CheckpointError(f"{path!r}: array {name!r} does not fit the payload")
        arrays[name] = np.frombuffer(payload, dtype, count, m["offset"]).reshape(m["shape"])
    return header, arrays


def load_checkpoint(path, buffers=None):
    """Read a checkpoint.

    With ``buffers``, copy the saved parameter, state and step into them **in place** after
    checking that the optimizer, dtype, shapes and state arrays all match (on any mismatch,
    nothing is written). Without, return new buffers (fresh arrays, zero gradient).
    """
    from . import registry
    path = os.fspath(path)
    header, arrays = _read(path)
    spec = registry.REGISTRY.get(header.get("optimizer"))
    if spec is None or spec.buffers_cls.__name__ != header.get("buffers"):
        raise CheckpointError(f"{path!r} holds unknown buffers {header.get('buffers')!r}")
    if buffers is None:
        param = arrays["param"].copy()
        state = {n: a.copy() for n, a in arrays.items() if n != "param"}
        return spec.buffers_cls(param, np.zeros_like(param), step=header["step"], **state)
    if not isinstance(buffers, spec.buffers_cls):
        raise CheckpointError(f"{path!r} holds {header['buffers']} but the target is "
                              f"{type(buffers).__name__}")
    if buffers.dtype != np.dtype(header["dtype"]):
        raise CheckpointError(f"{path!r} holds dtype {np.dtype(header['dtype'])} but the "
                              f"target buffers are {buffers.dtype}")
    saved = set(arrays)
    present = {"param"} | {f for f in buffers.state_fields if getattr(buffers, f) is not None}
    if saved != present:
        raise CheckpointError(f"{path!r} holds arrays {sorted(saved)} but the target buffers "
                              f"have {sorted(present)}")
    for name, a in arrays.items():
        target = getattr(buffers, name)
        if tuple(target.shape) != a.shape:
            raise CheckpointError(f"{path!r}: {name} has shape {a.shape}, target has "
                                  f"{tuple(target.shape)}")
    for name, a in arrays.items():
        target = getattr(buffers, name)
        if is_cuda_array(target):
            target.copy_to_device(np.ascontiguousarray(a, dtype=buffers.dtype))
        else:
            target[...] = a
    buffers.step = int(header["step"])
    return buffers
