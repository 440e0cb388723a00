"""The dashboard end to end in headless Debian Chromium: `kxr ui` against a running service.

Chromium and chromedriver come from Debian (`apt-get install -y chromium chromium-driver`;
.ci/run installs them); Selenium is pointed at them and never fetches a browser or driver.
Missing, the test fails with that reason.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import aiohttp
import pytest

from services.jetstream.embedded import free_port
from tests.e2e.support import kxr_binary
from tests.harness import make_pack, running_service, wait_for

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1100",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
BROWSER_WAIT_S = 30  # an upper bound for the page to show what the log says, not a measured speed


def chrome(profile: Path):
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(
                f"{path} is missing: the browser test needs Debian's chromium and chromium-driver "
                "(apt-get install -y chromium chromium-driver)",
                pytrace=False,
            )
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


async def start_ui(nats_url: str, prefix: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """`kxr ui` (with `extra` options, e.g. `--actions`) on a free port, once it answers /healthz."""
    port = free_port()
    env = {**os.environ, "KX_NATS_URL": nats_url, "KX_PREFIX": prefix}
    command = [kxr_binary(), "ui", "--port", str(port), *extra]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    what = " ".join(["kxr ui", *extra])

    async def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}: {proc.stderr.read().decode()}")
        try:
            async with aiohttp.ClientSession() as http, http.get(url + "healthz") as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    deadline = asyncio.get_running_loop().time() + 30
    while not await answers():
        assert asyncio.get_running_loop().time() < deadline, f"{what} did not answer within 30 s"
        await asyncio.sleep(0.1)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# Every chart matching a selector, read in one script (one moment of the page): its metric, its lines
# per runtime, its threshold lines, its legend and its text.
CHARTS_JS = """return Array.from(document.querySelectorAll(arguments[0])).map(s => ({
  metric: s.getAttribute('data-metric'),
  runtimes: s.querySelectorAll('polyline.runtime').length,
  thresholds: s.querySelectorAll('line.threshold').length,
  legend: Array.from(s.querySelectorAll('text.legend')).map(t => t.textContent).join(' '),
  text: s.textContent,
}))"""


def charts_on(driver, css: str) -> list[dict]:
    return driver.execute_script(CHARTS_JS, css)


def text_of(driver, css: str) -> str:
    """The text of the first element `css` selects ("" if none), for a condition polled until it holds.

    A live update may replace the section between finding it and reading it (a stale element), and
    a submitted form reloads the page under the read (Chromium: "Cannot find context with specified
    id", an unknown error): either way there is nothing to read this poll, so read it at the next."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By

    try:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        return found[0].text if found else ""
    except StaleElementReferenceException:
        return ""
    except WebDriverException as exc:
        if "context" in str(exc).lower() or "inspector" in str(exc).lower():
            return ""
        raise


async def until(driver, condition, what: str):
    """Poll `condition` until it holds; else fail showing what the page shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return await asyncio.to_thread(WebDriverWait(driver, BROWSER_WAIT_S, poll_frequency=0.1).until, condition)
    except Exception as exc:
        raise AssertionError(
            f"the page never showed {what}; it shows:\n{driver.find_element(By.TAG_NAME, 'body').text}"
        ) from exc


async def test_watching_a_release_in_the_browser(nats_url, prefix):
    from selenium.webdriver.common.by import By

    async with running_service(nats_url, prefix) as svc:
        await svc.configure()
        await svc.runtime("t-int-1")
        await svc.runtime("tenant-42")
        proc, url = await start_ui(nats_url, prefix)
        profile = Path(tempfile.mkdtemp(prefix="kxr-chromium-"))
        driver = await asyncio.to_thread(chrome, profile)
        try:
            await asyncio.to_thread(driver.get, url)
            await until(driver, lambda d: "live" in text_of(d, "#live"), "the live feed connected")
            assert "Read-only" in text_of(driver, ".readonly")
            assert text_of(driver, "tr[data-scope='prod/canary/internal'] td.version") == ""
            await asyncio.to_thread(driver.execute_script, "window.kxNotReloaded = true")

            await svc.request("r1", make_pack("1.0.0", svc.key), rollback={"strategy": "none"})
            await until(
                driver,
                lambda d: text_of(d, "tr[data-scope='prod/canary/internal'] td.version") == "1.0.0",
                "prod/canary/internal on 1.0.0",
            )
            assert await asyncio.to_thread(driver.execute_script, "return window.kxNotReloaded === true"), (
                "the page reloaded"
            )

            assert (await svc.wait_release("r1")).outcome == "success"
            await until(
                driver,
                lambda d: text_of(d, "tr[data-scope='prod/canary/rest'] td.lkg") == "1.0.0",
                "rest's last-known-good",
            )
            await asyncio.to_thread(
                lambda: driver.find_element(By.CSS_SELECTOR, "#recent a[href='/releases/r1']").click()
            )
            await until(driver, lambda d: "outcome success" in text_of(d, "#timeline"), "the timeline up to closed")
            # each chart read in one script: the live feed may replace a section between two WebDriver calls
            charts = await asyncio.to_thread(charts_on, driver, "svg[aria-label='figures against thresholds']")
            assert len(charts) == 2, "one chart of figures against thresholds per stage's window"
            assert "error_rate" in charts[0]["text"]
            # the windows over time: one chart per metric, a line per runtime, the threshold as a line
            series = await until(
                driver,
                lambda d: (found := charts_on(d, "svg.series")) and len(found) == 2 and found,
                "the time series charts",
            )
            assert series[0]["metric"] == "error_rate"
            assert series[0]["runtimes"] == 2, "one line per runtime (rt-t-int-1 and rt-tenant-42)"
            assert series[0]["thresholds"] > 0
            assert "rt-t-int-1" in series[0]["legend"] and "rt-tenant-42" in series[0]["legend"]
            raw = driver.find_element(By.CSS_SELECTOR, "#record details")
            assert raw.get_attribute("open") is None and not raw.find_element(By.TAG_NAME, "pre").is_displayed()

            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "dashboard.png"
            shot.unlink(missing_ok=True)
            # tall enough for the page down to the timeline: the charts and the timeline in one picture
            bottom = await asyncio.to_thread(
                driver.execute_script, "return document.getElementById('timeline').getBoundingClientRect().bottom"
            )
            await asyncio.to_thread(driver.set_window_size, 1400, min(int(bottom) + 150, 8000))
            assert await asyncio.to_thread(driver.save_screenshot, str(shot))
            data = shot.read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, (
                f"{shot} is not a real PNG ({len(data)} bytes)"
            )

            # the fleet: every runtime, what it runs, its last activation and health, live
            await asyncio.to_thread(lambda: driver.find_element(By.CSS_SELECTOR, "a[href='/fleet']").click())
            await until(
                driver,
                lambda d: text_of(d, "tr[data-runtime='rt-tenant-42'] td.version") == "1.0.0",
                "rt-tenant-42 on 1.0.0 in the fleet",
            )
            # polled, not read once: text_of reads "" while a live update replaces the table (CI once read it so)
            await until(
                driver,
                lambda d: all(
                    word in text_of(d, "tr[data-runtime='rt-t-int-1']")
                    for word in ("prod/canary/internal", "in sync", "ok")
                ),
                "rt-t-int-1 in sync and ok on prod/canary/internal in the fleet",
            )
            assert await asyncio.to_thread(driver.save_screenshot, str(ARTIFACTS / "fleet.png"))
            await until(driver, lambda d: "live" in text_of(d, "#live"), "the fleet page's live feed")
            await asyncio.to_thread(lambda: driver.find_element(By.CSS_SELECTOR, "a[href='/history']").click())
            await asyncio.to_thread(
                lambda: driver.find_element(
                    By.CSS_SELECTOR, "p[data-filter='outcome'] a[href*='outcome=success']"
                ).click()
            )
            await until(driver, lambda d: "r1" in text_of(d, "#history-table"), "r1 in the history filtered by success")
        finally:
            await asyncio.to_thread(driver.quit)
            stop(proc)
            shutil.rmtree(profile, ignore_errors=True)
        await wait_for(lambda: proc.returncode is not None, 5, "kxr ui to exit")
        assert proc.returncode == 0, proc.stderr.read().decode()
