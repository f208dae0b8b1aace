"""Fixtures for the viewer tests: results roots, the built viewer, a served root, headless Chromium.

- ``synth_results`` (session): a schema-version-2 root from ``viewer_synth.make_results`` (5 classes,
  4 of them computed as originals; an HTML-looking class name, a long one, a strength with no
  successful attack, neuron images).
- ``scale_results`` (session): 1000 classes, all 999,000 ordered pairs in the global files
  (classes, pair_index, rankings, overview, atlas); nodes/edges/causal only for the landing pair
  and ``SCALE_PAIRS``.
- ``mid_results`` (session): the same kind of root with 30 classes (870 pairs).
- ``viewer_dist`` (session): the built viewer (``bluff_ray/_viewer``); fails with the command to run.
- ``browser`` (session): Debian Chromium driven by Playwright; ``page`` (function): a fresh page that
  records page errors (a test fails if the page threw).
- ``serve_root`` (function): ``serve_root(path) -> base URL`` via ``bluff_ray.web.serve.start_server``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bluff_ray.web.serve import VIEWER_DIR, start_server
from viewer_synth import SCALE_PAIRS, make_results

CHROMIUM = "/usr/bin/chromium"


def pytest_configure(config):
    config.addinivalue_line("markers", "pipeline: uses the real pipeline's results (tests/conftest.py demo_results)")


@pytest.fixture(scope="session")
def viewer_dist() -> Path:
    if not (VIEWER_DIR / "index.html").is_file():
        pytest.fail(f"the viewer is not built ({VIEWER_DIR}/index.html missing): run `make viewer`")
    return VIEWER_DIR


@pytest.fixture(scope="session")
def synth_results(tmp_path_factory) -> str:
    return str(make_results(tmp_path_factory.mktemp("viewer-synth") / "root", seed=0))


@pytest.fixture(scope="session")
def scale_results(tmp_path_factory) -> str:
    return str(
        make_results(
            tmp_path_factory.mktemp("viewer-scale") / "root", seed=3, classes=1000, assets=False, with_files=SCALE_PAIRS
        )
    )


@pytest.fixture(scope="session")
def mid_results(tmp_path_factory) -> str:
    return str(
        make_results(
            tmp_path_factory.mktemp("viewer-mid") / "root", seed=4, classes=30, assets=False, with_files="landing"
        )
    )


@pytest.fixture
def serve_root(viewer_dist):
    servers = []

    def start(path) -> str:
        server, url = start_server(path)
        servers.append(server)
        return url

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-gpu"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 860})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(15000)
    yield pg
    ctx.close()
    assert not errors, f"the page threw: {errors}"
