"""PolarQuantCache in transformers' generate and forward, against DynamicCache."""
import math
import os
import pathlib

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import DynamicCache  # noqa: E402

import polarquant as pq  # noqa: E402
from polarquant.hf import PolarQuantCache  # noqa: E402


def _prompt(batch=2, length=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, length), generator=g)


def _generate(model, cache, ids, **kw):
    return model.generate(ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                          max_new_tokens=24, do_sample=False, pad_token_id=0, **kw)


def _kld(model, cache, seq):
    """Mean KL(p_DynamicCache || p_cache) over the positions of one forward pass, and the cache."""
    with torch.no_grad():
        ref = model(seq, past_key_values=DynamicCache(config=model.config)).logits.log_softmax(-1)
        got = model(seq, past_key_values=cache).logits.log_softmax(-1)
    return (ref.exp() * (ref - got)).sum(-1).mean().item()


def test_f16_generates_the_same_tokens(tiny_llama):
    ids = _prompt()
    expected = _generate(tiny_llama, DynamicCache(config=tiny_llama.config), ids)
    got = _generate(tiny_llama, PolarQuantCache("f16", tiny_llama.config), ids)
    assert torch.equal(got, expected)
    lazy = PolarQuantCache("f16")  # no config: layers made on first use
    assert torch.equal(_generate(tiny_llama, lazy, ids), expected)
    assert len(lazy.layers) == tiny_llama.config.num_hidden_layers


def test_f32_forward_is_exact(tiny_llama):
    seq = _prompt(1, 40)
    with torch.no_grad():
        ref = tiny_llama(seq, past_key_values=DynamicCache(config=tiny_llama.config)).logits
        got = tiny_llama(seq, past_key_values=PolarQuantCache("f32", tiny_llama.config)).logits
    assert torch.equal(ref, got)


def test_paper_kld_small_and_finite(tiny_llama):
    seq = _prompt(1, 96, seed=2)
    kld = {name: _kld(tiny_llama, PolarQuantCache(name, tiny_llama.config), seq)
           for name in ("f16", "paper", "polar37")}
    assert all(math.isfinite(v) for v in kld.values()), kld
    assert abs(kld["f16"]) < 1e-4, kld
    assert 1e-5 < kld["paper"] < 0.1, kld  # measured 0.029 (polarquant 0.1.0, torch 2.15)
    assert kld["polar37"] < kld["paper"], kld  # 1.7x lower NMSE gives lower KLD


def test_center_keys(tiny_llama):
    seq = _prompt(1, 64, seed=3)
    with torch.no_grad():
        ref = tiny_llama(seq, past_key_values=DynamicCache(config=tiny_llama.config)).logits
        cache = PolarQuantCache("f32", tiny_llama.config, center_keys=True)
        got = tiny_llama(seq, past_key_values=cache).logits
    # Exact up to float rounding: softmax does not see a shift shared by all of a query's scores.
    assert torch.allclose(ref, got, atol=1e-4, rtol=0)
    assert cache.layers[0]._key_mean.shape == (1, 2, 1, 64)
    kld = _kld(tiny_llama, PolarQuantCache("paper", tiny_llama.config, center_keys=True), seq)
    assert math.isfinite(kld) and kld < 0.1
    ids = _prompt(2, 12)
    expected = _generate(tiny_llama, DynamicCache(config=tiny_llama.config), ids, num_beams=2)
    got = _generate(tiny_llama, PolarQuantCache("f32", tiny_llama.config, center_keys=True), ids,
                    num_beams=2)
    assert torch.equal(got, expected)


def test_cache_holds_codes_and_counts_bytes(tiny_llama):
    ids = _prompt(2, 16)
    cache = PolarQuantCache("paper", tiny_llama.config)
    out = _generate(tiny_llama, cache, ids)
    tokens = out.shape[1] - 1  # the last token was generated, never cached
    assert cache.get_seq_length() == tokens
    heads, dim = tiny_llama.config.num_key_value_heads, 64
    codec = pq.Codec("paper", dim)
    n = cache.nbytes()
    layers = tiny_llama.config.num_hidden_layers
    assert n["full_precision"] == 0
    assert n["codes"] == layers * 2 * 2 * heads * tokens * codec.group_bytes
    assert n["fp16_equivalent"] == layers * 2 * 2 * heads * tokens * dim * 2
    assert n["total"] / n["fp16_equivalent"] == pytest.approx(3.875 / 16)


