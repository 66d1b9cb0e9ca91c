"""Checkpoints of optimizer buffers: parameter, state arrays and step, in one file.

File layout (all little-endian)::

    b"FASTOPTCKPT\\n"                12-byte magic
    uint64 header_length
    header                             UTF-8 JSON: format_version, buffers class, optimizer,
                                       dtype, step, and for each array its shape and offset
    payload                            the arrays' bytes, C order, in header order
    sha256(magic .. payload)           32 bytes

The gradient is not saved (the next backward pass recomputes it). bfloat16 state is saved as
it is stored (``uint16`` bits, never up-cast): its array entries carry ``"dtype":
"bfloat16"`` and such a file is format version 2 (files without it stay version 1, readable by
earlier fastopt releases); loading never converts between state precisions. 8-bit state is
saved as it is stored too: its ``uint8`` codes (entries with ``"dtype": "int8"``) and each
array's float32 block scales (an entry ``"<field>/absmax"`` with ``"dtype": "absmax"``), with
the header's ``block_size``: format version 3.

Guarantees (README, "Guarantees"):

* saving validates the buffers as a step would (types, dtypes, shapes, layout, the step
  counter) before the temporary file exists; the write is atomic (a temporary file in the same
  directory, flushed, renamed over the target), keeps an existing file's permission bits (a new
  file gets the usual ``0666 & ~umask``), and its OS errors name the path the caller gave;
* loading reads the magic and the header length first and checks them against the file size,
  so a file that is not a checkpoint costs a few bytes of reading, never the whole file;
  every header field is checked against a schema, the SHA-256 over the whole content is
  verified, and the target buffers (type, dtype, state arrays, shapes, writability) are
  checked **before** the first byte is copied. Anything wrong raises :class:`CheckpointError`
  (or ``FileNotFoundError``) and writes nothing.
"""
import hashlib
import json
import os
import stat
import struct
import tempfile

import numpy as np

from ._core import Buffers, check_8bit_scales, check_group, check_step, is_cuda_array

