"""Watched members without servers: one read per board's bucket per update for every watched
member, an event only when a member's rank or score moves (with the previous ones and the
neighbours), shared by every stream of that member, and the board streams' caps."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from api.boards import AsOf, Entry, Standing, Watched
from api.errors import TooManyStreams
from api.events import BoardEvents
from api.feed import WatermarkFeed
from api.watch import MemberEvents, MemberKey
from projector.core.boards import DEFAULT_BOARDS, Board
from projector.core.buckets import Period

BOARD = DEFAULT_BOARDS[0]


class FakeBoard:
    """Scores by member, editable by the test; standings ranked as Redis ranks them."""

    def __init__(self) -> None:
        self.scores: dict[str, int] = {}
        self.reads: Counter[tuple[str, ...]] = Counter()
        self.lsn = 1

    async def read(
        self, board: Board, period: Period, bucket: str, members: tuple[str, ...]
    ) -> tuple[Watched, str]:
        self.reads[members] += 1
        await asyncio.sleep(0)
        ranked = sorted(self.scores.items(), key=lambda item: (-item[1], item[0]))
        entries = []
        for position, (member, score) in enumerate(ranked):
            rank = 1 + sum(1 for s in self.scores.values() if s > score)
            entries.append((position, Entry(rank, member, None, score)))
        as_of = AsOf(self.lsn, None)
        standings = []
        for member in members:
            mine = next((p for p, e in entries if e.user_id == member), None)
            if mine is None:
                standings.append(Standing(len(entries), None, None, 0, [], [], as_of))
                continue
            me = entries[mine][1]
            above = [e for p, e in entries[max(0, mine - 1) : mine]]
            below = [e for p, e in entries[mine + 1 : mine + 2]]
            standings.append(Standing(len(entries), None, me.rank, me.score, above, below, as_of))
        return Watched(len(entries), standings, as_of), "redis"


class Client:
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
    def events(self) -> list[dict[str, Any]]:
        frames = [b for body in self.bodies for b in body.split(b"\n\n") if b.startswith(b"id:")]
        return [json.loads(frame.split(b"\ndata: ", 1)[1]) for frame in frames]


async def _settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


def _key(member: str) -> MemberKey:
    return MemberKey(BOARD, Period.DAY, "2026-12-08", member)


def test_an_event_when_someone_passes_the_member_and_one_read_for_all_watched() -> None:
    """Ten streams of ada and five of bob cost one read per update; ada's streams get an
    event when cy passes her (previous and new rank, cy above), none when nothing moved."""

    async def scenario() -> None:
        board = FakeBoard()
        board.scores = {"ada": 5, "bob": 3}
        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(_no_board, feed, ZoneInfo("UTC"))
        members = MemberEvents(board.read, feed, ZoneInfo("UTC"), hub.admitted, min_interval=0)
        members.start()
        ada = [Client() for _ in range(10)]
        bob = [Client() for _ in range(5)]
        tasks = [asyncio.create_task(members.stream(_key("ada"), c.receive, c.send)) for c in ada]
        tasks += [asyncio.create_task(members.stream(_key("bob"), c.receive, c.send)) for c in bob]
        await _settle()
        assert hub.streams == 15  # the board streams' count and caps
        first = ada[0].events[0]
        assert (first["rank"], first["score"], first["previous_rank"]) == (1, 5, None)
        assert first["above"] is None and first["below"]["member"] == "bob"
        assert all(len(c.events) == 1 for c in ada + bob)

        reads = sum(board.reads.values())
        board.lsn = 2
        feed.heard(2)  # the watermark moved, nothing that they watch did
        await _settle()
        assert sum(board.reads.values()) == reads + 1
        assert set(board.reads) >= {("ada", "bob")}
        assert all(len(c.events) == 1 for c in ada + bob)

        board.lsn = 3
        board.scores["cy"] = 7  # cy passes both
        feed.heard(3)
        await _settle()
        assert sum(board.reads.values()) == reads + 2
        passed = ada[3].events[-1]
        assert (passed["rank"], passed["previous_rank"], passed["score"]) == (2, 1, 5)
        assert passed["previous_score"] == 5 and passed["above"]["member"] == "cy"
        assert [len(c.events) for c in ada + bob] == [2] * 15
        assert bob[0].events[-1]["previous_rank"] == 2 and bob[0].events[-1]["rank"] == 3

        for client in ada + bob:
            client.hang_up.set()
        assert await asyncio.gather(*tasks) == [False] * 15
        assert hub.streams == 0
        await members.stop()

    asyncio.run(scenario())


def test_member_streams_count_against_the_stream_caps() -> None:
    """A process at its limit of streams refuses a member stream with 429, like any other."""

    async def scenario() -> None:
        board = FakeBoard()
        feed = WatermarkFeed(None, b"events", _no_lsn)  # type: ignore[arg-type]
        hub = BoardEvents(_no_board, feed, ZoneInfo("UTC"), max_streams=1)
        members = MemberEvents(board.read, feed, ZoneInfo("UTC"), hub.admitted)
        members.start()
        first = Client()
        task = asyncio.create_task(members.stream(_key("ada"), first.receive, first.send))
        await _settle()
        with pytest.raises(TooManyStreams):
            await members.stream(_key("bob"), Client().receive, Client().send)
        first.hang_up.set()
        await task
        await members.stop()

    asyncio.run(scenario())


async def _no_lsn() -> int | None:
    return None


async def _no_board(query: Any) -> Any:
    raise AssertionError("no board stream here")
