"""Shared fixtures: the command-line binary (for byte-for-byte checks) and a tiny random Llama."""
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cli():
    """The C++ command line, built by scripts/setup.sh (build/release/polarquant)."""
    path = pathlib.Path(os.environ.get("POLARQUANT_CLI", ROOT / "build" / "release" / "polarquant"))
    if not path.is_file():
        pytest.skip(f"C++ command line not built at {path} (run scripts/setup.sh or set POLARQUANT_CLI)")
    return path


@pytest.fixture(scope="session")
def tiny_llama():
    """A 2-layer Llama (GQA: 4 query heads, 2 KV heads of dim 64) with seeded random weights."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    # One thread: deterministic, and no spinning thread pool fighting other work on a small VM.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        initializer_range=0.05)
    return transformers.LlamaForCausalLM(config).eval()
