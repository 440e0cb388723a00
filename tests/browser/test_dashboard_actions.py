"""Operator actions in headless Debian Chromium: `kxr ui --actions` against a service on the generated users.

The dashboard reads the log as the auditor (`KX_NATS_URL=$(kxr creds show auditor)`); the
browser logs in with the operator's user and password, pauses and resumes a release, and a
second tab, left open on the release's page, shows each change live (no reload).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.browser.test_dashboard import ARTIFACTS, chrome, start_ui, stop, text_of, until
from tests.harness import wait_for
from tests.integration.test_dashboard_actions import authed_service

pytestmark = pytest.mark.browser


async def start_ui_with_actions(nats_url: str, prefix: str) -> tuple[subprocess.Popen, str]:
    return await start_ui(nats_url, prefix, "--actions")


async def test_log_in_pause_and_resume_a_release_and_see_it_live(tmp_path):
    from selenium.webdriver.common.by import By

    def act(driver, action: str, rationale: str) -> None:
        box = driver.find_element(By.ID, "rationale")
        box.clear()
        box.send_keys(rationale)
        driver.find_element(By.ID, f"do-{action}").click()

    async with authed_service(tmp_path / "nats") as stack:
        await stack.request("r1")
        proc, url = await start_ui_with_actions(stack.authed.creds["auditor"].url, stack.authed.prefix)
        profile = Path(tempfile.mkdtemp(prefix="kxr-chromium-"))
        driver = await asyncio.to_thread(chrome, profile)
        try:
            # the watching tab: the release page, read-only (not logged in), never reloaded
            await asyncio.to_thread(driver.get, url + "releases/r1")
            await until(driver, lambda d: "live" in text_of(d, "#live"), "the live feed connected")
            assert "Read-only until you log in" in text_of(driver, ".readonly")
            assert not driver.find_elements(By.ID, "do-pause"), "action buttons before login"
            assert "(paused)" not in text_of(driver, "#summary td.phase")
            await asyncio.to_thread(driver.execute_script, "window.kxNotReloaded = true")
            watching = driver.current_window_handle

            # the acting tab: log in (a wrong password first), then pause with a rationale
            await asyncio.to_thread(driver.switch_to.new_window, "tab")
            await asyncio.to_thread(driver.get, url + "releases/r1")
            await asyncio.to_thread(lambda: driver.find_element(By.ID, "login").click())
            await until(driver, lambda d: d.find_elements(By.ID, "password"), "the login form")

            def log_in(password: str) -> None:
                driver.find_element(By.ID, "user").send_keys(stack.user("operator"))
                driver.find_element(By.ID, "password").send_keys(password)
                driver.find_element(By.ID, "sign-in").click()

            await asyncio.to_thread(log_in, "not-the-password")
            await until(driver, lambda d: "login refused" in text_of(d, "#flash"), "the login refused")
            await asyncio.to_thread(log_in, stack.password("operator"))
            await until(driver, lambda d: d.find_elements(By.ID, "do-pause"), "the actions after login")
            assert f"Signed in as {stack.user('operator')}" in text_of(driver, ".account")

            await asyncio.to_thread(act, driver, "pause", "holding for the partner demo")
            await until(driver, lambda d: "release.paused recorded" in text_of(d, "#flash"), "the pause recorded")
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "dashboard-actions.png"
            assert await asyncio.to_thread(driver.save_screenshot, str(shot))
            assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

            await asyncio.to_thread(driver.switch_to.window, watching)
            await until(driver, lambda d: "(paused)" in text_of(d, "#summary td.phase"), "r1 paused, live")
            await until(
                driver, lambda d: "holding for the partner demo" in text_of(d, "#timeline"), "the rationale, live"
            )
            assert await asyncio.to_thread(driver.execute_script, "return window.kxNotReloaded === true")

            others = [h for h in driver.window_handles if h != watching]
            await asyncio.to_thread(driver.switch_to.window, others[0])
            await asyncio.to_thread(act, driver, "pause", "twice")
            await until(driver, lambda d: "already paused" in text_of(d, "#flash"), "a second pause refused")
            await asyncio.to_thread(act, driver, "resume", "demo over")
            await until(driver, lambda d: "release.resumed recorded" in text_of(d, "#flash"), "the resume recorded")

            # extend and close (kxr release extend|close) take their window and outcome from the form;
            # r1 is not held, so kxr's own decisions refuse both, with kxr's reasons
            def extend_and_close(driver, step: str) -> None:
                if step == "extend":
                    field = driver.find_element(By.ID, "window")
                    field.clear()
                    field.send_keys("600")
                    act(driver, "extend", "more samples")
                else:
                    driver.find_element(By.CSS_SELECTOR, "#outcome option[value='failed']").click()
                    act(driver, "close", "give up")

            await asyncio.to_thread(extend_and_close, driver, "extend")
            await until(
                driver, lambda d: "only a held window can be extended" in text_of(d, "#flash"), "extend refused"
            )
            await asyncio.to_thread(extend_and_close, driver, "close")
            await until(driver, lambda d: "only a held release can be closed" in text_of(d, "#flash"), "close refused")

            await asyncio.to_thread(driver.switch_to.window, watching)
            await until(
                driver,
                lambda d: (phase := text_of(d, "#summary td.phase")) != "" and "(paused)" not in phase,
                "r1 resumed, live",
            )
            assert await asyncio.to_thread(driver.execute_script, "return window.kxNotReloaded === true"), (
                "the watching page reloaded"
            )
            actor = f"{stack.user('operator')}@dashboard"
            decisions = [
                (e.type, e.actor.id, e.data.rationale)  # type: ignore[union-attr]
                for e in await stack.events("r1")
                if e.type in ("release.paused", "release.resumed")
            ]
            assert decisions == [
                ("release.paused", actor, "holding for the partner demo"),
                ("release.resumed", actor, "demo over"),
            ]
        finally:
            await asyncio.to_thread(driver.quit)
            stop(proc)
            shutil.rmtree(profile, ignore_errors=True)
        await wait_for(lambda: proc.returncode is not None, 5, "kxr ui to exit")
        assert proc.returncode == 0, proc.stderr.read().decode()
