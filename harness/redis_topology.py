"""Local Redis high-availability topologies for tests and benchmarks.

`SentinelTopology` runs a master, its replicas and three Sentinels; `ClusterTopology` runs a
Redis Cluster of three masters with one replica each. Every node is a throwaway local
redis-server (no persistence) on a free port, in its topology's own temporary directory; it
dies with the process that started it, and `cleanup()` (or exit) stops it. An operation that
changes a topology (failover, kill -9, restart) returns once clients can rely on the new
shape, and otherwise raises `TopologyError` with the nodes' log tails.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from harness import servers

HOST = "127.0.0.1"
Address = tuple[str, int]

#: How long an operation waits for the topology by default; every wait ends as soon as its
#: condition holds, so this only bounds how long a broken topology takes to be reported.
WAIT_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

_POLL_INTERVAL = 0.05
_COMMAND_TIMEOUT = 5.0
_LOG_LINES = 20
_CLUSTER_BUS_OFFSET = 10_000  # Redis Cluster listens on port + 10000 for its bus
_NO_RETRY = Retry(NoBackoff(), 0)

# Every data node: no eviction (a leaderboard must not lose keys silently), a replica's
# full sync starts at once instead of waiting 5 s for more replicas, and SIGTERM does not
# wait 10 s for lagging (say, paused) replicas.
_DATA_NODE_DIRECTIVES = (
    "maxmemory-policy noeviction",
    "repl-diskless-sync-delay 0",
    "shutdown-timeout 0",
)

# Sentinel's internal periods (SENTINEL DEBUG, Redis 7.0+), shortened for tests. The PING
# (and ask) period: a Sentinel reconnects a dropped link (a promotion drops them all with
# CLIENT KILL) at most once per PING period, and at the default 1 s that alone can outlast
# a down-after of 1 s and start a second, spurious failover. INFO of replicas every 1 s
# instead of 10 s: the old master of a failover is demoted at its first INFO past the wait
# below.
_SENTINEL_DEBUG_PERIODS = ("ping-period", "250", "ask-period", "250", "info-period", "1000")
# The hello (publish) period: Sentinels find each other and spread a new master's address
# by hellos. A Sentinel also turns a replica that reports role master back into a replica
# after 4 such periods, so once a failover may happen, 4 periods must outlast a promotion
# (about 1 s) plus one period, or a manual failover gets undone: 1 s (not the 2 s default)
# is the floor with a margin. Before that, while Sentinels discover each other, 250 ms.
_SENTINEL_DISCOVERY_PUBLISH_PERIOD = "250"
_SENTINEL_PUBLISH_PERIOD = "1000"

T = TypeVar("T")


class TopologyError(servers.HarnessError):
    """A topology could not start, or did not reach the state an operation waits for."""


class _NotYet(Exception):
    """A polled condition does not hold yet; the message says what is missing."""


# --------------------------------------------------------------------------- nodes


def _config_value(value: str) -> str:
    """`value` quoted for a redis.conf line (passwords may hold spaces or quotes)."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"a Redis setting cannot span lines: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _process_state(pid: int) -> str:
    """The one-letter state of `pid` in /proc (`T` once SIGSTOP took hold); `X` when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = servers.free_port()
        bus = port + _CLUSTER_BUS_OFFSET
        if bus <= 65_535 and servers._port_is_free(bus):
            return port
    raise TopologyError("found no free port pair (port, port + 10000) for a cluster node")


def _pairs(reply: Any) -> dict[str, str]:
    """A flat [key, value, ...] reply (RESP2) or a map (RESP3) as a dict of strings."""
    if isinstance(reply, Mapping):
        return {str(key): str(value) for key, value in reply.items()}
    items = list(reply)
    return {str(key): str(value) for key, value in zip(items[::2], items[1::2], strict=True)}


def _parse_info(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key] = value
    return fields


class RedisNode(servers.RedisServer):
    """One redis-server of a topology, a data node or a Sentinel, in a directory of its own.

    Its configuration file is written anew from `directives` at every start, so a restart
    takes what the topology last put there (the master to replicate, say). Throwaway: no
    persistence, and SIGKILL reaches it when the process that started it dies.
    """

    kind = "local"
    process_control = True

    def __init__(
        self,
        directory: Path,
        *,
        sentinel: bool = False,
        cluster: bool = False,
        password: str | None = None,
    ) -> None:
        found = servers.find_redis_server()
        if found is None:
            raise TopologyError("no redis-server on PATH; install redis-server")
        self._executable = found
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directives: list[str] = []
        self.sentinel = sentinel
        self.password = password
        self._cluster = cluster
        self._port = _free_cluster_port() if cluster else servers.free_port()
        self._started_once = False
        self._proc: Any = None  # subprocess.Popen[bytes] while this object started it
        self._log_offset = 0
        self._paused = False

    def __repr__(self) -> str:
        return f"<RedisNode {self.name} on port {self._port}>"

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> Address:
        return (HOST, self._port)

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def pid_path(self) -> Path:
        return self.directory / "redis.pid"

    @property
    def config_path(self) -> Path:
        return self.directory / "redis.conf"

    @property
    def paused(self) -> bool:
        """Whether `pause()` stopped the process and `resume()` has not continued it."""
        return self._paused

    def url(self, db: int = 0) -> str:
        login = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{login}{HOST}:{self._port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        """A new client with short timeouts and no retries (the harness reports failures
        rather than hiding them); close it (or use it in `with`)."""
        return redis.Redis.from_url(
            self.url(db),
            socket_connect_timeout=2,
            socket_timeout=_COMMAND_TIMEOUT,
            retry=_NO_RETRY,
        )

    def pid(self) -> int | None:
        """The running server's PID, or None."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return int(self._proc.pid)
            self._proc = None
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if servers._runs_in(pid, self.directory) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self) -> None:
        """Start the node unless it runs, and wait until it answers PING.

        The first start moves to another free port when it loses a race for its own; later
        starts keep the port, which the rest of the topology knows the node by.
        """
        if self.is_running():
            self._wait_ready(self.is_running)
            return
        for attempt in range(3):
            self._launch()
            try:
                self._wait_ready(self.is_running)
            except servers.HarnessError:
                tail = servers._tail(self.log_path, self._log_offset)
                if self.is_running() or self._started_once or attempt == 2:
                    raise
                if "Address already in use" not in tail:
                    raise
                self._port = _free_cluster_port() if self._cluster else servers.free_port()
                continue
            self._started_once = True
            return

    def _launch(self) -> None:
        self.log_path.touch()
        self._log_offset = self.log_path.stat().st_size
        base = [
            f"port {self._port}",
            f"bind {HOST}",
            f"dir {_config_value(str(self.directory))}",
            f"pidfile {_config_value(str(self.pid_path))}",
            'logfile ""',
            "daemonize no",
            'save ""',
            "appendonly no",
        ]
        if self.password is not None:
            base.append(f"requirepass {_config_value(self.password)}")
        self.config_path.write_text("\n".join([*base, *self.directives]) + "\n")
        argv = [str(self._executable), str(self.config_path)]
        if self.sentinel:
            argv.append("--sentinel")
        self._proc = servers._spawn(
            argv,
            self.log_path,
            cwd=self.directory,
            run_as=None,
            detached=False,
            # SIGKILL, not SIGTERM: a paused node would never act on a SIGTERM.
            death_signal=signal.SIGKILL,
        )

    def _log_hint(self) -> str:
        return f"; log {self.log_path}:\n{servers._tail(self.log_path, self._log_offset)}"

    def _answers_for_us(self, client: redis.Redis) -> bool:
        info = client.info("server")
        return info.get("process_id") == self.pid()

    def stop(self) -> None:
        """Shut down (SIGTERM, after SIGCONT if paused); no-op when not running."""
        pid = self.pid()
        if pid is None:
            return
        if self._paused:
            self.resume()
        servers._signal(pid, signal.SIGTERM)
        if not servers._wait_gone([pid], STOP_TIMEOUT):
            self.kill9()
            raise TopologyError(f"{self.name} (pid {pid}) ignored SIGTERM; it was killed")
        self._reap()

    def restart(self) -> None:
        """Stop and start again on the same port, empty."""
        self.stop()
        self.start()

    def kill9(self) -> None:
        """SIGKILL the node (paused or not); start() brings it back, empty."""
        pid = self.pid()
        self._paused = False
        if pid is None:
            return
        servers._signal(pid, signal.SIGKILL)
        if not servers._wait_gone([pid], STOP_TIMEOUT):
            raise TopologyError(f"{self.name} (pid {pid}) survived SIGKILL")
        self._reap()
        self.pid_path.unlink(missing_ok=True)

    def pause(self) -> None:
        """SIGSTOP the node: it keeps its connections but answers nothing until `resume()`."""
        pid = self._running_pid("pause")
        servers._signal(pid, signal.SIGSTOP)
        self._paused = True
        self._wait_process_state(pid, lambda state: state == "T", "stopped")

    def resume(self) -> None:
        """SIGCONT a node that `pause()` stopped."""
        pid = self._running_pid("resume")
        servers._signal(pid, signal.SIGCONT)
        self._paused = False
        self._wait_process_state(pid, lambda state: state != "T", "running again")

    def _running_pid(self, action: str) -> int:
        pid = self.pid()
        if pid is None:
            raise TopologyError(f"cannot {action} {self.name}: it is not running")
        return pid

    def _wait_process_state(self, pid: int, done: Callable[[str], bool], what: str) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT
        while not done(_process_state(pid)):
            if time.monotonic() > deadline:
                raise TopologyError(f"{self.name} (pid {pid}) was not {what} in time")
            time.sleep(0.005)

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None

    def cleanup(self) -> None:
        """Stop the node; its topology removes the directory."""
        try:
            self.stop()
        except servers.HarnessError:
            self.kill9()

    def execute(self, *args: str | int, timeout: float = _COMMAND_TIMEOUT) -> Any:
        """Send one command on a connection of its own and return the reply as redis-py
        reads it off the wire (strings decoded, no response callbacks applied)."""
        connection = redis.Connection(  # type: ignore[no-untyped-call]
            host=HOST,
            port=self._port,
            password=self.password,
            socket_connect_timeout=2,
            socket_timeout=timeout,
            decode_responses=True,
            retry=_NO_RETRY,
        )
        try:
            connection.send_command(*args)  # type: ignore[no-untyped-call]
            return connection.read_response()
        finally:
            connection.disconnect()  # type: ignore[no-untyped-call]

    def info(self, section: str) -> dict[str, str]:
        """One INFO section as a dict of strings."""
        text = self.execute("INFO", section)
        return _parse_info(text if isinstance(text, str) else str(text))


