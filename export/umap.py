"""A UMAP of reference trajectories (predicted x0 per step), fitted once at export, and the ONNX graph that places new points on it."""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

BASES_FILE = "umap_bases.json"
GRAPH_FILE = "umap_project.onnx"
THUMBS_FILE = "umap_thumbs.png"
THUMB_PX = 48  # reference thumbnails: the final image of each reference run, this many pixels a side
N_NEIGHBORS = 15  # umap-learn's default
MIN_DIST = 0.1  # umap-learn's default
METRIC = "euclidean"  # the graph computes plain euclidean distances; any other metric would need its own graph
# umap_.py: smooth_knn_dist's constants (its bisection stops within this of log2(k); sigma has this floor × mean distance)
SMOOTH_K_TOLERANCE = 1e-5
MIN_K_DIST_SCALE = 1e-3
N_ITER = 64
FLOAT_MAX = float(np.finfo(np.float32).max)
GENERIC_PROMPTS = [
    "a cat",
    "a dog",
    "an apple",
    "a red car",
    "a house",
    "a tree",
    "a flower",
    "a boat",
    "a mountain",
    "a bird",
    "a cup of coffee",
    "a city at night",
    "a bowl of fruit",
    "a rocket",
    "a guitar",
    "a clock",
]


# ---- prompts and trajectories --------------------------------------------------------------------


def default_prompts(manifest: dict, n: int = 16, held_out: int = 2) -> tuple[list[str], list[str]]:
    """(fit prompts, held-out prompts): the model card's examples, then prompts built from its vocabulary
    (object × background, in a fixed interleaved order so they spread over both), else a generic list."""
    about = manifest.get("about") or {}
    out = [p for p in about.get("examples") or [] if isinstance(p, str) and p.strip()]
    voc = about.get("vocabulary") or {}
    objects, backgrounds = voc.get("objects") or [], voc.get("backgrounds") or []
    if objects and backgrounds:
        for i in range(len(objects)):
            obj = objects[(i * 7) % len(objects)]  # 7 is prime to the card's 48 objects: a spread, not the first few
            art = "" if obj.endswith("es") else "an " if obj[0] in "aeiou" else "a "  # "grapes", "cherries": no article
            out.append(f"{art}{obj} {backgrounds[(i * 5) % len(backgrounds)]}")
    out += GENERIC_PROMPTS
    seen, uniq = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq[:n], uniq[n : n + held_out]


async def _trajectories(pipe, prompts, seeds, steps, guidance, progress=None, label="reference"):
    """Every (prompt, seed) run's predicted x0 per step, flattened: X [runs·steps, 4·h·w], labels, final images."""
    from runtime.native import to_numpy
    from runtime.pipeline import Request

    xs, labels, finals = [], [], []
    total = len(prompts) * len(seeds)
    for pi, prompt in enumerate(prompts):
        for seed in seeds:
            if progress:
                progress(f"umap: {label} run {len(finals) + 1}/{total}")
            tr = await pipe.generate(Request(prompt=prompt, seed=int(seed), guidance=guidance, steps=steps, preview_every=0))
            for s in tr.steps:
                xs.append(to_numpy(s.pred_x0).reshape(-1).astype(np.float32))
                labels.append((pi, int(seed), s.index))
            finals.append(to_numpy(tr.image))
    return np.stack(xs), labels, finals


# ---- the projection: umap-learn's transform initialisation ---------------------------------------


def membership(dists: np.ndarray, k: int) -> np.ndarray:
    """Membership weights of one new point to its k nearest reference points (sorted distances), as
    UMAP.transform computes them: smooth_knn_dist with local_connectivity − 1 = 0 (so rho = 0), sigma by
    bisection until Σ_{j≥1} exp(−max(0, d_j−rho)/sigma) is within 1e-5 of log2(k), floored at 1e-3 × mean
    distance, then w_j = exp(−max(0, d_j−rho)/sigma). float32 like the graph (umap-learn bisects in float64)."""
    d = np.asarray(dists, np.float32)
    rho = np.float32(0.0)
    target = np.float32(math.log2(k))
    lo, hi, mid = np.float32(0), np.float32(FLOAT_MAX), np.float32(1)
    tail = d[1:] - rho
    for _ in range(N_ITER):
        psum = np.where(tail > 0, np.exp(-(tail / mid)), np.float32(1)).sum(dtype=np.float32)
        if abs(psum - target) < SMOOTH_K_TOLERANCE:
            break
        if psum > target:
            hi = mid
            mid = (lo + hi) / np.float32(2)
        else:
            lo = mid
            mid = mid * np.float32(2) if hi >= FLOAT_MAX else (lo + hi) / np.float32(2)
    sigma = max(mid, np.float32(MIN_K_DIST_SCALE) * d.mean(dtype=np.float32))
    return np.where(d - rho > 0, np.exp(-((d - rho) / sigma)), np.float32(1)).astype(np.float32)


