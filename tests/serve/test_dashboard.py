"""The dashboard in a real headless Chromium (Playwright), behind a token, offline.

The test serves the digits detector, sends clean then noisy (harmful) traffic, opens ``/`` with
HTTP credentials, waits for the page to refresh itself, takes a screenshot and checks that it is
not blank and that the page asked nothing of any host but the server. With the environment
variable ``DISTILLDETECT_DASHBOARD_PNG`` set, the screenshot is also copied there (that is how
``docs/img/dashboard.png`` was made).
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
TOKEN = "dashboard-token-0123456789abcdef"


@pytest.mark.slow
def test_dashboard_renders_and_refreshes_in_chromium(serve, detectors, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from PIL import Image

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (Debian packages chromium, chromium-driver)")
    live = serve(detectors["root"] / "cd", token=TOKEN, window=200, drift_every=25, refresh=0.5)
    X = detectors["X"]
    rng = np.random.default_rng(0)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with live.client(headers=auth) as c:
        for i in range(6):  # clean traffic
            c.post("/score", json={"instances": X[i * 25 : (i + 1) * 25].tolist()})
    requests: list[str] = []
    problems: list[str] = []
    shot = tmp_path / "dashboard.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            anonymous = browser.new_context()
            assert anonymous.request.get(live.url + "/").status == 401  # no credentials
            anonymous.close()
            context = browser.new_context(
                http_credentials={"username": "monitor", "password": TOKEN},
                viewport={"width": 1220, "height": 900},
            )
            page = context.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            response = page.goto(live.url + "/")
            assert response.status == 200
            assert response.headers["content-security-policy"].startswith("default-src 'none'")
            assert page.locator("svg").count() == 3
            with live.client(headers=auth) as c:  # harmful traffic while the page is open
                for _ in range(4):
                    noise = rng.uniform(0, 1, size=(25, 8, 8)).astype(np.float32)
                    c.post("/score", json={"instances": noise.tolist()})
            live.service.monitor.wait_idle()
            # poll from Python: the page's CSP (no eval) forbids wait_for_function's strings
            deadline = time.monotonic() + 30
            while int(page.locator("body").get_attribute("data-refreshes") or 0) < 2:
                assert time.monotonic() < deadline, "the dashboard did not refresh itself"
                page.wait_for_timeout(100)
            assert "DRIFT" in page.inner_text("#panel")  # the refresh brought the new state
            assert page.inner_text("#status").startswith("live")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert not problems, problems
    outside = [u for u in requests if not u.startswith(live.url + "/")]
    assert not outside, outside
    assert any(u.endswith("/dashboard/panel") for u in requests)
    image = Image.open(shot).convert("RGB")
    assert image.width >= 1000 and image.height >= 600
    colours = image.getcolors(maxcolors=1 << 24)
    assert colours is not None and len(colours) > 200, "the screenshot looks blank"
    most = max(count for count, _ in colours)
    assert most < 0.8 * image.width * image.height  # not one flat colour
    target = os.environ.get("DISTILLDETECT_DASHBOARD_PNG")
    if target:
        shutil.copyfile(shot, target)
