"""The live page in a real headless Chromium (Selenium, Debian's chromedriver) against
PostgreSQL, Redis, ``projector run`` and ``python -m api`` with the three boards of
``examples/focus_minutes.toml``: commits appear without a reload, the board picker and the
tabs work from the keyboard and are kept in the URL, friends and "watch me" follow writes
live, an unavailable board and a bad id are explained, dark mode uses the dark palette.

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

import httpx
import pytest

from harness.servers import free_port
from tests.e2e.projector.support import projector_executable

from .support import ARTIFACTS, ApiProcess, Stack, insert_pomodoros, start_stack

CHROMEDRIVER = "/usr/bin/chromedriver"
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
NONE = "\N{EN DASH}"  # the page's rank of a member without rows


@pytest.fixture(scope="module")
def stack(
    postgres_server: Any, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The live suite's system with the example's boards (pomodoros, team-focus by week,
    focus-minutes by month, team-long: long pomodoros by team), shared by the tests
    of this module."""
    logs = tmp_path_factory.mktemp("browser")
    system, database = start_stack(
        postgres_server,
        redis_server,
        logs,
        "browser",
        schema=EXAMPLES / "focus_minutes.sql",
        boards_file=str(EXAMPLES / "focus_minutes.toml"),
    )
    try:
        yield system
    finally:
        system.stop()
        with redis_server.client() as client:
            keys = list(client.scan_iter(match=f"{system.prefix}*"))
            if keys:
                client.delete(*keys)
        postgres_server.drop_database(database)


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


def rows(driver: Any, body: str = "rows") -> list[tuple[str, ...]]:
    """A table as the page shows it: its cells per row (rank, name, [board rank], score)."""
    script = """
      return [...document.querySelectorAll(`#${arguments[0]} tr[data-member]`)].map(
        (tr) => [...tr.cells].map((td) => td.innerText.trim()));
    """
    return [tuple(cells) for cells in driver.execute_script(script, body)]


def text(driver: Any, element_id: str) -> str:
    return str(driver.execute_script(f"return document.getElementById('{element_id}').innerText"))


def open_page(driver: Any, stack: Stack, query: str = "", base_url: str | None = None) -> None:
    """The page with nothing remembered from an earlier test (no watched id, no friends)."""
    base_url = base_url or stack.api.base_url
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    driver.get(base_url + "/static/favicon.svg")
    driver.execute_script("localStorage.clear()")
    driver.get(base_url + "/" + query)
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


