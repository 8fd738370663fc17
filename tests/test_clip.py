"""The optional CLIP image tower: its ONNX graph equals PyTorch, and the runtime's similarities equal the trained model's."""

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from export.clip import export_clip, load_clip_image, reference  # noqa: E402
from export.errors import ExportError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "models" / "default"


@pytest.fixture(scope="module")
def random_clip(tmp_path_factory):
    """A model folder holding only an untrained clip_image (seeded), exported once."""
    from train import models as M
    from train.clip_image import save

    root = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    save(
        root / "model" / "clip_image",
        M.ImageEncoder(),
        torch.nn.Linear(M.TEXT_HIDDEN, M.TEXT_HIDDEN, bias=False),
        20.0,
        "test",
        {},
    )
    (root / "bundle").mkdir()
    return root, export_clip(root / "model", root / "bundle", M.TEXT_HIDDEN)


def test_exported_graph_equals_pytorch(random_clip):
    import onnxruntime as ort

    root, entry = random_clip
    assert entry["files"] == ["clip_image.onnx"] and entry["precision"] == "fp32"
    assert [(i["name"], i["dtype"], i["shape"]) for i in entry["inputs"]] == [
        ("image", "uint8", ["batch", 64, 64, 4]),
        ("text_states", "float32", ["prompts", "sequence", 128]),
        ("eos_index", "int64", ["prompts"]),
    ]
    assert [(o["name"], o["dtype"], o["shape"]) for o in entry["outputs"]] == [("similarity", "float32", ["batch", "prompts"])]
    assert entry["verification"]["max_abs_error"] <= 1e-4
    tower, proj, cfg = load_clip_image(root / "model" / "clip_image")
    sess = ort.InferenceSession(str(root / "bundle" / "clip_image.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for n, m, length in ((1, 1, 77), (5, 3, 12)):  # dynamic batch, prompts and sequence length
        feeds = {
            "image": rng.integers(0, 256, (n, 64, 64, 4), dtype=np.uint8),
            "text_states": rng.standard_normal((m, length, 128), dtype=np.float32),
            "eos_index": rng.integers(0, length, m).astype(np.int64),
        }
        got = sess.run(None, feeds)[0]
        assert got.shape == (n, m)
        np.testing.assert_allclose(
            got,
            reference(
                tower, proj, **{"image_u8": feeds["image"], "text_states": feeds["text_states"], "eos_index": feeds["eos_index"]}
            ),
            atol=1e-4,
            rtol=0,
        )
    # the alpha channel is ignored, as the page's images are opaque anyway
    a = feeds["image"].copy()
    a[..., 3] = 0
    np.testing.assert_allclose(sess.run(None, {**feeds, "image": a})[0], got, atol=1e-6)


def test_export_clip_absent_or_mismatched(tmp_path, random_clip):
    (tmp_path / "out").mkdir()
    assert export_clip(tmp_path, tmp_path / "out", 128) is None  # real SD checkpoints have no clip_image/
    assert not list((tmp_path / "out").iterdir())
    with pytest.raises(ExportError, match="width 128"):
        export_clip(random_clip[0] / "model", tmp_path / "out", 768)


def test_stage_is_offered_by_the_command_line(monkeypatch):
    """`diffusion-explainer train clip_image` reaches the stage (it lives in train/clip_image.py)."""
    from app import cli
    from train import stages

    ran = []
    monkeypatch.setattr(stages, "run", lambda names, minutes, table, options=None: ran.append(table[names[0]].__name__))
    assert cli.main(["train", "clip_image"]) == 0 and ran == ["train_clip_image"]
    assert cli.main(["train", "nonsense"]) == 2


def test_pair_share_reaches_the_unet_stage(monkeypatch, capsys):
    """`train --pair-share` (round 5's pair-heavy batches) goes to the UNet stage only; out of range: one line."""
    from app import cli
    from train import stages

    got = []
    monkeypatch.setattr(stages, "run", lambda names, minutes, table, options=None: got.append((names, minutes, options)))
    assert cli.main(["train", "unet", "--minutes", "unet=5", "--pair-share", "0.6"]) == 0
    assert got == [(["unet"], {"unet": 5.0}, {"unet": {"pair_share": 0.6}})]
    assert cli.main(["train", "unet"]) == 0 and got[-1][2] == {}
    assert cli.main(["train", "unet", "--pair-share", "1.5"]) == 2 and len(got) == 2
    assert "--pair-share must be between 0 and 1" in capsys.readouterr().err
    assert cli.main(["train", "unet", "--pair-share", "0.5", "--hard-share", "0.35"]) == 0
    assert got[-1][2] == {"unet": {"pair_share": 0.5, "hard_share": 0.35}}
    assert cli.main(["train", "unet", "--hard-share", "-0.1"]) == 2
    assert "--hard-share must be between 0 and 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def default_clip_bundle(tmp_path_factory):
    """A minimal bundle of the default model: its text encoder, tokenizer and clip_image (no UNet or VAE needed)."""
    if not (DEFAULT / "clip_image" / "config.json").is_file():
        pytest.skip("models/default has no clip_image (train it: diffusion-explainer train clip_image)")
    from transformers import CLIPTextModel

    from export.manifest import io_specs

    out = tmp_path_factory.mktemp("default-clip")
    text = CLIPTextModel.from_pretrained(DEFAULT / "text_encoder").eval().requires_grad_(False)

    class States(torch.nn.Module):  # the bundle's text encoder as the pipeline uses it: input_ids → last_hidden_state
        def __init__(self):
            super().__init__()
            self.text = text

        def forward(self, input_ids):
            return self.text(input_ids).last_hidden_state

    with torch.no_grad():
        torch.onnx.export(
            States(),
            (torch.ones(1, 77, dtype=torch.int64),),
            str(out / "text_encoder.onnx"),
            input_names=["input_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}},
            opset_version=18,
            dynamo=False,
        )
    import onnx

    inputs, outputs = io_specs(onnx.load(str(out / "text_encoder.onnx")))
    entry = export_clip(DEFAULT, out, text.config.hidden_size)
    (out / "tokenizer").mkdir()
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(DEFAULT / "tokenizer" / f, out / "tokenizer" / f)
    manifest = {
        "tokenizer": {
            "files": {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt"},
            "max_length": 77,
            "pad_token": "<|endoftext|>",
        },
        "components": {
            "text_encoder": {"files": ["text_encoder.onnx"], "inputs": inputs, "outputs": outputs},
            "clip_image": entry,
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out, text


def test_runtime_similarities_equal_pytorch_on_rendered_scenes(default_clip_bundle):
    import torch.nn.functional as F

    from runtime.backend import HostTensor
    from runtime.bundle import Bundle
    from runtime.clip import clip_similarities
    from runtime.native import NativeBackend
    from runtime.pipeline import Pipeline, run_sync
    from train import models as M
    from train import scenes as S
    from train.stages import tokenizer

    out, text = default_clip_bundle
    manifest = json.loads((out / "manifest.json").read_text())
    backend = NativeBackend(out, threads=1)
    pipe = Pipeline(Bundle(manifest, lambda rel: (out / rel).read_text(encoding="utf-8"), str(out)), backend)

    cat, rocket = S.OBJECT_NAMES.index("cat"), S.OBJECT_NAMES.index("rocket")
    blue, night = S.BACKGROUND_NAMES.index("blue"), S.BACKGROUND_NAMES.index("night")
    scenes = [
        S.Scene([cat], blue, ["center"], ["big"], "a cat on a blue background", seed=1),
        S.Scene([rocket], night, ["center"], ["big"], "a rocket at night", seed=2),
    ]
    rgb = np.stack([S.render(sc) for sc in scenes])
    rgba = np.concatenate([rgb, np.full(rgb.shape[:3] + (1,), 255, np.uint8)], axis=-1)
    prompts = ["a cat on a blue background", "a rocket at night", "a pizza on a blue background", "a banana at night"]
    # one image as a backend handle (as the pipeline's decoded image is), one as a host tensor
    images = [
        backend.from_host(HostTensor.of(rgba[0].tobytes(), rgba[0].shape, "uint8")),
        HostTensor.of(rgba[1].tobytes(), rgba[1].shape, "uint8"),
    ]
    got = np.array(run_sync(clip_similarities(pipe, images, prompts)))
    assert "clip_image" in backend.sessions and got.shape == (2, 4)

    tower, proj, _ = load_clip_image(DEFAULT / "clip_image")
    with torch.no_grad():
        ids = tokenizer()(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
        t = F.normalize(proj(text(ids).pooler_output), dim=-1)
        v = F.normalize(tower(M.to_tensor(rgb)), dim=-1)
        ref = (v @ t.T).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    assert got[0, 0] > got[0, 2]  # the cat scene: its caption beats a wrong object on the same background
    assert got[1, 1] > got[1, 3]  # the rocket scene likewise
    assert got[0, 0] > got[0, 1] and got[1, 1] > got[1, 0]  # and each caption prefers its own scene

    again = np.array(run_sync(clip_similarities(pipe, [HostTensor.of(rgba.tobytes(), rgba.shape, "uint8")], prompts[:1])))
    np.testing.assert_allclose(again[:, 0], got[:, 0], atol=1e-5)  # one [N, H, W, 4] tensor; the session is reused


def test_object_weight_reaches_the_vae_tune_stage(monkeypatch, capsys):
    """`train vae_tune --object-weight 8` goes to tune_vae only; out of range: one line, nothing runs."""
    from app import cli
    from train import stages

    got = []
    monkeypatch.setattr(stages, "run", lambda names, minutes, table, options=None: got.append((names, minutes, options)))
    assert cli.main(["train", "vae_tune", "--minutes", "vae_tune=25", "--object-weight", "8"]) == 0
    assert got == [(["vae_tune"], {"vae_tune": 25.0}, {"vae_tune": {"object_weight": 8.0}})]
    assert cli.main(["train", "vae_tune", "--object-weight", "0"]) == 2 and len(got) == 1
    assert "--object-weight must be between 1 and 100" in capsys.readouterr().err
    assert cli.main(["train", "vae_tune", "--camouflage", "0.5"]) == 0
    assert got[-1] == (["vae_tune"], {}, {"vae_tune": {"camouflage": 0.5}})
    assert cli.main(["train", "vae_tune", "--camouflage", "2"]) == 2 and len(got) == 2
    assert "--camouflage must be between 0 and 1" in capsys.readouterr().err
