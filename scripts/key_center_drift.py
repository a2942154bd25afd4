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

With `--rope-theta BASE` (the model's RoPE base; interleaved pairs, as Llama GGUFs) and `--codec
NAME` (the `polarquant` Python package, built by scripts/setup.sh), it also codes the keys three
ways and prints, per bucket, the codec's key error energy and the RMS error of the last
`--queries` tokens' scores q.k/sqrt(d) (the dump's queries): centered on the first chunk's mean
(the cache today); on the first chunk's pre-RoPE mean rotated to each key's own position (the
ideal, which attention would have to add back per token); and per 32-token page on that mean
rotated to the page's middle, for the pairs that turn less than 2 radians within a page, the
others as today (attention would add back one q.shift per page and query head).
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


def rotate(x, positions, inv_freq, sign=1.0):
    """RoPE (interleaved pairs) of x [..., d] at positions [n] (sign -1: the inverse)."""
    angle = positions[:, None] * inv_freq[None, :]
    c, s = np.cos(angle), sign * np.sin(angle)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty(np.broadcast_shapes(x.shape, (len(positions), 2 * len(inv_freq))))
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def codec_errors(path, layers, keys, first, bucket, theta, codec_name, n_queries):
    import polarquant as pq  # the package of python/, built by scripts/setup.sh

    n, n_kv, d = keys[0].shape
    queries = read_queries(path, n_kv, d)
    inv_freq = theta ** (-np.arange(0, d, 2) / d)
    positions = np.arange(n, dtype=np.float64)
    page_mid = (positions // 32) * 32 + 16
    slow = np.repeat(inv_freq * 32 < 2.0, 2)
    codec = pq.Codec(codec_name, dim=d, seed=7)
    ways = ["first-chunk mean", "pre-RoPE mean, per token", "pre-RoPE mean, per page"]
    n_buckets = (n + bucket - 1) // bucket
    energy = np.zeros((3, n_buckets))
    score = np.zeros((3, n_buckets))
    pairs = 0
    for k_layer, q_layer in zip(keys, queries):
        g = q_layer.shape[1] // n_kv
        for h in range(n_kv):
            k = k_layer[:, h]
            q = q_layer[-n_queries:, h * g : (h + 1) * g].reshape(-1, d) / np.sqrt(d)
            mean = k[:first].mean(axis=0)
            pre = rotate(k[:first], positions[:first], inv_freq, -1.0).mean(axis=0)
            per_page = np.where(slow, rotate(pre, page_mid, inv_freq), mean)
            for w, shift in enumerate([mean, rotate(pre, positions, inv_freq), per_page]):
                x = (k - shift).astype(np.float32)
                err = codec.decode(codec.encode(x)).astype(np.float64) - x
                e2 = (err**2).sum(axis=-1)
                s2 = (q @ err.T) ** 2
                for b in range(n_buckets):
                    energy[w, b] += e2[b * bucket : (b + 1) * bucket].mean()
                    score[w, b] += np.sqrt(s2[:, b * bucket : (b + 1) * bucket].mean())
            pairs += 1
    print(f"\ncodec {codec_name}, RoPE base {theta:g}: per bucket, mean over {pairs} (layer, KV head) pairs")
    for w, name in enumerate(ways):
        print(f"  key error energy, {name:25s}: " + " ".join(f"{v / pairs:6.2f}" for v in energy[w]))
    for w, name in enumerate(ways):
        print(f"  score error RMS,  {name:25s}: " + " ".join(f"{v / pairs:6.3f}" for v in score[w]))


def read_queries(path, n_kv, d):
    with open(path, "rb") as f:
        data = f.read()
    _, n_layers, n_tokens, _, n_q, _, desc = struct.unpack_from("<7I", data, 8)
    off = 36 + desc + 4 * n_layers
    per_layer = 4 * n_tokens * d * (2 * n_kv + n_q)
    return [
        np.frombuffer(data, "<f4", n_tokens * n_q * d, off + i * per_layer + 8 * n_tokens * n_kv * d)
        .reshape(n_tokens, n_q, d)
        .astype(np.float64)
        for i in range(n_layers)
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dump", help="a .kv file from `polarquant dump-kv`")
    ap.add_argument("--first", type=int, default=256, help="tokens of the centering mean (the prefill chunk)")
    ap.add_argument("--bucket", type=int, default=1024, help="tokens per position bucket")
    ap.add_argument("--rope-theta", type=float, default=0.0, help="RoPE base: also code the keys (needs --codec)")
    ap.add_argument("--codec", default="polar-544444", help="key codec for --rope-theta")
    ap.add_argument("--queries", type=int, default=64, help="last tokens whose queries score the keys")
    a = ap.parse_args()
    if a.first < 1 or a.bucket < 1 or a.queries < 1 or a.rope_theta < 0:
        sys.exit("--first, --bucket and --queries must be positive, --rope-theta not negative")
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
    if a.rope_theta > 0:
        if keys[0].shape[2] % 2:
            sys.exit("--rope-theta needs an even head_dim")
        codec_errors(a.dump, layers, keys, a.first, a.bucket, a.rope_theta, a.codec, min(a.queries, n))


if __name__ == "__main__":
    main()
