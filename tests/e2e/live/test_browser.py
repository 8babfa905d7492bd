"""The live page in a real headless Chromium (Selenium, Debian's chromedriver) against
PostgreSQL, Redis, ``projector run`` and ``python -m api``: commits appear without a reload,
tabs work from the keyboard, the lookup shows neighbours, dark mode uses the dark palette.

Screenshots go to the test's ``tmp_path`` and to ``tests/e2e/live/artifacts/`` (ignored by git).
Without a Chromium these tests are skipped, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.projector.support import projector_executable

from .support import ARTIFACTS, Stack, insert_pomodoros, start_stack

CHROMEDRIVER = "/usr/bin/chromedriver"


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium driven through the system chromedriver, never a downloaded one."""
    binary = _chromium()
    if binary is None or not os.path.exists(CHROMEDRIVER):
        message = "needs chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {message}")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=820,1180",
        "--force-device-scale-factor=1",
        "--lang=en-GB",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


def screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    """Save a screenshot in the test's directory and in tests/e2e/live/artifacts/."""
    path = tmp_path / name
    driver.save_screenshot(str(path))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / name)
    print(f"screenshot: {ARTIFACTS / name}")
    return path


def rows(driver: Any) -> list[tuple[str, str, str]]:
    """The board as the page shows it: (rank, name cell, score) per row."""
    script = """
      return [...document.querySelectorAll('#rows tr[data-user]')].map(
        (tr) => [...tr.cells].map((td) => td.innerText.trim()));
    """
    return [tuple(cells) for cells in driver.execute_script(script)]


def text(driver: Any, element_id: str) -> str:
    return str(driver.execute_script(f"return document.getElementById('{element_id}').innerText"))


def open_page(driver: Any, stack: Stack) -> None:
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    driver.get(stack.api.base_url + "/")
    wait_for(lambda: text(driver, "live") == "live", 5, "the page to go live")


def test_a_commit_shows_on_the_open_page_within_a_second(
    browser: Any, stack: Stack, tmp_path: Path
) -> None:
    """A pomodoro committed to PostgreSQL is on the page within 1 s, without a reload."""
    open_page(browser, stack)
    browser.execute_script("window.notReloaded = true")
    names = {"grace.hopper": "Grace Hopper"}
    committed = time.monotonic()
    insert_pomodoros(stack.dsn, [("grace.hopper", None)] * 40, names)
    wait_for(
        lambda: any("Grace Hopper" in name for _, name, _ in rows(browser)),
        1.0,
        "Grace Hopper on the page",
    )
    seen = time.monotonic() - committed
    print(f"commit to page: {seen * 1000:.0f} ms")
    assert rows(browser)[0][1].startswith("Grace Hopper") and rows(browser)[0][2] == "40"
    assert browser.execute_script("return window.notReloaded") is True
    freshness = text(browser, "freshness")
    assert re.search(r"lag \d+ ms", freshness), freshness
    assert "from Redis" in freshness
    insert_pomodoros(stack.dsn, [("grace.hopper", None)])
    wait_for(lambda: rows(browser)[0][2] == "41", 1.0, "the score to move")
    screenshot(browser, tmp_path, "page-light.png")


