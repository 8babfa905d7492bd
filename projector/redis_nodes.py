"""Which Redis node to talk to: one server, the master a set of Sentinels watches, or the
Cluster node that owns the projection's hash slot.

Every key of the projection carries one hash tag in a Cluster (``Settings.keys``), so the
whole projection lives in one hash slot: each atomic script touches one node, and both the
projector and the API talk to that slot's master (and the API optionally to its replicas)
as they would to a single server. A failover moves the slot to another node; the clients
here find it again on their next connection (Sentinel: redis-py's own managed pools;
Cluster: ``CLUSTER SLOTS`` asked of the seed nodes), and a connection still open to the old
master fails (``MOVED``, ``READONLY``) instead of answering from the wrong node.

``PROJECTOR_REDIS_URL`` keeps giving the data nodes' user, password, database and TLS in
every topology; its host and port are used only for a single server.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.connection import parse_url
from redis.crc import key_slot
from redis.sentinel import Sentinel

from projector.core.errors import ConfigError, ConnectionLost
from projector.settings import Settings, parse_nodes, redact_url

# What a node says that no longer serves our keys as we asked: demoted to a replica, or our
# hash slot moved to another node (a Cluster failover). Followed as a lost connection is:
# the node is looked up again. redis-py parses most into these classes (dropping the word).
MOVED_AWAY = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.AskError,  # and MovedError
    redis.exceptions.ClusterDownError,  # and MasterDownError
    redis.exceptions.TryAgainError,
)
_MOVED_AWAY_WORDS = ("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "READONLY")


def moved_away(exc: Exception) -> bool:
    """Whether ``exc`` says this node no longer takes our writes (see ``MOVED_AWAY``)."""
    return isinstance(exc, MOVED_AWAY) or str(exc).startswith(_MOVED_AWAY_WORDS)


def connection_kwargs(url: str) -> dict[str, Any]:
    """What a URL says about the connection besides its address: user, password, db, TLS."""
    options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call,unused-ignore]
    for address in ("host", "port", "path"):
        options.pop(address, None)
    connection_class = options.pop("connection_class", None)
    if connection_class is not None and "SSL" in connection_class.__name__:
        options["ssl"] = True
    return options


def describe(settings: Settings, url: str | None = None) -> str:
    """Where Redis is, for logs and ``status`` (no passwords)."""
    if settings.redis_sentinels:
        return f"sentinel master {settings.redis_sentinel_master!r} via {settings.redis_sentinels}"
    if settings.redis_cluster_nodes:
        return f"cluster via {settings.redis_cluster_nodes}, slot of {settings.keys.watermark!r}"
    return redact_url(url or settings.redis_url)


def client(
    settings: Settings,
    *,
    url: str | None = None,
    socket_timeout: float | None = 30.0,
    connect_timeout: float = 5.0,
    **extra: Any,
) -> redis.Redis:
    """A client of the projection's master (``url``: whose credentials; default the
    projector's). For a Cluster the owner of the slot is looked up now: a client lives for
    one session, and the next session looks again."""
    url = url or settings.redis_url
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        **extra,
    }
    if settings.redis_sentinels:
        sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            parse_nodes(settings.redis_sentinels),
            sentinel_kwargs=_sentinel_auth(settings, connect_timeout),
            **connection_kwargs(url),
            **options,
        )
        master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call,unused-ignore]
            str(settings.redis_sentinel_master), redis_class=redis.Redis
        )
        return master
    if settings.redis_cluster_nodes:
        host, port = slot_master(settings, url, connect_timeout)
        return redis.Redis(host=host, port=port, **connection_kwargs(url), **options)
    return redis.Redis.from_url(url, **options)


def slot_master(settings: Settings, url: str, timeout: float = 5.0) -> tuple[str, int]:
    """The Cluster node that serves the projection's hash slot as master."""
    return slot_nodes(settings, url, timeout)[0]


def slot_nodes(settings: Settings, url: str, timeout: float = 5.0) -> list[tuple[str, int]]:
    """The master and then the replicas of the projection's hash slot, from the first seed
    node that answers ``CLUSTER SLOTS``."""
    slot = key_slot(settings.keys.watermark.encode())
    errors = []
    for host, port in parse_nodes(str(settings.redis_cluster_nodes)):
        seed = redis.Redis(
            host=host,
            port=port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            **connection_kwargs(url),
        )
        try:
            slots = seed.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call,unused-ignore]
            return _owners(slots, slot, host)
        except redis.ResponseError as exc:
            if "cluster support disabled" in str(exc).lower():
                raise ConfigError(
                    f"PROJECTOR_REDIS_CLUSTER_NODES: {host}:{port} is not in cluster mode"
                ) from exc
            errors.append(f"{host}:{port}: {exc}")
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            errors.append(f"{host}:{port}: {exc}")
        finally:
            seed.close()
    raise ConnectionLost(
        "no Redis Cluster seed node told who serves the slot: " + "; ".join(errors),
        service="redis",
    )