def test_board_picker_and_tabs_work_from_the_keyboard_and_stay_in_the_url(
    browser: Any, stack: Stack, tmp_path: Path
) -> None:
    """The picker lists the declared boards; another board shows its own entries and only
    its periods as tabs; arrow keys move between tabs; a reload reopens board and period."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select

    stack.execute(
        "INSERT INTO teams (id, name) VALUES ('red', 'Red Team'), ('blue', 'Blue Team')"
        " ON CONFLICT (id) DO NOTHING"
    )
    stack.execute(
        "INSERT INTO pomodoros (user_id, team_id, minutes) VALUES"
        " ('ada.lovelace', 'red', 50), ('alan.turing', 'blue', 25), ('ada.lovelace', 'red', 30)"
    )
    open_page(browser, stack)
    picker = Select(browser.find_element(By.ID, "board"))
    assert [o.get_attribute("value") for o in picker.options] == [
        "pomodoros",
        "team-focus",
        "focus-minutes",
        "team-long",
    ]
    assert browser.find_element(By.CSS_SELECTOR, "label[for=board]").text == "Board"
    tabs = browser.find_elements(By.CSS_SELECTOR, "#tabs [role=tab]")
    assert [tab.text for tab in tabs] == [
        "Today",
        "This week",
        "This month",
        "This year",
        "All time",
    ]
    day = browser.find_element(By.ID, "tab-day")
    day.send_keys(Keys.ARROW_RIGHT)
    week = browser.find_element(By.ID, "tab-week")
    assert week.get_attribute("aria-selected") == "true"
    assert browser.switch_to.active_element == week
    wait_for(lambda: text(browser, "caption").startswith("Pomodoros · This week"), 2, "week")
    week.send_keys(Keys.END)
    wait_for(lambda: text(browser, "caption").startswith("Pomodoros · All time"), 2, "all")
    assert browser.find_element(By.ID, "tab-all").get_attribute("tabindex") == "0"
    assert browser.find_element(By.ID, "tab-day").get_attribute("tabindex") == "-1"
    assert browser.current_url.endswith("/?board=pomodoros&period=all")

    picker.select_by_value("team-focus")
    wait_for(
        lambda: rows(browser) == [("1", "Red Team red", "80"), ("2", "Blue Team blue", "25")],
        3,
        "the team board's entries",
    )
    tabs = browser.find_elements(By.CSS_SELECTOR, "#tabs [role=tab]")
    assert [(tab.text, tab.get_attribute("aria-selected")) for tab in tabs] == [
        ("This week", "true")
    ]
    assert browser.find_element(By.ID, "score-head").get_attribute("textContent") == "Team focus"
    assert browser.current_url.endswith("/?board=team-focus&period=week")

    browser.refresh()  # a link to the page reopens the same board and period
    wait_for(lambda: text(browser, "live") == "live", 5, "the page to go live again")
    assert Select(browser.find_element(By.ID, "board")).first_selected_option.text == "Team focus"
    wait_for(lambda: len(rows(browser)) == 2, 3, "the team board after the reload")
    Select(browser.find_element(By.ID, "board")).select_by_value("focus-minutes")
    wait_for(
        lambda: {("ada.lovelace", "80"), ("alan.turing", "25")} <= {r[1:] for r in rows(browser)},
        3,
        "the focus-minutes board (month, the only period it keeps)",
    )
    assert "period=month" in browser.current_url
    screenshot(browser, tmp_path, "page-boards.png")


def _standing(stack: Stack, member: str, base_url: str | None = None) -> dict[str, Any]:
    base_url = base_url or stack.api.base_url
    answer = httpx.get(f"{base_url}/v1/boards/pomodoros/day/members/{member}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_friends_are_ranked_among_themselves_and_follow_writes(
    browser: Any, stack: Stack, tmp_path: Path
) -> None:
    """ "Compare with friends" shows the group ranking (rank among them, rank on the board,
    members without rows last) and re-ranks it without a reload after a commit."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    insert_pomodoros(
        stack.dsn,
        [("fiona", None)] * 57 + [("hannah", None)] * 56 + [("george", None)] * 55,
        {"fiona": "Fiona Gallagher", "george": "George Boole", "hannah": "Hannah Arendt"},
    )
    open_page(browser, stack)
    box = browser.find_element(By.ID, "friends")
    assert browser.find_element(By.CSS_SELECTOR, "label[for=friends]").text == "User ids"
    # A repeat counts once; a quoted id may hold a comma (the list then goes in a POST body).
    box.send_keys('george, hannah  fiona,nobody george "smith, j"', Keys.ENTER)
    board_rank = {m: _standing(stack, m)["rank"] for m in ("fiona", "george", "hannah")}
    wait_for(
        lambda: (
            rows(browser, "friends-rows")
            == [
                ("1", "Fiona Gallagher fiona", f"#{board_rank['fiona']}", "57"),
                ("2", "Hannah Arendt hannah", f"#{board_rank['hannah']}", "56"),
                ("3", "George Boole george", f"#{board_rank['george']}", "55"),
                (NONE, "nobody", NONE, "0"),
                (NONE, "smith, j", NONE, "0"),
            ]
        ),
        3,
        "the group ranking",
    )
    assert "3 of 5 on this board" in text(browser, "friends-status")
    assert "friends=george" in browser.current_url  # a link reopens the comparison

    insert_pomodoros(stack.dsn, [("george", None)] * 3)  # 58: George leads the group
    wait_for(
        lambda: (
            [r[:1] + r[-1:] for r in rows(browser, "friends-rows")][:2]
            == [("1", "58"), ("2", "57")]
            and rows(browser, "friends-rows")[0][1].startswith("George Boole")
        ),
        2,
        "George first after the commit",
    )
    screenshot(browser, tmp_path, "page-friends.png")


