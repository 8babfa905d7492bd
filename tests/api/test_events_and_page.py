"""Fan-out and page logic without servers: one read per distinct board per tick, pushes only on
change, newest-only mailboxes; the page's content types, cache policy and validators."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from api.boards import AsOf, BoardPage, Entry, board_json
from api.errors import NotFound
from api.events import BoardEvents, BoardKey, event_frame
from api.feed import WatermarkFeed
from api.page import Page
from api.routes import BoardQuery
from projector.core.boards import DEFAULT_BOARDS
from projector.core.buckets import Period

DAY_KEY = BoardKey(Period.DAY, None, 5, DEFAULT_BOARDS[0])
ALL_KEY = BoardKey(Period.ALL, None, 10, DEFAULT_BOARDS[0])


class FakeBoards:
    """Board JSON per (period, bucket, limit), editable by the test; counts reads."""

    def __init__(self) -> None:
        self.reads: Counter[tuple[str, str, int]] = Counter()
        self.entries: dict[str, list[dict[str, Any]]] = {}
        self.lsn = 1

    async def read(self, query: BoardQuery) -> tuple[BoardPage, str]:
        self.reads[(query.period.value, query.bucket, query.limit)] += 1
        await asyncio.sleep(0)
        rows = self.entries.get(query.period.value, [])
        entries = [
            Entry(e["rank"], e["user_id"], e.get("display_name"), e["score"])
            for e in rows[: query.limit]
        ]
        return BoardPage(len(rows), entries, AsOf(self.lsn, None)), "redis"


class Client:
    """One stream's ASGI side: what it was sent, and a way to hang up."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.hang_up = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            self.bodies.append(message["body"])

    @property
    def events(self) -> list[bytes]:
        return [b for body in self.bodies for b in body.split(b"\n\n") if b.startswith(b"id:")]


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_each_distinct_board_is_read_once_per_tick_and_pushed_only_on_change() -> None:
    """Thirty clients of one board and five of another cost two reads per tick, not 35."""

    async def scenario() -> None:
        boards = FakeBoards()
        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(boards.read, feed, ZoneInfo("UTC"), min_interval=0)
        hub.start()
        day = BoardKey(Period.DAY, "2026-11-30", 10, DEFAULT_BOARDS[0])
        week = BoardKey(Period.WEEK, "2026-W49", 3, DEFAULT_BOARDS[0])
        clients = [(Client(), day) for _ in range(30)] + [(Client(), week) for _ in range(5)]
        tasks = [asyncio.create_task(hub.stream(key, c.receive, c.send)) for c, key in clients]
        await _settle()
        assert hub.streams == 35
        assert all(len(c.events) == 1 for c, _ in clients)  # the first event at once
        first_reads = sum(boards.reads.values())
        assert first_reads == 2  # clients arriving together share the first read

        boards.lsn = 2  # the watermark moved, the answers did not
        feed.heard(2)
        await _settle()
        assert sum(boards.reads.values()) == first_reads + 2
        assert all(len(c.events) == 1 for c, _ in clients)

        boards.lsn = 3
        boards.entries["day"] = [{"rank": 1, "user_id": "ada", "display_name": None, "score": 1}]
        feed.heard(3)
        await _settle()
        assert sum(boards.reads.values()) == first_reads + 4
        assert [len(c.events) for c, key in clients if key == day] == [2] * 30
        assert [len(c.events) for c, key in clients if key == week] == [1] * 5
        assert b'"user_id":"ada"' in clients[0][0].events[-1]

        for client, _ in clients:
            client.hang_up.set()
        assert await asyncio.gather(*tasks) == [False] * 35  # each saw its client leave
        assert hub.streams == 0
        await hub.stop()

    asyncio.run(scenario())