def project_numpy(x: np.ndarray, ref: np.ndarray, emb: np.ndarray, k: int = N_NEIGHBORS) -> np.ndarray:
    """New points [n, D] → [n, 2]: k nearest reference points (euclidean), membership weights, weighted
    mean of their coordinates (init_graph_transform; a weight of exactly 1 — a duplicate — takes that point)."""
    out = np.zeros((len(x), 2), np.float32)
    for i, row in enumerate(np.asarray(x, np.float32)):
        d = np.sqrt(((ref - row) ** 2).sum(1, dtype=np.float32))
        idx = np.argsort(d, kind="stable")[:k]
        w = membership(d[idx], k)
        out[i] = emb[idx[0]] if w[0] >= 1 else (w[:, None] * emb[idx]).sum(0) / w.sum()
    return out


def umap_init_transform(reducer, x: np.ndarray) -> np.ndarray:
    """umap-learn's own transform up to its initial placement (before the SGD refinement), from its own
    functions: the same path UMAP.transform takes for small data, one point at a time."""
    import scipy.sparse
    from sklearn.metrics import pairwise_distances
    from umap.umap_ import compute_membership_strengths, init_graph_transform, smooth_knn_dist

    k = reducer._n_neighbors
    out = []
    for row in np.asarray(x, np.float32):
        dmat = pairwise_distances(row[None], reducer._raw_data, metric=METRIC)
        idx = np.argsort(dmat, axis=1, kind="stable")[:, :k]
        dists = np.take_along_axis(dmat, idx, 1).astype(np.float32)
        sigmas, rhos = smooth_knn_dist(dists, float(k), local_connectivity=max(0.0, reducer.local_connectivity - 1.0))
        rows, cols, vals, _ = compute_membership_strengths(idx, dists, sigmas, rhos, bipartite=True)
        g = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(1, reducer._raw_data.shape[0])).tocsr()
        g.eliminate_zeros()
        out.append(init_graph_transform(g, reducer.embedding_)[0])
    return np.array(out, np.float32)


