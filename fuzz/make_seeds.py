#!/usr/bin/env python3
"""Writes the small seed inputs of the fuzz targets into fuzz/corpus/<target>/ (committed).

The cache_file seeds are written by the test suite (CacheFile.WritesFuzzSeed), which needs the
library to build a real cache."""
import os
import struct
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    path = os.path.join(root, target, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


# A small valid GGUF v3: metadata keys of each kind and two tensors (F32 and Q8_0).
kv = [s("general.architecture") + struct.pack("<I", 8) + s("llama"),
      s("llama.block_count") + struct.pack("<II", 4, 1),
      s("llama.rope.freq_base") + struct.pack("<If", 6, 10000.0),
      s("tokenizer.ggml.model") + struct.pack("<I", 8) + s("gpt2"),
      s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + s("a") + s("b") + s("ab"),
      s("tokenizer.ggml.merges") + struct.pack("<IIQ", 9, 8, 1) + s("a b")]
tensors = [(s("v") + struct.pack("<IQIQ", 1, 32, 0, 0), b"\0" * 128),
           (s("m") + struct.pack("<IQQIQ", 2, 32, 1, 8, 128), b"\0" * 34)]
gguf = struct.pack("<IIQQ", 0x46554747, 3, len(tensors), len(kv)) + b"".join(kv)
gguf += b"".join(t[0] for t in tensors)
gguf += b"\0" * (-len(gguf) % 32) + tensors[0][1] + tensors[1][1]
put("gguf", "seed.gguf", gguf)

# A tiny llama2.c checkpoint: dim 8, hidden 16, 1 layer, 2 heads, 1 KV head, vocab 16, seq_len 8.
dim, hidden, layers, heads, kv_heads, vocab, seq = 8, 16, 1, 2, 1, 16, 8
head_dim = dim // heads
kvd = kv_heads * head_dim
n = (vocab * dim + layers * (dim + dim * dim + 2 * kvd * dim + dim * dim + dim + 3 * hidden * dim)
     + dim + seq * head_dim)
floats = struct.pack("<%df" % n, *[((i * 37) % 17 - 8) / 16.0 for i in range(n)])
put("llama2c", "tiny.bin", struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab, seq) + floats)

# A llama2.c tokenizer file with 32 pieces (the fuzz target reads 32).
pieces = [b"<unk>", b"<s>", b"</s>"] + [bytes([c]) for c in b"abcdefghij .,"] + \
    [b"ab", b"cd", b"ef", b"the", b" a", b"he", b"ll", b"o ", b"wor", b"ld", b"!", b"\xe2\x96\x81",
     b"<0x0A>", b"in", b"on", b"at"]
assert len(pieces) == 32, len(pieces)
tok = struct.pack("<i", max(len(p) for p in pieces))
for i, p in enumerate(pieces):
    tok += struct.pack("<fi", -float(i), len(p)) + p
put("tokenizer", "tok32.bin", tok)
put("tokenizer", "text.txt", "Hello, world! The cat sat.\n \xe2\x96\x81 123".encode("latin-1"))
print("seeds written under", root, file=sys.stderr)
