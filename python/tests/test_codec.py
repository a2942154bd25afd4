"""The codecs through Python: same bytes as the C++ command line, clear errors on bad input."""
import json
import subprocess

import numpy as np
import pytest

import polarquant as pq


def test_names():
    names = pq.codec_names()
    assert {"f16", "q4_0", "kivi2k", "paper", "polar37"} <= set(names)
    assert set(pq.polar_preset_names()) <= set(names)
    assert pq.codec_pair("kivi2") == ("kivi2k", "kivi2v")
    assert pq.codec_pair("paper") == ("paper", "paper")


@pytest.mark.parametrize("preset", ["paper", "polar37"])
def test_same_bytes_and_stats_as_cli(cli, tmp_path, preset):
    seed, count = 12345, 64
    codes_file = tmp_path / "codes.bin"
    out = subprocess.run(
        [str(cli), "codec-stats", "--preset", preset, "--dim", "128", "--count", str(count),
         "--seed", str(seed), "--json", "--codes-out", str(codes_file)],
        check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    codec = pq.Codec(preset, dim=128, seed=seed)
    x = pq.gaussian_data(count, 128, 1)  # codec-stats' Gaussian case
    assert codec.encode(x).tobytes() == codes_file.read_bytes()
    stats = codec.stats(count=count)
    assert stats["bits_per_coordinate"] == report["bits_per_coordinate"]
    assert stats["nmse"] == report["cases"]["gaussian"]["nmse"]
    assert stats["inner_product_error"] == report["cases"]["gaussian"]["inner_product_error"]
    assert codec.stats(count=count, data="keylike")["nmse"] == report["cases"]["keylike"]["nmse"]


def test_seed_changes_codes():
    x = pq.gaussian_data(8, 128, 1)
    a = pq.Codec("paper", 128, seed=1).encode(x)
    assert np.array_equal(a, pq.Codec("paper", 128, seed=1).encode(x))
    assert not np.array_equal(a, pq.Codec("paper", 128, seed=2).encode(x))


@pytest.mark.parametrize("name", pq.codec_names())
def test_roundtrip_every_codec(name):
    codec = pq.Codec(name, dim=128, seed=3)
    n = 2 * codec.group_size
    x = pq.gaussian_data(n, 128, 5)
    codes = codec.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (n // codec.group_size, codec.group_bytes)
    y = codec.decode(codes)
    assert y.dtype == np.float32 and y.shape == x.shape
    nmse = float(((x - y) ** 2).sum() / (x ** 2).sum())
    assert np.isfinite(nmse) and nmse < 1.0  # qjl (1-bit sketch) is near 0.85
    assert codec.bits_per_coordinate == 8 * codec.group_bytes / (128 * codec.group_size)
    assert np.array_equal(codec.decode(codes.reshape(-1)), y)  # 1-D whole groups
    bad = x.copy()
    bad[n - 1, 7] = np.nan
    with pytest.raises(pq.Error, match="nan|not finite"):
        codec.encode(bad)


def test_torch_tensors_match_numpy():
    torch = pytest.importorskip("torch")
    codec = pq.Codec("polar37", 128)
    x = pq.gaussian_data(10, 128, 9)
    t = torch.from_numpy(x.copy()).requires_grad_(True)
    codes = codec.encode(t)
    assert isinstance(codes, torch.Tensor) and codes.dtype == torch.uint8
    assert np.array_equal(codes.numpy(), codec.encode(x))
    y = codec.decode(codes)
    assert isinstance(y, torch.Tensor) and np.array_equal(y.numpy(), codec.decode(codec.encode(x)))


def test_bad_input_raises():
    codec = pq.Codec("paper", 128)
    x = pq.gaussian_data(4, 128, 1)
    with pytest.raises(TypeError, match="expected dtype float32, got float64"):
        codec.encode(x.astype(np.float64))
    with pytest.raises(ValueError, match="expected rows of 128 values"):
        codec.encode(x[:, :64].copy())
    with pytest.raises(ValueError, match="not C-contiguous"):
        codec.encode(np.asfortranarray(np.concatenate([x, x], axis=0)))
    with pytest.raises(ValueError, match="not C-contiguous"):
        codec.encode(np.concatenate([x, x], axis=1)[:, ::2])
    with pytest.raises(ValueError, match="2-D"):
        codec.encode(x[0])
    with pytest.raises(TypeError, match="NumPy array or a torch CPU tensor, got list"):
        codec.encode([[0.0] * 128])
    with pytest.raises(ValueError, match="infinity|inf"):
        codec.encode(np.full((1, 128), np.inf, np.float32))
    with pytest.raises(pq.Error, match="unknown codec 'nope'.*paper"):
        pq.Codec("nope", 128)
    with pytest.raises(pq.Error):
        pq.Codec("paper", 7)  # odd
    with pytest.raises(ValueError, match="group_bytes"):
        codec.decode(np.zeros(codec.group_bytes - 1, np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        codec.decode(np.zeros((1, codec.group_bytes), np.int8))
    with pytest.raises(pq.Error, match="groups of 32"):
        pq.Codec("kivi2k", 128).encode(x)
    with pytest.raises(pq.Error, match="PolarQuant presets only"):
        pq.Codec("q4_0", 128, rotation="none")
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="float32, got torch.float16"):
        codec.encode(torch.zeros(2, 128, dtype=torch.float16))
    with pytest.raises(ValueError, match="not C-contiguous"):
        codec.encode(torch.zeros(128, 4).t())


def test_polar_options_and_trained_codebooks():
    x = pq.keylike_data(3000, 128, 3)
    books = pq.train_codebooks(x, preset="paper", seed=1)
    trained = pq.Codec("paper", 128, codebooks=books)
    analytic = pq.Codec("paper", 128)
    assert trained.bits_per_coordinate == analytic.bits_per_coordinate
    # Trained on these angles, the codebooks fit them at least about as well as the analytic ones.
    assert trained.stats(x)["nmse"] < 1.05 * analytic.stats(x)["nmse"]
    assert pq.Codec("paper", 128, rotation="none").stats(data="keylike")["nmse"] > \
        analytic.stats(data="keylike")["nmse"]
    with pytest.raises(pq.Error):
        pq.Codec("paper", 128, codebooks=books[:-5])  # truncated file
    with pytest.raises(pq.Error, match="rotation"):
        pq.Codec("paper", 128, rotation="diagonal")


QUALITY = ["bits_per_coordinate", "nmse", "nmse_k", "nmse_v", "inner_product_error",
           "attention_error", "softmax_kl"]


def test_compare_generated_matches_cli(cli):
    args = ["--data", "keylike", "--dim", "64", "--count", "256", "--queries", "4", "--seed", "3"]
    out = subprocess.run([str(cli), "compare", *args, "--codecs", "paper,q4_0,kivi2", "--json",
                          "--min-time", "0.01"], check=True, capture_output=True, text=True).stdout
    expected = json.loads(out)["rows"]
    got = pq.compare_generated("keylike", 64, 256, 4, 3, codecs=["paper", "q4_0", "kivi2"],
                               min_seconds=0.01)
    assert [r["codec"] for r in got] == ["paper", "q4_0", "kivi2"]
    for g, e in zip(got, expected):
        assert (g["key_codec"], g["value_codec"]) == (e["key_codec"], e["value_codec"])
        for field in QUALITY:
            assert g[field] == e[field], (g["codec"], field)


def test_compare_on_callers_head():
    k, v, q = (pq.gaussian_data(n, 64, s) for n, s in ((96, 1), (96, 2), (5, 3)))
    rows = pq.compare(k, v, q, codecs=["polar37", "f16"], min_seconds=0.01)
    polar = rows[0]
    assert polar["nmse_k"] == pytest.approx(pq.Codec("polar37", 64).stats(k)["nmse"], rel=1e-9)
    assert rows[1]["softmax_kl"] < 1e-5 < polar["softmax_kl"]
    with pytest.raises(pq.Error, match="rows"):
        pq.compare(k, v[:10].copy(), q)
    with pytest.raises(ValueError, match="rows of 64"):
        pq.compare(k, v, pq.gaussian_data(2, 32, 1))
    bad = q.copy()
    bad[1, 1] = np.inf
    with pytest.raises(pq.Error, match="query value 65 is not finite"):
        pq.compare(k, v, bad)
    with pytest.raises(pq.Error, match="unknown codec"):
        pq.compare(k, v, q, codecs=["nope"])
