#!/usr/bin/env python3
"""Compares polarquant's logits with an independent implementation of the same model.

The reference is written here from the GGUF spec in NumPy (float64): weights are dequantized by the
`gguf` PyPI package (ggml's own Python reader, not our C++ code), and the Llama forward pass follows
llama.cpp's graph for LLM_ARCH_LLAMA (RMSNorm, "normal" adjacent-pair RoPE with rope.freq_base,
GQA with query head h using KV head h // (n_head / n_head_kv), SwiGLU, tied output when
output.weight is absent). For a gemma3 GGUF it follows HF's Gemma3ForCausalLM instead (embeddings
times sqrt(dim), per-head RMSNorm of Q and K, rotate-half RoPE with base 10000 on the sliding-window
layers and gemma3.rope.freq_base on every 6th (global) layer, keys older than
gemma3.attention.sliding_window masked on the local layers, post-attention and post-FFN RMSNorms,
GELU(tanh)-gated MLP, tied head; the GGUF's norm weights already hold Gemma's +1). Our runtime writes its tokens and exact-cache (f32) logits with
`polarquant generate --logits-out PREFIX`; the script feeds the same tokens to the reference and
prints the max/mean absolute logit difference, the KL divergence and top-1 agreement per position.
If the `tokenizers` PyPI package is importable, it also checks our token ids against a HF BPE
tokenizer built from the GGUF's vocabulary and merges (Digits + ByteLevel pre-tokenizer).

Usage: pip install gguf numpy [tokenizers] [transformers (gemma3 token check)]
       scripts/compare_reference.py --cli build/release/polarquant [--model PATH] [--prompt TEXT]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field(reader, key):
    f = reader.fields[key]
    v = f.parts[f.data[0]]
    return bytes(v).decode() if f.types[0].name == "STRING" else v[0]


def reference_logits(path, tokens):
    r = GGUFReader(path)
    t = {x.name: x for x in r.tensors}

    def w(name):
        x = t[name]
        return np.asarray(dequantize(x.data, x.tensor_type), dtype=np.float64).reshape(
            [int(d) for d in reversed(x.shape)])

    n_layer = int(field(r, "llama.block_count"))
    n_head = int(field(r, "llama.attention.head_count"))
    n_kv = int(field(r, "llama.attention.head_count_kv"))
    dim = int(field(r, "llama.embedding_length"))
    eps = float(field(r, "llama.attention.layer_norm_rms_epsilon"))
    theta = float(field(r, "llama.rope.freq_base"))
    hd = dim // n_head
    n = len(tokens)
    emb = w("token_embd.weight")
    x = emb[tokens]

    def rms(v, g):
        return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * g

    pos = np.arange(n)[:, None]
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    cos, sin = np.cos(pos * inv), np.sin(pos * inv)

    def rope(v, heads):
        v = v.reshape(n, heads, hd // 2, 2)
        a, b = v[..., 0], v[..., 1]
        c, s = cos[:, None, :], sin[:, None, :]
        return np.stack([a * c - b * s, a * s + b * c], axis=-1).reshape(n, heads, hd)

    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(n_layer):
        p = f"blk.{l}."
        h = rms(x, w(p + "attn_norm.weight"))
        q = rope(h @ w(p + "attn_q.weight").T, n_head)
        k = rope(h @ w(p + "attn_k.weight").T, n_kv)
        v = (h @ w(p + "attn_v.weight").T).reshape(n, n_kv, hd)
        out = np.empty((n, n_head, hd))
        for hh in range(n_head):
            kv = hh // (n_head // n_kv)
            s = q[:, hh] @ k[:, kv].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            out[:, hh] = (s / s.sum(axis=1, keepdims=True)) @ v[:, kv]
        x = x + out.reshape(n, dim) @ w(p + "attn_output.weight").T
        h = rms(x, w(p + "ffn_norm.weight"))
        g = h @ w(p + "ffn_gate.weight").T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w(p + "ffn_up.weight").T)) @ w(p + "ffn_down.weight").T
    head = w("output.weight") if "output.weight" in t else emb
    return rms(x, w("output_norm.weight")) @ head.T, r


def reference_logits_gemma3(path, tokens):
    r = GGUFReader(path)
    t = {x.name: x for x in r.tensors}

    def w(name):
        x = t[name]
        return np.asarray(dequantize(x.data, x.tensor_type), dtype=np.float64).reshape(
            [int(d) for d in reversed(x.shape)])

    a = "gemma3."
    n_layer = int(field(r, a + "block_count"))
    n_head = int(field(r, a + "attention.head_count"))
    n_kv = int(field(r, a + "attention.head_count_kv"))
    dim = int(field(r, a + "embedding_length"))
    hd = int(field(r, a + "attention.key_length"))
    eps = float(field(r, a + "attention.layer_norm_rms_epsilon"))
    theta_global = float(field(r, a + "rope.freq_base"))
    window = int(field(r, a + "attention.sliding_window"))
    pattern = 6  # Gemma 3's config.json sliding_window_pattern; the GGUF does not store it
    scale = hd ** -0.5  # query_pre_attn_scalar = head_dim for Gemma 3 270M
    n = len(tokens)
    emb = w("token_embd.weight")
    x = emb[tokens] * np.sqrt(dim)

    def rms(v, g):
        return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * g

    pos = np.arange(n)[:, None]

    def rope(v, theta):  # HF rotate_half: pairs (i, i + hd/2)
        inv = theta ** (-np.arange(0, hd, 2) / hd)
        c, s = np.cos(pos * inv)[:, None, :], np.sin(pos * inv)[:, None, :]
        a1, a2 = v[..., : hd // 2], v[..., hd // 2:]
        return np.concatenate([a1 * c - a2 * s, a1 * s + a2 * c], axis=-1)

    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    causal = np.where(j <= i, 0.0, -np.inf)
    sliding = np.where((j <= i) & (i - j < window), 0.0, -np.inf)
    for l in range(n_layer):
        p = f"blk.{l}."
        local = (l + 1) % pattern != 0
        h = rms(x, w(p + "attn_norm.weight"))
        q = rms((h @ w(p + "attn_q.weight").T).reshape(n, n_head, hd), w(p + "attn_q_norm.weight"))
        k = rms((h @ w(p + "attn_k.weight").T).reshape(n, n_kv, hd), w(p + "attn_k_norm.weight"))
        v = (h @ w(p + "attn_v.weight").T).reshape(n, n_kv, hd)
        q, k = rope(q, 10000.0 if local else theta_global), rope(k, 10000.0 if local else theta_global)
        mask = sliding if local else causal
        out = np.empty((n, n_head, hd))
        for hh in range(n_head):
            kv = hh // (n_head // n_kv)
            sc = q[:, hh] @ k[:, kv].T * scale + mask
            sc = np.exp(sc - sc.max(axis=1, keepdims=True))
            out[:, hh] = (sc / sc.sum(axis=1, keepdims=True)) @ v[:, kv]
        x = x + rms(out.reshape(n, n_head * hd) @ w(p + "attn_output.weight").T, w(p + "post_attention_norm.weight"))
        h = rms(x, w(p + "ffn_norm.weight"))
        g = h @ w(p + "ffn_gate.weight").T
        gelu = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3)))
        y = (gelu * (h @ w(p + "ffn_up.weight").T)) @ w(p + "ffn_down.weight").T
        x = x + rms(y, w(p + "post_ffw_norm.weight"))
    head = w("output.weight") if "output.weight" in t else emb
    return rms(x, w("output_norm.weight")) @ head.T, r


def check_tokenizer_spm(reader, text, ours):
    """Our ids against transformers' GGUF tokenizer conversion for gemma3 (no torch needed), if installed."""
    try:
        from transformers.integrations.gguf import gguf_tokenizer_mapping
    except Exception as e:  # noqa: BLE001 - any missing piece means no check
        print(f"tokenizer check skipped: {type(e).__name__}: {str(e)[:120]}")
        return

    def arr(key, conv):
        f = reader.fields[key]
        return [conv(f.parts[i]) for i in f.data]

    d = {"tokenizer_type": "llama",
         "tokens": arr("tokenizer.ggml.tokens", lambda p: bytes(p).decode()),
         "scores": arr("tokenizer.ggml.scores", lambda p: float(p[0])),
         "token_type": arr("tokenizer.ggml.token_type", lambda p: int(p[0]))}
    for k in ["bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"]:
        d[k] = int(field(reader, "tokenizer.ggml." + k))
    for k in ["add_bos_token", "add_eos_token", "add_space_prefix"]:
        d[k] = bool(field(reader, "tokenizer.ggml." + k))
    tok, _ = gguf_tokenizer_mapping.convert_gguf_tokenizer("gemma3", d)
    theirs = tok.encode(text).ids
    if d["add_bos_token"]:
        theirs = [d["bos_token_id"]] + theirs
    same = theirs == ours
    print(f"tokenizer: {len(ours)} tokens, {'identical to' if same else 'DIFFERENT from'} transformers' GGUF tokenizer")
    if not same:
        print("  ours:  ", ours[:40])
        print("  theirs:", theirs[:40])