def projection_graph(ref: np.ndarray, emb: np.ndarray, latent_shape: tuple, k: int = N_NEIGHBORS):
    """The ONNX graph x0 [1, c, h, w] → xy [1, 2]: project_numpy as graph ops (the bisection a Loop that
    stops when close, as smooth_knn_dist does). The reference inputs and coordinates are its initializers."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from .opgraphs import OPSET

    n, dim = ref.shape
    c, hh, ww = latent_shape
    assert c * hh * ww == dim, (latent_shape, dim)
    inits = [
        nh.from_array(np.ascontiguousarray(ref, np.float32), "reference_x0"),
        nh.from_array(np.ascontiguousarray(emb, np.float32), "reference_xy"),
    ]
    nodes = []

    def const(name, value, dtype=np.float32):
        inits.append(nh.from_array(np.asarray(value, dtype), name))
        return name

    def node(op, ins, out, into=nodes, **attrs):
        into.append(h.make_node(op, ins, [out], **attrs))
        return out

    const("flat_shape", [1, dim], np.int64)
    const("k", [k], np.int64)
    const("ax1", [1], np.int64)
    const("ax0", [0], np.int64)
    const("tail_start", [1], np.int64)
    const("tail_end", [k], np.int64)
    const("zero", 0.0)
    const("one", 1.0)
    const("two", 2.0)
    const("half", 0.5)
    const("target", math.log2(k))
    const("tol", SMOOTH_K_TOLERANCE)
    const("fmax", FLOAT_MAX)
    const("min_scale", MIN_K_DIST_SCALE)
    const("out_shape", [1, 2], np.int64)

    x = node("Reshape", ["x0", "flat_shape"], "x")
    diff = node("Sub", ["reference_x0", x], "diff")  # [n, dim]
    sq = node("Mul", [diff, diff], "sq")
    d2 = node("ReduceSum", [sq, "ax1"], "d2", keepdims=0)  # [n]
    d = node("Sqrt", [d2], "d")
    d_row = node("Unsqueeze", [d, "ax0"], "d_row")  # [1, n]
    nodes.append(h.make_node("TopK", [d_row, "k"], ["knn_d_row", "knn_i_row"], axis=1, largest=0, sorted=1))
    kd = node("Squeeze", ["knn_d_row", "ax0"], "knn_d")  # [k] ascending; rho = 0 (transform's local connectivity − 1)
    ki = node("Squeeze", ["knn_i_row", "ax0"], "knn_i")
    tail = node("Slice", [kd, "tail_start", "tail_end", "ax0"], "tail")  # smooth_knn_dist sums from the 2nd neighbour
    tail_pos = node("Greater", [tail, "zero"], "tail_pos")
    # the bisection as a Loop (≤ N_ITER trips, leaving when close like smooth_knn_dist's break): the graph
    # has 34 nodes, where unrolled it had 1,506 that every session creation optimised again
    body = []
    bnode = lambda op, ins, out, **attrs: node(op, ins, out, into=body, **attrs)  # noqa: E731 - the Loop's body

    q = bnode("Div", [tail, "mid_in"], "q")
    e = bnode("Exp", [bnode("Neg", [q], "nq")], "e")
    psum = bnode("ReduceSum", [bnode("Where", [tail_pos, e, "one"], "terms"), "ax0"], "psum", keepdims=1)  # [1]
    close = bnode("Less", [bnode("Abs", [bnode("Sub", [psum, "target"], "err")], "aerr"), "tol"], "close")
    gt = bnode("Greater", [psum, "target"], "gt")
    # psum > target: hi = mid, mid = (lo + hi)/2; else lo = mid, mid = 2·mid while hi is unbounded, else (lo + hi)/2
    mid_down = bnode("Mul", [bnode("Add", ["lo_in", "mid_in"], "lm"), "half"], "mid_down")
    mid_up = bnode(
        "Where",
        [
            bnode("GreaterOrEqual", ["hi_in", "fmax"], "unb"),
            bnode("Mul", ["mid_in", "two"], "m2"),
            bnode("Mul", [bnode("Add", ["mid_in", "hi_in"], "mh"), "half"], "mh2"),
        ],
        "mid_up",
    )
    bnode("Where", [close, "hi_in", bnode("Where", [gt, "mid_in", "hi_in"], "hi_n")], "hi_out")
    bnode("Where", [close, "lo_in", bnode("Where", [gt, "lo_in", "mid_in"], "lo_n")], "lo_out")
    bnode("Where", [close, "mid_in", bnode("Where", [gt, mid_down, mid_up], "mid_n")], "mid_out")
    bnode("Not", [bnode("Squeeze", [close, "ax0"], "close_s")], "go_on")
    scalar1 = lambda n: h.make_tensor_value_info(n, T.FLOAT, [1])  # noqa: E731
    bisect = h.make_graph(
        body,
        "bisect",
        [
            h.make_tensor_value_info("iter", T.INT64, []),
            h.make_tensor_value_info("cond_in", T.BOOL, []),
            scalar1("lo_in"),
            scalar1("hi_in"),
            scalar1("mid_in"),
        ],
        [h.make_tensor_value_info("go_on", T.BOOL, []), scalar1("lo_out"), scalar1("hi_out"), scalar1("mid_out")],
    )
    const("trips", N_ITER, np.int64)
    const("go", True, np.bool_)
    const("lo0", [0.0])
    const("hi0", [FLOAT_MAX])
    const("mid0", [1.0])
    nodes.append(h.make_node("Loop", ["trips", "go", "lo0", "hi0", "mid0"], ["lo", "hi", "mid"], body=bisect))
    mid = "mid"
    mean_d = node("ReduceMean", [kd, "ax0"], "mean_d", keepdims=1)
    sigma = node("Max", [mid, node("Mul", [mean_d, "min_scale"], "floor")], "sigma")
    w_exp = node("Exp", [node("Neg", [node("Div", [kd, sigma], "kq")], "nkq")], "w_exp")
    w = node("Where", [node("Greater", [kd, "zero"], "kd_pos"), w_exp, "one"], "w")  # [k]
    nb = node("Gather", ["reference_xy", ki], "nb_xy", axis=0)  # [k, 2]
    w_col = node("Unsqueeze", [w, "ax1"], "w_col")
    wsum = node("ReduceSum", [node("Mul", [nb, w_col], "wxy"), "ax0"], "wsum_xy", keepdims=0)  # [2]
    avg = node("Div", [wsum, node("ReduceSum", [w, "ax0"], "w_total", keepdims=0)], "avg")
    # init_graph_transform: a weight of exactly 1 (a duplicate of a reference point) places the point on it
    first_xy = node("Squeeze", [node("Slice", [nb, "ax0", "tail_start", "ax0"], "nb0"), "ax0"], "first_xy")
    exact = node("GreaterOrEqual", [node("Slice", [w, "ax0", "tail_start", "ax0"], "w0"), "one"], "exact")
    xy = node("Where", [exact, first_xy, avg], "xy_flat")
    node("Reshape", [xy, "out_shape"], "xy")
    graph = h.make_graph(
        nodes,
        "umap_project",
        [h.make_tensor_value_info("x0", T.FLOAT, [1, c, hh, ww])],
        [h.make_tensor_value_info("xy", T.FLOAT, [1, 2])],
        initializer=inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="diffusion-explainer")
    model.ir_version = 8
    model.doc_string = (
        "predicted x0 → 2-D position on the bundle's UMAP, as umap-learn's transform initialises new points "
        f"({k} nearest reference points, smooth_knn_dist memberships, weighted mean; no SGD refinement)"
    )
    onnx.checker.check_model(model, full_check=True)
    return model


# ---- the fit and its report ----------------------------------------------------------------------


def fit(x: np.ndarray, random_state: int = 0, n_neighbors: int = N_NEIGHBORS, min_dist: float = MIN_DIST):
    """(fitted umap.UMAP, embedding float32 [n, 2], seconds). Deterministic: a fixed random_state makes
    umap-learn run single-threaded with a seeded generator."""
    import umap

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": wanted
        reducer = umap.UMAP(
            n_neighbors=n_neighbors,
            min_dist=min_dist,
            metric=METRIC,
            n_components=2,
            random_state=random_state,
            transform_seed=random_state,
        )
        emb = reducer.fit_transform(x).astype(np.float32)
    return reducer, emb, time.perf_counter() - t


def _extent(emb: np.ndarray) -> float:
    return float(max(np.ptp(emb[:, 0]), np.ptp(emb[:, 1])))


def _knn2d(points: np.ndarray, emb: np.ndarray, k: int) -> np.ndarray:
    d = ((points[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def agreement(reducer, emb, x_held, ours, k: int = 10) -> dict:
    """How the graph's placement of held-out points compares with umap-learn's full transform (its
    initialisation then 100 epochs of SGD) and with its initialisation alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = reducer.transform(x_held).astype(np.float32)
    init = umap_init_transform(reducer, x_held)
    ext = _extent(emb)
    dist_full = np.linalg.norm(ours - full, axis=1)
    a, b = _knn2d(ours, emb, k), _knn2d(full, emb, k)
    overlap = np.mean([len(set(r) & set(s)) / k for r, s in zip(a, b)])
    return {
        "points": int(len(x_held)),
        "vs_transform": {
            "median_distance_share": float(np.median(dist_full) / ext),
            "p90_distance_share": float(np.quantile(dist_full, 0.9) / ext),
            f"neighbour_overlap_{k}": float(overlap),
        },
        "vs_transform_init": {"max_distance_share": float(np.max(np.linalg.norm(ours - init, axis=1)) / ext)},
        "extent": ext,
    }


