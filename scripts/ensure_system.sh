#!/usr/bin/env bash
# Install the system packages that `make run` and `make test` need, when missing, on
# Debian/Ubuntu: the PostgreSQL server binaries, redis-server 7, make, Python's venv, and for
# `test` also promtool (Debian's prometheus package, for the alert-rule checks) and a headless
# Chromium with its driver and a font (the live page's tests); for `bench` also wrk.
#   scripts/ensure_system.sh run|test|bench
# As root it runs apt-get; as another user it prints the one command to run and exits 1.
# Used by .ci/run, `make run` and `make test`; quiet when nothing is missing.
set -euo pipefail

purpose="${1:-test}"
case "$purpose" in
    run | test | bench) ;;
    *)
        echo "usage: $0 run|test|bench" >&2
        exit 2
        ;;
esac

have_postgres() {
    [[ -n "${PROJECTOR_PG_BINDIR:-}" && -x "${PROJECTOR_PG_BINDIR}/initdb" ]] && return 0
    command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1 && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

postgres_package() {
    # Debian 12 ships 15; elsewhere take the distribution's default major version.
    if apt-cache show postgresql-15 >/dev/null 2>&1; then
        echo postgresql-15
    else
        echo postgresql
    fi
}

missing=()
# Servers from the environment need no local binaries.
if [[ -z "${PROJECTOR_TEST_PG_DSN:-}" || "$purpose" != test ]]; then
    have_postgres || missing+=("$(postgres_package)")
fi
if [[ -z "${PROJECTOR_TEST_REDIS_URL:-}" || "$purpose" != test ]]; then
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
fi
command -v make >/dev/null 2>&1 || missing+=(make)
if ! command -v python3 >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [[ "$purpose" == bench ]]; then
    command -v wrk >/dev/null 2>&1 || missing+=(wrk) # the API's throughput
fi
if [[ "$purpose" == test ]]; then
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    # The live page's tests drive a real headless Chromium through Debian's chromedriver;
    # under CI they fail rather than skip without it. A font, so that screenshots show text.
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    [[ -x /usr/bin/chromedriver ]] || missing+=(chromium-driver)
    [[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
fi

if ((${#missing[@]})); then
    if [[ $EUID -ne 0 ]]; then
        echo "ensure_system.sh: missing ${missing[*]}; run: sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "ensure_system.sh: missing ${missing[*]} and no apt-get here; install them with your package manager" >&2
        exit 1
    fi
    echo "ensure_system.sh: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Refresh the package lists only when they are absent or do not know a package.
    if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        apt-get update >&2
        apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
fi

# The read API's scripts and the ACL users need Redis 7 (README: requirements).
if command -v redis-server >/dev/null 2>&1; then
    version="$(redis-server --version | sed -n 's/.* v=\([0-9][0-9]*\)\..*/\1/p')"
    if [[ -n "$version" && "$version" -lt 7 ]]; then
        echo "ensure_system.sh: $(command -v redis-server) is Redis $version; Redis 7.0 or later is needed (install it from packages.redis.io or your distribution's backports)" >&2
        exit 1
    fi
fi

# initdb refuses to run as root: the harness runs PostgreSQL as the `postgres` account.
if [[ $EUID -eq 0 ]] && ! id -u postgres >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
