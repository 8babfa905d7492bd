"""deploy/compose.ha.yml, checked without a container engine.

Merged onto docker-compose.yml the way Compose merges files, every service it names exists,
every bind mount exists, and the projector's, the standby's and the API's settings load
and point at the Sentinels. Then the two Redis nodes and three Sentinels run from their
compose commands and deploy/redis/sentinel.conf on the local binaries (host names mapped to
127.0.0.1): the replica links up with the admin password, the Sentinels find each other and
the replica, the projector's client finds the master through them, and a SENTINEL FAILOVER
promotes the replica while the old master replicates it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import yaml

from harness.servers import free_port
from projector import redis_nodes
from projector.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
BASE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
HA = yaml.safe_load((DEPLOY / "compose.ha.yml").read_text())
SENTINEL_CONF = (DEPLOY / "redis/sentinel.conf").read_text()
ADMIN_PASSWORD = "redis-admin-dev"  # the default user of deploy/redis/users.acl
T = TypeVar("T")

# Compose replaces these when a later file sets them; it merges mappings and other lists.
_REPLACED = {"command", "entrypoint", "test"}


def _merge(base: Any, override: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for name, value in override.items():
            merged[name] = _merge(base[name], value, name) if name in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list) and key not in _REPLACED:
        return base + [item for item in override if item not in base]
    return override


SERVICES: dict[str, dict[str, Any]] = _merge(BASE, HA)["services"]


def _sentinel_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in SENTINEL_CONF.splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            name = " ".join(words[:2]) if words[0] == "sentinel" else words[0]
            directives[name] = words[2:] if words[0] == "sentinel" else words[1:]
    return directives


def _settings_from(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process with exactly these PROJECTOR_ variables loads."""
    with monkeypatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("PROJECTOR_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, str(value))
        return load_settings()


def _settings_of(service: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return _settings_from(SERVICES[service]["environment"], monkeypatch)


def test_the_override_names_only_services_and_files_that_exist() -> None:
    """depends_on names services of the merged file; bind mounts exist; the Sentinels watch
    the master service under the name the projector and the API ask for."""
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name
        for needed in service.get("depends_on", {}):
            assert needed in SERVICES, (name, needed)
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, source)
    sentinels = sorted(name for name in SERVICES if name.startswith("sentinel-"))
    assert len(sentinels) == 3
    monitor = _sentinel_directives()["sentinel monitor"]
    assert monitor[1] == "redis" and monitor[2] == "6379" and monitor[3] == "2"
    replica = SERVICES["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1 :] == ["redis", "6379"]
    for node in ("redis", "redis-replica"):
        command = SERVICES[node]["command"]
        assert command[command.index("--masterauth") + 1] == ADMIN_PASSWORD, node
        assert "noeviction" in command, node
    assert _sentinel_directives()["sentinel auth-pass"] == ["pomo", ADMIN_PASSWORD]


def test_projector_standby_and_api_settings_load_and_use_the_sentinels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each service's environment is valid configuration; all three reach Redis through the
    three Sentinel services, the projector waits for one replica, the API reads replicas."""
    sentinel_port = _sentinel_directives()["port"][0]
    expected = {f"sentinel-{n}:{sentinel_port}" for n in (1, 2, 3)}
    master = _sentinel_directives()["sentinel monitor"][0]
    for service in ("projector", "projector-standby", "api"):
        settings = _settings_of(service, monkeypatch)
        assert settings.redis_topology == "sentinel", service
        assert set(str(settings.redis_sentinels).split(",")) == expected, service
        assert settings.redis_sentinel_master == master, service
    projector = _settings_of("projector", monkeypatch)
    assert projector.redis_min_replicas == 1
    assert projector.redis_url.startswith("redis://projector_run:")
    assert SERVICES["projector-standby"]["environment"] == SERVICES["projector"]["environment"]
    assert SERVICES["projector-standby"]["command"] == SERVICES["projector"]["command"]
    api = _settings_of("api", monkeypatch)
    assert api.api_read_from_replicas
    assert api.api_redis.startswith("redis://projector_api:")


# ------------------------------------------------------------------ on local binaries


def _until(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            found = probe()
            if found:
                return found
            last = found
        except redis.RedisError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
    for proc in started:
        proc.wait(10)


def _local_node(command: list[str], port: int, ports: dict[str, int], data: Path) -> list[str]:
    """A data node's compose command for this machine: the ACL file from deploy/, service
    names as 127.0.0.1 and their ports, its own port and directory."""
    argv = [shutil.which(command[0]) or command[0]]
    args = iter(command[1:])
    for arg in args:
        argv.append(str(DEPLOY / "redis/users.acl") if arg == "/etc/redis/users.acl" else arg)
        if arg == "--replicaof":
            host, service_port = next(args), next(args)
            assert service_port == "6379"
            argv += ["127.0.0.1", str(ports[host])]
    data.mkdir()
    # Not waiting 5 s for more replicas before a full sync is only to keep the test short.
    local = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
    return [*argv, *local, "--repl-diskless-sync-delay", "0"]


def _role(port: int) -> dict[str, Any]:
    with redis.Redis(port=port, password=ADMIN_PASSWORD, socket_timeout=5) as admin:
        info: dict[str, Any] = admin.info("replication")
        return info


def test_the_nodes_and_sentinels_fail_over_from_their_compose_configuration(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = {"redis": free_port(), "redis-replica": free_port()}
    for node in ("redis", "redis-replica"):
        argv = _local_node(SERVICES[node]["command"], ports[node], ports, tmp_path / node)
        processes.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL))
    _until(
        "the replica links up", lambda: _role(ports["redis-replica"])["master_link_status"] == "up"
    )
    sentinel_ports = []
    for name in ("sentinel-1", "sentinel-2", "sentinel-3"):
        # The compose command copies the file, as Sentinel rewrites it; so does this.
        port = free_port()
        conf = tmp_path / f"{name}.conf"
        conf.write_text(
            SENTINEL_CONF.replace("port 26379", f"port {port}\nbind 127.0.0.1").replace(
                "pomo redis 6379", f"pomo 127.0.0.1 {ports['redis']}"
            )
        )
        processes.append(
            subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                cwd=tmp_path,
            )
        )
        sentinel_ports.append(port)
    first = redis.Redis(port=sentinel_ports[0], decode_responses=True, socket_timeout=5)

    def watched() -> bool:
        state = first.sentinel_master("pomo")
        return state["num-other-sentinels"] == 2 and state["num-slaves"] == 1

    _until("the Sentinels find each other and the replica", watched)

    # The projector's own client finds the master through the Sentinels, as projector_run.
    env = dict(SERVICES["projector"]["environment"])
    env["PROJECTOR_REDIS_SENTINELS"] = ",".join(f"127.0.0.1:{p}" for p in sentinel_ports)
    settings = _settings_from(env, monkeypatch)
    with redis_nodes.client(settings) as client:
        assert client.set("pomo:before", "1")
        assert client.connection_pool.get_master_address()[1] == ports["redis"]

    first.execute_command("SENTINEL", "FAILOVER", "pomo")
    _until(
        "the Sentinels name the replica master",
        lambda: first.sentinel_get_master_addr_by_name("pomo")[1] == ports["redis-replica"],
    )
    _until("the replica is master", lambda: _role(ports["redis-replica"])["role"] == "master")
    _until(
        "the old master replicates the new one (with the admin password)",
        lambda: _role(ports["redis"]).get("master_link_status") == "up",
    )
    with redis_nodes.client(settings) as client:
        assert client.get("pomo:before") == b"1"
        assert client.set("pomo:after", "1")
        assert client.connection_pool.get_master_address()[1] == ports["redis-replica"]
    first.close()
