"""CLIP's view: how well images match prompts, from the text encoder and the bundle's optional clip_image graph.

Why graphs again: the similarities (tower, projection, normalisation, dot products) are computed in
onnxruntime like everything else; Python only tokenizes, batches bytes and reads the result back.
"""

from __future__ import annotations

import weakref
from array import array
from typing import Any

from .backend import HostTensor
from .bundle import BundleError

COMPONENT = "clip_image"


def has_clip(bundle) -> bool:
    """Whether the bundle ships the image tower (only models trained with one do: the default model)."""
    return COMPONENT in bundle.manifest.get("components", {})


_LOADED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backends without a `sessions` table


async def _ensure_loaded(pipeline) -> None:
    """Create the clip_image session on first use (and the text encoder's, if pipeline.load() has not run)."""
    be, bundle = pipeline.backend, pipeline.bundle
    if not has_clip(bundle):
        raise BundleError(
            "this bundle has no clip_image component (only a model trained with its CLIP image tower has one, "
            "e.g. the default model); re-export it from a model folder with clip_image/"
        )
    sessions = getattr(be, "sessions", None)  # both backends keep their sessions by component name
    if isinstance(sessions, dict):
        for name in ("text_encoder", COMPONENT):
            if name not in sessions:
                await be.load(name, bundle.component(name)["files"])
        return
    done = _LOADED.setdefault(be, set())  # other backends: pipeline.load() made the text encoder's
    if COMPONENT not in done:
        await be.load(COMPONENT, bundle.component(COMPONENT)["files"])
        done.add(COMPONENT)


def _input_dtype(bundle, component: str, name: str, default: str) -> str:
    try:
        return bundle.input_dtype(component, name)
    except (BundleError, KeyError):
        return default


async def _image_batch(backend, images) -> tuple[Any, int]:
    """Handles or host tensors of uint8 RGBA images ([H, W, 4] each, as to_rgba makes them, or [N, H, W, 4])
    → one [N, H, W, 4] handle, and N."""
    data, n, hw = array("B"), 0, None
    for im in images:
        t = im if isinstance(im, HostTensor) else await backend.to_host(im)
        shape = tuple(t.shape) if len(t.shape) == 4 else (1, *t.shape)
        if t.dtype != "uint8" or len(shape) != 4 or shape[3] != 4:
            raise ValueError(
                f"clip_similarities takes uint8 RGBA images [H, W, 4] or [N, H, W, 4], not {t.dtype} {list(t.shape)}"
            )
        if hw is not None and shape[1:3] != hw:
            raise ValueError(f"images differ in size: {list(hw)} and {list(shape[1:3])}")
        hw = shape[1:3]
        data.extend(t.data)
        n += shape[0]
    if not n:
        raise ValueError("clip_similarities needs at least one image")
    return backend.from_host(HostTensor(data, (n, hw[0], hw[1], 4), "uint8")), n


async def clip_similarities(pipeline, image_handles_or_hosttensors, prompts: list[str]) -> list[list[float]]:
    """Cosine similarity of each image with each prompt: a list per image, one float per prompt.

    The prompts go through the pipeline's tokenizer and text encoder (one batch), the pooled state is
    the text encoder's state at each prompt's first eos token (as CLIPTextModel's pooler_output), and
    the clip_image graph (loaded on first use) embeds the images and compares."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("clip_similarities takes a non-empty list of prompts")
    be, bundle, tok = pipeline.backend, pipeline.bundle, pipeline.tokenizer
    await _ensure_loaded(pipeline)
    images, n = await _image_batch(be, image_handles_or_hosttensors)

    encoded = [tok.encode(p) for p in prompts]
    m, width = len(encoded), len(encoded[0].ids)
    ids = array("q")
    for e in encoded:
        ids.extend(e.ids)
    eos = [e.ids.index(tok.eos_id) for e in encoded]  # CLIPTextModel pools at the first eos id
    ids_dtype = bundle.input_dtype("text_encoder", "input_ids")
    ids_h = be.from_host(HostTensor.of(ids, (m, width), ids_dtype))
    states = (await be.run("text_encoder", {"input_ids": ids_h}))["last_hidden_state"]
    eos_h = be.from_host(HostTensor.of(eos, (m,), _input_dtype(bundle, COMPONENT, "eos_index", "int64")))
    out = (await be.run(COMPONENT, {"image": images, "text_states": states, "eos_index": eos_h}))["similarity"]
    sim = await be.to_host(out)
    for h in (ids_h, states, eos_h, images, out):
        be.release(h)
    if tuple(sim.shape) != (n, m):
        raise BundleError(f"clip_image returned shape {list(sim.shape)}, expected {[n, m]}; re-export the bundle")
    return [list(sim.data[i * m : (i + 1) * m]) for i in range(n)]
