"""PolarQuant KV-cache quantization (arXiv 2502.02617) from Python.

The codecs are the C++ library's (the same bytes as `polarquant codec-stats --codes-out`):

    import numpy as np, polarquant
    codec = polarquant.Codec("paper", dim=128, seed=1)
    x = polarquant.gaussian_data(1000, 128, seed=1)      # or any float32 (n, 128) array / CPU tensor
    codes = codec.encode(x)                              # uint8 (n, codec.group_bytes)
    x_hat = codec.decode(codes)                          # float32 (n, 128)
    codec.stats(x)                                       # bits per coordinate, NMSE, ...
    polarquant.compare(k, v, q, codecs=["paper", "q4_0"]) # the `polarquant compare` harness

`polarquant.hf.PolarQuantCache` is a transformers Cache that stores K and V with any codec.
Bad input (dtype, shape, layout, device, NaN, unknown names) raises TypeError / ValueError /
polarquant.Error (a ValueError carrying the C++ library's message).
"""
from ._core import (
    DEFAULT_SEED,
    Error,
    codec_names,
    codec_pair,
    compare,
    compare_generated,
    gaussian_data,
    keylike_data,
    polar_preset_names,
    train_codebooks,
)
from ._core import Codec as _CoreCodec

__all__ = [
    "Codec",
    "DEFAULT_SEED",
    "Error",
    "codec_names",
    "codec_pair",
    "compare",
    "compare_generated",
    "gaussian_data",
    "keylike_data",
    "polar_preset_names",
    "train_codebooks",
]
__version__ = "0.1.0"


def _is_torch_tensor(x):
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


class Codec(_CoreCodec):
    """A codec by name (see codec_names()); encode/decode take NumPy arrays or torch CPU tensors and
    return the same kind (float32 (n, dim) in, uint8 (n / group_size, group_bytes) codes out)."""

    def encode(self, x):
        if _is_torch_tensor(x):
            import torch

            return torch.from_numpy(super().encode(x.detach()))
        return super().encode(x)

    def decode(self, codes):
        if _is_torch_tensor(codes):
            import torch

            return torch.from_numpy(super().decode(codes.detach()))
        return super().decode(codes)

    def stats(self, x=None, data="gaussian", count=4000, query_seed=1):
        if _is_torch_tensor(x):
            x = x.detach()
        return super().stats(x, data, count, query_seed)
