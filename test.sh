#!/usr/bin/env bash
# The whole test suite (README.md, set-up command 2): installs what the
# tests need, then runs them.
#
#   ./test.sh [cargo test arguments...]    e.g. ./test.sh -p perch-tests --test all hostile::
#   ./test.sh --install-only               only install what the tests need (.ci/run)
#
# It starts nothing that outlives it: every server a test needs is started by
# that test, on 127.0.0.1:0, and stopped with it. A test that needs an
# external program fails naming it (perch_tests::require_program);
# PERCH_SKIP_EXTERNAL=1 skips such tests instead, saying so.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# ---------------------------------------------------------------- timing

PHASES=
START=$(date +%s%3N)
seconds() { printf '%d.%d s' $(( $1 / 1000 )) $(( $1 % 1000 / 100 )); }
# phase NAME COMMAND... — runs COMMAND and prints how long it took.
phase() {
    local name=$1 t0 rc=0 ms
    shift
    t0=$(date +%s%3N)
    "$@" || rc=$?
    ms=$(( $(date +%s%3N) - t0 ))
    PHASES+="${PHASES:+, }$name $(seconds "$ms")"
    echo "[test.sh] $name: $(seconds "$ms")$([ "$rc" -eq 0 ] || echo ", failed (exit $rc)")" >&2
    return "$rc"
}
# The summary, also when a phase failed.
trap 'stop_postgres; echo "[test.sh] ${PHASES:-nothing ran}; total $(seconds $(( $(date +%s%3N) - START )))" >&2' EXIT

# ---------------------------------------------------------------- install

# need_apt PACKAGE... — installs the Debian packages that are not installed
# yet (apt-get update once per run, the first time something is missing).
APT_UPDATED=
need_apt() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        echo "[test.sh] the tests need the Debian packages ${missing[*]}, and there is no apt-get to install them" >&2
        return 1
    fi
    local sudo=
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    echo "[test.sh] installing ${missing[*]}" >&2
    if [ -z "$APT_UPDATED" ]; then
        $sudo apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# need_rust_target TARGET — the test build compiles guest components for it.
need_rust_target() {
    if ! command -v rustup >/dev/null; then
        echo "[test.sh] no rustup: make sure the Rust target $1 is installed" >&2
        return 0
    fi
    rustup target list --installed | grep -qx "$1" || rustup target add "$1"
}

# need_python — a virtualenv with the PyPI packages the telemetry tests
# parse with: prometheus-client's text parser, opentelemetry-proto's OTLP
# messages. Its interpreter is PERCH_PYTHON for the tests.
PYTHON_VENV=${PERCH_PYTHON_VENV:-$HOME/.cache/perch/python}
need_python() {
    local py=$PYTHON_VENV/bin/python
    if ! "$py" -c 'import prometheus_client, opentelemetry.proto' 2>/dev/null; then
        python3 -m venv "$PYTHON_VENV" 2>/dev/null || { need_apt python3-venv && python3 -m venv "$PYTHON_VENV"; } || return
        echo "[test.sh] installing prometheus-client and opentelemetry-proto into $PYTHON_VENV" >&2
        "$PYTHON_VENV/bin/pip" install -q --disable-pip-version-check \
            'prometheus-client==0.21.*' 'opentelemetry-proto==1.45.2' 'protobuf>=5,<8' || return
    fi
    export PERCH_PYTHON=$py
}

install() {
    need_rust_target wasm32-wasip2 || return
    need_python || return
    # The container tests: Podman with runc (each test process starts its
    # own API service in a temporary directory), busybox-static for the
    # images they build. Named explicitly what --no-install-recommends would
    # leave out and the tests rely on: catatonit (the containers' init),
    # netavark + aardvark-dns (the network stack the tests were written on)
    # iptables (its port publishing) and nftables (`nft`: Perch's own
    # table that keeps tenant networks apart).
    need_apt podman runc busybox-static catatonit netavark aardvark-dns iptables nftables
    # The ACME tests: Pebble, Let's Encrypt's test CA, and pebble-challtestsrv,
    # its DNS stand-in.
    need_apt pebble
    # The PostgreSQL store's tests (cluster mode): a server of their own.
    need_apt postgresql-15
}

# ---------------------------------------------------------------- services

# start_postgres — a throwaway PostgreSQL 15 cluster for this run, unless
# PERCH_TEST_POSTGRES_URL names one: initdb in a temporary directory (as the
# postgres user when we are root: initdb refuses root), a Unix socket in
# that directory and no TCP listener, trust authentication; stopped and
# removed when the run ends. Each test makes a database of its own on it;
# tests run in parallel and every node holds a pool, a listener and a
# writer, so the server takes more clients than PostgreSQL's default 100.
PG_BIN=/usr/lib/postgresql/15/bin
PG_DIR=
PG_AS=()
start_postgres() {
    [ -n "${PERCH_TEST_POSTGRES_URL:-}" ] && return 0
    PG_DIR=$(mktemp -d /tmp/perch-pg.XXXXXX)
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres "$PG_DIR"
        PG_AS=(runuser -u postgres --)
    fi
    "${PG_AS[@]}" "$PG_BIN/initdb" -A trust -U postgres -D "$PG_DIR/data" >"$PG_DIR/initdb.log" 2>&1 ||
        { cat "$PG_DIR/initdb.log" >&2; return 1; }
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
        -o "-k $PG_DIR -c listen_addresses= -p 5432 -c max_connections=600" start >/dev/null ||
        { cat "$PG_DIR/server.log" >&2; return 1; }
    export PERCH_TEST_POSTGRES_URL="host=$PG_DIR port=5432 user=postgres dbname=postgres"
}
stop_postgres() {
    [ -n "$PG_DIR" ] || return 0
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
}

if [ "${1:-}" = --install-only ]; then
    phase install install
    exit
fi
phase install install
phase postgres start_postgres
phase tests cargo test --workspace "$@"
