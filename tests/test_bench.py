"""The `bench` subcommand on the tiny bundle: every output written, plausible numbers, FLOP counts that agree."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

from bench import main as bench_main  # noqa: E402
from bench.flops import onnx_flops  # noqa: E402


def _args(*argv):
    import argparse

    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    bench_main.add_parser(sub)
    return ap.parse_args(["bench", *argv])


def test_bench_tiny_bundle(tiny_bundle, tiny_pipeline_dir, tmp_path):
    out = tmp_path / "results"
    # the checkpoint comes from the manifest's model.source (the tiny pipeline folder)
    rc = bench_main.main(
        _args(
            str(tiny_bundle),
            "--steps",
            "2",
            "--repeats",
            "2",
            "--threads",
            "1",
            "--no-browser",
            "--peak-seconds",
            "0.3",
            "--peak-size",
            "1024",
            "--out",
            str(out),
        )
    )
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert "| runtime |" in md and "onnxruntime native" in md and "diffusers PyTorch" in md

    assert res["meta"]["checkpoint"] == str(tiny_pipeline_dir.resolve())
    runs = {r["runtime"]: r for r in res["runs"]}
    assert set(runs) == {"native", "torch"}
    for r in runs.values():
        assert not r.get("error"), r.get("error")
        assert r["threads"] == 1
        for name in ("text_encoder", "unet_step", "ops", "vae_decode"):
            assert r["components_ms"][name] > 0, (r["runtime"], name)
        assert r["end_to_end_ms"] > r["components_ms"]["unet_step"] > 0
        assert r["unet_raw_ms"] > 0 and r["startup_ms"] > 0
        assert r["memory"]["peak_rss_mb"] > r["memory"]["rss_start_mb"] > 0
        # PNDM runs one more UNet call than steps (its PLMS warm-up), in diffusers and in ours alike
        assert r["unet_calls_per_run"] >= 2
        assert len(r["samples_ms"]["unet_steps"]) == 2 * r["unet_calls_per_run"]  # repeats × calls
    assert runs["native"]["unet_calls_per_run"] == runs["torch"]["unet_calls_per_run"]
    # each runtime's own peak: onnxruntime alone needs far less than torch + diffusers (and the
    # parent's high-water mark, which ru_maxrss would inherit across exec, must not leak in)
    assert runs["native"]["memory"]["peak_rss_mb"] < runs["torch"]["memory"]["peak_rss_mb"]

    f = res["flops"]
    assert f["onnx"]["unet"]["unresolved"] == []
    assert f["unet_onnx"] > 0 and f["unet_torch"] > 0
    assert abs(f["unet_onnx"] / f["unet_torch"] - 1) < 0.10
    assert res["peak"]["1"]["peak"] > 1e8  # any CPU of this decade does ≥ 0.1 GFLOP/s
    # the page's own ceiling beside it: onnxruntime-web's WASM build on the same product (Node)
    wasm = res["peak"]["1"].get("onnxruntime_web_wasm")
    assert wasm and 1e8 < wasm < res["peak"]["1"]["onnxruntime"] * 1.5, res["peak"]["1"]
    assert "onnxruntime-web's WASM build, same product" in md
    for r in runs.values():
        frac = r["achieved"]["unet_fraction_of_peak"]
        assert 0 < frac <= 1.5, (r["runtime"], frac)


def test_bench_bad_input(tmp_path, capsys):
    assert bench_main.main(_args(str(tmp_path / "nope"), "--no-browser", "--out", str(tmp_path / "o"))) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "manifest.json" in err and "\n" not in err
    with pytest.raises(bench_main.BenchError, match="--threads"):
        bench_main._threads("1,two")
    with pytest.raises(bench_main.BenchError, match="--threads"):
        bench_main._threads("0")
    assert bench_main._threads("2,1,2") == [1, 2]


def test_onnx_flops_counts_known_graph(tmp_path):
    """Conv, MatMul (batched, broadcast) and Gemm(transB) with shapes known only after inference."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    m = numpy_helper.from_array(np.zeros((64, 16), np.float32), "m")
    g = numpy_helper.from_array(np.zeros((10, 8), np.float32), "g")  # transB: [N, K]
    shape = numpy_helper.from_array(np.array([2, 8, 64], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),  # [2,8,8,8]
        helper.make_node("Reshape", ["c", "shape"], ["r"]),  # [2,8,64]
        helper.make_node("MatMul", ["r", "m"], ["mm"]),  # [2,8,16]
        helper.make_node("ReduceMean", ["mm"], ["p"], axes=[2], keepdims=0),  # [2,8]
        helper.make_node("Gemm", ["p", "g"], ["y"], transB=1),  # [2,10]
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, m, g, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "t.onnx"
    onnx.save(model, path)
    r = onnx_flops(path, {"x": [2, 3, 8, 8]})
    assert r["unresolved"] == []
    assert r["by_op"]["Conv"] == 2 * (2 * 8 * 8 * 8) * (3 * 3 * 3)
    assert r["by_op"]["MatMul"] == 2 * (2 * 8 * 16) * 64
    assert r["by_op"]["Gemm"] == 2 * (2 * 10) * 8
    with pytest.raises(ValueError, match="no shape given"):
        onnx_flops(path, {})


def test_normalize_page_maps_the_page_result():
    raw = {
        "ok": True,
        "error": None,
        "steps_per_run": 2,
        "measured_runs": 2,
        "engine": {"provider": "wasm", "threads": 2, "backend": "onnxruntime-web 1.30.0 wasm"},
        "startup_ms": {"ready": 4200.0},
        "controller_ms": {"text_encoder": 30.0, "unet_step": 90.0, "ops_step": 2.0, "vae_decode": 120.0, "generate_total": 500.0},
        "raw_ms": {"unet_step": 80.0},
        "memory": {"wasm_bytes": {"total": 300e6}, "user_agent_specific_bytes": None},
        "page_bytes": {"total": 90e6},
        "samples": {
            "controller": [
                {"warmup": True, "timings_ms": {"ops": 99.0}},
                {"warmup": False, "timings_ms": {"ops": 6.0}},
                {"warmup": False, "timings_ms": {"ops": 8.0}},
            ]
        },
    }
    r = bench_main.normalize_page(raw, threads=2, provider="wasm", steps=2, repeats=2)
    assert r["label"] == "page WASM" and r["threads"] == 2
    assert r["components_ms"] == {"text_encoder": 30.0, "unet_step": 90.0, "ops": 7.0, "ops_per_step": 2.0, "vae_decode": 120.0}
    assert r["end_to_end_ms"] == 500.0 and r["unet_raw_ms"] == 80.0 and r["startup_ms"] == 4200.0
    assert r["downloaded_bytes"] == 90e6 and r["memory"]["peak_rss_mb"] == 300.0
    assert (
        bench_main.normalize_page({"ok": False, "error": "boom"}, threads=1, provider="wasm", steps=2, repeats=2)["error"]
        == "boom"
    )


def test_report_shows_the_startup_levers_per_visit():
    """The explainer rows' start-up table: one line per visit, the snapshot visit beside the fresh-Python one."""
    from bench.report import markdown

    def visit(ready, first, python, snap):
        return {
            "ready_s": ready,
            "first_image_s": first,
            "python_snapshot": snap,
            "startup_ms": {
                "python": python,
                "runtime_zip": 40.0,
                "bundle": 300.0,
                "sessions": 900.0,
                "worker_total": ready * 1000,
            },
        }

    result = {
        "meta": {"bundle": "b", "steps": 25, "repeats": 2, "prompt": "p", "guidance": 3.0, "date": "d", "cpu": "c", "cores": 2},
        "runs": [],
        "explainer": [
            {
                "threads": 2,
                "cold": visit(5.0, 8.0, 2400.0, "made"),
                "warm": visit(1.6, 3.9, 350.0, "restored"),
                "warm_fresh_python": visit(3.4, 5.8, 2300.0, "made"),
                "page_ms_per_step_run": 90.0,
                "long_tasks": {"count": 0, "max_ms": 0.0},
            }
        ],
    }
    md = markdown(result)
    assert "| 2 | warm (snapshot) | 350 | 40 | 300 | 900 | 1600 | 1.60 | 3.90 |" in md
    assert "| 2 | warm, fresh Python | 2300 |" in md and "| 2 | cold | 2400 |" in md
    # with the page's own clock (from navigation start): it first, the command's wall clock in brackets
    result["explainer"][0]["warm"].update(ready_nav_s=1.2, first_image_nav_s=3.5)
    md = markdown(result)
    assert "| 2 | warm (snapshot) | 350 | 40 | 300 | 900 | 1600 | 1.20 (1.60) | 3.50 (3.90) |" in md
    assert "| 2 | 5.00 | 8.00 | 1.20 (1.60) | 3.50 (3.90) | 90.0 |" in md
    # where a first visit goes: the ORT worker's start, its sessions (biggest first), the first run's UNet calls
    assert "- cold, 2 thread(s)" not in md  # nothing recorded: no line
    steps = [300.0, 160.0, 140.0, 120.0, 90.0] + [50.0] * 9 + [70.0]
    result["explainer"][0]["cold"].update(
        ort={"worker": "own", "premade": 2, "startMs": 1040.4, "madeMs": {"text_encoder": 190.2, "unet": 510.0}},
        first_run_unet_ms=steps,
    )
    md = markdown(result)
    assert (
        "- cold, 2 thread(s): the ORT worker started in 1040 ms and made the sessions in 700 ms (unet 510, text_encoder 190); "
        "the first run's UNet calls took 300, 160, 140, 120, 90 … ms (median of its last 10: 50 ms), 1330 ms in all"
    ) in md
