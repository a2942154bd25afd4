"""Runs bench/cuda's decode_bench and, in the same process run, PyTorch SDPA (flash backend) on
fp16 K/V of the same shapes; prints one table with times, bandwidth and speedups.

Usage (on the GPU machine): python3 bench/cuda/sdpa_compare.py BUILD/polarquant_cuda_bench [--quick]
       [--preset NAME] [--batch N] [--context N] [--dim D] [--q-heads N]   (passed to the benchmark;
       default: the `paper` preset, head_dim 128, 32 query heads over 8 KV heads, every batch and
       context; SDPA runs at the same shapes)
Timing as in decode_bench: CUDA events per call, median; K/V copies cycled so that every call
reads HBM (>= 256 MiB of inputs in all, over 4x the 60 MB L2).
"""
import json
import subprocess
import sys

import torch
import torch.nn.functional as F

N_Q, N_KV, DIM = 32, 8, 128


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def time_calls(fn, reps):
    for i in range(3):
        fn(i)
    times = []
    for i in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn(i)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return median(times)


def sdpa_decode(batch, ctx, reps):
    set_bytes = 2 * batch * N_KV * ctx * DIM * 2
    copies = max(1, (256 << 20) // set_bytes + 1)
    ks = [torch.randn(batch, N_KV, ctx, DIM, device="cuda", dtype=torch.float16) for _ in range(copies)]
    vs = [torch.randn_like(k) for k in ks]
    q = torch.randn(batch, N_Q, 1, DIM, device="cuda", dtype=torch.float16)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = "flash"
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, ks[0], vs[0], enable_gqa=True)
    except RuntimeError:
        backend = "default"

    def call(i):
        if backend == "flash":
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                F.scaled_dot_product_attention(q, ks[i % copies], vs[i % copies], enable_gqa=True)
        else:
            F.scaled_dot_product_attention(q, ks[i % copies], vs[i % copies], enable_gqa=True)

    ms = time_calls(call, reps)
    del ks, vs
    torch.cuda.empty_cache()
    return ms, set_bytes, backend


def sdpa_prefill_ms(tokens):
    q = torch.randn(1, N_Q, tokens, DIM, device="cuda", dtype=torch.float16)
    k = torch.randn(1, N_KV, tokens, DIM, device="cuda", dtype=torch.float16)
    v = torch.randn_like(k)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def call(_):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    return time_calls(call, 10)


def main():
    global DIM, N_Q
    exe = sys.argv[1]
    quick = "--quick" in sys.argv
    out = subprocess.run([exe] + sys.argv[2:], check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    dev = next(r for r in rows if r["kind"] == "device")
    DIM, N_Q = dev["head_dim"], dev["q_heads"]
    print(f"GPU {dev['name']} ({dev['sms']} SMs), CUDA driver API {dev['driver_api']}, runtime {dev['runtime']}, "
          f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}), preset {dev['preset']}, head_dim {DIM}, {N_Q} query heads, "
          f"kernel {dev.get('kernel', '?')}")
    print("| batch | context | ours (ms) | our GB/s on pages | SDPA fp16 (ms) | SDPA GB/s | speedup |")
    print("|---|---|---|---|---|---|---|")
    results = []
    for r in rows:
        if r["kind"] != "decode":
            continue
        ms, sbytes, backend = sdpa_decode(r["batch"], r["context"], 10 if quick else 40)
        sp = ms / r["ms"]
        results.append(dict(r, sdpa_ms=ms, sdpa_backend=backend, speedup=sp))
        print(f"| {r['batch']} | {r['context']} | {r['ms']:.4f} | {r['gbps_pages']:.0f} | {ms:.4f} ({backend}) | "
              f"{sbytes / ms / 1e6:.0f} | {sp:.2f}x |", flush=True)
    prefill = sdpa_prefill_ms(16384)
    for r in rows:
        if r["kind"] == "encode":
            enc32 = 2 * 32 * r["ms"]  # K and V, 32 layers
            print(f"encode 16k tokens x 8 heads (rotated_input={r['rotated_input']}): {r['ms']:.3f} ms per K "
                  f"({r['vectors_per_s']:.3g} vectors/s); K+V x 32 layers {enc32:.2f} ms vs SDPA prefill "
                  f"x 32 layers {32 * prefill:.1f} ms = {100 * enc32 / (32 * prefill):.2f}%")
    print("JSON " + json.dumps({"device": dev, "decode": results, "sdpa_prefill_16k_ms": prefill,
                                "encode": [r for r in rows if r["kind"] == "encode"]}))


if __name__ == "__main__":
    main()
