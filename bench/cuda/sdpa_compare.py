"""Runs bench/cuda's decode_bench and, in the same process run, the anchors a user of PyTorch or
FlashInfer would compare it with, at the same shapes; prints one table with times, bandwidth and
speedups:
  SDPA fp16        PyTorch SDPA (flash backend) on fp16 K/V;
  SDPA fp8->fp16   K/V stored as float8_e4m3fn, upcast to fp16 inside each timed call, then the
                   same SDPA call (the floor of what a PyTorch user with an fp8 cache gets);
  FlashInfer       BatchDecodeWithPagedKVCacheWrapper (NHD pages of FI_PAGE tokens, CUDA-core
                   decode kernel, q fp16, no RoPE) on an fp16 and on an fp8 e4m3 paged KV cache.

Usage (on the GPU machine): python3 bench/cuda/sdpa_compare.py BUILD/polarquant_cuda_bench [--quick]
       [--no-flashinfer] [--preset NAME] [--batch N] [--context N] [--dim D] [--q-heads N]
       (all but --no-flashinfer are passed to the benchmark; default: the `paper` preset, head_dim
       128, 32 query heads over 8 KV heads, every batch and context; the anchors run at the same shapes)
Timing as in decode_bench: CUDA events per call, median; K/V copies cycled so that every call
reads HBM (>= 256 MiB of inputs in all, over 4x the 60 MB L2).

FlashInfer (optional; without it its columns read "-"). It JIT-compiles its kernels with the
machine's nvcc (CUDA_HOME, set to /usr/local/cuda here if unset) and ninja; both decode variants are
compiled once per process, in parallel, before the table. Wheels (no network on the GPU machine),
fetched in the repository root of a machine with network (.whl/ is git-ignored through
.git/info/exclude):
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
      flashinfer-python==0.6.12 'apache-tvm-ffi<0.2,!=0.1.8,!=0.1.8.post0' nvidia-ml-py ninja \
      'packaging>=24.2' 'typing_extensions>=4.13' einops click tabulate tqdm
  (0.6.12: 14 MB, importable without nvidia-cutlass-dsl, cuda-python and cudnn, which its metadata
  lists; 0.6.16+ import cutlass eagerly and 0.7.x is a 100 MB wheel.) Then, on the GPU machine:
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
"""
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F

N_Q, N_KV, DIM = 32, 8, 128
FP8 = torch.float8_e4m3fn
FI_PAGE = 32  # tokens per FlashInfer page, as in decode_bench's pages
MIN_BYTES = 256 << 20


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


def copies_for(set_bytes):
    return max(1, MIN_BYTES // set_bytes + 1)


def sdpa(q, k, v, backend, **kw):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if backend == "flash":
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)


def sdpa_decode(batch, ctx, reps, kv_dtype=torch.float16):
    """SDPA on K/V stored as kv_dtype; K/V of another dtype are upcast to fp16 in each timed call."""
    set_bytes = 2 * batch * N_KV * ctx * DIM * kv_dtype.itemsize
    copies = copies_for(set_bytes)
    shape = (batch, N_KV, ctx, DIM)
    ks = [torch.randn(shape, device="cuda", dtype=torch.float16).to(kv_dtype) for _ in range(copies)]
    vs = [torch.randn(shape, device="cuda", dtype=torch.float16).to(kv_dtype) for _ in range(copies)]
    q = torch.randn(batch, N_Q, 1, DIM, device="cuda", dtype=torch.float16)
    backend = "flash"
    try:
        sdpa(q, ks[0].to(torch.float16), vs[0].to(torch.float16), backend)
    except RuntimeError:
        backend = "default"

    def call(i):
        sdpa(q, ks[i % copies].to(torch.float16), vs[i % copies].to(torch.float16), backend)

    ms = time_calls(call, reps)
    del ks, vs
    torch.cuda.empty_cache()
    return ms, set_bytes, backend


def sdpa_prefill_ms(tokens):
    q = torch.randn(1, N_Q, tokens, DIM, device="cuda", dtype=torch.float16)
    k = torch.randn(1, N_KV, tokens, DIM, device="cuda", dtype=torch.float16)
    v = torch.randn_like(k)
    return time_calls(lambda _: sdpa(q, k, v, "flash", is_causal=True), 10)


def short(e, limit=3000):
    msg = f"{type(e).__name__}: {e}".strip()
    return msg if len(msg) <= limit else msg[:600] + "\n ... \n" + msg[-(limit - 600):]


def jit_env():
    """FlashInfer's JIT runs $CUDA_HOME/bin/nvcc (else the nvcc on PATH) and `ninja` from PATH; a
    ninja installed by `pip --target DIR` lies in DIR/bin, which is not on PATH."""
    if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    if shutil.which("ninja") is None:
        for p in sys.path:
            d = os.path.join(p or ".", "bin")
            if os.access(os.path.join(d, "ninja"), os.X_OK):
                os.environ["PATH"] = d + os.pathsep + os.environ.get("PATH", "")
                break


