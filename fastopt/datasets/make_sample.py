"""Build the embedded MNIST sample from the full official files (deterministic).

    python -m fastopt.datasets.make_sample ../shared/data/mnist

Writes the first 10,000 training and the first 2,000 test images and labels as gzip IDX files
(``gzip -9``, no timestamp or name in the header, so the bytes are reproducible) into
``fastopt/datasets/data`` with a ``manifest.json`` of SHA-256 checksums of the decompressed
content. MNIST: Y. LeCun, C. Cortes, C. J. C. Burges; CC BY-SA 3.0.
"""
import argparse
import gzip
import hashlib
import json
import struct
import sys
from pathlib import Path

from .mnist import FILES, SAMPLE_DIR, SAMPLE_PREFIX, read_dir

COUNTS = {"train": 10_000, "test": 2_000}


def idx_bytes(array, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="directory with the four official MNIST files")
    ap.add_argument("--out", default=str(SAMPLE_DIR))
    args = ap.parse_args(argv)
    data = read_dir(args.source)
    if data is None:
        sys.exit(f"{args.source} does not hold the four MNIST files")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for key, (stem, _sha, magic, _count) in FILES.items():
        n = COUNTS[key.split("_")[0]]
        raw = idx_bytes(data[key][:n], magic)
        name = SAMPLE_PREFIX + stem + ".gz"
        with open(out / name, "wb") as f:
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=9,
                               mtime=0) as gz:
                gz.write(raw)
        manifest[key] = {"file": SAMPLE_PREFIX + stem, "sha256": hashlib.sha256(raw).hexdigest(),
                         "magic": magic, "count": n}
        print(f"{name}: {n} items, {(out / name).stat().st_size:,} bytes")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