def _sprite(finals: list, cols: int) -> tuple[bytes, int, int]:
    """The reference runs' final images, downscaled (box filter) to THUMB_PX, in a grid: one RGBA PNG."""
    from runtime.png import encode_png

    tiles = []
    for im in finals:
        hgt, wid = im.shape[:2]
        f = max(1, min(hgt, wid) // THUMB_PX)
        im = im[: hgt - hgt % f, : wid - wid % f].astype(np.float32)
        small = im.reshape(im.shape[0] // f, f, im.shape[1] // f, f, im.shape[2]).mean((1, 3))
        tile = np.zeros((THUMB_PX, THUMB_PX, 4), np.uint8)
        th, tw = min(THUMB_PX, small.shape[0]), min(THUMB_PX, small.shape[1])
        tile[:th, :tw] = np.round(small[:th, :tw]).astype(np.uint8)
        tiles.append(tile)
    rows = math.ceil(len(tiles) / cols)
    sheet = np.zeros((rows * THUMB_PX, cols * THUMB_PX, 4), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * THUMB_PX : (r + 1) * THUMB_PX, c * THUMB_PX : (c + 1) * THUMB_PX] = t
    return encode_png(sheet.tobytes(), sheet.shape[1], sheet.shape[0]), sheet.shape[1], sheet.shape[0]


def _file_entry(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def build_umap(
    bundle_dir: Path,
    *,
    prompts: list[str] | None = None,
    seeds=(0, 1),
    steps: int = 25,
    random_state: int = 0,
    held_out: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    manifest: dict | None = None,
) -> dict:
    """Generate reference trajectories natively with the bundle's own model, fit a 2-D UMAP of their
    predicted x0, write umap_project.onnx, umap_bases.json and umap_thumbs.png into bundle_dir; returns
    {"component": the manifest entry, "files": {rel: {bytes, sha256}}, "report": {…}}.
    manifest: the bundle's manifest when it is not written yet (the exporter writes it once, after this)."""
    import onnx
    import umap

    from runtime.bundle import Bundle
    from runtime.native import NativeBackend
    from runtime.pipeline import Pipeline, run_sync

    from .manifest import io_specs

    bundle_dir = Path(bundle_dir)
    if manifest is None:
        bundle = Bundle.from_dir(bundle_dir, verify=False)
    else:
        bundle = Bundle(manifest, lambda rel: (bundle_dir / rel).read_text(encoding="utf-8"), str(bundle_dir))
    manifest = bundle.manifest
    fit_prompts, extra = default_prompts(manifest)
    prompts = list(prompts) if prompts is not None else fit_prompts
    held_out = list(held_out) if held_out is not None else extra
    seeds = [int(s) for s in seeds]
    guidance = float((manifest.get("about") or {}).get("guidance") or 7.5)
    scheduler = manifest["scheduler"]["default"]
    m = manifest["model"]
    latent_shape = (m["latent_channels"], m["latent_size"][0], m["latent_size"][1])

    pipe = Pipeline(bundle, NativeBackend(bundle_dir))

    async def go():
        await pipe.load()
        ref = await _trajectories(pipe, prompts, seeds, steps, guidance, progress)
        held = await _trajectories(pipe, held_out, seeds[:1], steps, guidance, progress, "held-out") if held_out else None
        return ref, held

    t = time.perf_counter()
    (x, labels, finals), held = run_sync(go())
    gen_s = time.perf_counter() - t
    per_run = max(i for _, _, i in labels) + 1  # a scheduler may take one step more than asked (PNDM's)
    if progress:
        progress(f"umap: fitting {len(x)} points of {x.shape[1]} numbers")
    k = min(N_NEIGHBORS, len(x) - 1)
    reducer, emb, fit_s = fit(x, random_state, n_neighbors=k)

    model = projection_graph(x, emb, latent_shape, k)
    graph_path = bundle_dir / GRAPH_FILE
    onnx.save(model, str(graph_path))
    ins, outs = io_specs(model)

    report = {
        "points": int(len(x)),
        "dims": int(x.shape[1]),
        "prompts": len(prompts),
        "seeds": seeds,
        "steps": per_run,
        "generate_seconds": round(gen_s, 2),
        "fit_seconds": round(fit_s, 2),
    }
    if held is not None:
        xh = held[0]
        sess = _session(graph_path)
        ours = np.concatenate([sess.run(["xy"], {"x0": r.reshape(1, *latent_shape)})[0] for r in xh])
        report["agreement"] = agreement(reducer, emb, xh, ours) | {"held_out_prompts": held_out}

    cols = max(1, len(seeds))
    png, sw, sh = _sprite(finals, cols)
    (bundle_dir / THUMBS_FILE).write_bytes(png)
    lo, hi = emb.min(0), emb.max(0)
    bases = {
        "format": "umap-bases",
        "version": 1,
        "representation": "predicted x0 latent (the scheduler's pred_original_sample), flattened",
        "prompts": prompts,
        "seeds": seeds,
        "steps": per_run,
        "steps_requested": steps,
        "scheduler": scheduler,
        "guidance": guidance,
        "points": {
            "x": [round(float(v), 6) for v in emb[:, 0]],
            "y": [round(float(v), 6) for v in emb[:, 1]],
            "prompt": [p for p, _, _ in labels],
            "seed": [s for _, s, _ in labels],
            "step": [i for _, _, i in labels],
        },
        "extent": {"x": [float(lo[0]), float(hi[0])], "y": [float(lo[1]), float(hi[1])]},
        "fit": {
            "n_neighbors": k,
            "min_dist": MIN_DIST,
            "metric": METRIC,
            "random_state": random_state,
            "umap_learn": getattr(umap, "__version__", ""),
            "seconds": report["fit_seconds"],
            "generate_seconds": report["generate_seconds"],
        },
        "projection": {
            "graph": GRAPH_FILE,
            "input": "x0",
            "output": "xy",
            "k": k,
            "method": "umap-learn transform's initial placement: k nearest reference points (euclidean), "
            "smooth_knn_dist memberships, weighted mean of their coordinates; no SGD refinement",
            "reference_inputs": "in the graph (initializer reference_x0)",
        },
        "thumbnails": {
            "file": THUMBS_FILE,
            "tile": THUMB_PX,
            "cols": cols,
            "order": "prompt-major, then seed",
            "what": "the final image of each reference run",
        },
        "agreement": report.get("agreement"),
    }
    (bundle_dir / BASES_FILE).write_text(json.dumps(bases, separators=(",", ":")))
    files = {rel: _file_entry(bundle_dir / rel) for rel in (GRAPH_FILE, BASES_FILE, THUMBS_FILE)}
    component = {
        "files": [GRAPH_FILE],
        "precision": "fp32",
        "inputs": ins,
        "outputs": outs,
        "bases": BASES_FILE,
        "thumbnails": THUMBS_FILE,
    }
    return {"component": component, "files": files, "report": report}


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def merge_into_manifest(manifest: dict, result: dict) -> None:
    """build_umap's result into a manifest (components + file table)."""
    manifest["components"]["umap_project"] = result["component"]
    manifest["files"].update(result["files"])


def add_to_manifest(bundle_dir: Path, result: dict) -> None:
    """Write build_umap's result into an existing bundle's manifest.json."""
    path = Path(bundle_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    merge_into_manifest(manifest, result)
    path.write_text(json.dumps(manifest, indent=1))


def format_report(report: dict) -> str:
    """The export report's lines for the UMAP."""
    lines = [
        f"UMAP: {report['points']} reference points ({report['prompts']} prompts × {len(report['seeds'])} seeds × "
        f"{report['steps']} steps, {report['dims']} numbers each); trajectories {report['generate_seconds']:.1f} s, "
        f"fit {report['fit_seconds']:.1f} s"
    ]
    a = report.get("agreement")
    if a:
        vt = a["vs_transform"]
        ov = next(v for key, v in vt.items() if key.startswith("neighbour_overlap"))
        lines.append(
            f"UMAP projection vs umap-learn's transform on {a['points']} held-out points: median distance "
            f"{vt['median_distance_share']:.1%} of the plot's extent (90th percentile {vt['p90_distance_share']:.1%}), "
            f"10-nearest-reference overlap {ov:.0%}; vs its initial placement: max "
            f"{a['vs_transform_init']['max_distance_share']:.1e} of the extent"
        )
    return "\n".join(lines)
