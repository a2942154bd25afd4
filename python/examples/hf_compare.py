#!/usr/bin/env python3
"""Side by side through transformers: DynamicCache, transformers' QuantizedCache (quanto / HQQ
backends, if installed) and PolarQuantCache, on one model and one text.

Protocol (the same for every cache): the first --prefill tokens go in as one forward pass; the next
--decode tokens are fed one at a time, as in generation, and only those steps are scored. Reported:
perplexity of the scored tokens, mean KL(p_DynamicCache || p_cache) over them, and the cache's bytes
at the end (PolarQuantCache.nbytes(); the fp16 size for DynamicCache). transformers' QuantizedCache
keeps its last residual_length (default 128) tokens in full precision and returns the prefill
unquantized on the first step; PolarQuantCache quantizes every token unless --residual is given.

Usage: build/venv/bin/python python/examples/hf_compare.py \\
         --model ~/.cache/polarquant/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
         --text ../shared/data/emma.txt [--prefill 256] [--decode 256] [--caches ...]
"""
import argparse
import math
import pathlib
import time

import torch
import transformers
from transformers import DynamicCache, QuantizedCache

from polarquant.hf import PolarQuantCache

DEFAULT_CACHES = ["dynamic", "quanto4", "quanto2", "hqq4", "hqq2", "paper", "polar37",
                  "paper+c", "polar37+c", "paper@128", "q4_0", "kivi2"]


def make_cache(spec, config):
    """'dynamic', 'quanto4', 'hqq2', or a polarquant codec name with an optional '@R' window and
    '+c' for center_keys (e.g. 'paper+c', 'polar37@128')."""
    if spec == "dynamic":
        return DynamicCache(config=config)
    for backend in ("quanto", "hqq"):
        if spec.startswith(backend):
            return QuantizedCache(backend, config, nbits=int(spec[len(backend):]))
    center = spec.endswith("+c")
    name, _, window = spec.removesuffix("+c").partition("@")
    return PolarQuantCache(name, config, residual_length=int(window or 0), center_keys=center)


def run(model, ids, prefill, cache):
    """Log-probabilities of the decode steps' next tokens, shape (decode, vocab)."""
    out = []
    with torch.no_grad():
        model(ids[:, :prefill], past_key_values=cache, use_cache=True)
        for t in range(prefill, ids.shape[1]):
            logits = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits
            out.append(logits[0, -1].float().log_softmax(-1))
    return torch.stack(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=pathlib.Path, help="GGUF file")
    ap.add_argument("--text", required=True, type=pathlib.Path)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--decode", type=int, default=256)
    ap.add_argument("--caches", nargs="+", default=DEFAULT_CACHES)
    args = ap.parse_args()
    torch.manual_seed(0)
    tok = transformers.AutoTokenizer.from_pretrained(str(args.model.parent), gguf_file=args.model.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(args.model.parent), gguf_file=args.model.name, dtype=torch.float32).eval()
    text = args.text.read_text(encoding="utf-8", errors="replace")
    ids = tok(text[:200_000], return_tensors="pt").input_ids[:, : args.prefill + args.decode + 1]
    targets = ids[0, args.prefill + 1:]
    ids = ids[:, :-1]
    ref = None
    print(f"{args.model.name}, {args.text.name}: prefill {args.prefill}, {args.decode} scored decode "
          f"steps; transformers {transformers.__version__}, torch {torch.__version__}\n")
    print("| cache | perplexity | KLD vs DynamicCache | cache bytes | vs fp16 | s |")
    print("|---|---|---|---|---|---|")
    for spec in args.caches:
        try:
            cache = make_cache(spec, model.config)
            start = time.time()
            lp = run(model, ids, args.prefill, cache)
            seconds = time.time() - start
        except Exception as e:  # a backend that is not installed: say so, go on
            print(f"| {spec} | n/a: {type(e).__name__}: {str(e).splitlines()[0][:80]} | | | | |")
            continue
        if ref is None:
            ref = lp  # the first cache is the reference (dynamic)
        ppl = math.exp(-lp.gather(1, targets[:, None]).mean().item())
        kld = (ref.exp() * (ref - lp)).sum(-1).mean().item()
        if isinstance(cache, PolarQuantCache):
            n = cache.nbytes()
            size, fp16 = n["total"], n["fp16_equivalent"]
            ratio = f"{size / fp16:.3f}"
        else:
            c = model.config
            head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
            fp16 = 2 * 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * ids.shape[1]
            size, ratio = (fp16, "1") if spec == "dynamic" else ("-", "-")
        print(f"| {spec} | {ppl:.3f} | {kld:.5f} | {size} | {ratio} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
