#!/usr/bin/env python3
"""How far keys drift from the cache's centering mean along a sequence, from a `dump-kv` file.

    build/release/polarquant dump-kv -f ../shared/data/pride_and_prejudice.txt --tokens 8192 \\
        --layers 0,4,8,12,16,20,24,29 -o pp8k.kv
    build/venv/bin/python scripts/key_center_drift.py pp8k.kv [--first 256] [--bucket 1024]

The cache subtracts one per-channel key mean, taken over a sequence's first prefill chunk
(`--first` tokens), from every key it stores (attention is unchanged by a constant shift; a lossy
codec's error shrinks with the centered keys' norm). Keys are stored after RoPE, which turns a
constant pre-RoPE bias into one that rotates with the position, so the first chunk's mean fits
later tokens less and less. Per layer and position bucket this prints the mean squared norm of
the keys centered that way, and its ratio to the same keys centered on the bucket's own mean:
the error energy a PolarQuant key codec spends on the drift. Needs numpy (in build/venv).
"""
import argparse
import struct
import sys
import zlib

import numpy as np


def read_dump(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 40 or data[:8] != b"PQKVDUMP":
        sys.exit(f"{path}: not a K/V dump (no PQKVDUMP magic; write one with `polarquant dump-kv`)")
    version, n_layers, n_tokens, n_kv, n_q, head_dim, desc = struct.unpack_from("<7I", data, 8)
    if version != 1:
        sys.exit(f"{path}: K/V dump version {version}; this script reads version 1")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        sys.exit(f"{path}: CRC mismatch (the file is truncated or damaged)")
    off = 36 + desc
    layers = struct.unpack_from(f"<{n_layers}I", data, off)
    off += 4 * n_layers
    per_layer = 4 * n_tokens * head_dim * (2 * n_kv + n_q)
    if off + per_layer * n_layers + 4 != len(data):
        sys.exit(f"{path}: {len(data)} bytes, but the header's counts need {off + per_layer * n_layers + 4}")
    keys = []
    for i in range(n_layers):
        k = np.frombuffer(data, dtype="<f4", count=n_tokens * n_kv * head_dim, offset=off + i * per_layer)
        keys.append(k.reshape(n_tokens, n_kv, head_dim).astype(np.float64))
    return layers, keys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump", help="a .kv file from `polarquant dump-kv`")
    ap.add_argument("--first", type=int, default=256, help="tokens of the centering mean (the prefill chunk)")
    ap.add_argument("--bucket", type=int, default=1024, help="tokens per position bucket")
    a = ap.parse_args()
    if a.first < 1 or a.bucket < 1:
        sys.exit("--first and --bucket must be positive")
    layers, keys = read_dump(a.dump)
    n = keys[0].shape[0]
    if a.first > n:
        sys.exit(f"--first {a.first} exceeds the dump's {n} tokens")
    starts = range(0, n, a.bucket)
    print(f"{n} tokens; mean over the first {a.first}; buckets of {a.bucket} tokens")
    print("layer | per bucket: ratio to the bucket's own mean (squared norm of keys centered on the first-chunk mean)")
    for layer, k in zip(layers, keys):
        mean = k[: a.first].mean(axis=0)
        cells = []
        for s in starts:
            b = k[s : s + a.bucket]
            drift = ((b - mean) ** 2).sum(axis=-1).mean()
            local = ((b - b.mean(axis=0)) ** 2).sum(axis=-1).mean()
            cells.append(f"{drift / local:5.2f} ({drift:6.1f})")
        print(f"{layer:5d} | " + "  ".join(cells))


if __name__ == "__main__":
    main()