def test_tabs_work_from_the_keyboard_and_lookup_shows_neighbours(
    browser: Any, stack: Stack, tmp_path: Path
) -> None:
    """Arrow keys move between period tabs; a lookup gives rank and neighbours."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    insert_pomodoros(
        stack.dsn,
        [("ada.lovelace", None)] * 3 + [("alan.turing", None)] * 2 + [("katherine.johnson", None)],
        {
            "ada.lovelace": "Ada Lovelace",
            "alan.turing": "Alan Turing",
            "katherine.johnson": "Katherine Johnson",
        },
    )
    open_page(browser, stack)
    tab = browser.find_element(By.ID, "tab-day")
    tab.send_keys(Keys.ARROW_RIGHT)
    week = browser.find_element(By.ID, "tab-week")
    assert week.get_attribute("aria-selected") == "true"
    assert browser.switch_to.active_element == week
    wait_for(lambda: text(browser, "caption").startswith("This week"), 2, "the week board")
    week.send_keys(Keys.END)
    wait_for(lambda: text(browser, "caption").startswith("All time"), 2, "the all-time board")
    assert browser.find_element(By.ID, "tab-all").get_attribute("tabindex") == "0"
    assert browser.find_element(By.ID, "tab-day").get_attribute("tabindex") == "-1"
    wait_for(lambda: rows(browser), 2, "rows on the all-time board")

    box = browser.find_element(By.ID, "user")
    assert browser.find_element(By.CSS_SELECTOR, "label[for=user]").text == "User id"
    box.send_keys("alan.turing", Keys.ENTER)
    standing = wait_for(lambda: text(browser, "standing"), 2, "the lookup's answer")
    assert re.search(r"Alan Turing is #\d+ of \d+ \(all time\) with 2 pomodoros", standing)
    mine = browser.find_element(By.CSS_SELECTOR, "#standing tr[aria-current=true]")
    assert "Alan Turing" in mine.text
    names = [tr.text for tr in browser.find_elements(By.CSS_SELECTOR, "#standing tr")]
    assert any("Ada Lovelace" in name for name in names)  # the neighbour above
    screenshot(browser, tmp_path, "page-lookup.png")


def _background(driver: Any) -> tuple[int, ...]:
    color = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
    return tuple(int(part) for part in re.findall(r"\d+", color)[:3])


def test_dark_mode_uses_the_dark_palette(browser: Any, stack: Stack, tmp_path: Path) -> None:
    """With prefers-color-scheme: dark the page is dark, and light otherwise."""
    open_page(browser, stack)
    light = _background(browser)
    assert sum(light) > 600, light
    browser.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    dark = _background(browser)
    assert sum(dark) < 150, dark
    text_color = browser.execute_script("return getComputedStyle(document.body).color")
    assert sum(int(part) for part in re.findall(r"\d+", text_color)[:3]) > 600
    screenshot(browser, tmp_path, "page-dark.png")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


@pytest.fixture
def demo_stack(postgres_server: Any, redis_server: Any, tmp_path: Path) -> Iterator[Stack]:
    """A system of its own, holding nothing but what the demo writes."""
    system, database = start_stack(postgres_server, redis_server, tmp_path / "logs", "demo")
    try:
        yield system
    finally:
        system.stop()
        with redis_server.client() as client:
            keys = list(client.scan_iter(match=f"{system.prefix}*"))
            if keys:
                client.delete(*keys)
        postgres_server.drop_database(database)


def test_the_demo_writer_moves_the_open_page(
    browser: Any, demo_stack: Stack, tmp_path: Path
) -> None:
    """With `projector demo` writing, the page changes by itself; the README's screenshot."""
    stack = demo_stack
    log = tmp_path / "demo.log"
    with log.open("ab") as out:
        demo = subprocess.Popen(
            [projector_executable(), "demo", "--rate", "8", "--seed", "3"],
            env=stack.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        open_page(browser, stack)
        browser.find_element("id", "tab-month").click()
        wait_for(lambda: len(rows(browser)) == 10, 10, "a full top 10")
        before = rows(browser)
        wait_for(lambda: rows(browser) != before, 10, "the board to move")
        fourth = browser.execute_script(
            "return document.querySelectorAll('#rows tr[data-user]')[3].dataset.user"
        )
        browser.find_element("id", "user").send_keys(fourth, "\n")
        wait_for(lambda: " is #" in text(browser, "standing"), 3, "the lookup")
        browser.set_window_size(820, 1580)  # the whole page, lookup included
        time.sleep(0.3)
        screenshot(browser, tmp_path, "page-demo.png")
        browser.execute_cdp_cmd(
            "Emulation.setEmulatedMedia",
            {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
        )
        screenshot(browser, tmp_path, "page-demo-dark.png")
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        browser.set_window_size(820, 1180)
    finally:
        demo.send_signal(signal.SIGTERM)
        assert demo.wait(10) == 0, log.read_text()