def test_watch_me_highlights_the_row_and_says_who_passed(
    browser: Any, stack: Stack, tmp_path: Path
) -> None:
    """ "Watch me" highlights the member's rows, shows the standing, remembers the id, and
    when another member passes it says so politely (who, the previous and the new rank);
    a bad id gets the API's message."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    insert_pomodoros(
        stack.dsn,
        [("wendy", None)] * 70 + [("xavier", None)] * 69,
        {"wendy": "Wendy Carlos", "xavier": "Xavier Mertz"},
    )
    open_page(browser, stack)
    box = browser.find_element(By.ID, "me")
    too_long = "w" * 201
    box.send_keys(too_long, Keys.ENTER)
    refused = httpx.get(f"{stack.api.base_url}/v1/boards/pomodoros/day/members/{too_long}")
    assert refused.status_code == 400
    wait_for(
        lambda: text(browser, "standing") == refused.json()["error"]["message"],
        2,
        "the API's message for a bad id",
    )
    box.clear()
    box.send_keys("wendy", Keys.ENTER)
    before = _standing(stack, "wendy")["rank"]
    wait_for(
        lambda: text(browser, "standing").startswith(f"Wendy Carlos is #{before} of "),
        2,
        "the standing",
    )
    assert "with 70 pomodoros" in text(browser, "standing")
    mine = browser.find_element(By.CSS_SELECTOR, "#rows tr[aria-current=true]")
    assert mine.get_attribute("data-member") == "wendy" and "me" in mine.get_attribute("class")
    assert "YOU" in mine.text.upper()
    browser.find_element(By.ID, "friends").send_keys("xavier", Keys.ENTER)
    wait_for(lambda: len(rows(browser, "friends-rows")) == 2, 2, "xavier and wendy compared")
    me = browser.find_element(By.CSS_SELECTOR, "#friends-rows tr[aria-current=true]")
    assert me.get_attribute("data-member") == "wendy"
    notice = browser.find_element(By.ID, "notice")
    assert notice.get_attribute("aria-live") == "polite" and notice.text == ""

    insert_pomodoros(stack.dsn, [("xavier", None)] * 2)  # 71 > 70
    after = wait_for(lambda: text(browser, "notice"), 2, "the overtaken notice")
    assert _standing(stack, "wendy")["rank"] == before + 1
    assert f"Xavier Mertz passed you: now #{before + 1}, was #{before}" in after, after
    assert browser.execute_script("return localStorage.getItem('watch-me')") == "wendy"
    browser.set_window_size(820, 2000)  # the whole page: board, friends, watch me
    time.sleep(0.3)
    screenshot(browser, tmp_path, "page-watch.png")
    browser.set_window_size(820, 1180)


def test_an_unavailable_board_is_explained(browser: Any, stack: Stack) -> None:
    """A board the projector had to stop (its table no longer fits) is a 503 the page names;
    the other boards go on."""
    stack.execute("ALTER TABLE pomodoros RENAME COLUMN team_id TO squad")
    try:
        insert_pomodoros(stack.dsn, [("yara", None)])  # the stream meets the new schema
        url = f"{stack.api.base_url}/v1/boards/team-focus/week"
        wait_for(lambda: httpx.get(url).status_code == 503, 20, "team-focus to stop")
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        browser.get(stack.api.base_url + "/?board=team-focus&period=week")
        message = wait_for(
            lambda: "unavailable" in text(browser, "rows") and text(browser, "rows"),
            5,
            "the page to say the board is unavailable",
        )
        assert "This board is unavailable right now: board 'team-focus'" in message
        assert text(browser, "live") == "unavailable"
    finally:
        stack.execute("ALTER TABLE pomodoros RENAME COLUMN squad TO team_id")
        insert_pomodoros(stack.dsn, [("yara", None)])


def test_the_page_goes_on_from_postgresql(browser: Any, stack: Stack) -> None:
    """With Redis out of reach the API answers from PostgreSQL: the board, the friends and the
    standing say so, a link's friends are compared, and a pass is still noticed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    insert_pomodoros(
        stack.dsn,
        [("paula", None)] * 90 + [("quentin", None)] * 89,
        {"paula": "Paula Rego", "quentin": "Quentin Blake"},
    )
    env = {**stack.env, "PROJECTOR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    api = ApiProcess(env, stack.logs / "api-without-redis.log")
    try:
        open_page(browser, stack, "?friends=quentin,paula", base_url=api.base_url)
        assert "from PostgreSQL (fallback)" in text(browser, "freshness")
        browser.find_element(By.ID, "me").send_keys("paula", Keys.ENTER)
        before = _standing(stack, "paula", api.base_url)
        assert before["source"] == "postgres"
        wait_for(
            lambda: text(browser, "standing").startswith(f"Paula Rego is #{before['rank']} of "),
            2,
            "the standing from PostgreSQL",
        )
        assert "from PostgreSQL (fallback)" in text(browser, "standing")
        wait_for(
            lambda: (
                [r[1] for r in rows(browser, "friends-rows")]
                == ["Paula Rego paula YOU", "Quentin Blake quentin"]
            ),
            2,
            "the friends from the link, from PostgreSQL",
        )
        assert "from PostgreSQL (fallback)" in text(browser, "friends-status")

        insert_pomodoros(stack.dsn, [("quentin", None)] * 2)  # 91 > 90
        notice = wait_for(lambda: text(browser, "notice"), 5, "the notice from PostgreSQL")
        assert f"Quentin Blake passed you: now #{before['rank'] + 1}, was #{before['rank']}" in (
            notice
        )
    finally:
        api.stop()


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
    """With `projector demo` writing, the page changes by itself; friends and "watch me" in
    use on the demo's people make the README's screenshot."""
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
        members = browser.execute_script(
            "return [...document.querySelectorAll('#rows tr[data-member]')]"
            ".map((tr) => tr.dataset.member)"
        )
        browser.find_element("id", "friends").send_keys(
            f"{members[1]}, {members[6]} {members[8]}", "\n"
        )
        browser.find_element("id", "me").send_keys(members[3], "\n")
        wait_for(lambda: len(rows(browser, "friends-rows")) == 4, 3, "the friends")
        wait_for(lambda: " is #" in text(browser, "standing"), 3, "the standing")
        browser.execute_script("document.activeElement.blur()")
        browser.set_window_size(820, 2050)  # the whole page: board, friends, watch me
        time.sleep(0.3)
        screenshot(browser, tmp_path, "page-demo.png")  # copied to docs/live-page.png
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
