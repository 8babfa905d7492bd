"""``make run``: the whole system on this machine.

Without ``PROJECTOR_PG_DSN`` / ``PROJECTOR_REDIS_URL`` it starts (or reuses) a local
PostgreSQL and Redis under ``.run/`` (``make down`` stops them), applies the migrations as
the owner and creates the least-privilege roles and Redis users (``servers.roles``) that the
projector and the read API then log in as. Both run side by side until Ctrl-C/SIGTERM, which
stops both cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import servers  # noqa: E402


def main() -> int:
    env = dict(os.environ)
    local = not env.get("PROJECTOR_PG_DSN") or not env.get("PROJECTOR_REDIS_URL")
    if local:
        for name, value in servers.up(ROOT / ".run", "pomodoro").items():
            env.setdefault(name, value)
    python = sys.executable
    subprocess.run([python, "-m", "projector", "migrate"], env=env, cwd=ROOT, check=True)
    if local:
        # Migrations need the owner; the projector and the API run as least-privilege roles.
        env.update(servers.roles(ROOT / ".run", env))
    host = env.get("PROJECTOR_API_HOST", "127.0.0.1")
    port = env.get("PROJECTOR_API_PORT", "8000")
    children = [
        subprocess.Popen([python, "-m", "projector", "run"], env=env, cwd=ROOT),
        subprocess.Popen([python, "-m", "api", "--host", host, "--port", port], env=env, cwd=ROOT),
    ]
    print(
        f"projector running; API on http://{host}:{port}/v1/leaderboards/day "
        "(Ctrl-C stops both; `make down` stops the local servers)",
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
        for child in children:
            code = child.poll()
            if code is not None:
                print(f"{child.args[2]} exited with {code}; stopping", file=sys.stderr)
                status = code or 1
                stopping = True
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
    return status


if __name__ == "__main__":
    sys.exit(main())