def _owners(slots: Any, slot: int, seed_host: str) -> list[tuple[str, int]]:
    for entry in slots:
        start, end, *nodes = entry
        if int(start) <= slot <= int(end):
            owners = []
            for node in nodes:
                host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
                owners.append((host or seed_host, int(node[1])))
            return owners
    raise redis.ResponseError(f"no node serves hash slot {slot} (cluster not ready?)")


def _sentinel_auth(settings: Settings, timeout: float) -> dict[str, Any]:
    auth: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if settings.redis_sentinel_username:
        auth["username"] = settings.redis_sentinel_username
    if settings.redis_sentinel_password:
        auth["password"] = settings.redis_sentinel_password
    return auth


# -- the read API (asyncio) -------------------------------------------------------------------


def async_pool(
    settings: Settings, url: str, *, replicas: bool = False, **options: Any
) -> aioredis.ConnectionPool:
    """A connection pool of the API: to the master, or (``replicas``) spread over replicas.

    Each new connection finds its node again, so the pool follows failovers; a connection
    that meets a demoted or moved node is dropped rather than trusted.
    """
    if settings.redis_sentinels:
        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call,unused-ignore]
            parse_nodes(settings.redis_sentinels),
            sentinel_kwargs=_sentinel_auth(settings, options.get("socket_connect_timeout", 5.0)),
            **connection_kwargs(url),
            **options,
        )
        name = str(settings.redis_sentinel_master)
        pick = sentinel.slave_for if replicas else sentinel.master_for
        pool: aioredis.ConnectionPool = pick(
            name, connection_pool_class=_SentinelPool
        ).connection_pool
        return pool
    if settings.redis_cluster_nodes:
        resolver = _SlotResolver(settings, url, replicas=replicas)
        return aioredis.ConnectionPool(
            connection_class=SlotConnection,
            resolver=resolver,
            **connection_kwargs(url),
            **options,
        )
    if replicas:
        raise ConfigError(
            "PROJECTOR_API_READ_FROM_REPLICAS needs PROJECTOR_REDIS_SENTINELS or "
            "PROJECTOR_REDIS_CLUSTER_NODES: replicas are found through them"
        )
    return aioredis.ConnectionPool.from_url(url, **options)


class _SentinelPool(SentinelConnectionPool):
    """redis-py's pool of a Sentinel-named node, which closes the Sentinels' connections
    too when it is closed."""

    async def aclose(self) -> None:
        await super().aclose()
        for client in self.sentinel_manager.sentinels:
            await client.aclose()


class _SlotResolver:
    """Finds the node (master, or the next replica in turn) of the projection's slot."""

    def __init__(self, settings: Settings, url: str, *, replicas: bool) -> None:
        self._settings = settings
        self._url = url
        self.replicas = replicas
        self._turn = itertools.count()

    async def __call__(self, timeout: float) -> tuple[str, int]:
        nodes = await asyncio.to_thread(slot_nodes, self._settings, self._url, timeout)
        if not self.replicas or len(nodes) == 1:
            return nodes[0]  # no replica: the master answers (as redis-py's Sentinel does)
        return nodes[1 + next(self._turn) % (len(nodes) - 1)]


class SlotConnection(aioredis.Connection):
    """A connection to whichever node serves the projection's slot when it connects."""

    def __init__(self, *, resolver: _SlotResolver, **kwargs: Any) -> None:
        self._resolver = resolver
        super().__init__(**kwargs)

    async def _connect(self) -> None:
        try:
            self.host, self.port = await self._resolver(self.socket_connect_timeout or 5.0)
        except (ConnectionLost, redis.RedisError) as exc:
            raise OSError(str(exc)) from exc
        await super()._connect()  # type: ignore[no-untyped-call,unused-ignore]

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        await super().on_connect_check_health(check_health=check_health)
        if self._resolver.replicas:
            await self.send_command("READONLY")
            await self.read_response()

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if moved_away(exc):
                await self.disconnect()
                raise redis.ConnectionError(f"the slot moved ({exc})") from exc
            raise
