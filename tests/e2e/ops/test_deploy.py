"""deploy/ and docker-compose.yml, checked without a container engine: the compose file parses
and mounts files that exist, the observability profile is complete, every dashboard query
names only metrics the projector or the API really expose (read from their live registries),
the alert rules and the Prometheus config pass promtool, and Redis loads the ACL file."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from api.app import App
from harness.servers import free_port
from projector.metrics import ProjectorMetrics
from projector.settings import load_settings

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DASHBOARD = json.loads((DEPLOY / "grafana/dashboards/pomodoro.json").read_text())
ALERTS = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
PROMETHEUS = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())

# PromQL words that are not metric names.
_PROMQL_WORDS = {
    *("sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile"),
    *("rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile"),
    *("clamp_min", "clamp_max", "abs", "ceil", "floor", "round", "time", "vector", "scalar"),
    *("absent", "changes", "resets", "label_replace", "sort", "sort_desc", "timestamp"),
    *("by", "without", "on", "ignoring", "group_left", "group_right", "bool"),
    *("and", "or", "unless", "offset", "inf", "nan"),
}
# Series Prometheus makes itself, usable in alerts (not in panels: those show our metrics).
_PROMETHEUS_SERIES = {"up"}


def _exposed_names() -> set[str]:
    """Sample names in the live registries of a ProjectorMetrics and a started API app."""
    projector = ProjectorMetrics()
    projector.unavailable({"x": "a problem"})  # a labelled series exists once it is set
    names = {sample.name for family in projector.registry.collect() for sample in family.samples}
    settings = load_settings(
        pg_dsn="postgresql://nobody@127.0.0.1:1/none?connect_timeout=1",
        redis_url="redis://127.0.0.1:1/0",
        api_access_log=False,
    )

    async def api_metrics() -> str:
        app = App(settings)
        await app.startup()  # registers the gauges that exist only once running
        try:
            app.metrics.observe("/healthz", "GET", 200, 0.001)
            app.metrics.answered("/v1/leaderboards/{period}", "redis")
            app.metrics.fell_back("redis_down")
            return app.metrics.render()
        finally:
            await app.shutdown()

    text = asyncio.run(api_metrics())
    names |= {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    return names


EXPOSED = _exposed_names()


def _metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"(?<![A-Za-z0-9_:])[0-9][0-9.]*(?:[eE][+-]?[0-9]+)?", "", expr)  # numbers
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {word for word in words if word.lower() not in _PROMQL_WORDS}


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(_panels(panel.get("panels", [])))
    return found


def test_exposed_names_cover_both_processes() -> None:
    """The registries read by these tests hold the projector's and the API's families."""
    assert "projector_lag_seconds" in EXPOSED and "projector_rebuilds_total" in EXPOSED
    assert "api_requests_total" in EXPOSED and "api_redis_up" in EXPOSED
    assert "api_request_duration_seconds_bucket" in EXPOSED


def test_every_dashboard_query_names_only_exposed_metrics() -> None:
    """Each panel's PromQL reads metrics the projector or the API expose, and nothing else."""
    panels = [p for p in _panels(DASHBOARD["panels"]) if p["type"] != "row"]
    assert len(panels) >= 20
    ids = [p["id"] for p in _panels(DASHBOARD["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    used: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "prometheus"
        for target in panel["targets"]:
            names = _metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            assert names <= EXPOSED, (panel["title"], names - EXPOSED)
            used |= names
    # The dashboard shows what the issue asks for.
    for needed in (
        "projector_lag_seconds",
        "projector_lag_bytes",
        "projector_retained_wal_bytes",
        "projector_rows_applied_total",
        "projector_batch_apply_seconds_bucket",
        "projector_rebuilds_total",
        "projector_reconnects_total",
        "api_requests_total",
        "api_fallbacks_total",
        "api_request_duration_seconds_bucket",
    ):
        assert needed in used, needed


def test_alert_rules_cover_lag_wal_rebuild_loops_fallbacks_and_5xx() -> None:
    """The rules parse and read only exposed metrics (or Prometheus's up)."""
    rules = {rule["alert"]: rule for group in ALERTS["groups"] for rule in group["rules"]}
    for name in (
        "ProjectorLagHigh",
        "RetainedWalHigh",
        "ProjectorRebuildLoop",
        "ApiFallbackRateHigh",
        "Api5xxRateHigh",
    ):
        assert name in rules, name
    assert "increase(projector_rebuilds_total[15m])) > 3" in rules["ProjectorRebuildLoop"]["expr"]
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        assert _metric_names(rule["expr"]) <= EXPOSED | _PROMETHEUS_SERIES, name


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing: scripts/ensure_system.sh installs Debian's prometheus")
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    return found


def test_promtool_accepts_rules_and_config(tmp_path: Path) -> None:
    """promtool checks the alert rules, and the config with its rule file where it is mounted."""
    promtool = _promtool()
    rules = subprocess.run(
        [promtool, "check", "rules", str(DEPLOY / "prometheus/alerts.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = dict(PROMETHEUS)
    config["rule_files"] = [str(DEPLOY / "prometheus/alerts.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    checked = subprocess.run(
        [promtool, "check", "config", str(local)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_prometheus_scrapes_the_projector_and_the_api() -> None:
    """The scrape targets are the compose services on the ports they expose."""
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    projector_port = COMPOSE["services"]["projector"]["environment"]["PROJECTOR_METRICS_PORT"]
    assert jobs["projector"]["static_configs"][0]["targets"] == [f"projector:{projector_port}"]
    assert jobs["api"]["static_configs"][0]["targets"] == ["api:8000"]
    assert PROMETHEUS["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_compose_mounts_existing_files_and_the_profile_is_complete() -> None:
    """Every bind mount exists; Prometheus and Grafana run only under `observability`, with the
    config, rules, provisioning and dashboards where they look for them."""
    services = COMPOSE["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, source)
    observability = {n for n, s in services.items() if "observability" in s.get("profiles", [])}
    assert observability == {"prometheus", "grafana"}
    mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= mounts
    grafana = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    provisioning = ROOT / grafana["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == DASHBOARD["panels"][1]["datasource"]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards/dashboards.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert (ROOT / grafana[path] / "pomodoro.json").is_file()


def test_compose_runs_least_privilege_roles_not_superusers() -> None:
    """Only the one-shot setup uses the owner; projector and API log in as their own roles."""
    services = COMPOSE["services"]
    assert "postgres:postgres@" in services["setup"]["environment"]["PROJECTOR_PG_DSN"]
    assert "projector roles --apply" in " ".join(services["setup"]["command"])
    projector = services["projector"]["environment"]
    api = services["api"]["environment"]
    assert projector["PROJECTOR_PG_DSN"].startswith("postgresql://projector_run:")
    assert projector["PROJECTOR_REDIS_URL"].startswith("redis://projector_run:")
    assert api["PROJECTOR_API_PG_DSN"].startswith("postgresql://projector_api:")
    assert api["PROJECTOR_API_REDIS_URL"].startswith("redis://projector_api:")
    for service in ("projector", "api"):
        assert services[service]["depends_on"]["setup"]["condition"] == (
            "service_completed_successfully"
        )


def test_compose_acl_file_is_what_projector_roles_prints(tmp_path: Path) -> None:
    """deploy/redis/users.acl holds `projector roles --redis --aclfile` for compose's passwords,
    and a real redis-server loads it: each user logs in with its password and no other."""
    roles = COMPOSE["x-roles"]
    env = {"PATH": os.environ["PATH"], **roles}
    printed = subprocess.run(
        [sys.executable, "-m", "projector", "roles", "--redis", "--aclfile"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    lines = (DEPLOY / "redis/users.acl").read_text().splitlines()
    assert lines[0].startswith("user default on #") and lines[1:] == printed
    server = shutil.which("redis-server")
    assert server is not None
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir"]
    proc = subprocess.Popen(
        [*argv, str(tmp_path), "--aclfile", str(DEPLOY / "redis/users.acl")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://projector_api:{roles['PROJECTOR_API_PASSWORD']}@127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        for _ in range(100):
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("pomo:x", "1")
        client.close()
        run = redis.Redis.from_url(
            f"redis://projector_run:{roles['PROJECTOR_RUN_PASSWORD']}@127.0.0.1:{port}/0"
        )
        assert run.set("pomo:x", "1")
        run.close()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(f"redis://projector_run:wrong@127.0.0.1:{port}/0").ping()
        anonymous = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0")
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        anonymous.close()
    finally:
        proc.terminate()
        proc.wait(10)
