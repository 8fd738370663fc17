"""Session fixtures: a tiny random Stable Diffusion pipeline and its exported bundle, built once."""
import pytest


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    pytest.importorskip("diffusers")
    from export.random_pipeline import tiny

    return tiny(tmp_path_factory.mktemp("tiny-sd") / "pipeline")


@pytest.fixture(scope="session")
def tiny_bundle(tiny_pipeline_dir, tmp_path_factory):
    from export.exporter import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(tiny_pipeline_dir, out)
    return out