def check_tokenizer(reader, text, ours):
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    except ImportError:
        print("tokenizer check skipped: the `tokenizers` package is not installed")
        return
    f = reader.fields["tokenizer.ggml.tokens"]
    vocab = {bytes(f.parts[i]).decode(): n for n, i in enumerate(f.data)}
    m = reader.fields["tokenizer.ggml.merges"]
    merges = [tuple(bytes(m.parts[i]).decode().split(" ")) for i in m.data]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    theirs = tok.encode(text).ids
    same = theirs == ours
    print(f"tokenizer: {len(ours)} tokens, {'identical to' if same else 'DIFFERENT from'} HF tokenizers' BPE")
    if not same:
        print("  ours:  ", ours[:40])
        print("  theirs:", theirs[:40])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cli", required=True, help="path of the polarquant executable")
    ap.add_argument("--model", default=os.path.expanduser(
        os.environ.get("POLARQUANT_MODEL_DIR", "~/.cache/polarquant/models") + "/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--prompt", default="It is a truth universally acknowledged, that a single man in possession "
                                        "of a good fortune, must be in want of a wife. However little known the "
                                        "feelings or views of such a man may be on his first entering a neighbourhood,")
    ap.add_argument("--print-logits", type=int, default=0, metavar="N",
                    help="print the reference's top-3 logits of the first N positions")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "run")
        subprocess.run([args.cli, "generate", "--model", args.model, "--raw", "-p", args.prompt, "-n", "0",
                        "--no-compare", "--threads", "1", "--logits-out", prefix], check=True,
                       stdout=subprocess.DEVNULL)
        meta = json.load(open(prefix + ".json"))
        ours = np.fromfile(prefix + ".f32", dtype=np.float32).reshape(len(meta["tokens"]), meta["vocab"])
    arch = field(GGUFReader(args.model), "general.architecture")
    if arch == "gemma3":
        ref, reader = reference_logits_gemma3(args.model, meta["tokens"])
        check_tokenizer_spm(reader, args.prompt, meta["tokens"])
    else:
        ref, reader = reference_logits(args.model, meta["tokens"])
        check_tokenizer(reader, args.prompt, meta["tokens"])
    diff = np.abs(ours - ref)
    lp = ref - ref.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    lq = ours - ours.max(1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(1, keepdims=True))
    kl = (np.exp(lp) * (lp - lq)).sum(1)
    top1 = (ours.argmax(1) == ref.argmax(1)).mean()
    print(f"positions {len(meta['tokens'])}, vocab {meta['vocab']}")
    print(f"max |logit diff| {diff.max():.3e}, mean {diff.mean():.3e}, logit std {ref.std():.3f}")
    print(f"KL(reference || ours) mean {kl.mean():.3e}, max {kl.max():.3e}; top-1 agreement {100 * top1:.1f}%")
    if args.print_logits:
        for p in range(min(args.print_logits, len(meta["tokens"]))):
            top = np.argsort(-ref[p])[:3]
            print(f"  position {p}: reference top-3 {[(int(i), round(float(ref[p, i]), 4)) for i in top]}")
    return 0 if top1 == 1.0 and kl.max() < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
