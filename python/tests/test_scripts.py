"""scripts/key_center_drift.py on synthetic K/V dumps (docs/FORMAT.md section 6)."""
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "key_center_drift.py"


def write_dump(path, keys, n_q=1):
    """A version-1 .kv file with one layer (id 3): keys [tokens][kv][dim], zero V and Q."""
    n, n_kv, dim = keys.shape
    desc = b"synthetic"
    body = b"PQKVDUMP" + struct.pack("<7I", 1, 1, n, n_kv, n_kv * n_q, dim, len(desc)) + desc
    body += struct.pack("<I", 3)
    body += keys.astype("<f4").tobytes()
    body += np.zeros((n, n_kv, dim), "<f4").tobytes()
    body += np.zeros((n, n_kv * n_q, dim), "<f4").tobytes()
    path.write_bytes(body + struct.pack("<I", zlib.crc32(body)))


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def ratios(stdout):
    row = [line for line in stdout.splitlines() if line.strip().startswith("3 |")][0]
    return [float(cell.split("(")[0]) for cell in row.split("|")[1].split(")") if cell.strip()]


def test_a_rotating_bias_drifts_and_a_constant_one_does_not(tmp_path):
    rng = np.random.default_rng(0)
    n, dim = 2048, 16
    noise = rng.normal(size=(n, 1, dim))
    bias = np.full(dim, 4.0)
    # RoPE-like: each pair of channels rotates with the position at its own frequency.
    freq = 100.0 ** (-np.arange(0, dim, 2) / dim)
    angle = np.arange(n)[:, None] * freq[None, :] * 0.01
    rotated = np.empty((n, dim))
    rotated[:, 0::2] = bias[0::2] * np.cos(angle) - bias[1::2] * np.sin(angle)
    rotated[:, 1::2] = bias[0::2] * np.sin(angle) + bias[1::2] * np.cos(angle)
    write_dump(tmp_path / "rot.kv", noise + rotated[:, None, :])
    write_dump(tmp_path / "const.kv", noise + bias)
    rot = run(tmp_path / "rot.kv", "--first", 256, "--bucket", 512)
    const = run(tmp_path / "const.kv", "--first", 256, "--bucket", 512)
    assert rot.returncode == 0 and const.returncode == 0, rot.stderr + const.stderr
    r, c = ratios(rot.stdout), ratios(const.stdout)
    assert len(r) == len(c) == 4
    assert r[-1] > 2 * r[0] and r[-1] > 3.0
    assert max(c) < 1.1


def test_bad_input_is_named(tmp_path):
    (tmp_path / "x.kv").write_bytes(b"not a dump at all, long enough to have a header" * 2)
    out = run(tmp_path / "x.kv")
    assert out.returncode != 0 and "no PQKVDUMP magic" in out.stderr
    write_dump(tmp_path / "short.kv", np.zeros((100, 1, 8)))
    data = (tmp_path / "short.kv").read_bytes()
    (tmp_path / "cut.kv").write_bytes(data[:-20])
    out = run(tmp_path / "cut.kv")
    assert out.returncode != 0 and "CRC mismatch" in out.stderr
    out = run(tmp_path / "short.kv", "--first", 500)
    assert out.returncode != 0 and "exceeds the dump's 100 tokens" in out.stderr


def test_rope_centering_lowers_the_codec_error(tmp_path):
    pytest.importorskip("polarquant")
    rng = np.random.default_rng(1)
    n, dim, theta = 1024, 16, 10000.0
    pre = rng.normal(size=(n, dim)) + 3.0  # a pre-RoPE bias on every channel
    inv = theta ** (-np.arange(0, dim, 2) / dim)
    angle = np.arange(n)[:, None] * inv[None, :]
    keys = np.empty((n, dim))
    keys[:, 0::2] = pre[:, 0::2] * np.cos(angle) - pre[:, 1::2] * np.sin(angle)
    keys[:, 1::2] = pre[:, 0::2] * np.sin(angle) + pre[:, 1::2] * np.cos(angle)
    write_dump(tmp_path / "r.kv", keys[:, None, :])
    out = run(tmp_path / "r.kv", "--bucket", 512, "--rope-theta", theta, "--codec", "paper")
    assert out.returncode == 0, out.stderr
    rows = {}
    for line in out.stdout.splitlines():
        if "key error energy" in line:
            name, values = line.split(",", 1)[1].split(":")
            rows[name.strip()] = [float(v) for v in values.split()]
    assert len(rows) == 3 and all(len(v) == 2 for v in rows.values())
    today, ideal = rows["first-chunk mean"], rows["pre-RoPE mean, per token"]
    assert ideal[-1] < 0.5 * today[-1]