FORMAT_VERSION = 1
FORMAT_VERSIONS = (1, 2, 3)   # 2: "dtype": "bfloat16" entries; 3: 8-bit state (block_size)
_ENTRY_DTYPES = {"bfloat16": "<u2", "int8": "u1", "absmax": "<f4"}
_SCALES = "/absmax"
MAGIC = b"FASTOPTCKPT\n"
_DIGEST = 32
_PREFIX = len(MAGIC) + 8
MAX_HEADER = 1 << 20          # a header lists a handful of arrays: 1 MiB is generous
_DTYPES = ("<f4", "<f8")


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupted, or does not match the target buffers."""


def _host(a):
    return a.copy_to_host() if is_cuda_array(a) and hasattr(a, "copy_to_host") else \
        np.asarray(a)


def _named_os_error(e, path, doing):
    """``e`` re-raised under the path the caller gave (not a hidden temporary name)."""
    if e.errno is not None:
        return type(e)(e.errno, f"{doing}: {e.strerror}", os.fspath(path))
    return type(e)(f"{doing} {os.fspath(path)!r}: {e}")


def _new_file_mode():
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_checkpoint(path, buffers):
    """Atomically write ``buffers`` (param, state arrays, step) to ``path``; returns the path.

    Refuses (``TypeError`` / ``ValueError``, before any file is created) buffers that a step
    would refuse."""
    if not isinstance(buffers, Buffers):
        raise TypeError(f"save_checkpoint needs fastopt buffers, got {type(buffers).__name__}")
    owner = type(buffers).__name__
    with buffers._lock:
        step = check_step(buffers.step, owner)
        check_group(buffers.arrays(), owner)
        names = ["param"] + [f for f in buffers.state_fields if getattr(buffers, f) is not None]
        arrays = {n: np.ascontiguousarray(_host(getattr(buffers, n))) for n in names}
        block = _eight_bit(buffers, arrays, owner)
        if block is not None:
            for n in [n for n, a in arrays.items() if a.dtype == np.uint8]:
                arrays[n + _SCALES] = np.array(buffers.state_absmax[n], np.float32)
    meta, offset = {}, 0
    for n, a in arrays.items():
        meta[n] = {"shape": list(a.shape), "offset": offset, "nbytes": a.nbytes}
        if a.dtype == np.uint16:                # bfloat16 state, saved as its bits
            meta[n]["dtype"] = "bfloat16"
        elif a.dtype == np.uint8:               # 8-bit state: its codes, as stored
            meta[n]["dtype"] = "int8"
        elif n.endswith(_SCALES):               # and its float32 block scales
            meta[n]["dtype"] = "absmax"
        offset += a.nbytes
    seed = buffers.rounding_seed
    if seed is not None and (type(seed) is not int or not 0 <= seed < 2 ** 64):
        raise ValueError(f"{owner}.rounding_seed must be None or an int in [0, 2**64), got "
                         f"{seed!r}")
    version = 2 if any("dtype" in m for m in meta.values()) or seed is not None \
        else FORMAT_VERSION
    if block is not None:
        version = 3
    fields = {"format_version": version, "buffers": owner,
              "optimizer": buffers.optimizer, "dtype": buffers.dtype.newbyteorder("<").str,
              "step": step, "arrays": meta}
    if block is not None:
        fields["block_size"] = block
    if seed is not None:            # stochastic rounding of bfloat16 state
        fields["rounding_seed"] = int(seed)
    header = json.dumps(fields, sort_keys=True).encode()
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = _new_file_mode()
    except OSError as e:
        raise _named_os_error(e, path, "cannot write checkpoint") from None
    h = hashlib.sha256()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fastopt-ckpt-", dir=directory)
    except OSError as e:
        raise _named_os_error(e, path, "cannot write checkpoint") from None
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
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _named_os_error(e, path, "cannot write checkpoint") from None
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


def _eight_bit(buffers, arrays, owner):
    """The block size when ``arrays`` hold 8-bit state (its scales checked as a step checks
    them), else None."""
    checked = check_8bit_scales(buffers, arrays, owner)
    return None if checked is None else checked[0]


def _bad(path, why):
    return CheckpointError(f"{path!r}: {why}")


def _is_int(x, low=0):
    return type(x) is int and x >= low


def _check_header(path, header, payload_size):
    """Every field of the header, against the schema and the payload's size."""
    if not isinstance(header, dict):
        raise _bad(path, "the header is not a JSON object")
    expected = {"format_version", "buffers", "optimizer", "dtype", "step", "arrays"}
    if header.get("format_version") in (2, 3) and "rounding_seed" in header:
        expected = expected | {"rounding_seed"}
        seed = header["rounding_seed"]
        if not (_is_int(seed) and seed < 2 ** 64):
            raise _bad(path, f"rounding_seed {seed!r} is not an integer in [0, 2**64)")
    if header.get("format_version") == 3:
        expected = expected | {"block_size"}
        if not _is_int(header.get("block_size"), 1):
            raise _bad(path, f"block_size {header.get('block_size')!r} is not an integer >= 1")
    if set(header) != expected:
        raise _bad(path, f"the header has fields {sorted(header)}, expected {sorted(expected)}")
    if (type(header["format_version"]) is not int
            or header["format_version"] not in FORMAT_VERSIONS):
        raise _bad(path, f"format version {header['format_version']!r}; this fastopt reads "
                         f"versions {', '.join(map(str, FORMAT_VERSIONS))}")
    for key in ("buffers", "optimizer"):
        if not isinstance(header[key], str):
            raise _bad(path, f"header field {key!r} is not a string")
    if header["dtype"] not in _DTYPES:
        raise _bad(path, f"dtype {header['dtype']!r} is not float32 or float64")
    if not _is_int(header["step"]):
        raise _bad(path, f"step {header['step']!r} is not a non-negative integer")
    arrays = header["arrays"]
    if not isinstance(arrays, dict) or "param" not in arrays:
        raise _bad(path, "the header lists no 'param' array")
    for name, m in arrays.items():
        keys = {"shape", "offset", "nbytes"}
        if (isinstance(m, dict) and header["format_version"] >= 2 and name != "param"
                and m.get("dtype") == "bfloat16"):
            keys = keys | {"dtype"}
        if (isinstance(m, dict) and header["format_version"] == 3 and name != "param"
                and m.get("dtype") == ("absmax" if name.endswith(_SCALES) else "int8")):
            keys = keys | {"dtype"}
        if not (isinstance(m, dict) and set(m) == keys
                and isinstance(m["shape"], list) and len(m["shape"]) <= 32
                and all(_is_int(d) for d in m["shape"])
                and _is_int(m["offset"]) and _is_int(m["nbytes"])):
            raise _bad(path, f"array {name!r} has a malformed entry {m!r}")
        count = 1
        for d in m["shape"]:
            count *= d
        itemsize = np.dtype(_ENTRY_DTYPES[m["dtype"]] if "dtype" in m
                            else header["dtype"]).itemsize
        if m["nbytes"] != count * itemsize:
            raise _bad(path, f"array {name!r}: {m['nbytes']} bytes do not hold its shape")
    offset = 0          # the arrays tile the payload, in the order of their offsets
    for name, m in sorted(arrays.items(), key=lambda item: item[1]["offset"]):
        if m["offset"] != offset:
            raise _bad(path, f"array {name!r} does not start where the previous one ends")
        offset += m["nbytes"]
    if offset != payload_size:
        raise _bad(path, f"the arrays take {offset} bytes but the payload has {payload_size}")


