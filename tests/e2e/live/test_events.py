"""Server-Sent Events against real servers: ``projector run`` publishes each watermark, the API
(real uvicorn) pushes boards that changed, wakes ``min_lsn`` waits, and ends streams cleanly."""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis

from api.app import App

from .support import EventStream, Stack, ThreadServer, insert_pomodoros, thread_server

TODAY = "/v1/leaderboards/day/events?limit=1000"


def without_as_of(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "as_of"}


def test_first_event_is_the_board_at_once(stack: Stack) -> None:
    """On connect the stream says how to retry and sends the board as GET answers it."""
    insert_pomodoros(stack.dsn, [("first", None)], {"first": "First Person"})
    stack.caught_up(redis.Redis.from_url(stack.config["redis_url"]))
    started = time.monotonic()
    stream = EventStream(stack.api.base_url, "/v1/leaderboards/week/events?limit=5", 1.0)
    try:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.response.headers["cache-control"] == "no-store"
        assert stream.next().retry == 1000
        event = stream.next()
        assert time.monotonic() - started < 1.0
        body = event.json()
        assert event.id == body["as_of"]["lsn"]
        answer = httpx.get(stack.api.base_url + "/v1/leaderboards/week?limit=5").json()
        assert without_as_of(body) == without_as_of(answer)
        assert body["source"] == "redis" and body["limit"] == 5
        assert {"rank": 1, "user_id": "first", "display_name": "First Person", "score": 1} in (
            body["entries"]
        )
    finally:
        stream.close()


def test_a_commit_is_pushed_within_a_second(stack: Stack) -> None:
    """A pomodoro committed to PostgreSQL reaches a connected client within a second."""
    stream = EventStream(stack.api.base_url, TODAY, 5.0)
    try:
        stream.next_data()
        committed = time.monotonic()
        insert_pomodoros(stack.dsn, [("pushed", None)] * 3, {"pushed": "Pushed Person"})
        while True:
            body = stream.next_data().json()
            mine = [e for e in body["entries"] if e["user_id"] == "pushed"]
            if mine:
                break
        assert time.monotonic() - committed < 1.0
        assert mine[0]["score"] == 3 and mine[0]["display_name"] == "Pushed Person"
    finally:
        stream.close()


def test_only_changed_boards_are_pushed(stack: Stack) -> None:
    """A commit that leaves a board's answer alone sends its clients nothing."""
    quiet = "/v1/leaderboards/day/events?bucket=2024-02-29"
    stream = EventStream(stack.api.base_url, quiet, 1.5)
    try:
        assert stream.next_data().json()["entries"] == []
        insert_pomodoros(stack.dsn, [("elsewhere", None)])  # today, not 2024-02-29
        with pytest.raises(httpx.ReadTimeout):
            stream.next_data()
    finally:
        stream.close()
    stream = EventStream(stack.api.base_url, quiet, 1.0)
    try:
        stream.next_data()
        leap = datetime(2024, 2, 29, 12, tzinfo=UTC)
        insert_pomodoros(stack.dsn, [("leaper", leap)])
        body = stream.next_data().json()
        assert [e["user_id"] for e in body["entries"]] == ["leaper"]
        assert body["bucket"] == "2024-02-29"
    finally:
        stream.close()


def test_head_and_bad_parameters_answer_without_streaming(stack: Stack) -> None:
    """HEAD gets the stream's headers only; bad parameters get 400 JSON naming them."""
    response = httpx.head(stack.api.base_url + TODAY, timeout=5)
    assert response.status_code == 200 and response.content == b""
    assert response.headers["content-type"].startswith("text/event-stream")
    for query, parameter in (("limit=0", "limit"), ("offset=1", "offset"), ("bucket=x", "bucket")):
        response = httpx.get(f"{stack.api.base_url}/v1/leaderboards/day/events?{query}", timeout=5)
        assert response.status_code == 400, query
        assert response.json()["error"]["parameter"] == parameter
    response = httpx.get(stack.api.base_url + "/v1/leaderboards/decade/events", timeout=5)
    assert response.status_code == 400


def test_server_shutdown_ends_every_stream_cleanly(stack: Stack) -> None:
    """SIGTERM to a two-worker API ends open streams at once, each with its last chunk."""
    api = stack.start_api(workers=2)
    streams = [EventStream(api.base_url, TODAY, 10.0) for _ in range(4)]
    ended: list[float] = []
    try:
        for stream in streams:
            stream.next_data()
        stopped = time.monotonic()
        api.proc.send_signal(signal.SIGTERM)
        for stream in streams:
            with pytest.raises(StopIteration):  # a clean end, not a protocol error
                while True:
                    stream.next()
            ended.append(time.monotonic() - stopped)
        assert api.proc.wait(10) == 0
        exited = time.monotonic() - stopped
    finally:
        for stream in streams:
            stream.close()
    assert max(ended) < 3.0, ended
    assert exited < 5.0, "the server waited for its streams instead of ending them"


