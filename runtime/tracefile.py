"""The trace file (`.dxtrace`): one run's Trace in one shareable file, read and written by the CLI,
by Python (`load`) and by the page (web/src/lib/tracefile.ts, the same format).

Why a file: the page can only run what WebAssembly holds, but `generate --trace run.dxtrace` records
a run natively at any size (SD 1.5: 512×512 images, 4×64×64 latents), and the page replays it in
every view with no model loaded; a page run saved the same way loads here for analysis.

The format (version 1) is a zip archive:
- `trace.json` — {format, version, created, producer, source ("native" | "page" | "synthetic"),
  machine, synthetic, bundle (the page's EngineInfo.bundle without its URL, plus randomWeights),
  requestInfo (Request.describe: limits and defaults) | null, plan (the run-start message: request,
  tokens, timesteps, schedule …), steps (run-step messages), run (run-done fields: embeddings,
  finalLatent, image, timingsMs, backend, cancelled), clip | null, previewMax}. Keys are runtime/trace.py's
  field names in camelCase, exactly the worker's messages.
- every tensor as a member file referenced from trace.json as {file, dtype, shape, encoding}:
  `float16` (float32 tensors as little-endian IEEE half floats: half the bytes, ~3 significant
  digits, plenty for drawing), `png` (uint8 H×W×4 images; a step's preview is box-downsampled to at
  most PREVIEW_MAX px a side, then {fullShape} says the decoded size; the final image is full size
  and lossless), `raw` (other dtypes, little-endian as they are). A step's attention maps keep only
  the prompt's positions (start, words, end: the rows the attention view offers), not CLIP's padding,
  with {fullShape} giving the recorded shape: at SD 1.5 size that is most of the file otherwise.
Standard library only (it imports in Pyodide too; the page itself reads the format in TypeScript).
"""

from __future__ import annotations

import io
import json
import math
import os
import platform
import struct
import sys
import time
import zipfile
import zlib
from array import array
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .backend import TYPECODES, HostTensor
from .png import encode_png
from .tokenizer import Tokenized
from .trace import RUN_DONE_FIELDS, ClipScores, Plan, Request, StepTrace, Trace, camel, describe_bundle, step_message, to_message

FORMAT = "diffusion-explainer-trace"
VERSION = 1
SUFFIX = ".dxtrace"
PREVIEW_MAX = 128  # a step's decoded preview is stored at most this many pixels a side (the final image: full size)
# what a reader accepts before reading further (a hostile file cannot make it allocate more)
MAX_ENTRIES = 10_000
MAX_MEMBER_BYTES = 256 * 2**20
MAX_TOTAL_BYTES = 2 * 2**30
MAX_DIMS, MAX_DIM = 6, 1 << 16
ITEMSIZE = {"float32": 4, "uint8": 1, "int64": 8, "int32": 4}


class TraceFileError(ValueError):
    """A trace file that cannot be read; the message is one line naming what is wrong."""


@dataclass
class TraceFile:
    """A loaded trace file: the run as runtime/trace.py's Trace, and where it comes from."""

    trace: Trace
    machine: str
    source: str  # "native" (the CLI), "page" (a run in the browser) or "synthetic" (random tensors for tests)
    synthetic: bool
    bundle: dict  # name, imageSize, latentSize, model facts, bytes, randomWeights … (the page's EngineInfo.bundle)
    request_info: dict | None
    created: str
    producer: str
    doc: dict  # trace.json as read


# ---- facts about where a run happened ------------------------------------------------------------


def machine() -> str:
    """This machine in a line: OS, CPU architecture and model, CPU count (e.g. 'Linux x86_64 · AMD EPYC 7B13 · 2 CPUs')."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    parts = [f"{platform.system() or sys.platform} {platform.machine()}".strip(), cpu, f"{os.cpu_count() or 1} CPUs"]
    return " · ".join(p for p in parts if p)


def random_weights(manifest: dict) -> bool:
    """Whether the bundle's weights are random (no trained model): the model card says so
    (about.random_weights), or the checkpoint is one `prove-scale` built (its folder ends in '-random')."""
    about = manifest.get("about") or {}
    if isinstance(about, dict) and about.get("random_weights") is True:
        return True
    source = str((manifest.get("model") or {}).get("source") or "").rstrip("/\\")
    return source.replace("\\", "/").rsplit("/", 1)[-1].endswith("-random")


def bundle_facts(manifest: dict, has_clip: bool = False) -> dict:
    """The bundle as the page's EngineInfo.bundle describes it (without its URL), from its manifest."""
    about = manifest.get("about") or {}
    model = manifest["model"]
    default = manifest["scheduler"]["default"]
    return {
        "name": manifest.get("name") or "bundle",
        "imageSize": list(model["image_size"]),
        "latentSize": list(model["latent_size"]),
        "defaultScheduler": default,
        **describe_bundle(manifest),
        "previewBudget": 0,
        "hasClip": bool(has_clip),
        "bytes": sum(int(f.get("bytes", 0)) for f in manifest.get("files", {}).values()),
        "precision": sorted({c.get("precision") or "fp32" for c in manifest.get("components", {}).values()}),
        "description": str(about.get("description") or ""),
        "examples": [str(e) for e in about.get("examples") or []],
        "randomWeights": random_weights(manifest),
    }


