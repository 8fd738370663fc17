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


@pytest.fixture(scope="session")
def default_bundles(request):
    """bundles/default (fp32, exported from models/default) and bundles/default-small (the page's build),
    derived once by the code `serve` uses on first use, and reused while models/default's source
    fingerprint (and the small recipe) are unchanged: a fresh clone derives them in its first test
    session, later sessions find them up to date. Returns (fp32 folder, small folder)."""
    import time

    pytest.importorskip("diffusers")
    pytest.importorskip("onnxruntime")
    from app import serve

    if not (serve.DEFAULT_MODEL / "model_index.json").is_file():
        pytest.skip(f"no trained default model in {serve.DEFAULT_MODEL} (train it with `diffusion-explainer train`)")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    say = (lambda line: reporter.write_line(f"[default bundles] {line}")) if reporter else (lambda line: None)
    t = time.perf_counter()
    try:
        small = serve.default_bundle(log=say)
    except serve.ServeError as e:
        pytest.fail(f"deriving the default bundles failed: {e}")
    if small == serve.DEFAULT_BUNDLE:
        pytest.fail(f"deriving {serve.DEFAULT_BUNDLE.name}-{serve.SMALL_TARGET} failed (see the log above)")
    say(
        f"ready in {time.perf_counter() - t:.1f} s: {serve.DEFAULT_BUNDLE.relative_to(serve.ROOT)}, {small.relative_to(serve.ROOT)}"
    )
    return serve.DEFAULT_BUNDLE, small


@pytest.fixture(scope="session")
def default_bundle(default_bundles):
    """bundles/default, the trained model's fp32 bundle (see default_bundles)."""
    return default_bundles[0]


@pytest.fixture(scope="session")
def default_small_bundle(default_bundles):
    """bundles/default-small, the page's default build (see default_bundles)."""
    return default_bundles[1]