def _tasks(server: ThreadServer) -> int:
    async def count() -> int:
        import asyncio

        return len(asyncio.all_tasks())

    result: int = server.run(count())
    return result


def test_client_disconnects_leave_no_stream_or_task_behind(stack: Stack) -> None:
    """Clients that hang up are forgotten: no subscriber, no task left on the server's loop."""
    server = thread_server(stack.config)
    app: App = server.app
    try:
        probe = EventStream(server.base_url, "/v1/leaderboards/all/events", 5.0)
        probe.next_data()
        probe.close()
        time.sleep(0.3)
        baseline = _tasks(server)
        streams = [EventStream(server.base_url, TODAY, 5.0) for _ in range(20)]
        for stream in streams:
            stream.next_data()
        assert app._running is not None and app._running.events.streams == 20
        for stream in streams:
            stream.close()
        deadline = time.monotonic() + 3
        while app._running.events.streams or _tasks(server) > baseline:
            assert time.monotonic() < deadline, (app._running.events.streams, _tasks(server))
            time.sleep(0.05)
    finally:
        server.close()


def test_idle_streams_get_heartbeat_comments(stack: Stack) -> None:
    """A stream with nothing new gets a comment line every heartbeat interval."""
    server = thread_server(stack.config)
    assert server.app._running is not None
    server.app._running.events.heartbeat = 0.2
    try:
        stream = EventStream(server.base_url, "/v1/leaderboards/day/events?bucket=2001-01-01")
        try:
            stream.next_data()
            assert stream.next().comments == ["keep-alive"]
            for _ in range(3):
                started = time.monotonic()
                event = stream.next()
                assert event.data is None and event.comments == ["keep-alive"]
                assert time.monotonic() - started < 0.5
        finally:
            stream.close()
    finally:
        server.close()


def _watermark_reads(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_hget", {}).get("calls", 0))


def test_min_lsn_wait_is_woken_by_the_watermark_event(stack: Stack, rds: redis.Redis) -> None:
    """A min_lsn request answers from Redis as soon as the projector publishes, without polling."""
    server = thread_server(stack.config, api_min_lsn_wait=8.0)
    app: App = server.app
    try:
        assert app._running is not None
        # No polling to fall back on: only an event can end this wait early.
        app._running.sources.safety_poll = 60.0
        app._running.feed.poll_interval = 60.0
        time.sleep(1.2)  # let the feed's first poll pass
        stack.projector.signal(signal.SIGSTOP)
        try:
            lsn = insert_pomodoros(stack.dsn, [("reader", None)])
            answer: dict[str, Any] = {}

            def ask() -> None:
                response = httpx.get(
                    f"{server.base_url}/v1/users/reader", params={"min_lsn": lsn}, timeout=20
                )
                answer.update(response.json(), answered=time.monotonic())

            asker = threading.Thread(target=ask)
            asker.start()
            time.sleep(0.2)
            reads = _watermark_reads(rds)
            time.sleep(1.0)
            assert not answer, "answered before the projector moved"
            # Polling would read the watermark every few milliseconds; the stack's other API
            # reads it once a second (its safety poll).
            assert _watermark_reads(rds) - reads <= 4
            resumed = time.monotonic()
        finally:
            stack.projector.signal(signal.SIGCONT)
        asker.join(20)
        assert answer["source"] == "redis"
        assert answer["periods"]["all"]["score"] == 1
        assert answer["answered"] - resumed < 1.0
    finally:
        server.close()


def test_subscription_comes_back_after_redis_drops_it(stack: Stack, rds: redis.Redis) -> None:
    """Killed pub/sub connections are resubscribed, and pushes go on."""
    channel = f"{stack.prefix}events"
    stream = EventStream(stack.api.base_url, TODAY, 5.0)
    try:
        stream.next_data()
        assert rds.pubsub_numsub(channel)[0][1] >= 1
        rds.client_kill_filter(_type="pubsub")
        deadline = time.monotonic() + 5
        while rds.pubsub_numsub(channel)[0][1] < 1:
            assert time.monotonic() < deadline, "the API did not resubscribe"
            time.sleep(0.05)
        insert_pomodoros(stack.dsn, [("after_kill", None)])
        while True:
            body = stream.next_data().json()
            if any(e["user_id"] == "after_kill" for e in body["entries"]):
                break
        metrics = httpx.get(stack.api.base_url + "/metrics", timeout=5).text
        assert "api_watermark_events_up" in metrics
    finally:
        stream.close()
