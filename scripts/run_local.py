"""``make run``: the whole system on this machine.

Without ``PROJECTOR_PG_DSN`` / ``PROJECTOR_REDIS_URL`` it starts (or reuses) a local
PostgreSQL and Redis under ``.run/`` (``make down`` stops them), applies the migrations as
the owner and creates the least-privilege roles and Redis users (``servers.roles``) that the
projector and the read API then log in as. It runs the projector, the read API (the live page
at ``/``) and, unless ``DEMO=0``, the demo writer (``projector demo``, an app: it writes as
the owner) side by side until Ctrl-C/SIGTERM, which stops them all cleanly. ``DEMO_RATE``
sets the demo's writes per second (default 3).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import servers

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    env = dict(os.environ)
    local = not env.get("PROJECTOR_PG_DSN") or not env.get("PROJECTOR_REDIS_URL")
    if local:
        for name, value in servers.up(ROOT / ".run", "pomodoro").items():
            env.setdefault(name, value)
    python = sys.executable
    subprocess.run([python, "-m", "projector", "migrate"], env=env, cwd=ROOT, check=True)
    owner = dict(env)  # migrations and the demo writer (an app) need to write
    if local:
        # The projector and the API run as least-privilege roles.
        env.update(servers.roles(ROOT / ".run", env))
    host = env.get("PROJECTOR_API_HOST", "127.0.0.1")
    port = env.get("PROJECTOR_API_PORT", "8000")
    commands = {
        "projector": [python, "-m", "projector", "run"],
        "api": [python, "-m", "api", "--host", host, "--port", port],
    }
    demo = env.get("DEMO", "1").strip().lower() not in ("0", "false", "no", "off")
    if demo:
        rate = env.get("DEMO_RATE") or "3"
        commands["demo"] = [python, "-m", "projector", "demo", "--rate", rate]
    children = {
        name: subprocess.Popen(argv, env=owner if name == "demo" else env, cwd=ROOT)
        for name, argv in commands.items()
    }
    print(
        f"\n  the live leaderboard: http://{host}:{port}/"
        f"\n  the API:              http://{host}:{port}/v1/leaderboards/day"
        f"\n  {'a demo writer adds pomodoros (DEMO=0 turns it off)' if demo else 'no demo writer'}"
        "; Ctrl-C stops everything, `make down` the local servers\n",
        file=sys.stderr,
    )
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    while not stopping:
        for name, child in children.items():
            code = child.poll()
            if code is not None:
                print(f"{name} exited with {code}; stopping", file=sys.stderr)
                status = code or 1
                stopping = True
        time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children.values():
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
    return status


if __name__ == "__main__":
    sys.exit(main())