def test_ticks_during_a_read_coalesce_and_slow_clients_skip_to_the_newest() -> None:
    """Ten ticks during one read make one more read; a mailbox keeps only the newest frame."""

    async def scenario() -> None:
        boards = FakeBoards()
        gate = asyncio.Event()
        gate.set()

        async def slow_read(query: BoardQuery) -> tuple[BoardPage, str]:
            await gate.wait()
            return await boards.read(query)

        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(slow_read, feed, ZoneInfo("UTC"), min_interval=0)
        hub.start()
        key = ALL_KEY
        client = Client()
        task = asyncio.create_task(hub.stream(key, client.receive, client.send))
        await _settle()
        reads = sum(boards.reads.values())
        gate.clear()
        for lsn in range(2, 12):
            boards.entries["all"] = [{"rank": 1, "user_id": f"u{lsn}", "score": lsn}]
            boards.lsn = lsn
            feed.heard(lsn)
            await asyncio.sleep(0)
        gate.set()
        await _settle()
        assert sum(boards.reads.values()) - reads <= 2
        assert b'"user_id":"u11"' in client.events[-1]
        client.hang_up.set()
        await task
        await hub.stop()

    asyncio.run(scenario())


def test_closing_ends_streams_and_refuses_new_ones() -> None:
    """On shutdown every stream finishes its response; a new client gets 503."""

    async def scenario() -> None:
        boards = FakeBoards()
        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(boards.read, feed, ZoneInfo("UTC"), min_interval=0)
        client = Client()
        ended: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            ended.append(message)
            await client.send(message)

        task = asyncio.create_task(hub.stream(DAY_KEY, client.receive, send))
        await _settle()
        hub.close()
        assert await task is True
        assert ended[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
        from api.errors import Unavailable

        with pytest.raises(Unavailable):
            await hub.stream(DAY_KEY, client.receive, client.send)

    asyncio.run(scenario())


def test_a_lone_change_is_pushed_at_once_then_a_client_gets_the_newest_every_min_interval() -> None:
    """The first change reaches the client at once; the changes right after it are read when
    the client is due for its next event, min_interval after the first, and reach it as one
    event, the newest."""

    async def scenario() -> None:
        boards = FakeBoards()
        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(boards.read, feed, ZoneInfo("UTC"), min_interval=0.3)
        assert hub.read_interval == pytest.approx(0.075)
        hub.start()
        client = Client()
        task = asyncio.create_task(hub.stream(ALL_KEY, client.receive, client.send))
        await asyncio.sleep(0.4)
        reads = sum(boards.reads.values())

        def change(lsn: int) -> None:
            boards.lsn = lsn
            boards.entries["all"] = [{"rank": 1, "user_id": f"u{lsn}", "score": lsn}]
            feed.heard(lsn)

        change(2)
        await asyncio.sleep(0.05)
        assert sum(boards.reads.values()) == reads + 1  # read at once...
        assert len(client.events) == 2 and b'"user_id":"u2"' in client.events[-1]  # ...sent
        for lsn in range(3, 8):
            change(lsn)
            await asyncio.sleep(0.02)
        assert sum(boards.reads.values()) == reads + 1  # not read for a client not due...
        assert len(client.events) == 2  # ...and held back
        await asyncio.sleep(0.3)
        assert len(client.events) == 3  # then one read and one event for all five: the newest
        assert sum(boards.reads.values()) == reads + 2
        assert b'"user_id":"u7"' in client.events[-1]
        client.hang_up.set()
        await task
        await hub.stop()

    asyncio.run(scenario())


def test_pacing_holds_back_only_the_clients_that_just_had_an_event() -> None:
    """A change right after another goes at once to a client whose slice the first one left
    alone, and min_interval after its event to a client that had one."""

    async def scenario() -> None:
        boards = FakeBoards()
        boards.entries["all"] = [
            {"rank": 1, "user_id": "ada", "score": 9},
            {"rank": 2, "user_id": "bo", "score": 5},
        ]
        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(boards.read, feed, ZoneInfo("UTC"), min_interval=0.3)
        hub.start()
        top10, top1 = Client(), Client()
        tasks = [
            asyncio.create_task(hub.stream(key, client.receive, client.send))
            for key, client in (
                (ALL_KEY, top10),
                (BoardKey(Period.ALL, None, 1, ALL_KEY.board), top1),
            )
        ]
        await asyncio.sleep(0.4)
        boards.lsn = 2
        boards.entries["all"][1] = {"rank": 2, "user_id": "bo", "score": 6}  # top10's slice only
        feed.heard(2)
        await asyncio.sleep(0.05)
        assert (len(top10.events), len(top1.events)) == (2, 1)
        boards.lsn = 3
        boards.entries["all"][0] = {"rank": 1, "user_id": "ada", "score": 10}
        feed.heard(3)
        await asyncio.sleep(0.05)
        assert (len(top10.events), len(top1.events)) == (2, 2)  # top1 at once, top10 held back
        await asyncio.sleep(0.3)
        assert (len(top10.events), len(top1.events)) == (3, 2)
        assert b'"score":10' in top10.events[-1] and b'"score":10' in top1.events[-1]
        for client in (top10, top1):
            client.hang_up.set()
        await asyncio.gather(*tasks)
        await hub.stop()

    asyncio.run(scenario())


async def _no_lsn() -> int | None:
    return None


def test_page_and_assets_have_types_validators_and_cache_policies() -> None:
    """/ is revalidated; assets asked for by hash are immutable; ETags give 304."""
    page = Page()
    index = page.index(None)
    headers = dict(index.headers)
    assert index.status == 200 and headers[b"content-type"] == b"text/html; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache"
    assert page.index(headers[b"etag"]).status == 304
    assert page.index(b'W/"x", ' + headers[b"etag"]).status == 304
    assert page.index(b'"other"').status == 200
    html = index.body.decode()
    for name, kind in (("app.js", b"text/javascript"), ("app.css", b"text/css")):
        start = html.index(f"/static/{name}?v=") + len(f"/static/{name}?")
        version = html[start : html.index('"', start)].encode()
        asset = page.asset(name.encode(), version, None)
        asset_headers = dict(asset.headers)
        assert asset_headers[b"content-type"].startswith(kind)
        assert asset_headers[b"cache-control"] == b"public, max-age=31536000, immutable"
        stale = dict(page.asset(name.encode(), b"v=0", None).headers)
        assert stale[b"cache-control"] == b"no-cache"
        assert b"nosniff" in asset_headers[b"x-content-type-options"]
    assert b"script-src 'self'" in headers[b"content-security-policy"]
    with pytest.raises(NotFound):
        page.asset(b"index.html.bak", b"", None)


def test_many_limits_cost_one_read_and_each_gets_exactly_its_slice() -> None:
    """Clients of one board with ten limits (both route forms) cost one read per update, of
    the largest limit; each event is exactly the route's JSON at the client's limit."""

    async def scenario() -> None:
        boards = FakeBoards()
        boards.entries["day"] = [
            {"rank": i, "user_id": f"u{i:02d}", "display_name": f"Ü {i}", "score": 100 - i}
            for i in range(1, 41)
        ]
        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(boards.read, feed, ZoneInfo("UTC"), min_interval=0)
        hub.start()
        keys = [
            BoardKey(Period.DAY, "2026-11-30", limit, DEFAULT_BOARDS[0], alias)
            for limit in (1, 2, 3, 5, 8, 13, 21, 34, 55)
            for alias in (True, False)
        ]
        largest = max(key.limit for key in keys)
        clients = [(Client(), key) for key in sorted(keys, key=lambda k: -k.limit)]
        tasks = [asyncio.create_task(hub.stream(key, c.receive, c.send)) for c, key in clients]
        await _settle()
        reads = sum(boards.reads.values())
        boards.lsn = 2
        boards.entries["day"][0] = {**boards.entries["day"][0], "user_id": "new"}
        feed.heard(2)
        await _settle()
        assert sum(boards.reads.values()) == reads + 1
        assert list(boards.reads)[-1] == ("day", "2026-11-30", largest)
        for client, key in clients:
            query = BoardQuery(key.period, "2026-11-30", key.limit, 0, None, key.board, key.alias)
            page, source = await boards.read(query)
            assert client.events[-1] + b"\n\n" == event_frame(
                board_json(query, page, source, ZoneInfo("UTC"))
            )
        for client, _ in clients:
            client.hang_up.set()
        await asyncio.gather(*tasks)
        await hub.stop()

    asyncio.run(scenario())


def test_a_slow_board_delays_no_other() -> None:
    """While one board's read hangs, another board's change is still pushed at once."""

    async def scenario() -> None:
        boards = FakeBoards()
        stuck = asyncio.Event()

        async def read(query: BoardQuery) -> tuple[BoardPage, str]:
            if query.period == Period.WEEK and boards.lsn > 1:
                await stuck.wait()
            return await boards.read(query)

        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(read, feed, ZoneInfo("UTC"), min_interval=0)
        hub.start()
        week, day = Client(), Client()
        tasks = [
            asyncio.create_task(
                hub.stream(
                    BoardKey(Period.WEEK, None, 5, DEFAULT_BOARDS[0]), week.receive, week.send
                )
            ),
            asyncio.create_task(hub.stream(DAY_KEY, day.receive, day.send)),
        ]
        await _settle()
        for lsn in (2, 3):
            boards.lsn = lsn
            boards.entries["day"] = [{"rank": 1, "user_id": f"d{lsn}", "score": lsn}]
            feed.heard(lsn)
            await _settle()
            assert f'"user_id":"d{lsn}"'.encode() in day.events[-1]
        assert len(week.events) == 1  # its read still hangs
        stuck.set()
        for client in (week, day):
            client.hang_up.set()
        await asyncio.gather(*tasks)
        await hub.stop()

    asyncio.run(scenario())


def test_boards_are_re_read_only_when_their_data_can_have_changed() -> None:
    """Ticks without a new watermark read nothing; a board PostgreSQL answers is re-read at
    most every fallback_interval, however often the feed ticks."""

    async def scenario() -> None:
        boards = FakeBoards()
        source = "redis"

        async def read(query: BoardQuery) -> tuple[BoardPage, str]:
            page, _ = await boards.read(query)
            return page, source

        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(read, feed, ZoneInfo("UTC"), min_interval=0, fallback_interval=0.3)
        hub.start()
        feed.heard(1)
        client = Client()
        past = BoardKey(Period.DAY, "2026-01-05", 10, DEFAULT_BOARDS[0])
        task = asyncio.create_task(hub.stream(past, client.receive, client.send))
        await _settle()
        reads = sum(boards.reads.values())
        for _ in range(10):  # polls that found the same watermark
            feed.heard(1)
            await _settle()
        assert sum(boards.reads.values()) == reads
        feed.heard(2)
        await _settle()
        assert sum(boards.reads.values()) == reads + 1

        source = "postgres"
        feed.heard(3)
        await _settle()
        reads = sum(boards.reads.values())
        started = asyncio.get_running_loop().time()
        lsn = 4
        while asyncio.get_running_loop().time() - started < 0.95:
            feed.heard(lsn)
            lsn += 1
            await asyncio.sleep(0.01)
        assert 2 <= sum(boards.reads.values()) - reads <= 4  # every 0.3 s, not every tick
        client.hang_up.set()
        await task
        await hub.stop()

    asyncio.run(scenario())


def test_one_encoding_per_update_is_shared_by_every_subscriber(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two hundred clients of one board and limit cost one JSON encoding per update, and each
    is sent the very same bytes, written from the board's refresher (no task per client)."""
    import api.events

    encodings = 0
    encode = api.events.board_json

    def counted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        nonlocal encodings
        encodings += 1
        return encode(*args, **kwargs)

    monkeypatch.setattr(api.events, "board_json", counted)

    async def scenario() -> None:
        boards = FakeBoards()
        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(boards.read, feed, ZoneInfo("UTC"), min_interval=0)
        hub.start()
        clients = [Client() for _ in range(200)]
        writers: set[str] = set()  # the tasks that wrote the updates

        def recording(client: Client) -> Any:
            async def send(message: dict[str, Any]) -> None:
                if client.bodies:
                    task = asyncio.current_task()
                    writers.add(task.get_name() if task is not None else "")
                await client.send(message)

            return send

        tasks = [
            asyncio.create_task(hub.stream(DAY_KEY, c.receive, recording(c)), name=f"stream{i}")
            for i, c in enumerate(clients)
        ]
        await _settle()
        assert all(len(c.events) == 1 for c in clients)
        for lsn in (2, 3, 4):
            before = encodings
            boards.lsn = lsn
            boards.entries["day"] = [{"rank": 1, "user_id": f"u{lsn}", "score": lsn}]
            feed.heard(lsn)
            await _settle()
            assert encodings == before + 1
            assert all(len(c.events) == lsn for c in clients)
            sent = {id(c.bodies[-1]) for c in clients}
            assert len(sent) == 1  # one bytes object, not 200 copies
        # Each update was written by the board's read, one task for all 200 clients: no
        # stream's own task woke for it.
        assert len(writers) <= 3 and not any(name.startswith("stream") for name in writers)
        for client in clients:
            client.hang_up.set()
        assert await asyncio.gather(*tasks) == [False] * 200
        assert hub.streams == 0
        await hub.stop()

    asyncio.run(scenario())


class SlowClient(Client):
    """A client whose socket is full: each body waits until the test lets it through."""

    def __init__(self) -> None:
        super().__init__()
        self.writable = asyncio.Event()
        self.writable.set()

    async def send(self, message: dict[str, Any]) -> None:
        await self.writable.wait()
        await super().send(message)


def test_a_slow_client_delays_no_other_and_skips_to_the_newest_state() -> None:
    """While one client's writes wait (flow control), the board's other clients get every
    update at once; the slow one, once writable again, gets only the newest state and then
    every update as before."""

    async def scenario() -> None:
        boards = FakeBoards()
        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(boards.read, feed, ZoneInfo("UTC"), min_interval=0)
        hub.start()
        slow, fast = SlowClient(), Client()
        tasks = [asyncio.create_task(hub.stream(DAY_KEY, c.receive, c.send)) for c in (slow, fast)]
        await _settle()
        assert len(slow.events) == len(fast.events) == 1

        def update(lsn: int) -> None:
            boards.lsn = lsn
            boards.entries["day"] = [{"rank": 1, "user_id": f"u{lsn}", "score": lsn}]
            feed.heard(lsn)

        slow.writable.clear()
        for lsn in range(2, 7):
            update(lsn)
            await _settle()
            assert f'"user_id":"u{lsn}"'.encode() in fast.events[-1]
        assert len(fast.events) == 6
        assert len(slow.events) == 1  # its first stalled write is still waiting

        slow.writable.set()
        await _settle()
        # The write that stalled (u2), then the newest state (u6): none of u3 to u5.
        assert [e.split(b'"user_id":"')[1][:2] for e in slow.events[1:]] == [b"u2", b"u6"]
        update(7)
        await _settle()
        assert b'"user_id":"u7"' in slow.events[-1] and b'"user_id":"u7"' in fast.events[-1]

        for client in (slow, fast):
            client.hang_up.set()
        await asyncio.gather(*tasks)
        assert hub.streams == 0
        await hub.stop()

    asyncio.run(scenario())


def test_a_write_that_fails_ends_only_its_own_stream() -> None:
    """A client whose write raises (its socket went away) ends its stream with that error;
    the board's other clients go on receiving updates."""

    async def scenario() -> None:
        boards = FakeBoards()
        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(boards.read, feed, ZoneInfo("UTC"), min_interval=0)
        hub.start()
        broken, fine = Client(), Client()

        async def send(message: dict[str, Any]) -> None:
            if len(broken.bodies) >= 1 and message["body"]:
                raise OSError("connection reset")
            await broken.send(message)

        failing = asyncio.create_task(hub.stream(DAY_KEY, broken.receive, send))
        going = asyncio.create_task(hub.stream(DAY_KEY, fine.receive, fine.send))
        await _settle()
        for lsn in (2, 3):
            boards.lsn = lsn
            boards.entries["day"] = [{"rank": 1, "user_id": f"u{lsn}", "score": lsn}]
            feed.heard(lsn)
            await _settle()
        with pytest.raises(OSError, match="connection reset"):
            await failing
        assert len(fine.events) == 3 and hub.streams == 1
        fine.hang_up.set()
        await going
        await hub.stop()

    asyncio.run(scenario())


def test_silent_streams_get_a_keep_alive_comment() -> None:
    """A stream silent for ``heartbeat`` seconds is sent a comment; a busy one is not."""

    async def scenario() -> None:
        boards = FakeBoards()
        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(boards.read, feed, ZoneInfo("UTC"), min_interval=0, heartbeat=0.2)
        hub.start()
        client = Client()
        task = asyncio.create_task(hub.stream(DAY_KEY, client.receive, client.send))
        await asyncio.sleep(0.1)
        assert b": keep-alive\n\n" not in client.bodies
        await asyncio.sleep(0.35)
        assert b": keep-alive\n\n" in client.bodies
        client.hang_up.set()
        await task
        await hub.stop()

    asyncio.run(scenario())


def test_clients_that_leave_an_idle_board_are_not_kept() -> None:
    """Three hundred clients come and go on a board that never changes: what the board keeps
    for them shrinks with them (no pass comes by to drop them)."""

    async def scenario() -> None:
        boards = FakeBoards()
        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(boards.read, feed, ZoneInfo("UTC"), min_interval=0)
        hub.start()
        clients = [Client() for _ in range(300)]
        tasks = [asyncio.create_task(hub.stream(DAY_KEY, c.receive, c.send)) for c in clients]
        await _settle()
        (board,) = hub._boards.values()
        (view,) = board.views.values()
        assert len(view.queue) == 300
        for client in clients[10:]:
            client.hang_up.set()
        await asyncio.gather(*tasks[10:])
        assert len(view.subscribers) == 10 and len(view.queue) <= 2 * 10 + 64
        for client in clients[:10]:
            client.hang_up.set()
        await asyncio.gather(*tasks[:10])
        assert hub._boards == {}
        await hub.stop()

    asyncio.run(scenario())


def test_a_send_that_is_no_coroutine_gets_every_event() -> None:
    """An ASGI server whose send returns a plain awaitable (here a future) is served by the
    stream's own task: its client still gets each update."""

    async def scenario() -> None:
        boards = FakeBoards()
        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(boards.read, feed, ZoneInfo("UTC"), min_interval=0)
        hub.start()
        client = Client()
        loop = asyncio.get_running_loop()

        def send(message: dict[str, Any]) -> asyncio.Future[None]:
            if message["type"] == "http.response.body" and message["body"]:
                client.bodies.append(message["body"])
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done

        task = asyncio.create_task(hub.stream(DAY_KEY, client.receive, send))  # type: ignore[arg-type]
        await _settle()
        for lsn in (2, 3):
            boards.lsn = lsn
            boards.entries["day"] = [{"rank": 1, "user_id": f"u{lsn}", "score": lsn}]
            feed.heard(lsn)
            await _settle()
            assert f'"user_id":"u{lsn}"'.encode() in client.events[-1]
        assert len(client.events) == 3
        client.hang_up.set()
        assert await task is False
        await hub.stop()

    asyncio.run(scenario())


def test_a_board_that_does_not_change_is_read_at_most_every_min_interval() -> None:
    """While the watermark moves every 10 ms without changing a board, the board is read at
    most every min_interval, not every read_interval."""

    async def scenario() -> None:
        boards = FakeBoards()
        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(boards.read, feed, ZoneInfo("UTC"), min_interval=0.2)
        hub.start()
        client = Client()
        task = asyncio.create_task(hub.stream(ALL_KEY, client.receive, client.send))
        await asyncio.sleep(0.3)
        reads = sum(boards.reads.values())
        loop = asyncio.get_running_loop()
        started = loop.time()
        lsn = 2
        while loop.time() - started < 0.65:
            boards.lsn = lsn
            feed.heard(lsn)
            lsn += 1
            await asyncio.sleep(0.01)
        assert 2 <= sum(boards.reads.values()) - reads <= 5  # every 0.2 s, not every 0.05 s
        assert len(client.events) == 1
        client.hang_up.set()
        await task
        await hub.stop()

    asyncio.run(scenario())
