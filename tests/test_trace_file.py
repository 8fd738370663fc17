"""The trace file (.dxtrace, runtime/tracefile.py): the CLI writes one, Python reads it back with the
same numbers, its size stays shareable (float16 tensors, ≤128 px step previews), and a damaged or
hostile file is refused in one line naming what is wrong."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from array import array
from pathlib import Path

import pytest

from runtime import tracefile
from runtime.backend import HostTensor
from runtime.png import encode_png
from runtime.tracefile import TraceFileError

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "app.cli"]


@pytest.fixture(scope="module")
def cli_trace(default_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("trace")
    path = out / "run.dxtrace"
    r = subprocess.run(
        [
            *CLI,
            "generate",
            "a cat on a blue background",
            "--bundle",
            str(default_bundle),
            "--seed",
            "5",
            "--guidance",
            "3",
            "--steps",
            "25",
            "--trace",
            str(path),
            "--out",
            str(out / "run.png"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    return path, out / "run.png", r.stdout


def test_cli_writes_one_file_that_loads_with_the_same_numbers(cli_trace):
    path, png, stdout = cli_trace
    assert "trace written to" in stdout and path.is_file()
    f = tracefile.load(path)
    t = f.trace
    assert (t.request.prompt, t.request.seed, t.request.guidance, t.request.steps) == ("a cat on a blue background", 5, 3.0, 25)
    assert len(t.steps) == len(t.timesteps) == 25
    assert f.source == "native" and not f.synthetic and f.machine and "CPUs" in f.machine
    assert f.bundle["imageSize"] == [64, 64] and f.bundle["randomWeights"] is False
    assert f.request_info["limits"]["steps"]["max"] == 100
    # the final image is lossless: the CLI's own PNG holds the same pixels
    assert bytes(t.image.data) == tracefile.decode_png(png.read_bytes(), "run.png")[0]
    # float16: ~3 significant digits of the recorded latents
    s = t.steps[3]
    assert s.latent.shape == (1, 4, 16, 16) and s.image.shape == (64, 64, 4)
    assert s.attention is not None and s.attention.shape[0] == len(t.tokens.tokens)  # the prompt's positions only
    size = path.stat().st_size
    print(f"\n64×64, 25 steps: {size / 1e6:.2f} MB")
    assert size < 2e6


def test_round_trip_keeps_values_to_float16_and_images_exactly(tmp_path, cli_trace):
    f = tracefile.load(cli_trace[0])
    again = tmp_path / "again.dxtrace"
    tracefile.write(f.trace, again, bundle=f.bundle, request_info=f.request_info, machine_line=f.machine)
    g = tracefile.load(again)
    assert g.trace.plan == f.trace.plan
    for a, b in zip(f.trace.steps, g.trace.steps):
        assert a.latent.data == b.latent.data  # float16 → float32 → float16 is exact
        assert bytes(a.image.data) == bytes(b.image.data)
        assert a.coefficients == b.coefficients and a.timestep == b.timestep


def test_big_previews_are_downsampled_and_values_within_half_precision(tmp_path, cli_trace):
    f = tracefile.load(cli_trace[0])
    t = f.trace
    big = HostTensor(array("B", bytes(range(256)) * (512 * 512 * 4 // 256)), (512, 512, 4), "uint8")
    t.steps[0].image = big
    t.image = big
    vals = [0.1, -3.14159, 7.5, 1e-5, 1234.5678, 1e6]
    t.final_latent = HostTensor(array("f", vals), (6,))
    sizes = tracefile.write(t, tmp_path / "big.dxtrace", bundle=f.bundle, request_info=f.request_info)
    g = tracefile.load(tmp_path / "big.dxtrace").trace
    assert g.steps[0].image.shape == (128, 128, 4) and g.image.shape == (512, 512, 4)
    assert bytes(g.image.data) == bytes(big.data)
    for x, y in zip(vals[:5], g.final_latent.data):
        assert abs(x - y) <= abs(x) * 2**-11 + 2**-25
    assert g.final_latent.data[5] == float("inf")  # beyond float16's range, as a cast gives
    assert sizes["file"] == (tmp_path / "big.dxtrace").stat().st_size


def test_downsample_matches_the_page_rule():
    two = bytes([0, 0, 0, 255, 10, 20, 32, 255, 0, 0, 0, 255, 10, 20, 30, 255])
    assert tracefile.downsample_rgba(two, 2, 2, 1) == (bytes([5, 10, 16, 255]), 1, 1)  # as web/src/derive/image.ts


def test_png_reader_takes_every_row_filter():
    import struct
    import zlib

    w, h = 3, 5
    px = bytes((i * 37) % 256 for i in range(w * h * 4))
    rows = []
    for y in range(h):  # filter 1 (Sub) on every row
        line = px[y * w * 4 : (y + 1) * w * 4]
        rows.append(b"\x01" + bytes((line[i] - (line[i - 4] if i >= 4 else 0)) & 255 for i in range(len(line))))
    good = encode_png(px, w, h)
    idat = zlib.compress(b"".join(rows))
    chunk = lambda tag, d: struct.pack(">I", len(d)) + tag + d + struct.pack(">I", zlib.crc32(tag + d))  # noqa: E731
    sub = good[:33] + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    assert tracefile.decode_png(sub, "x") == (px, w, h)


def _zip(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    return buf.getvalue()


def _bad(data: bytes) -> str:
    with pytest.raises(TraceFileError) as e:
        tracefile.load(data)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_hostile_and_malformed_files_give_one_clear_line(cli_trace):
    good = cli_trace[0].read_bytes()
    members = {i.filename: zipfile.ZipFile(io.BytesIO(good)).read(i) for i in zipfile.ZipFile(io.BytesIO(good)).infolist()}
    doc = json.loads(members["trace.json"])

    assert "is not a trace file" in _bad(b"<script>alert(1)</script>")
    assert "zip" in _bad(good[:300])
    assert "has no trace.json" in _bad(_zip({"a.txt": "x"}))
    assert "not valid JSON" in _bad(_zip({"trace.json": "{nope"}))
    assert "is not a diffusion-explainer-trace file" in _bad(_zip({"trace.json": json.dumps({"format": "zip"})}))
    assert "version 9" in _bad(_zip({"trace.json": json.dumps({"format": tracefile.FORMAT, "version": 9})}))

    def variant(change) -> str:
        d = json.loads(json.dumps(doc))
        change(d)
        return _bad(_zip({**members, "trace.json": json.dumps(d)}))

    assert variant(lambda d: d["plan"].pop("request")) == "trace.json: plan.request is missing"
    assert variant(lambda d: d["plan"]["request"].update(seed="three")) == "trace.json: plan.request.seed must be a number"
    assert "steps[2].latent" in variant(lambda d: d["steps"][2]["latent"].update(shape=[1, 4, 32, 32]))
    assert "is not a shape" in variant(lambda d: d["steps"][0]["latent"].update(shape=[10**9, 10**9]))
    assert "which is not in the file" in variant(lambda d: d["steps"][0]["latent"].update(file="../../etc/passwd"))
    assert "is not float16, png or raw" in variant(lambda d: d["steps"][0]["latent"].update(encoding="pickle"))
    not_png = {**members, doc["run"]["image"]["file"]: b"GIF89a"}
    assert "is not a PNG image" in _bad(_zip(not_png))


def test_cli_refuses_a_folder_named_dxtrace_in_one_line(tmp_path, default_bundle):
    (tmp_path / "x.dxtrace").mkdir()
    r = subprocess.run(
        [
            *CLI,
            "generate",
            "a cat",
            "--bundle",
            str(default_bundle),
            "--trace",
            str(tmp_path / "x.dxtrace"),
            "--out",
            str(tmp_path / "o.png"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is a folder" in r.stderr


def test_sd15_sized_synthetic_trace_size(tmp_path, cli_trace):
    """The format at Stable Diffusion 1.5's sizes (random tensors: a worst case for compression)."""
    from synthetic_trace import write_sd15_sized

    sizes = write_sd15_sized(cli_trace[0], tmp_path / "sd15.dxtrace")
    f = tracefile.load(tmp_path / "sd15.dxtrace")
    assert f.synthetic and f.source == "synthetic"
    assert f.trace.image.shape == (512, 512, 4) and f.trace.steps[0].latent.shape == (1, 4, 64, 64)
    assert f.trace.embeddings.shape == (2, 77, 768) and f.trace.steps[4].image.shape == (128, 128, 4)
    print(f"\nSD 1.5 size, 25 steps (synthetic): {sizes['file'] / 1e6:.2f} MB")
    assert sizes["file"] < 15e6
