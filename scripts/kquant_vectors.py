# Prints the test vectors of tests/model_kquant_test.cpp: two blocks of LCG bytes per type (fp16
# scale fields set to finite values) decoded by the gguf package. Usage: python3 scripts/kquant_vectors.py
import numpy as np, gguf
from gguf.quants import dequantize
from gguf import GGMLQuantizationType as T
def lcg_bytes(n, seed):
    x = seed; out = bytearray()
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & ((1<<64)-1)
        out.append(x >> 56)
    return out
def f16(v): return np.array([v], dtype=np.float16).tobytes()
# (type, block bytes, [(offset of fp16 field, value)])
specs = {
 'Q5_0': (T.Q5_0, 22, [(0, 0.125)]),
 'Q4_K': (T.Q4_K, 144, [(0, 0.0625), (2, 0.03125)]),
 'Q5_K': (T.Q5_K, 176, [(0, 0.0625), (2, 0.03125)]),
 'Q6_K': (T.Q6_K, 210, [(208, 0.0078125)]),
}
for name,(t,bb,fields) in specs.items():
    nblk = 2
    raw = lcg_bytes(bb*nblk, 12345)
    for b in range(nblk):
        for off,v in fields:
            raw[b*bb+off:b*bb+off+2] = f16(v*(b+1))
    vals = dequantize(np.frombuffer(bytes(raw), dtype=np.uint8), t).astype(np.float32).ravel()
    idx = [0,1,17,31,40,len(vals)//2+3,len(vals)-2,len(vals)-1]
    print(name, len(vals), [repr(float(vals[i])) for i in idx], repr(float(vals.astype(np.float64).sum())))