def _read(path):
    """The verified header and arrays of the checkpoint at ``path``."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path!r} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path!r} is a directory, not a checkpoint file") from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
        except OSError:
            size = None
        if size is not None and not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CheckpointError(f"{path!r} is not a regular file")
        prefix = f.read(_PREFIX)
        if len(prefix) < _PREFIX or prefix[:len(MAGIC)] != MAGIC:
            raise CheckpointError(f"{path!r} is not a fastopt checkpoint (bad magic or too "
                                  f"short)")
        (hlen,) = struct.unpack("<Q", prefix[len(MAGIC):])
        if hlen > MAX_HEADER or _PREFIX + hlen + _DIGEST > size:
            raise CheckpointError(f"{path!r} is corrupted or truncated (header length {hlen} "
                                  f"does not fit a file of {size} bytes)")
        h = hashlib.sha256(prefix)
        raw_header = f.read(hlen)
        h.update(raw_header)
        payload_size = size - _PREFIX - hlen - _DIGEST
        try:
            header = json.loads(raw_header.decode())
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            # still tell a truncated or bit-flipped file from a crafted one
            raise CheckpointError(f"{path!r} is corrupted or has an unreadable header "
                                  f"({e})") from None
        payload = bytearray(payload_size)
        if f.readinto(payload) != payload_size:
            raise CheckpointError(f"{path!r} is truncated")
        h.update(payload)
        digest = f.read(_DIGEST + 1)
    if len(digest) != _DIGEST or h.digest() != digest:
        raise CheckpointError(f"{path!r} is corrupted or truncated (SHA-256 mismatch)")
    _check_header(path, header, payload_size)
    arrays = {}
    for name, m in header["arrays"].items():
        dtype = np.dtype(_ENTRY_DTYPES[m["dtype"]] if "dtype" in m else header["dtype"])
        count = m["nbytes"] // dtype.itemsize
        arrays[name] = np.frombuffer(payload, dtype, count, m["offset"]).reshape(m["shape"])
    return header, arrays


def load_checkpoint(path, buffers=None):
    """Read a checkpoint.

    With ``buffers``, copy the saved parameter, state and step into them **in place** after
    checking that the optimizer, dtype, shapes, state arrays and the target's own arrays
    (writable, valid) all match (on any mismatch, nothing is written). Without, return new
    buffers (fresh arrays, zero gradient).
    """
    from . import registry
    path = os.fspath(path)
    header, arrays = _read(path)
    spec = registry.REGISTRY.get(header["optimizer"])
    if spec is None or spec.buffers_cls.__name__ != header["buffers"]:
        raise CheckpointError(f"{path!r} holds unknown buffers {header['buffers']!r} "
                              f"(optimizer {header['optimizer']!r})")
    scales = {n[:-len(_SCALES)]: a for n, a in arrays.items() if n.endswith(_SCALES)}
    arrays = {n: a for n, a in arrays.items() if not n.endswith(_SCALES)}
    unknown = set(arrays) - {"param"} - set(spec.buffers_cls.state_fields)
    if unknown:
        raise CheckpointError(f"{path!r} holds arrays {sorted(unknown)} that "
                              f"{header['buffers']} does not have")
    shape = tuple(header["arrays"]["param"]["shape"])
    if any(a.shape != shape for a in arrays.values()):
        raise CheckpointError(f"{path!r}: its arrays do not all have the parameter's shape")
    coded = {n for n, a in arrays.items() if a.dtype == np.uint8}
    if set(scales) != coded:
        raise CheckpointError(f"{path!r}: 8-bit arrays {sorted(coded)} but scales for "
                              f"{sorted(scales)}")
    if coded:
        blocks = -(-int(np.prod(shape)) // header["block_size"])
        if any(a.shape != (blocks,) for a in scales.values()):
            raise CheckpointError(f"{path!r}: the block scales do not fit {blocks} blocks")
    if buffers is None:
        native = np.dtype(header["dtype"]).newbyteorder("=")
        param = arrays["param"].astype(native)
        state = {n: a.astype(a.dtype.newbyteorder("=")) for n, a in arrays.items()
                 if n != "param"}
        out = spec.buffers_cls(param, np.zeros_like(param), step=header["step"], **state)
        out.rounding_seed = header.get("rounding_seed")
        if coded:
            out.state_absmax = {n: a.astype(np.float32) for n, a in scales.items()}
            out.block_size = header["block_size"]
        return out
    if not isinstance(buffers, spec.buffers_cls):
        raise CheckpointError(f"{path!r} holds {header['buffers']} but the target is "
                              f"{type(buffers).__name__}")
    with buffers._lock:
        return _copy_into(path, header, arrays, buffers, scales)


def _copy_into(path, header, arrays, buffers, scales=None):
    owner = type(buffers).__name__
    try:
        check_group(buffers.arrays(), owner)     # writable, one dtype and shape, no overlap
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot load {path!r} into these buffers: {e}") from None
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
        what = {np.dtype(np.uint16): "bfloat16", np.dtype(np.uint8): "8-bit codes"}
        saved_as = what.get(a.dtype, "the parameter's dtype")
        target_as = ("the parameter's dtype" if is_cuda_array(target)
                     else what.get(target.dtype, "the parameter's dtype"))
        if saved_as != target_as:
            raise CheckpointError(f"{path!r}: {name} is saved in {saved_as} but the target "
                                  f"holds it in {target_as}; state precision is never "
                                  f"converted on load")
    scales = scales or {}
    if scales:
        own = buffers.state_absmax if isinstance(buffers.state_absmax, dict) else {}
        if buffers.block_size != header["block_size"]:
            raise CheckpointError(f"{path!r}: 8-bit state in blocks of {header['block_size']} "
                                  f"but the target's block_size is {buffers.block_size!r}")
        for name, a in scales.items():
            target = own.get(name)
            if (not isinstance(target, np.ndarray) or target.dtype != np.float32
                    or target.shape != a.shape or not target.flags.writeable):
                raise CheckpointError(f"{path!r}: the target has no writable float32 scales "
                                      f"of shape {a.shape} for {name}")
    for name, a in arrays.items():
        target = getattr(buffers, name)
        if is_cuda_array(target):
            target.copy_to_device(np.ascontiguousarray(a, dtype=buffers.dtype))
        else:
            target[...] = a
    for name, a in scales.items():
        buffers.state_absmax[name][...] = a
    buffers.step = header["step"]
    buffers.rounding_seed = header.get("rounding_seed")
    return buffers