# --------------------------------------------------------------------------- topologies


class _Topology(ABC):
    """What both topologies share: a temporary directory, nodes, waits and cleanup."""

    def __init__(self, prefix: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=prefix)).resolve()
        self._all_nodes: list[RedisNode] = []
        atexit.register(self.cleanup)

    def _new_node(self, name: str, **kwargs: Any) -> RedisNode:
        node = RedisNode(self.directory / name, **kwargs)
        self._all_nodes.append(node)
        return node

    @abstractmethod
    def start(self, timeout: float = WAIT_TIMEOUT) -> None:
        """Start every node and wait until the topology is ready for clients."""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()

    def stop(self) -> None:
        """Stop every node at once (SIGTERM; SIGKILL for any that lingers); logs stay."""
        pids = []
        for node in self._all_nodes:
            pid = node.pid()
            if pid is None:
                continue
            servers._signal(pid, signal.SIGCONT)  # a paused node acts on SIGTERM only then
            servers._signal(pid, signal.SIGTERM)
            node._paused = False
            pids.append(pid)
        if not servers._wait_gone(pids, STOP_TIMEOUT):
            for pid in pids:
                servers._signal(pid, signal.SIGKILL)
            servers._wait_gone(pids, STOP_TIMEOUT)
        for node in self._all_nodes:
            node._reap()

    def cleanup(self) -> None:
        """Stop every node and remove the topology's directory."""
        atexit.unregister(self.cleanup)
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _live(self, nodes: Sequence[RedisNode]) -> list[RedisNode]:
        """Those of `nodes` that run and answer (not paused)."""
        return [node for node in nodes if not node.paused and node.is_running()]

    def _node_at(self, nodes: Sequence[RedisNode], address: Address) -> RedisNode:
        for node in nodes:
            if node.address == (address[0], int(address[1])):
                return node
        raise TopologyError(f"no node of this topology listens on {address[0]}:{address[1]}")

    def _log_tails(self, nodes: Sequence[RedisNode]) -> str:
        return "".join(
            f"\n--- {node.name} ({node.log_path}):\n{servers._tail(node.log_path, 0, _LOG_LINES)}"
            for node in nodes
        )

    def _wait_until(
        self,
        what: str,
        probe: Callable[[], T],
        timeout: float,
        logs_of: Sequence[RedisNode] = (),
    ) -> T:
        """Poll `probe` until it returns without raising `_NotYet` (or a connection error,
        which nodes coming and going cause), and return its result."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return probe()
            except _NotYet as exc:
                problem = str(exc)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise TopologyError(
                    f"{what}: not within {timeout:.0f} s (last seen: {problem})"
                    f"{self._log_tails(logs_of or self._all_nodes)}"
                )
            time.sleep(_POLL_INTERVAL)


class SentinelTopology(_Topology):
    """A master with `replicas` replicas, watched by `sentinels` Sentinels as `master_name`.

    Tuned for tests: a master is down after `down_after_ms` and a failover gives up after
    `failover_timeout_ms`, so a kill -9 is repaired in about two seconds; `failover()` takes
    about five, most of it waiting for the Sentinels to demote the old master. With
    `password` the data nodes require it (and replicas and Sentinels log in with it); with
    `sentinel_password` the Sentinels require one too. Data nodes are `data_nodes`, the
    first being the master at start; which one is master later, ask `master()`.
    """

    def __init__(
        self,
        *,
        master_name: str = "projector",
        replicas: int = 1,
        sentinels: int = 3,
        quorum: int = 2,
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        if replicas < 1 or sentinels < 1 or not 1 <= quorum <= sentinels:
            raise ValueError(
                "a Sentinel topology needs a replica, a Sentinel and 1 <= quorum <= sentinels"
            )
        super().__init__("projector-sentinel-")
        self.master_name = master_name
        self.quorum = quorum
        self.password = password
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.data_nodes = [
            self._new_node(f"redis-{index}", password=password) for index in range(1 + replicas)
        ]
        self.sentinel_nodes = [
            self._new_node(f"sentinel-{index}", sentinel=True, password=sentinel_password)
            for index in range(sentinels)
        ]

    @property
    def sentinels(self) -> list[Address]:
        """The Sentinels' addresses, for `redis.sentinel.Sentinel(...)`."""
        return [node.address for node in self.sentinel_nodes]

    def _data_directives(self, master: RedisNode | None) -> list[str]:
        directives = list(_DATA_NODE_DIRECTIVES)
        if self.password is not None:
            directives.append(f"masterauth {_config_value(self.password)}")
        if master is not None:
            directives.append(f"replicaof {HOST} {master.port}")
        return directives

    def _sentinel_directives(self, master: RedisNode) -> list[str]:
        name = self.master_name
        directives = [
            f"sentinel monitor {name} {HOST} {master.port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.password is not None:
            directives.append(f"sentinel auth-pass {name} {_config_value(self.password)}")
        return directives

    def start(self, timeout: float = WAIT_TIMEOUT) -> None:
        """Start the master, its replicas, then the Sentinels; return once the replicas are
        in sync and every Sentinel knows the master, its replicas and the other Sentinels."""
        master, *replicas = self.data_nodes
        master.directives = self._data_directives(None)
        master.start()
        for replica in replicas:
            replica.directives = self._data_directives(master)
            replica.start()
        self._wait_until("replicas in sync", lambda: self._in_sync(master), timeout)
        for sentinel in self.sentinel_nodes:
            sentinel.directives = self._sentinel_directives(master)
            sentinel.start()
            self._tune(
                sentinel,
                *_SENTINEL_DEBUG_PERIODS,
                "publish-period",
                _SENTINEL_DISCOVERY_PUBLISH_PERIOD,
            )
        self._wait_until(
            "Sentinels agree on the topology",
            lambda: self._sentinels_settled(master),
            timeout,
            self.sentinel_nodes,
        )
        for sentinel in self.sentinel_nodes:
            self._tune(sentinel, "publish-period", _SENTINEL_PUBLISH_PERIOD)

    @staticmethod
    def _tune(sentinel: RedisNode, *periods: str) -> None:
        with contextlib.suppress(redis.ResponseError):  # before 7.0: the defaults, slower
            sentinel.execute("SENTINEL", "DEBUG", *periods)

    # ------------------------------------------------------------------ what Sentinels say

    def _asked_master(self, sentinel: RedisNode) -> Address | None:
        reply = sentinel.execute("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return (str(reply[0]), int(reply[1])) if reply else None

    def master_address(self) -> Address:
        """The master's address, as the first Sentinel that answers gives it."""
        problems = []
        for sentinel in self._live(self.sentinel_nodes):
            try:
                address = self._asked_master(sentinel)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                problems.append(f"{sentinel.name}: {exc}")
                continue
            if address is not None:
                return address
            problems.append(f"{sentinel.name} knows no master {self.master_name!r}")
        raise TopologyError(f"no Sentinel named the master: {'; '.join(problems) or 'none runs'}")

    def master(self) -> RedisNode:
        """The data node that the Sentinels name as master."""
        return self.node_at(self.master_address())

    def node_at(self, address: Address) -> RedisNode:
        """The data node listening on `address`."""
        return self._node_at(self.data_nodes, address)

    def _a_live_sentinel(self) -> RedisNode:
        live = self._live(self.sentinel_nodes)
        if not live:
            raise TopologyError("no Sentinel runs")
        return live[0]

    def replicas(self) -> list[Address]:
        """The replicas' addresses that a Sentinel lists and does not consider down."""
        sentinel = self._a_live_sentinel()
        entries = [
            _pairs(entry) for entry in sentinel.execute("SENTINEL", "REPLICAS", self.master_name)
        ]
        return sorted(
            (entry["ip"], int(entry["port"]))
            for entry in entries
            if not {"s_down", "o_down", "disconnected"} & set(entry["flags"].split(","))
        )

    def _sentinels_settled(self, master: RedisNode) -> bool:
        """Every live Sentinel names `master`, counts the other Sentinels and lists each
        live replica as up; raises `_NotYet` naming what is missing."""
        replicas = [node for node in self._live(self.data_nodes) if node is not master]
        for sentinel in self._live(self.sentinel_nodes):
            state = _pairs(sentinel.execute("SENTINEL", "MASTER", self.master_name))
            seen = (state["ip"], int(state["port"]))
            if seen != master.address or state["flags"] != "master":
                raise _NotYet(f"{sentinel.name} sees master {seen} flagged {state['flags']}")
            others = int(state["num-other-sentinels"])
            if others != len(self.sentinel_nodes) - 1:
                raise _NotYet(f"{sentinel.name} knows {others} other Sentinels")
            listed = {
                (entry["ip"], int(entry["port"])): entry["flags"]
                for entry in map(_pairs, sentinel.execute("SENTINEL", "REPLICAS", self.master_name))
            }
            for replica in replicas:
                flags = listed.get(replica.address, "unknown")
                if flags != "slave":
                    raise _NotYet(f"{sentinel.name} lists {replica.name} as {flags}")
        return True

    # ------------------------------------------------------------------ replication

    def _in_sync(self, master: RedisNode) -> bool:
        """Every live replica follows `master` with its link up and has processed all that
        the master had written when asked; raises `_NotYet` naming the laggard."""
        info = master.info("replication")
        if info.get("role") != "master":
            raise _NotYet(f"{master.name} is {info.get('role')}, not master")
        offset = int(info["master_repl_offset"])
        for replica in self._live(self.data_nodes):
            if replica is master:
                continue
            seen = replica.info("replication")
            following = seen.get("role") == "slave" and seen.get("master_port") == str(master.port)
            if not following or seen.get("master_link_status") != "up":
                raise _NotYet(
                    f"{replica.name} is {seen.get('role')} of port {seen.get('master_port')},"
                    f" link {seen.get('master_link_status')}"
                )
            if int(seen["slave_repl_offset"]) < offset:
                raise _NotYet(f"{replica.name} at offset {seen['slave_repl_offset']} < {offset}")
        return True

    def wait_replicas_in_sync(self, timeout: float = WAIT_TIMEOUT) -> None:
        """Wait until every running, unpaused replica follows the master and has applied
        everything the master had written when this was called (or polled)."""
        self._wait_until("replicas in sync", lambda: self._in_sync(self.master()), timeout)

    def pause(self, node: RedisNode) -> None:
        """SIGSTOP `node` (a replica, to make it lag; a master, to make it look down)."""
        node.pause()

    def resume(self, node: RedisNode) -> None:
        """SIGCONT a node that `pause()` stopped."""
        node.resume()

    # ------------------------------------------------------------------ faults

    def failover(self, timeout: float = WAIT_TIMEOUT) -> RedisNode:
        """SENTINEL FAILOVER, then `wait_for_new_master`, then wait until the old master has
        become a replica of the new one and every replica is in sync; returns the new master.

        Until a Sentinel demotes it (and drops its clients), the old master still accepts
        writes that the resync then discards: returning earlier would let a test lose them.
        """
        old = self.master()
        sentinel = self._a_live_sentinel()

        def ask() -> bool:
            try:
                sentinel.execute("SENTINEL", "FAILOVER", self.master_name)
            except redis.ResponseError as exc:
                if "NOGOODSLAVE" in str(exc):  # the Sentinel has not vetted a replica yet
                    raise _NotYet(str(exc)) from exc
                if "INPROG" not in str(exc):
                    raise
            return True

        self._wait_until("SENTINEL FAILOVER accepted", ask, timeout, self.sentinel_nodes)
        new = self.wait_for_new_master(old, timeout)
        self._wait_until(
            f"{old.name} demoted and every replica in sync with {new.name}",
            lambda: self._in_sync(new),
            timeout,
        )
        return new

    def kill9_master(self) -> RedisNode:
        """kill -9 the current master and return it (dead); see `wait_for_new_master`.

        Replication is asynchronous: writes the replicas had not received are lost, as in
        production. Call `wait_replicas_in_sync()` (or WAIT) first where that must not be.
        """
        master = self.master()
        master.kill9()
        return master

    def wait_for_new_master(
        self, old: RedisNode | Address, timeout: float = WAIT_TIMEOUT
    ) -> RedisNode:
        """Wait until every live Sentinel names one master other than `old` and that node
        reports role master; return it."""
        old_address = old.address if isinstance(old, RedisNode) else (old[0], int(old[1]))

        def promoted() -> RedisNode:
            named = {
                node.name: self._asked_master(node) for node in self._live(self.sentinel_nodes)
            }
            addresses = set(named.values())
            address = addresses.pop() if len(addresses) == 1 else None
            if address is None or address == old_address:
                raise _NotYet(f"the Sentinels name {named}")
            node = self.node_at(address)
            role = node.info("replication").get("role")
            if role != "master":
                raise _NotYet(f"{node.name}, named master, reports role {role}")
            return node

        return self._wait_until(
            f"a master other than port {old_address[1]}", promoted, timeout, self._all_nodes
        )

    def restart_node(self, node: RedisNode, timeout: float = WAIT_TIMEOUT) -> None:
        """Start `node` again (stopping it first if it runs) as a replica of the master the
        Sentinels name, and wait until it is in sync and every Sentinel lists it as up.

        A node that is still the named master (killed before any failover) comes back as
        that master, and empty: the classic restart-without-persistence data loss.
        """
        master = self.master()
        node.stop()
        node.directives = self._data_directives(None if node is master else master)
        node.start()
        if node is not master:
            self._wait_until(
                f"{node.name} in sync with {master.name}",
                lambda: self._in_sync(master),
                timeout,
                [node, master],
            )
        self._wait_until(
            f"Sentinels list {node.name} as up",
            lambda: self._sentinels_settled(master),
            timeout,
            self.sentinel_nodes,
        )


# --------------------------------------------------------------------------- cluster


@dataclass(frozen=True, slots=True)
class _ClusterEntry:
    """One line of CLUSTER NODES: a node as another node sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, line: str) -> _ClusterEntry:
        # <id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
        fields = line.split()
        ranges = []
        for token in fields[8:]:
            if token.startswith("["):
                continue  # a slot being imported or migrated: not served from here yet
            first, _, last = token.partition("-")
            ranges.append((int(first), int(last or first)))
        return cls(
            node_id=fields[0],
            port=int(fields[1].split("@", 1)[0].rsplit(":", 1)[1]),
            flags=frozenset(fields[2].split(",")),
            master_id=None if fields[3] == "-" else fields[3],
            connected=fields[7] == "connected",
            slots=tuple(ranges),
        )

    @property
    def failing(self) -> bool:
        return bool({"fail", "fail?", "handshake", "noaddr"} & self.flags)

    def serves(self, slot: int) -> bool:
        return "master" in self.flags and any(lo <= slot <= hi for lo, hi in self.slots)


class ClusterTopology(_Topology):
    """A Redis Cluster: `masters` masters with `replicas_per_master` replicas each.

    Tuned for tests with a `node_timeout_ms` of 1 s, so a killed master's replica takes
    over in about two seconds. With `password` every node requires it and replicas log in
    to their masters with it. Which node is master changes with failovers: ask
    `node_for_key`, `masters()` or `replica_of`.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas_per_master: int = 1,
        password: str | None = None,
        node_timeout_ms: int = 1000,
    ) -> None:
        if masters < 3 or replicas_per_master < 0:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        super().__init__("projector-cluster-")
        self.password = password
        self.replicas_per_master = replicas_per_master
        self.nodes = [
            self._new_node(f"node-{index}", cluster=True, password=password)
            for index in range(masters * (1 + replicas_per_master))
        ]
        directives = [
            *_DATA_NODE_DIRECTIVES,
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {node_timeout_ms}",
        ]
        if password is not None:
            directives.append(f"masterauth {_config_value(password)}")
        for node in self.nodes:
            node.directives = list(directives)

    @property
    def startup_nodes(self) -> list[Address]:
        """Every node's address, for `redis.cluster.RedisCluster(startup_nodes=...)`."""
        return [node.address for node in self.nodes]

    def start(self, timeout: float = WAIT_TIMEOUT) -> None:
        """Start the nodes, make them one cluster with `redis-cli --cluster create`, and
        return once every node reports cluster_state:ok and every replica is linked."""
        for node in self.nodes:
            node.start()
        redis_cli = shutil.which("redis-cli") or shutil.which(
            "redis-cli", path="/usr/local/bin:/usr/bin"
        )
        if redis_cli is None:
            raise TopologyError("no redis-cli on PATH; install redis-tools (or redis-server)")
        argv = [
            redis_cli,
            "--cluster",
            "create",
            *(f"{HOST}:{node.port}" for node in self.nodes),
            "--cluster-replicas",
            str(self.replicas_per_master),
            "--cluster-yes",
        ]
        log_path = self.directory / "cluster-create.log"
        env = {key: value for key, value in os.environ.items() if key != "REDISCLI_AUTH"}
        if self.password is not None:
            env["REDISCLI_AUTH"] = self.password  # not -a: that would show in `ps`
        with log_path.open("wb") as log:
            try:
                done = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    timeout=timeout,
                    check=False,
                )
                problem = f"exited with {done.returncode}" if done.returncode else ""
            except subprocess.TimeoutExpired:
                problem = f"did not finish within {timeout:.0f} s"
        if problem:
            raise TopologyError(
                f"redis-cli --cluster create {problem}; {log_path}:\n{servers._tail(log_path)}"
            )
        self.wait_cluster_ok(timeout)

    # ------------------------------------------------------------------ what nodes say

    def _view(self, node: RedisNode) -> list[_ClusterEntry]:
        text = node.execute("CLUSTER", "NODES")
        return [_ClusterEntry.parse(line) for line in str(text).splitlines() if line.strip()]

    def _first_view(self) -> list[_ClusterEntry]:
        live = self._live(self.nodes)
        if not live:
            raise TopologyError("no node of the cluster runs")
        return self._view(live[0])

    def node_at(self, address: Address) -> RedisNode:
        """The node listening on `address`."""
        return self._node_at(self.nodes, address)

    def _node_by_port(self, port: int) -> RedisNode:
        return self.node_at((HOST, port))

    def node_for_key(self, key: str | bytes) -> RedisNode:
        """The master serving `key`'s hash slot (hash tags respected), as a live node sees it."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        for entry in self._first_view():
            if entry.serves(slot) and not entry.failing:
                return self._node_by_port(entry.port)
        raise TopologyError(f"no live master serves slot {slot} (of key {key!r})")

    def masters(self) -> list[RedisNode]:
        """The masters serving slots, as a live node sees them."""
        view = self._first_view()
        return [
            self._node_by_port(e.port)
            for e in view
            if "master" in e.flags and e.slots and not e.failing
        ]

    def replica_of(self, node: RedisNode, timeout: float = 10.0) -> RedisNode:
        """A live replica of master `node`, waiting up to `timeout` for one (on a loaded
        machine a node may briefly see a replica as `fail?`)."""

        def live_replica() -> RedisNode:
            view = self._first_view()
            master_id = next((entry.node_id for entry in view if entry.port == node.port), None)
            for entry in view:
                if master_id is not None and entry.master_id == master_id and not entry.failing:
                    return self._node_by_port(entry.port)
            raise _NotYet(f"{node.name} has no live replica")

        return self._wait_until(f"a live replica of {node.name}", live_replica, timeout)

    def _settled(self) -> bool:
        """Every live node reports cluster_state:ok, sees every other live node connected,
        and agrees with the others on which node serves each slot; every live replica has
        its link up. Raises `_NotYet` naming what is missing."""
        live = self._live(self.nodes)
        live_ports = {node.port for node in live}
        owners_seen: dict[str, tuple[tuple[int, int, int], ...]] = {}
        for node in live:
            state = _parse_info(str(node.execute("CLUSTER", "INFO")))
            if state.get("cluster_state") != "ok":
                raise _NotYet(f"{node.name} reports cluster_state:{state.get('cluster_state')}")
            view = self._view(node)
            for entry in view:
                if entry.port in live_ports and (entry.failing or not entry.connected):
                    raise _NotYet(f"{node.name} sees port {entry.port} as {sorted(entry.flags)}")
            owners_seen[node.name] = tuple(
                sorted(
                    (lo, hi, entry.port)
                    for entry in view
                    if "master" in entry.flags and not entry.failing
                    for lo, hi in entry.slots
                )
            )
            if "slave" in next(entry for entry in view if "myself" in entry.flags).flags:
                link = node.info("replication").get("master_link_status")
                if link != "up":
                    raise _NotYet(f"{node.name}'s replication link is {link}")
        if len(set(owners_seen.values())) > 1:
            raise _NotYet(f"nodes disagree on slot owners: {owners_seen}")
        return True

    def wait_cluster_ok(self, timeout: float = WAIT_TIMEOUT) -> None:
        """Wait until the cluster has settled (see `_settled`)."""
        self._wait_until("the cluster settled with cluster_state:ok", self._settled, timeout)

    # ------------------------------------------------------------------ faults

    def _wait_promoted(self, replica: RedisNode, slot: int, timeout: float, what: str) -> None:
        def promoted() -> bool:
            role = replica.info("replication").get("role")
            if role != "master":
                raise _NotYet(f"{replica.name} is still {role}")
            for node in self._live(self.nodes):
                owner = next((e for e in self._view(node) if e.serves(slot)), None)
                if owner is None or owner.port != replica.port:
                    port = owner.port if owner else None
                    raise _NotYet(f"{node.name} sees slot {slot} served by port {port}")
            return self._settled()

        self._wait_until(what, promoted, timeout)

    def failover(self, key: str | bytes, timeout: float = WAIT_TIMEOUT) -> RedisNode:
        """CLUSTER FAILOVER on a replica of `key`'s master; wait until it serves the slot
        everywhere, the old master replicates it and the cluster is ok; return it."""
        master = self.node_for_key(key)
        replica = self.replica_of(master)
        replica.execute("CLUSTER", "FAILOVER")
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        self._wait_promoted(replica, slot, timeout, f"{replica.name} took over from {master.name}")
        return replica

    def kill9_master_of(self, key: str | bytes, timeout: float = WAIT_TIMEOUT) -> RedisNode:
        """kill -9 `key`'s master; wait until its replica serves the slot everywhere and the
        cluster is ok again; return that replica (the killed node: `restart_node` it).

        As with Sentinel, writes the replica had not yet received are lost.
        """
        master = self.node_for_key(key)
        replica = self.replica_of(master)
        master.kill9()
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        self._wait_promoted(
            replica, slot, timeout, f"{replica.name} took over from the killed {master.name}"
        )
        return replica

    def restart_node(self, node: RedisNode, timeout: float = WAIT_TIMEOUT) -> None:
        """Start `node` again (stopping it first if it runs), empty but with its cluster
        identity; a master whose slots moved meanwhile rejoins as a replica. Waits until the
        cluster has settled."""
        node.stop()
        node.start()
        self.wait_cluster_ok(timeout)