def test_residual_window_and_grouped_codecs(tiny_llama):
    ids = _prompt(2, 16)
    expected = _generate(tiny_llama, DynamicCache(config=tiny_llama.config), ids)
    # A window longer than the whole run keeps everything in full precision: exact.
    window = PolarQuantCache("paper", tiny_llama.config, residual_length=1000)
    assert torch.equal(_generate(tiny_llama, window, ids), expected)
    assert window.nbytes()["codes"] == 0
    # KIVI keys code groups of 32 tokens; the partial group stays in full precision.
    kivi = PolarQuantCache("kivi2", tiny_llama.config)
    out = _generate(tiny_llama, kivi, ids)
    tokens = out.shape[1] - 1
    layer = kivi.layers[0]
    assert layer._k.codes.shape[2] == tokens // 32
    assert layer._k.tail.shape[2] == tokens % 32
    assert layer._v.tail.shape[2] == 0
    # keep_dequantized gives the same tokens as decoding every step.
    a = _generate(tiny_llama, PolarQuantCache("paper", tiny_llama.config), ids)
    b = _generate(tiny_llama, PolarQuantCache("paper", tiny_llama.config, keep_dequantized=True), ids)
    assert torch.equal(a, b)


def test_beam_search_runs(tiny_llama):
    ids = _prompt(1, 12)
    out = _generate(tiny_llama, PolarQuantCache("polar37", tiny_llama.config), ids, num_beams=3)
    assert out.shape == (1, 12 + 24)


def test_bad_arguments(tiny_llama):
    with pytest.raises(pq.Error, match="unknown codec 'nope'"):
        PolarQuantCache("nope", tiny_llama.config)
    with pytest.raises(ValueError, match="residual_length"):
        PolarQuantCache("paper", tiny_llama.config, residual_length=-1)
    cache = PolarQuantCache("paper", tiny_llama.config)
    with pytest.raises(ValueError, match="head_dim is 32"):
        cache.update(torch.zeros(1, 2, 3, 32), torch.zeros(1, 2, 3, 32), 0)
    with pytest.raises(ValueError, match="batch, heads, tokens, head_dim"):
        cache.update(torch.zeros(2, 3, 64), torch.zeros(2, 3, 64), 0)
    nan = torch.zeros(1, 2, 3, 64)
    nan[0, 1, 2, 5] = float("nan")
    with pytest.raises(pq.Error, match="nan"):
        cache.update(nan, torch.zeros(1, 2, 3, 64), 1)


MODEL = pathlib.Path(os.environ.get(
    "POLARQUANT_MODEL", pathlib.Path.home() / ".cache/polarquant/models/SmolLM2-135M-Instruct.Q4_1.gguf"))


@pytest.mark.skipif(not MODEL.is_file(), reason=f"no model at {MODEL} (scripts/fetch_model.sh)")
def test_smollm2_gguf():
    pytest.importorskip("gguf")
    tok = transformers.AutoTokenizer.from_pretrained(str(MODEL.parent), gguf_file=MODEL.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(MODEL.parent), gguf_file=MODEL.name, dtype=torch.float32).eval()
    text = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"
    seq = tok(text, return_tensors="pt").input_ids
    kld_paper = _kld(model, PolarQuantCache("paper", model.config), seq)
    kld_f16 = _kld(model, PolarQuantCache("f16", model.config), seq)
    assert math.isfinite(kld_paper) and kld_f16 < 1e-3 and kld_paper < 0.5, (kld_f16, kld_paper)
    ids = _generate(model, PolarQuantCache("f16", model.config), seq)
    assert torch.equal(ids, _generate(model, DynamicCache(config=model.config), seq))