# ---- tensors -------------------------------------------------------------------------------------


def to_float16(values) -> bytes:
    """float32 values → little-endian IEEE half floats (beyond ±65504: ±inf, as a cast would give)."""
    try:
        return struct.pack(f"<{len(values)}e", *values)
    except OverflowError:
        big = float("inf")
        return struct.pack(f"<{len(values)}e", *(v if abs(v) <= 65504 else math.copysign(big, v) for v in values))


def from_float16(data: bytes) -> array:
    return array("f", struct.unpack(f"<{len(data) // 2}e", data))


def downsample_rgba(rgba: bytes, width: int, height: int, limit: int = PREVIEW_MAX) -> tuple[bytes, int, int]:
    """Box-average an RGBA image by a whole factor f = ⌈max(w, h) / limit⌉ (a last partial block is
    dropped); unchanged when it already fits. The page's derive/image.ts does the same."""
    f = -(-max(width, height) // limit)
    if f <= 1:
        return rgba, width, height
    ow, oh = width // f, height // f
    stride = width * 4
    out = bytearray(ow * oh * 4)
    area, half = f * f, (f * f) // 2
    for oy in range(oh):
        acc = [0] * stride
        for y in range(oy * f, oy * f + f):
            acc = list(map(int.__add__, acc, rgba[y * stride : (y + 1) * stride]))
        row = [0] * (ow * 4)
        for c in range(4):
            s = [0] * ow
            for i in range(f):
                s = list(map(int.__add__, s, acc[i * 4 + c :: f * 4][:ow]))
            row[c::4] = [(v + half) // area for v in s]
        out[oy * ow * 4 : (oy + 1) * ow * 4] = bytes(row)
    return bytes(out), ow, oh


def decode_png(data: bytes, where: str) -> tuple[bytes, int, int]:
    """An 8-bit RGBA (or RGB) non-interlaced PNG → (RGBA bytes, width, height); other PNGs are refused."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise TraceFileError(f"{where} is not a PNG image")
    pos, idat, head = 8, [], None
    while pos + 8 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if tag == b"IHDR":
            head = struct.unpack(">IIBBBBB", body[:13]) if len(body) >= 13 else None
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
    if head is None:
        raise TraceFileError(f"{where}: a PNG without its header")
    w, h, depth, color, _, _, interlace = head
    if depth != 8 or color not in (2, 6) or interlace or not (0 < w <= MAX_DIM and 0 < h <= MAX_DIM):
        raise TraceFileError(
            f"{where}: only 8-bit RGBA/RGB non-interlaced PNGs are read (this one: {w}×{h}, depth {depth}, colour type {color})"
        )
    bpp = 4 if color == 6 else 3
    stride = w * bpp
    want = h * (stride + 1)
    try:
        d = zlib.decompressobj()
        raw = d.decompress(b"".join(idat), want)
    except zlib.error as e:
        raise TraceFileError(f"{where}: the PNG's pixel data is damaged ({e})") from None
    if len(raw) != want:
        raise TraceFileError(f"{where}: the PNG holds {len(raw)} bytes of pixels, {w}×{h} needs {want}")
    out, prev = bytearray(), bytearray(stride)
    for y in range(h):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray(map(lambda a, b: (a + b) & 255, line, prev))
        elif kind == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif kind == 4:
            for i in range(stride):
                a, b, c = (line[i - bpp] if i >= bpp else 0), prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        elif kind != 0:
            raise TraceFileError(f"{where}: the PNG uses an unknown row filter {kind}")
        out += line
        prev = line
    if bpp == 3:
        rgba = bytearray(w * h * 4)
        rgba[0::4], rgba[1::4], rgba[2::4], rgba[3::4] = out[0::3], out[1::3], out[2::3], b"\xff" * (w * h)
        out = rgba
    return bytes(out), w, h


# ---- writing -------------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """JSON that a browser's JSON.parse reads: NaN and ±inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class _Writer:
    def __init__(self, zf: zipfile.ZipFile):
        self.zf = zf
        self.sizes: dict[str, int] = {"tensors": 0, "images": 0}

    def tensor(self, t: HostTensor, name: str, preview: bool = False, rows: int | None = None) -> dict:
        shape = [int(d) for d in t.shape]
        if rows is not None and len(shape) == 3 and 0 < rows < shape[0]:  # attention: the prompt's positions only
            kept = rows * shape[1] * shape[2]
            ref = self.tensor(HostTensor(t.data[:kept], (rows, shape[1], shape[2]), t.dtype), name)
            ref["fullShape"] = shape
            return ref
        if t.dtype == "uint8" and len(shape) == 3 and shape[2] == 4:
            h, w = shape[0], shape[1]
            rgba, ow, oh = downsample_rgba(bytes(t.data), w, h) if preview else (bytes(t.data), w, h)
            data = encode_png(rgba, ow, oh)
            self.zf.writestr(zipfile.ZipInfo(f"{name}.png", (1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_STORED)
            self.sizes["images"] += len(data)
            ref = {"file": f"{name}.png", "dtype": "uint8", "shape": [oh, ow, 4], "encoding": "png"}
            if (ow, oh) != (w, h):
                ref["fullShape"] = shape
            return ref
        if t.dtype == "float32":
            data, encoding, ext = to_float16(t.data), "float16", "f16"
        else:
            a = array(TYPECODES[t.dtype], t.data)
            if sys.byteorder == "big":
                a.byteswap()
            data, encoding, ext = a.tobytes(), "raw", t.dtype
        self.zf.writestr(zipfile.ZipInfo(f"{name}.{ext}", (1980, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
        self.sizes["tensors"] += len(data)
        return {"file": f"{name}.{ext}", "dtype": t.dtype, "shape": shape, "encoding": encoding}


def _tensors_to_refs(value: Any, name: str, w: _Writer, preview: bool = False, rows: int | None = None) -> Any:
    if isinstance(value, HostTensor):
        return w.tensor(value, name, preview, rows if name.endswith("/attention") else None)
    if isinstance(value, dict):
        return {k: _tensors_to_refs(v, f"{name}/{k}", w, preview, rows) for k, v in value.items()}
    return value


def write(
    trace: Trace,
    path,
    *,
    bundle: dict,
    request_info: dict | None = None,
    source: str = "native",
    producer: str = "",
    machine_line: str | None = None,
    synthetic: bool = False,
) -> dict:
    """Write `trace` as one .dxtrace file (atomically: a temporary file, then a rename).
    Returns sizes in bytes: {file, json, tensors, images}."""
    path = Path(path)
    keep = lambda t: t  # noqa: E731 - tensors stay HostTensors here, named and stored below
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        w = _Writer(zf)
        steps = [
            _tensors_to_refs(step_message(s, keep), f"steps/{s.index:03d}", w, preview=True, rows=len(trace.tokens.tokens))
            for s in trace.steps
        ]
        run = _tensors_to_refs(to_message(trace, keep, only=RUN_DONE_FIELDS), "run", w)
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "producer": producer or f"diffusion-explainer (Python {platform.python_version()})",
            "source": source,
            "machine": machine() if machine_line is None else machine_line,
            "synthetic": bool(synthetic),
            "bundle": bundle,
            "requestInfo": request_info,
            "plan": to_message(trace.plan, keep),
            "steps": steps,
            "run": run,
            "clip": to_message(trace.clip, keep) if trace.clip else None,
            "previewMax": PREVIEW_MAX,
        }
        text = json.dumps(_finite(doc), separators=(",", ":"), allow_nan=False).encode()
        zf.writestr(zipfile.ZipInfo("trace.json", (1980, 1, 1, 0, 0, 0)), text, zipfile.ZIP_DEFLATED)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return {"file": len(buf.getvalue()), "json": len(text), **w.sizes}


# ---- reading -------------------------------------------------------------------------------------


def _check(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise TraceFileError(f"{where} {what}")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _get(obj: Any, key: str, where: str, kinds, optional: bool = False):
    _check(isinstance(obj, dict), where, "is not an object")
    if key not in obj or obj[key] is None:
        _check(optional, f"{where}.{key}", "is missing")
        return None
    v = obj[key]
    ok = (
        all(_num(x) for x in v)
        if kinds == "numbers" and isinstance(v, list)
        else (_num(v) if kinds == "number" else isinstance(v, kinds))
    )
    names = {
        "number": "a number",
        "numbers": "a list of numbers",
        str: "text",
        list: "a list",
        dict: "an object",
        bool: "true or false",
    }
    _check(ok, f"{where}.{key}", f"must be {names.get(kinds, kinds)}")
    return v


class _Reader:
    def __init__(self, zf: zipfile.ZipFile, label: str):
        self.zf, self.label = zf, label
        self.infos = {i.filename: i for i in zf.infolist()}

    def read(self, name: str, where: str, most: int = MAX_MEMBER_BYTES) -> bytes:
        info = self.infos.get(name)
        _check(info is not None, where, f"names {name!r}, which is not in the file")
        _check(info.file_size <= most, where, f"({name}) is {info.file_size} bytes, more than the {most} it can be")
        try:
            return self.zf.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
            raise TraceFileError(f"{self.label}: {name} is damaged ({e})") from None

    def tensor(self, ref: Any, where: str) -> HostTensor | None:
        if ref is None:
            return None
        file = _get(ref, "file", where, str)
        dtype = _get(ref, "dtype", where, str)
        shape = _get(ref, "shape", where, list)
        encoding = _get(ref, "encoding", where, str)
        _check(dtype in ITEMSIZE, f"{where}.dtype", f"{dtype!r} is not one of {', '.join(ITEMSIZE)}")
        _check(
            0 < len(shape) <= MAX_DIMS
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_DIM for d in shape),
            f"{where}.shape",
            f"{shape!r} is not a shape (1–{MAX_DIMS} whole numbers from 1 to {MAX_DIM})",
        )
        n = math.prod(shape)
        if encoding == "png":
            _check(dtype == "uint8" and len(shape) == 3 and shape[2] == 4, where, "is a PNG but not uint8 [H, W, 4]")
            rgba, w, h = decode_png(self.read(file, where), f"{self.label}: {file}")
            _check([h, w, 4] == shape, where, f"says {shape}, its PNG is {h}×{w}")
            return HostTensor(array("B", rgba), tuple(shape), "uint8")
        if encoding == "float16":
            _check(dtype == "float32", where, "is float16 but not a float32 tensor")
            data = self.read(file, where, n * 2)
            _check(len(data) == n * 2, where, f"({file}) has {len(data)} bytes; shape {shape} in float16 needs {n * 2}")
            return HostTensor(from_float16(data), tuple(shape), "float32")
        _check(encoding == "raw", f"{where}.encoding", f"{encoding!r} is not float16, png or raw")
        size = n * ITEMSIZE[dtype]
        data = self.read(file, where, size)
        _check(len(data) == size, where, f"({file}) has {len(data)} bytes; shape {shape} of {dtype} needs {size}")
        a = array(TYPECODES[dtype])
        a.frombytes(data)
        if sys.byteorder == "big":
            a.byteswap()
        return HostTensor(a, tuple(shape), dtype)


def _tokens(obj: Any, where: str) -> Tokenized:
    ids = _get(obj, "ids", where, "numbers")
    toks = _get(obj, "tokens", where, list)
    _check(all(isinstance(t, str) for t in toks), f"{where}.tokens", "must be a list of text")
    return Tokenized(
        ids=[int(i) for i in ids],
        tokens=list(toks),
        length=int(_get(obj, "length", where, "number")),
        truncated=bool(_get(obj, "truncated", where, bool, optional=True)),
        dropped_words=[str(w) for w in _get(obj, "droppedWords", where, list, optional=True) or []],
    )


def _request(obj: Any, where: str) -> Request:
    return Request(
        prompt=_get(obj, "prompt", where, str),
        negative_prompt=_get(obj, "negativePrompt", where, str, optional=True) or "",
        seed=int(_get(obj, "seed", where, "number")),
        guidance=float(_get(obj, "guidance", where, "number")),
        steps=int(_get(obj, "steps", where, "number")),
        scheduler=_get(obj, "scheduler", where, str),
        preview_every=int(_get(obj, "previewEvery", where, "number", optional=True) or 0),
    )


def _plan(obj: Any) -> Plan:
    w = "trace.json: plan"
    return Plan(
        request=_request(_get(obj, "request", w, dict), f"{w}.request"),
        tokens=_tokens(_get(obj, "tokens", w, dict), f"{w}.tokens"),
        negative_tokens=_tokens(_get(obj, "negativeTokens", w, dict), f"{w}.negativeTokens"),
        timesteps=list(_get(obj, "timesteps", w, "numbers")),
        scheduler_label=_get(obj, "schedulerLabel", w, str),
        scheduler_config=_get(obj, "schedulerConfig", w, dict, optional=True) or {},
        alphas_cumprod=list(_get(obj, "alphasCumprod", w, "numbers")),
        sigmas=_get(obj, "sigmas", w, "numbers", optional=True),
        init_noise_sigma=float(_get(obj, "initNoiseSigma", w, "number")),
        token_known=_get(obj, "tokenKnown", w, list, optional=True),
        negative_token_known=_get(obj, "negativeTokenKnown", w, list, optional=True),
    )


def _step(obj: Any, i: int, r: _Reader) -> StepTrace:
    w = f"trace.json: steps[{i}]"
    t = {
        f: r.tensor(_get(obj, camel(f), w, dict, optional=True), f"{w}.{camel(f)}")
        for f in ("latent", "noise_uncond", "noise_cond", "noise_guided", "pred_x0", "image", "attention")
    }
    for f in ("latent", "noise_uncond", "noise_cond", "noise_guided"):
        _check(t[f] is not None, f"{w}.{camel(f)}", "is missing")
    umap = _get(obj, "umap", w, "numbers", optional=True)
    return StepTrace(
        index=int(_get(obj, "index", w, "number")),
        timestep=float(_get(obj, "timestep", w, "number")),
        coefficients={k: v for k, v in (_get(obj, "coefficients", w, dict, optional=True) or {}).items() if _num(v)},
        update=_get(obj, "update", w, list, optional=True) or [],
        x0_update=_get(obj, "x0Update", w, list, optional=True) or [],
        timings_ms=_get(obj, "timingsMs", w, dict, optional=True) or {},
        umap=list(umap) if umap and len(umap) == 2 else None,
        **t,
    )


def load(source) -> TraceFile:
    """Read a .dxtrace file (a path or its bytes). Raises TraceFileError with one line naming what is wrong."""
    label = "the trace file" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    except OSError as e:
        raise TraceFileError(f"cannot read {label}: {e.strerror or e}") from None
    if data[:4] != b"PK\x03\x04":
        raise TraceFileError(f"{label} is not a trace file: a .dxtrace is a zip archive holding trace.json")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise TraceFileError(f"{label} is not a readable zip archive ({e})") from None
    with zf:
        infos = zf.infolist()
        _check(len(infos) <= MAX_ENTRIES, label, f"holds {len(infos)} files; a trace has at most {MAX_ENTRIES}")
        total = sum(i.file_size for i in infos)
        _check(total <= MAX_TOTAL_BYTES, label, f"unpacks to {total} bytes, more than {MAX_TOTAL_BYTES}")
        r = _Reader(zf, label)
        _check("trace.json" in r.infos, label, "is not a trace file: it has no trace.json")
        try:
            doc = json.loads(r.read("trace.json", f"{label}: trace.json", 256 * 2**20).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TraceFileError(f"{label}: trace.json is not valid JSON ({e})") from None
        _check(isinstance(doc, dict) and doc.get("format") == FORMAT, f"{label}: trace.json", f"is not a {FORMAT} file")
        version = doc.get("version")
        _check(isinstance(version, int) and not isinstance(version, bool), "trace.json: version", "must be a whole number")
        _check(
            version <= VERSION,
            label,
            f"is format version {version}; this reader knows up to {VERSION} (update diffusion-explainer)",
        )
        plan = _plan(_get(doc, "plan", "trace.json", dict))
        steps = [_step(s, i, r) for i, s in enumerate(_get(doc, "steps", "trace.json", list))]
        run = _get(doc, "run", "trace.json", dict)
        clip = _get(doc, "clip", "trace.json", dict, optional=True)
        trace = Trace(
            plan=plan,
            embeddings=r.tensor(run.get("embeddings"), "trace.json: run.embeddings"),
            steps=steps,
            final_latent=r.tensor(run.get("finalLatent"), "trace.json: run.finalLatent"),
            image=r.tensor(run.get("image"), "trace.json: run.image"),
            timings_ms=_get(run, "timingsMs", "trace.json: run", dict, optional=True) or {},
            backend=_get(run, "backend", "trace.json: run", str, optional=True) or "",
            cancelled=bool(_get(run, "cancelled", "trace.json: run", bool, optional=True)),
            clip=ClipScores(**{f.name: clip.get(camel(f.name)) for f in fields(ClipScores)}) if clip else None,
        )
        return TraceFile(
            trace=trace,
            machine=str(doc.get("machine") or "an unknown machine"),
            source=str(doc.get("source") or "native"),
            synthetic=doc.get("synthetic") is True,
            bundle=_get(doc, "bundle", "trace.json", dict),
            request_info=_get(doc, "requestInfo", "trace.json", dict, optional=True),
            created=str(doc.get("created") or ""),
            producer=str(doc.get("producer") or ""),
            doc=doc,
        )
