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


@pytest.fixture(scope="session")
def web_dist():
    """The page, built once per test session (npm ci when node_modules is missing)."""
    import shutil

    from app.serve import ServeError, build_web

    if not shutil.which("npm"):
        pytest.skip("npm is not installed; the page cannot be built")
    try:
        return build_web(rebuild=True, log=lambda *_: None)
    except ServeError as e:
        pytest.fail(str(e))