def fi_reference(q, cache, batch, ctx):
    """fp32 attention of q [B, N_Q, D] over the first ctx tokens of B sequences of NHD pages."""
    kv = cache.float().view(batch, -1, 2, FI_PAGE, N_KV, DIM).permute(0, 2, 4, 1, 3, 5)
    kv = kv.reshape(batch, 2, N_KV, -1, DIM)[:, :, :, :ctx]
    qg = q.float().view(batch, N_KV, N_Q // N_KV, DIM)
    p = torch.softmax(qg @ kv[:, 0].transpose(-1, -2) / DIM**0.5, dim=-1)
    return (p @ kv[:, 1]).reshape(batch, N_Q, DIM)


class FlashInfer:
    """FlashInfer paged decode: one wrapper and one JIT module per KV dtype for the whole process,
    plan() once per shape outside the timing, run() timed. A failure is printed once and leaves
    that variant's column "-" from then on."""

    KV = {"fp16": torch.float16, "fp8": FP8}

    def __init__(self, enabled):
        self.fi, self.failed, self.version = None, set(), None
        if not enabled:
            self.status = "FlashInfer: skipped (--no-flashinfer)"
            return
        t0 = time.perf_counter()
        try:
            jit_env()
            import flashinfer
        except Exception as e:  # ImportError, or a dependency that fails at import time
            self.status = f"FlashInfer: not installed ({short(e, 400)})"
            return
        self.fi, self.version = flashinfer, flashinfer.__version__
        t_import = time.perf_counter() - t0
        try:
            self.wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                torch.zeros(128 << 20, dtype=torch.uint8, device="cuda"), "NHD")
        except Exception as e:
            self.fi, self.status = None, f"FlashInfer {self.version}: wrapper failed ({short(e)})"
            return
        t_build = self.prebuild()
        firsts = []
        for name in self.KV:
            t0 = time.perf_counter()
            err = None if name in self.failed else self.check(name)
            if err is not None:
                flag = " CHECK" if err > 2e-2 else ""
                firsts.append(f"{name} {time.perf_counter() - t0:.1f} s (max |err| {err:.1e}{flag})")
        self.status = (f"FlashInfer {self.version} (CUDA_HOME={os.environ.get('CUDA_HOME')}): import {t_import:.1f} s, "
                       f"JIT build of both decode modules {t_build:.1f} s, first plan+run "
                       f"{', '.join(firsts) or 'failed'} (error vs an fp32 reference)")

    def prebuild(self):
        """Compiles the fp16- and fp8-KV decode modules at once (nvcc in parallel, one wave), with
        the arguments plan() passes to get_batch_decode_module (flashinfer/decode.py, 0.6.12); a
        variant whose build fails is marked failed; if the specs can't be made, plan() compiles."""
        t0 = time.perf_counter()
        try:
            specs = {name: self.fi.jit.gen_batch_decode_module(torch.float16, kv, torch.float16, torch.int32,
                                                               DIM, DIM, 0, False, False)
                     for name, kv in self.KV.items()}
        except Exception as e:
            print(f"FlashInfer prebuild skipped ({short(e, 400)})")
            return time.perf_counter() - t0
        errors = {}

        def build(name):
            try:
                specs[name].build(False)
            except Exception as e:
                errors[name] = e

        threads = [threading.Thread(target=build, args=(name,)) for name in specs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, e in errors.items():
            self.fail(name, e)
        return time.perf_counter() - t0

    def fail(self, name, e):
        self.failed.add(name)
        print(f"FlashInfer {name}: failed, column '-' from here on ({short(e)})", flush=True)

    def plan(self, batch, pages, ctx, kv_dtype):
        i32 = dict(dtype=torch.int32, device="cuda")
        self.wrapper.plan(torch.arange(batch + 1, **i32) * pages, torch.arange(batch * pages, **i32),
                          torch.full((batch,), ctx - (pages - 1) * FI_PAGE, **i32), N_Q, N_KV, DIM,
                          FI_PAGE, pos_encoding_mode="NONE", q_data_type=torch.float16,
                          kv_data_type=kv_dtype)

    def caches(self, batch, ctx, kv_dtype, copies=None):
        pages = -(-ctx // FI_PAGE)
        shape = (batch * pages, 2, FI_PAGE, N_KV, DIM)
        if copies is None:
            copies = copies_for(2 * batch * pages * FI_PAGE * N_KV * DIM * kv_dtype.itemsize)
        return pages, [torch.randn(shape, device="cuda", dtype=torch.float16).to(kv_dtype)
                       for _ in range(copies)]

    def check(self, name):
        """First plan+run of a variant (compiles it unless prebuilt), on 2 sequences of a page and
        a half; returns the max abs error against fi_reference, or None after a failure."""
        try:
            batch, ctx, kv = 2, FI_PAGE * 3 // 2, self.KV[name]
            pages, (cache,) = self.caches(batch, ctx, kv, copies=1)
            q = torch.randn(batch, N_Q, DIM, device="cuda", dtype=torch.float16)
            self.plan(batch, pages, ctx, kv)
            out = self.wrapper.run(q, cache)
            return (out.float() - fi_reference(q, cache, batch, ctx)).abs().max().item()
        except Exception as e:
            self.fail(name, e)
            return None

    def decode(self, batch, ctx, reps, name):
        """Median ms of run() at this shape, or None (not installed, or failed)."""
        if self.fi is None or name in self.failed:
            return None
        try:
            pages, caches = self.caches(batch, ctx, self.KV[name])
            q = torch.randn(batch, N_Q, DIM, device="cuda", dtype=torch.float16)
            self.plan(batch, pages, ctx, self.KV[name])
            return time_calls(lambda i: self.wrapper.run(q, caches[i % len(caches)]), reps)
        except Exception as e:
            self.fail(name, e)
            return None
        finally:
            caches = None
            torch.cuda.empty_cache()


def cell(ms):
    return "-" if ms is None else f"{ms:.4f}"


def main():
    global DIM, N_Q
    exe = sys.argv[1]
    quick = "--quick" in sys.argv
    bench_args = [a for a in sys.argv[2:] if a != "--no-flashinfer"]
    out = subprocess.run([exe] + bench_args, check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    dev = next(r for r in rows if r["kind"] == "device")
    DIM, N_Q = dev["head_dim"], dev["q_heads"]
    print(f"GPU {dev['name']} ({dev['sms']} SMs), CUDA driver API {dev['driver_api']}, runtime {dev['runtime']}, "
          f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}), preset {dev['preset']}, head_dim {DIM}, {N_Q} query heads, "
          f"kernel {dev.get('kernel', '?')}")
    fi = FlashInfer("--no-flashinfer" not in sys.argv)
    print(fi.status, flush=True)
    print("| batch | context | ours (ms) | our GB/s on pages | SDPA fp16 (ms) | SDPA GB/s | speedup | "
          "SDPA fp8->fp16 (ms) | FlashInfer fp16 (ms) | FlashInfer fp8 (ms) | ours vs FI fp8 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    reps = 10 if quick else 40
    for r in rows:
        if r["kind"] != "decode":
            continue
        ms, sbytes, backend = sdpa_decode(r["batch"], r["context"], reps)
        ms8 = sdpa_decode(r["batch"], r["context"], reps, FP8)[0]
        fi16 = fi.decode(r["batch"], r["context"], reps, "fp16")
        fi8 = fi.decode(r["batch"], r["context"], reps, "fp8")
        sp = ms / r["ms"]
        vs_fi8 = None if fi8 is None else fi8 / r["ms"]
        results.append(dict(r, sdpa_ms=ms, sdpa_backend=backend, speedup=sp, sdpa_fp8_ms=ms8,
                            flashinfer_fp16_ms=fi16, flashinfer_fp8_ms=fi8,
                            flashinfer_page_size=FI_PAGE, speedup_vs_flashinfer_fp8=vs_fi8))
        print(f"| {r['batch']} | {r['context']} | {r['ms']:.4f} | {r['gbps_pages']:.0f} | {ms:.4f} ({backend}) | "
              f"{sbytes / ms / 1e6:.0f} | {sp:.2f}x | {ms8:.4f} | {cell(fi16)} | {cell(fi8)} | "
              f"{'-' if vs_fi8 is None else f'{vs_fi8:.2f}x'} |", flush=True)
    prefill = sdpa_prefill_ms(16384)
    for r in rows:
        if r["kind"] == "encode":
            enc32 = 2 * 32 * r["ms"]  # K and V, 32 layers
            print(f"encode 16k tokens x 8 heads (rotated_input={r['rotated_input']}): {r['ms']:.3f} ms per K "
                  f"({r['vectors_per_s']:.3g} vectors/s); K+V x 32 layers {enc32:.2f} ms vs SDPA prefill "
                  f"x 32 layers {32 * prefill:.1f} ms = {100 * enc32 / (32 * prefill):.2f}%")
    print("JSON " + json.dumps({"device": dev, "flashinfer": fi.version or fi.status, "decode": results,
                                "sdpa_prefill_16k_ms": prefill,
                                "encode": [r for r in rows if r["kind"] == "encode"]}))


if __name__ == "__main__":
    main()
