"""``projector clear``: removes every key under the prefix, and only those, and only when asked."""

from __future__ import annotations

from .support import Deployment, seed


def test_clear_yes_removes_every_key_under_the_prefix_and_no_other(
    deployment: Deployment,
) -> None:
    """After ``clear --yes`` no key starts with the prefix; other prefixes' keys survive."""
    seed(deployment.pg_dsn, rows=2_000, users=50, days=40)
    projector = deployment.start()
    projector.wait_event("rebuild finished")
    deployment.wait_caught_up()
    assert projector.stop() == 0
    prefix = deployment.prefix
    others = {f"{prefix[:-1]}x:lb:all:all", "pomo:lb:all:all", f"other:{prefix}users"}
    with deployment.redis() as client:
        for i in range(1_200):  # more than one SCAN page and one UNLINK batch
            client.set(f"{prefix}junk:{i}", i)
        for key in others:
            client.zadd(key, {"someone": 1})
        ours = len(list(client.scan_iter(match=f"{prefix}*")))
    assert ours > 1_200 + 40

    refused = deployment.cli("clear")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    with deployment.redis() as client:
        assert len(list(client.scan_iter(match=f"{prefix}*"))) == ours

    cleared = deployment.cli("clear", "--yes")
    assert cleared.returncode == 0, cleared.stderr
    assert f"removed {ours} key(s)" in cleared.stdout
    with deployment.redis() as client:
        assert list(client.scan_iter(match=f"{prefix}*")) == []
        assert {k.decode() for k in client.scan_iter(match="*")} == others
