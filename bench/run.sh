#!/usr/bin/env bash
# Perch side by side with `wasmtime serve` on this machine (issue 6).
#
#   bench/run.sh [scenario ...]
#
# Scenarios (default: all, in this order):
#   hello        hello rps, p50/p99: Perch (fresh instance, default limits) vs
#                `wasmtime serve -O pooling-allocator` with and without limits
#   reuse        instance reuse on both sides (REUSE requests per instance)
#   latency      p50/p99 at 50 % of Perch's max rps (h2load, paced)
#   first        first request after deploy and after restart vs warm
#   instantiate  per-request Store + instantiation micro-benchmark (runtime),
#                and the cost of a component-cache miss, phase by phase
#   many         MANY_FUNCTIONS functions over MANY_COMPONENTS components,
#                component cache at 80 %: rps vs one function, RSS, start-up,
#                and `/metrics` render time and series with all of them live
#   kv           guest KV hot get / durable put, and the backend kvbench
#   isolation    a hostile tenant next to hello: how soon an infinite loop is
#                answered after its CPU limit, and hello's rps, p50/p99 while
#                another tenant keeps infinite loops or hanging requests
#                running (the end-to-end tests only assert that it happens)
#   image        examples/image-resize throughput (when that example exists)
#   ops          hello rps beside hello behind a 2-version split, with one
#                log follower attached, and with a follower that stopped
#                reading (goal: each ≥ 0.95 × plain); then the delay from a
#                response to its event reaching a follower (goal ≤ 100 ms)
#   tracing      hello with OpenTelemetry traces at sample ratio 1.0 against
#                traces off: to a collector that answers, to one that takes
#                2 s per export, and to none (goal: each ≥ 0.9 × off); the
#                dropped-span counter of each
#   tls          hello over TLS (rustls, ECDSA P-256, HTTP/1.1 keep-alive)
#                against the plaintext listener of the same server (goal
#                ≥ 0.85 ×); new TLS connections per second (one request
#                each, Connection: close) against nginx (Debian's package)
#                with the same certificate and key (goal ≥ 0.9 ×); HTTP/2
#                over TLS with h2load; and how long ACME takes, against
#                Pebble (Debian's package), from the first route to the
#                certificate served
#   cluster      cluster mode: three nodes on one PostgreSQL (Debian's, a
#                throwaway cluster on a loopback port, pinned to SERVER_CPU;
#                the nodes unpinned, then pinned there for the throughput
#                runs): the distribution over CHANGES (100) changes
#                of the time from the 2xx on node 1 to nodes 2 and 3 serving a
#                new version (upload: includes their fetch + compile of the
#                new component), a route switch between warm functions, and
#                a KV write becoming readable (bench/cluster.py; goal p99
#                ≤ 1 s, target ≤ 100 ms); then hello rps and guest KV get and
#                put throughput on a cluster node against a redb node,
#                alternating (goal: hello ≥ 0.95 ×) (not in the default list)
#   containers   container cold start (no instance running): a request through
#                Perch to its first byte, against create + start + first 200
#                through the same engine API (bench/coldstart.py), alternating,
#                CROUNDS rounds (10); on a Podman service of its own (not in
#                the default list: it needs podman)
#
# It installs what is missing (wrk and h2load with apt-get, wasmtime-cli
# 48.0.8 with cargo install, cached under ~/.cache/perch-bench), builds Perch
# in release mode and the guests, and runs everything on loopback: servers
# pinned to SERVER_CPU, the load generator to LOAD_CPU. Variants alternate
# round by round; every figure is the median over ROUNDS rounds. Results are
# printed as markdown and appended to target/bench/results.md. Every run also
# reports the hypervisor steal time of both CPUs (bench/steal.py): on a
# virtual machine the host pauses a vCPU for milliseconds at a time, and the
# latency runs give the p99 of the requests that started away from those
# pauses next to the p99 of all requests.
#
# Environment: ROUNDS (5), DURATION (10, seconds per run), CONNS (32),
# SERVER_CPU (0), LOAD_CPU (1), REUSE (128), MANY_FUNCTIONS (10000),
# MANY_COMPONENTS (500), CHANGES (100, the cluster scenario), MANY_DATA (keep the many scenario's deployed data
# directory there and reuse it on the next run), SPIN_CPU_MS (500, the
# hostile tenant's CPU limit), SPINNERS (3), HANGERS (256, the tenant
# concurrency cap), PERCH_BENCH_CACHE, SKIP_BUILD=1, PERCH_BASELINE (the
# path of another perch binary, e.g. a release build of an older commit:
# the hello scenario then also runs it, alternating with the others, as
# `perch-baseline`).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PERCH_BENCH_CACHE:-$HOME/.cache/perch-bench}
TARGET=$ROOT/target/bench
WASMTIME_VERSION=48.0.8
WASMTIME=$CACHE/wasmtime-$WASMTIME_VERSION/bin/wasmtime
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
REUSE=${REUSE:-128}
MANY_FUNCTIONS=${MANY_FUNCTIONS:-10000}
MANY_COMPONENTS=${MANY_COMPONENTS:-500}
SPIN_CPU_MS=${SPIN_CPU_MS:-500}
SPINNERS=${SPINNERS:-3}
HANGERS=${HANGERS:-256}
TOKEN=perch-bench-admin-token
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(hello reuse latency first instantiate many kv isolation image ops tracing tls)

WORK=$(mktemp -d /tmp/perch-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

PERCH=$TARGET/release/perch
HELLO=$TARGET/guests/wasm32-wasip2/release/bench_hello.wasm
KVEXT=$TARGET/guests/wasm32-wasip2/release/kvext.wasm
FAULTY=$TARGET/guests/wasm32-wasip2/release/faulty.wasm
IMAGE=$TARGET/guests/wasm32-wasip2/release/image_resize.wasm
SAMPLES=$WORK/samples.tsv
REPORT=$WORK/report.md
: >"$SAMPLES"
: >"$REPORT"

log() { echo "[bench] $*" >&2; }
has_scenario() { local s; for s in "${SCENARIOS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

# ---------------------------------------------------------------- tools

install_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v curl >/dev/null || missing+=(curl)
    if has_scenario tls; then
        command -v nginx >/dev/null || missing+=(nginx)
        command -v pebble >/dev/null || missing+=(pebble)
        command -v openssl >/dev/null || missing+=(openssl)
    fi
    if has_scenario cluster; then
        compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
    fi
    if has_scenario containers; then
        command -v podman >/dev/null || missing+=(podman catatonit netavark aardvark-dns iptables)
        command -v runc >/dev/null || missing+=(runc)
        [ -x /bin/busybox ] || missing+=(busybox-static)
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        local sudo=; [ "$(id -u)" -ne 0 ] && sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # Only the scenarios that run `wasmtime serve` need it.
    if { has_scenario hello || has_scenario reuse || has_scenario latency; } && [ ! -x "$WASMTIME" ]; then
        log "building wasmtime-cli $WASMTIME_VERSION into $CACHE (once; about 20 minutes)"
        mkdir -p "$CACHE"
        CARGO_TARGET_DIR=$CACHE/build cargo install wasmtime-cli --version "$WASMTIME_VERSION" \
            --locked --root "$CACHE/wasmtime-$WASMTIME_VERSION"
    fi
}

build() {
    [ "${SKIP_BUILD:-}" = 1 ] && return
    log "building perch (release) and the guests"
    # One cargo invocation, so every target sees the same dependency features
    # (building a package alone would rebuild wasmtime with other features).
    (cd "$ROOT" && cargo build -q --release --target-dir "$TARGET" -p perch-gateway --bin perch \
        -p perch-runtime --example instantiate --example miss -p perch-kv --example kvbench)
    (cd "$ROOT/bench/guests" && cargo build -q --release --target wasm32-wasip2 --target-dir "$TARGET/guests")
    (cd "$ROOT/tests/guests" && cargo build -q --release --target wasm32-wasip2 --target-dir "$TARGET/guests" -p kvext -p faulty)
    if [ -d "$ROOT/examples/image-resize" ]; then
        (cd "$ROOT/examples" && cargo build -q --release --target wasm32-wasip2 --target-dir "$TARGET/guests" -p image-resize)
    fi
}

# ---------------------------------------------------------------- servers

# start_perch DIR [CONFIG-TOML] — sets PERCH_PID, DATA (host:port), ADMIN (url);
# the server's environment has EXTRA_ENV (NAME=value words) too
EXTRA_ENV=()
start_perch() {
    local dir=$1 config=${2:-}
    mkdir -p "$dir"
    printf '%s\n' "$config" >"$dir/perch.toml"
    local pin=(taskset -c "$SERVER_CPU")
    [ "${UNPINNED:-}" = 1 ] && pin=()
    env PERCH_ADMIN_TOKEN=$TOKEN "${EXTRA_ENV[@]}" "${pin[@]}" "$PERCH" serve --data-dir "$dir/data" \
        --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --config "$dir/perch.toml" \
        >"$dir/stdout" 2>>"$dir/stderr" &
    PERCH_PID=$!
    PIDS+=("$PERCH_PID")
    local line=
    for _ in $(seq 1 6000); do
        line=$(grep -m1 'perch listening' "$dir/stdout" 2>/dev/null || true)
        [ -n "$line" ] && break
        kill -0 "$PERCH_PID" 2>/dev/null || { cat "$dir/stderr" >&2; return 1; }
        sleep 0.01
    done
    [ -n "$line" ] || { log "perch did not start"; return 1; }
    DATA=$(sed -E 's/.*data=http:\/\/([^ ]+).*/\1/' <<<"$line")
    TLS=$(sed -nE 's/.*tls=https:\/\/([^ ]+).*/\1/p' <<<"$line")
    ADMIN=http://$(sed -E 's/.*admin=http:\/\/([^ ]+).*/\1/' <<<"$line")
}

stop_pid() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

api() { # METHOD PATH [curl args]
    local method=$1 path=$2; shift 2
    curl -sS -f -X "$method" -H "Authorization: Bearer $TOKEN" "$@" "$ADMIN$path"
}

deploy() { # TENANT FUNCTION WASM HOST
    api PUT "/v1/tenants/$1" -o /dev/null
    api PUT "/v1/tenants/$1/functions/$2" -H 'content-type: application/wasm' \
        --data-binary @"$3" -o /dev/null
    api PUT "/v1/tenants/$1/routes/$4" -H 'content-type: application/json' \
        -d "{\"function\":\"$2\"}" -o /dev/null
}

settings() { # TENANT FUNCTION JSON
    api PUT "/v1/tenants/$1/functions/$2/settings" -H 'content-type: application/json' \
        -d "$3" -o /dev/null
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_wasmtime VAR [serve flags...] — sets VAR to host:port
start_wasmtime() {
    local var=$1; shift
    local port; port=$(free_port)
    taskset -c "$SERVER_CPU" "$WASMTIME" serve --addr "127.0.0.1:$port" "$@" "$HELLO" \
        >>"$WORK/wasmtime.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 3000); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        sleep 0.01
    done
    printf -v "$var" '%s' "127.0.0.1:$port"
}

# ---------------------------------------------------------------- load

# wrk_run SCENARIO VARIANT ROUND ADDR HOST [wrk args] — one sample line
# (ADDR is host:port, or an https:// URL)
wrk_run() {
    local scenario=$1 variant=$2 round=$3 addr=$4 host=$5; shift 5
    local out steal0 url="http://$addr/"
    [[ $addr == https://* ]] && url=$addr
    steal0=$(steal_ticks)
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
        -H "Host: $host" "$@" "$url")
    python3 - "$scenario" "$variant" "$round" "$(steal_ms "$steal0")" <<EOF >>"$SAMPLES"
import re, sys
out = """$out"""
def ms(v):
    n, u = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 1e-3, "ms": 1, "s": 1e3}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", out).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", out).group(1))
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
errs = re.search(r"Socket errors:.*", out)
if bad or errs:
    print(f"[bench] {sys.argv[2]}: {bad.group(0) if bad else ''} {errs.group(0) if errs else ''}", file=sys.stderr)
print(f"{sys.argv[1]}\t{sys.argv[2]}\t{sys.argv[3]}\t{rps:.1f}\t{p50:.3f}\t{p99:.3f}\t{sys.argv[4]}")
EOF
    log "$(tail -1 "$SAMPLES")"
}

# Hypervisor steal (bench/steal.py): the counters of the server's and the
# load generator's CPUs, and the milliseconds stolen from each since then.
steal_ticks() { python3 "$ROOT/bench/steal.py" ticks "$SERVER_CPU" "$LOAD_CPU"; }
steal_ms() { # TICKS-BEFORE — "server/load" ms
    local hz s0 l0 s1 l1; hz=$(getconf CLK_TCK)
    read -r s0 l0 <<<"$1"
    read -r s1 l1 <<<"$(steal_ticks)"
    echo "$(( (s1 - s0) * 1000 / hz ))/$(( (l1 - l0) * 1000 / hz ))"
}

# h2load_run SCENARIO VARIANT ROUND ADDR HOST RATE [STAGGER] — paced load
# (16 connections, RATE/16 requests per second each), p50/p99 from the
# per-request log. With STAGGER=1 (the default) the connections open 1 ms
# apart, so their request timers are spread over the period like independent
# clients'; with 0 they all fire together and every period starts with a
# burst of 16 simultaneous requests.
h2load_run() {
    local scenario=$1 variant=$2 round=$3 addr=$4 host=$5 rate=$6 stagger=${7:-1}
    local clients=16 logf=$WORK/h2load.log
    local per=$(( (rate + clients - 1) / clients ))
    local pace=(-D "$DURATION")
    [ "$stagger" = 1 ] && pace=(-n $(( per * clients * DURATION )) --rate=1 --rate-period=1ms)
    local steals=$WORK/steal.log steal0 sampler
    rm -f "$logf" "$steals"
    steal0=$(steal_ticks)
    # Steal events, to tell the VM's pauses from the server's (see below).
    nice -n 19 python3 "$ROOT/bench/steal.py" sample "$steals" "$SERVER_CPU" "$LOAD_CPU" &
    sampler=$!
    taskset -c "$LOAD_CPU" h2load --h1 -c "$clients" --rps="$per" "${pace[@]}" \
        -H ":authority: $host" --log-file="$logf" "http://$addr/" >"$WORK/h2load.out"
    kill -TERM "$sampler"
    wait "$sampler" 2>/dev/null || true
    python3 - "$scenario" "$variant" "$round" "$logf" "$(steal_ms "$steal0")" "$steals" <<'EOF' >>"$SAMPLES"
import bisect, sys
lat, bad, starts = [], 0, []
for line in open(sys.argv[4]):
    f = line.split()
    if len(f) < 3:
        continue
    if not f[1].startswith("2"):
        bad += 1
    starts.append(int(f[0]) / 1000.0)
    lat.append(int(f[2]) / 1000.0)
# Requests that started from 30 ms before to 15 ms after a sample that saw
# steal (5 ms sampling, 10 ms counter granularity) may have waited for the
# VM rather than the server; the last column is the p99 of all the others.
steal = sorted(float(l.split()[0]) for l in open(sys.argv[6]))
def near(t):
    i = bisect.bisect_left(steal, t - 15)
    return i < len(steal) and steal[i] <= t + 30
away = sorted(l for t, l in zip(starts, lat) if not near(t))
def pct(v, p):
    return v[min(len(v) - 1, int(len(v) * p))] if v else float("nan")
if bad:
    print(f"[bench] {sys.argv[2]}: {bad} non-2xx", file=sys.stderr)
rate = len(lat) / max(1e-6, (max(starts) - min(starts)) / 1e3)
lat.sort()
print(f"{sys.argv[1]}\t{sys.argv[2]}\t{sys.argv[3]}\t{rate:.1f}\t{pct(lat, 0.5):.3f}\t{pct(lat, 0.99):.3f}"
      f"\t{sys.argv[5]}\t{pct(away, 0.99):.3f}\t{100 * (len(lat) - len(away)) / len(lat):.0f}")
EOF
    log "$(tail -1 "$SAMPLES")"
}

# summary SCENARIO REFERENCE-VARIANT TITLE — medians and ratios as markdown
summary() {
    python3 - "$SAMPLES" "$1" "$2" "$3" <<'EOF' | tee -a "$REPORT"
import sys, statistics as st
path, scenario, ref, title = sys.argv[1:5]
rows = {}
order = []
for line in open(path):
    f = line.rstrip("\n").split("\t")
    if f[0] != scenario:
        continue
    v = f[1]
    if v not in rows:
        order.append(v)
        rows[v] = []
    # rps, p50, p99, steal "server/load" ms, [p99 away from steal, % near]
    rows[v].append((float(f[3]), float(f[4]), float(f[5]), f[6], *f[7:9]))
paced = all(len(r) > 4 for rs in rows.values() for r in rs)
print(f"\n### {title}\n")
if paced:
    print("| variant | rps (median) | p50 ms | p99 ms (median) | p99 per round | "
          "steal ms per round (server/load CPU) | p99 away from steal (median) | per round | requests near steal |")
    print("|---|---|---|---|---|---|---|---|---|")
else:
    print("| variant | rps (median) | rps per round | p50 ms | p99 ms | rps ratio | steal ms per round (server/load CPU) |")
    print("|---|---|---|---|---|---|---|")
ref_rps = st.median(r[0] for r in rows[ref]) if ref in rows else None
for v in order:
    rs = rows[v]
    rps = st.median(r[0] for r in rs)
    steal = " · ".join(r[3] for r in rs)
    if paced:
        print(f"| {v} | {rps:,.0f} | {st.median(r[1] for r in rs):.3f} | {st.median(r[2] for r in rs):.2f} | "
              f"{' / '.join(f'{r[2]:.2f}' for r in rs)} | {steal} | "
              f"{st.median(float(r[4]) for r in rs):.2f} | {' / '.join(f'{float(r[4]):.2f}' for r in rs)} | "
              f"{' / '.join(r[5] + ' %' for r in rs)} |")
        continue
    ratio = f"{rps / ref_rps:.2f} × {ref}" if ref_rps else ""
    print(f"| {v} | {rps:,.0f} | {' / '.join(f'{r[0]:,.0f}' for r in rs)} | "
          f"{st.median(r[1] for r in rs):.3f} | {st.median(r[2] for r in rs):.3f} | {ratio} | {steal} |")
EOF
}

median_rps() { # SCENARIO VARIANT
    python3 - "$SAMPLES" "$1" "$2" <<'EOF'
import sys, statistics as st
v = [float(l.split("\t")[3]) for l in open(sys.argv[1]) if l.split("\t")[:2] == sys.argv[2:4]]
print(int(st.median(v)) if v else 0)
EOF
}

# ---------------------------------------------------------------- scenarios

HELLO_HOST=hello.bench.test

scenario_hello() {
    log "scenario hello: fresh instances"
    local wt wtl
    start_wasmtime wt -O pooling-allocator -S cli
    start_wasmtime wtl -O pooling-allocator -S cli -W timeout=30s,max-memory-size=134217728
    local variants=(perch wasmtime wasmtime-limits)
    local addrs=("$PERCH_DATA" "$wt" "$wtl")
    if [ -n "${PERCH_BASELINE:-}" ]; then
        local main_data=$DATA main_admin=$ADMIN
        PERCH=$PERCH_BASELINE start_perch "$WORK/baseline"
        deploy bench hello "$HELLO" "$HELLO_HOST"
        variants+=(perch-baseline)
        addrs+=("$DATA")
        DATA=$main_data ADMIN=$main_admin
    fi
    local n=${#variants[@]}
    for round in $(seq 1 "$ROUNDS"); do
        for i in $(seq 0 $(( n - 1 ))); do
            local j=$(( (i + round) % n ))
            wrk_run hello "${variants[$j]}" "$round" "${addrs[$j]}" "$HELLO_HOST"
        done
    done
    summary hello wasmtime "1. hello, fresh instance per request (rps, wrk -c$CONNS, ${DURATION}s × $ROUNDS rounds)"
}

scenario_reuse() {
    log "scenario reuse: $REUSE requests per instance"
    local wt
    deploy bench hello-reuse "$HELLO" reuse.bench.test
    settings bench hello-reuse "{\"limits\":{\"instance_reuse\":$REUSE}}"
    start_wasmtime wt -O pooling-allocator -S cli --max-instance-reuse-count "$REUSE"
    for round in $(seq 1 "$ROUNDS"); do
        if (( round % 2 )); then
            wrk_run reuse perch-reuse "$round" "$PERCH_DATA" reuse.bench.test
            wrk_run reuse wasmtime-reuse "$round" "$wt" "$HELLO_HOST"
        else
            wrk_run reuse wasmtime-reuse "$round" "$wt" "$HELLO_HOST"
            wrk_run reuse perch-reuse "$round" "$PERCH_DATA" reuse.bench.test
        fi
    done
    summary reuse wasmtime-reuse "2. hello with instance reuse ($REUSE requests per instance)"
}

scenario_latency() {
    local max; max=$(median_rps hello perch)
    if [ "$max" -eq 0 ]; then
        log "scenario latency: measuring Perch's max rps first"
        wrk_run latency-max perch 1 "$PERCH_DATA" "$HELLO_HOST"
        max=$(median_rps latency-max perch)
    fi
    local rate=$(( max / 2 ))
    log "scenario latency: $rate rps (50 % of $max)"
    local wt
    start_wasmtime wt -O pooling-allocator -S cli
    for round in $(seq 1 "$ROUNDS"); do
        h2load_run latency perch "$round" "$PERCH_DATA" "$HELLO_HOST" "$rate"
        h2load_run latency wasmtime "$round" "$wt" "$HELLO_HOST" "$rate"
        h2load_run latency perch-bursts "$round" "$PERCH_DATA" "$HELLO_HOST" "$rate" 0
        h2load_run latency wasmtime-bursts "$round" "$wt" "$HELLO_HOST" "$rate" 0
    done
    summary latency wasmtime "3. latency at $rate rps = 50 % of Perch's max (h2load, 16 paced connections opened 1 ms apart; -bursts: opened together, so they send in bursts of 16)"
}

# ms_get HOST — time of one GET on a new connection, in ms
ms_get() {
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -H "Host: $1" "http://$DATA/" |
        awk '$1 != 200 { print "[bench] status " $1 > "/dev/stderr" } { printf "%.3f\n", $2 * 1000 }'
}

warm_ms() { # HOST — median of 21 GETs
    for _ in $(seq 1 21); do ms_get "$1"; done | sort -n | sed -n 11p
}

patch_variant() { # N OUT — the bench guest with a distinct marker
    python3 - "$HELLO" "$1" "$2" <<'EOF'
import sys
data = open(sys.argv[1], "rb").read()
marker = b"perch-bench-variant:000000"
assert data.count(marker) == 1, "marker not found once"
open(sys.argv[3], "wb").write(data.replace(marker, b"perch-bench-variant:%06d" % int(sys.argv[2])))
EOF
}

scenario_first() {
    log "scenario first: first request after deploy / restart"
    local dir=$WORK/first
    start_perch "$dir"
    local pid=$PERCH_PID
    for round in $(seq 1 "$ROUNDS"); do
        local wasm=$WORK/first-$round.wasm
        patch_variant $((900000 + round)) "$wasm"
        local t0; t0=$(date +%s%N)
        deploy first "f$round" "$wasm" "f$round.first.test"
        local deploy_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
        local first; first=$(ms_get "f$round.first.test")
        local warm; warm=$(warm_ms "f$round.first.test")
        printf 'first\tafter-deploy\t%s\t%s\t%s\t%s\n' "$round" "$first" "$warm" "$deploy_ms" >>"$SAMPLES"
        log "after deploy: first $first ms, warm $warm ms (deploy took $deploy_ms ms)"
    done
    for round in $(seq 1 "$ROUNDS"); do
        stop_pid "$pid"
        local t0; t0=$(date +%s%N)
        start_perch "$dir"
        pid=$PERCH_PID
        local start_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
        local first; first=$(ms_get "f$round.first.test")
        local warm; warm=$(warm_ms "f$round.first.test")
        printf 'first\tafter-restart\t%s\t%s\t%s\t%s\n' "$round" "$first" "$warm" "$start_ms" >>"$SAMPLES"
        log "after restart: first $first ms, warm $warm ms (start-up $start_ms ms)"
    done
    stop_pid "$pid"
    ADMIN=$MAIN_ADMIN DATA=$PERCH_DATA
    python3 - "$SAMPLES" <<'EOF' | tee -a "$REPORT"
import sys, statistics as st
rows = {}
for l in open(sys.argv[1]):
    f = l.rstrip("\n").split("\t")
    if f[0] == "first":
        rows.setdefault(f[1], []).append(tuple(map(float, f[3:6])))
print("\n### 4. first request vs warm (one new connection per request, ms)\n")
print("| case | first (median) | warm (median) | first − warm | per round (first − warm) | deploy / start-up |")
print("|---|---|---|---|---|---|")
for case, rs in rows.items():
    d = [a - b for a, b, _ in rs]
    print(f"| {case} | {st.median(r[0] for r in rs):.3f} | {st.median(r[1] for r in rs):.3f} | "
          f"{st.median(d):.3f} | {' / '.join(f'{x:.2f}' for x in d)} | {st.median(r[2] for r in rs):.0f} ms |")
EOF
}

scenario_instantiate() {
    log "scenario instantiate: micro-benchmark"
    {
        echo
        echo "### 5. per-request Store + instantiation (runtime/examples/instantiate.rs, pinned to CPU $SERVER_CPU)"
        echo
        echo '```'
        taskset -c "$SERVER_CPU" "$TARGET/release/examples/instantiate" "$HELLO"
        echo '```'
        echo
        echo "What a component-cache miss costs (runtime/examples/miss.rs, 16 variants of the bench hello, medians):"
        echo
        echo '```'
        taskset -c "$SERVER_CPU" "$TARGET/release/examples/miss" "$HELLO" 16
        echo '```'
    } | tee -a "$REPORT"
}

rss_kib() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }

scenario_many() {
    local n=$MANY_FUNCTIONS c=$MANY_COMPONENTS
    local cache=$(( c * 8 / 10 ))
    log "scenario many: $n functions over $c components, component cache $cache"
    mkdir -p "$WORK/variants"
    for i in $(seq 0 $((c - 1))); do patch_variant "$i" "$WORK/variants/v$i.wasm"; done
    local dir=${MANY_DATA:-$WORK/many}
    local config
    config=$(printf '[node]\ncomponent_cache = %d\n' "$cache")
    local marker=$dir/deployed-$n-$c rss_deployed=- deploy_s
    start_perch "$WORK/empty" "$config"
    sleep 1
    local rss_empty; rss_empty=$(rss_kib "$PERCH_PID")
    stop_pid "$PERCH_PID"
    PERCH_PID=
    if [ -f "$marker" ]; then
        log "reusing the $n functions deployed in $dir"
        deploy_s="(reused from $dir)"
    else
        rm -rf "$dir"
        # Deploying compiles every component: the server may use both cores
        # here (it is restarted pinned before anything is measured).
        UNPINNED=1 start_perch "$dir" "$config"
        local t0; t0=$(date +%s)
        python3 - "$ADMIN" "$TOKEN" "$WORK/variants" "$n" "$c" <<'EOF'
import concurrent.futures, http.client, json, sys, threading, urllib.parse
admin, token, variants, n, c = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
u = urllib.parse.urlparse(admin)
local = threading.local()
def call(method, path, body=None, ctype=None):
    if not hasattr(local, "conn"):
        local.conn = http.client.HTTPConnection(u.hostname, u.port)
    h = {"Authorization": f"Bearer {token}"}
    if ctype:
        h["content-type"] = ctype
    local.conn.request(method, path, body=body, headers=h)
    r = local.conn.getresponse()
    data = r.read()
    if r.status >= 300:
        raise SystemExit(f"{method} {path}: {r.status} {data[:200]}")
blobs = [open(f"{variants}/v{i}.wasm", "rb").read() for i in range(c)]
tenants = 100
for t in range(tenants):
    call("PUT", f"/v1/tenants/t{t}")
def one(i):
    t = i % tenants
    call("PUT", f"/v1/tenants/t{t}/functions/f{i}", blobs[i % c], "application/wasm")
    call("PUT", f"/v1/tenants/t{t}/routes/f{i}.many.test", json.dumps({"function": f"f{i}"}), "application/json")
    if i % 1000 == 999:
        print(f"[bench] deployed {i + 1}", file=sys.stderr)
# Two uploads at a time: one compilation per core.
with concurrent.futures.ThreadPoolExecutor(2) as pool:
    list(pool.map(one, range(n)))
EOF
        deploy_s="$(( $(date +%s) - t0 )) s"
        rss_deployed=$(rss_kib "$PERCH_PID")
        touch "$marker"
    fi
    [ -n "$PERCH_PID" ] && stop_pid "$PERCH_PID"
    local t0; t0=$(date +%s%N)
    local warmed=0
    [ -f "$dir/stderr" ] && warmed=$(grep -c 'component cache warmed up' "$dir/stderr" || true)
    start_perch "$dir" "$config"
    local startup_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    # Idle RSS once the start-up warm-up has loaded what the cache holds
    # (measured earlier, it depended on how far the warm-up had got).
    for _ in $(seq 1 1200); do
        [ "$(grep -c 'component cache warmed up' "$dir/stderr" || true)" -gt "$warmed" ] && break
        sleep 0.1
    done
    local warmup; warmup=$(grep 'component cache warmed up' "$dir/stderr" | tail -1 | sed -E 's/.*warmed up //')
    sleep 1
    local rss_idle; rss_idle=$(rss_kib "$PERCH_PID")
    cat >"$WORK/hosts.lua" <<'EOF'
local n = tonumber(os.getenv("HOSTS") or "1")
request = function()
  return wrk.format("GET", "/", { Host = "f" .. math.random(0, n - 1) .. ".many.test" })
end
EOF
    for round in $(seq 1 "$ROUNDS"); do
        HOSTS=1 wrk_run many one-function "$round" "$DATA" f0.many.test -s "$WORK/hosts.lua"
        HOSTS=$n wrk_run many "$n-functions" "$round" "$DATA" f0.many.test -s "$WORK/hosts.lua"
    done
    local rss_loaded; rss_loaded=$(rss_kib "$PERCH_PID")
    local metrics
    metrics=$(curl -s "$ADMIN/metrics" | grep -E '^perch_component_cache_(hits|misses)_total' | tr '\n' ' ')
    # `/metrics` with every function's series live (the load runs reached
    # them all): render time and how many series (goal: ≤ 50 ms).
    local render
    render=$(python3 - "$ADMIN/metrics" <<'EOF'
import statistics, sys, time, urllib.request
times, body = [], b""
for _ in range(21):
    t = time.perf_counter()
    body = urllib.request.urlopen(sys.argv[1]).read()
    times.append((time.perf_counter() - t) * 1000)
lines = [l for l in body.decode().splitlines() if l and not l.startswith("#")]
requests = sum(l.startswith("perch_requests_total") for l in lines)
print(f"{statistics.median(times):.1f} ms (median of 21, max {max(times):.1f} ms); "
      f"{len(lines)} series, {requests} of them perch_requests_total; {len(body) // 1024} KiB")
EOF
)
    stop_pid "$PERCH_PID"
    ADMIN=$MAIN_ADMIN DATA=$PERCH_DATA
    summary many one-function "6. $n functions over $c components (component cache $cache), random host per request"
    {
        echo
        echo "| measure | value |"
        echo "|---|---|"
        echo "| RSS, empty Perch | $rss_empty KiB |"
        echo "| RSS after deploying $n functions (live) | $rss_deployed KiB |"
        echo "| RSS after restart, $n functions idle, after the warm-up ($warmup) | $rss_idle KiB → $(( (rss_idle - rss_empty) * 1024 / n )) bytes per idle function, the cache's $cache loaded components included |"
        echo "| RSS after the load runs | $rss_loaded KiB |"
        echo "| start-up with $n functions (spawn → listening) | $startup_ms ms |"
        echo "| deploying $n functions + routes over the admin API (2 at a time, unpinned) | $deploy_s |"
        echo "| component cache | $metrics |"
        echo "| GET /metrics after the load runs (every function has served) | $render |"
    } | tee -a "$REPORT"
}

# kv_scripts — the wrk scripts of the KV scenarios: $WORK/put.lua (a new
# key each request), $WORK/get.lua (the key `probe`)
kv_scripts() {
    cat >"$WORK/put.lua" <<'EOF'
local i = 0
request = function()
  i = i + 1
  return wrk.format("PUT", "/set/k" .. math.random(1, 1000000) .. "-" .. i, nil, "value-0123456789")
end
EOF
    cat >"$WORK/get.lua" <<'EOF'
request = function() return wrk.format("GET", "/get/probe") end
EOF
}

scenario_kv() {
    log "scenario kv"
    deploy bench kv "$KVEXT" kv.bench.test
    curl -sS -f -X PUT -H "Host: kv.bench.test" --data 'hot value' "http://$PERCH_DATA/set/probe" -o /dev/null
    kv_scripts
    for round in $(seq 1 "$ROUNDS"); do
        wrk_run kv hello "$round" "$PERCH_DATA" "$HELLO_HOST"
        wrk_run kv kv-get-hot "$round" "$PERCH_DATA" kv.bench.test -s "$WORK/get.lua"
        wrk_run kv kv-put-durable "$round" "$PERCH_DATA" kv.bench.test -s "$WORK/put.lua"
    done
    summary kv hello "7. guest KV through the data plane ($CONNS concurrent connections; puts are durable before the answer)"
    {
        echo
        echo "Backend (kv/examples/kvbench.rs, not pinned):"
        echo
        echo '```'
        PERCH_BENCH_DIR=$WORK "$TARGET/release/examples/kvbench"
        echo '```'
    } | tee -a "$REPORT"
}

# The end-to-end tests (tests/all/hostile.rs, dataplane.rs) assert that a
# hostile tenant is stopped and that others are served meanwhile; how soon,
# and at what cost to the others, is measured here, on a release build.
scenario_isolation() {
    log "scenario isolation: hello next to a hostile tenant"
    local dir=$WORK/isolation
    start_perch "$dir" "$(printf '[limits]\ncpu_ms = %d\nwall_ms = 3000\n' "$SPIN_CPU_MS")"
    local pid=$PERCH_PID
    deploy bench hello "$HELLO" "$HELLO_HOST"
    deploy hostile faulty "$FAULTY" faulty.bench.test
    local hostile=(taskset -c "$LOAD_CPU" python3 "$ROOT/bench/hostile.py")
    local status ms gen
    for round in $(seq 1 "$ROUNDS"); do
        # Time to the 504 of an infinite loop: alone, and the slowest of
        # SPINNERS at once (they share the server's CPU).
        read -r status ms < <("${hostile[@]}" once "$DATA" faulty.bench.test /spin 1)
        printf 'spin\tone infinite loop\t%s\t%s\t%s\n' "$round" "$status" "$ms" >>"$SAMPLES"
        read -r status ms < <("${hostile[@]}" once "$DATA" faulty.bench.test /spin "$SPINNERS" | sort -k2 -n | tail -1)
        printf 'spin\t%s at once (slowest)\t%s\t%s\t%s\n' "$SPINNERS" "$round" "$status" "$ms" >>"$SAMPLES"
        log "$(tail -2 "$SAMPLES" | tr '\n' ' ')"
        wrk_run isolation hello-alone "$round" "$DATA" "$HELLO_HOST"
        "${hostile[@]}" keep "$DATA" faulty.bench.test /spin "$SPINNERS" "$DURATION" >"$WORK/hostile.out" &
        gen=$!
        wrk_run isolation "hello-while-$SPINNERS-spin" "$round" "$DATA" "$HELLO_HOST"
        wait "$gen"
        log "hostile tenant's infinite loops: $(cat "$WORK/hostile.out")"
        "${hostile[@]}" keep "$DATA" faulty.bench.test /hang "$HANGERS" "$DURATION" >"$WORK/hostile.out" &
        gen=$!
        wrk_run isolation "hello-while-$HANGERS-hang" "$round" "$DATA" "$HELLO_HOST"
        wait "$gen"
        log "hostile tenant's hanging requests: $(cat "$WORK/hostile.out")"
    done
    stop_pid "$pid"
    ADMIN=$MAIN_ADMIN DATA=$PERCH_DATA
    python3 - "$SAMPLES" "$SPIN_CPU_MS" <<'EOF' | tee -a "$REPORT"
import sys, statistics as st
rows = {}
for l in open(sys.argv[1]):
    f = l.rstrip("\n").split("\t")
    if f[0] == "spin":
        rows.setdefault(f[1], []).append((f[3], float(f[4])))
print(f"\n### 9a. infinite loops, CPU limit {sys.argv[2]} ms: time to the 504 (a new connection each)\n")
print("| case | median ms | per round | statuses |")
print("|---|---|---|---|")
for case, rs in rows.items():
    print(f"| {case} | {st.median(r[1] for r in rs):.0f} | {' / '.join(f'{r[1]:.0f}' for r in rs)} | "
          f"{' '.join(sorted(set(r[0] for r in rs)))} |")
EOF
    summary isolation hello-alone "9b. hello while another tenant keeps $SPINNERS infinite loops or $HANGERS hanging requests (wall limit 3 s) running"
}

# start_sink VAR DELAY — an OTLP/HTTP sink on LOAD_CPU that reads each
# export and answers 200 after DELAY seconds (it does not decode: the
# tests do); sets VAR to its port and counts exports in $WORK/sink-$port.
start_sink() {
    local var=$1 delay=$2 port
    port=$(free_port)
    taskset -c "$LOAD_CPU" python3 - "$port" "$delay" "$WORK" <<'EOF' &
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port, delay, work = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
counts = {"posts": 0, "bytes": 0}
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        n = len(self.rfile.read(int(self.headers.get("content-length", 0))))
        time.sleep(delay)
        counts["posts"] += 1
        counts["bytes"] += n
        open(f"{work}/sink-{port}", "w").write(f"{counts['posts']} exports, {counts['bytes'] // 1024} KiB")
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
EOF
    PIDS+=("$!")
    for _ in $(seq 1 500); do
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port))" 2>/dev/null && break
        sleep 0.02
    done
    printf -v "$var" '%s' "$port"
}

scenario_tracing() {
    log "scenario tracing: hello with traces at sample ratio 1.0, to a collector that is up, slow or down"
    local up slow down
    start_sink up 0
    start_sink slow 2
    down=$(free_port)
    local variants=(perch) addrs=("$PERCH_DATA") admins=("$MAIN_ADMIN")
    local name port
    for name in traced:$up traced-slow-collector:$slow traced-collector-down:$down; do
        port=${name#*:}
        start_perch "$WORK/${name%%:*}" "$(printf '[telemetry]\notlp_endpoint = "http://127.0.0.1:%s"\nsample_ratio = 1.0\n' "$port")"
        deploy bench hello "$HELLO" "$HELLO_HOST"
        variants+=("${name%%:*}")
        addrs+=("$DATA")
        admins+=("$ADMIN")
    done
    local n=${#variants[@]}
    for round in $(seq 1 "$ROUNDS"); do
        for i in $(seq 0 $(( n - 1 ))); do
            local j=$(( (i + round) % n ))
            wrk_run tracing "${variants[$j]}" "$round" "${addrs[$j]}" "$HELLO_HOST"
        done
    done
    summary tracing perch "11. hello with OpenTelemetry traces (sample ratio 1.0, every request a span) vs traces off (goal: each ≥ 0.9 ×)"
    {
        echo
        echo "| variant | perch_otel_spans_dropped_total | collector got |"
        echo "|---|---|---|"
        for i in $(seq 1 $(( n - 1 ))); do
            local dropped sink=-
            dropped=$(curl -s "${admins[$i]}/metrics" | awk '/^perch_otel_spans_dropped_total/ { print $2 }')
            case ${variants[$i]} in
                traced) sink=$(cat "$WORK/sink-$up" 2>/dev/null || echo -) ;;
                traced-slow-collector) sink="$(cat "$WORK/sink-$slow" 2>/dev/null || echo -) (2 s per export)" ;;
                traced-collector-down) sink="(nothing listens)" ;;
            esac
            echo "| ${variants[$i]} | $dropped | $sink |"
        done
    } | tee -a "$REPORT"
    ADMIN=$MAIN_ADMIN DATA=$PERCH_DATA
}

scenario_tls() {
    log "scenario tls: keep-alive rps over TLS vs plaintext; new TLS connections vs nginx; HTTP/2; ACME"
    local w=$WORK/tls
    mkdir -p "$w"
    # One certificate for both servers: ECDSA P-256, as ACME CAs issue.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$w/key.pem" -out "$w/cert.pem" -subj "/CN=$HELLO_HOST" \
        -addext "subjectAltName=DNS:$HELLO_HOST" 2>/dev/null
    # wrk connects to an IP and sends no SNI: the default certificate.
    start_perch "$w/perch" "$(printf '[tls]\nlisten = "127.0.0.1:0"\n[tls.default_cert]\ncert_file = "%s"\nkey_file = "%s"\n' "$w/cert.pem" "$w/key.pem")"
    local perch_pid=$PERCH_PID plain=$DATA tls=$TLS admin=$ADMIN
    deploy bench hello "$HELLO" "$HELLO_HOST"
    [ "$(curl -sk -H "Host: $HELLO_HOST" "https://$tls/")" = "Hello, world!" ] || { log "hello does not answer over TLS"; exit 1; }
    local nport; nport=$(free_port)
    cat >"$w/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $w/nginx.pid;
error_log $w/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$nport ssl;
        ssl_certificate $w/cert.pem;
        ssl_certificate_key $w/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / { return 200 "Hello, world!\n"; }
    }
}
NGINX
    taskset -c "$SERVER_CPU" nginx -c "$w/nginx.conf" -p "$w" &
    PIDS+=($!)
    for _ in $(seq 1 500); do curl -sk -o /dev/null "https://127.0.0.1:$nport/" && break; sleep 0.01; done
    for round in $(seq 1 "$ROUNDS"); do
        local pair=(perch-plain:$plain "perch-tls:https://$tls/")
        (( round % 2 )) || pair=("perch-tls:https://$tls/" perch-plain:$plain)
        for v in "${pair[@]}"; do wrk_run tls "${v%%:*}" "$round" "${v#*:}" "$HELLO_HOST"; done
        local new=("perch-tls-new:https://$tls/" "nginx-tls-new:https://127.0.0.1:$nport/")
        (( round % 2 )) || new=("nginx-tls-new:https://127.0.0.1:$nport/" "perch-tls-new:https://$tls/")
        for v in "${new[@]}"; do
            wrk_run tlsnew "${v%%:*}" "$round" "${v#*:}" "$HELLO_HOST" -H "Connection: close"
        done
    done
    summary tls perch-plain "12. hello over TLS (HTTP/1.1 keep-alive, ECDSA P-256) vs the plaintext listener of the same server (goal ≥ 0.85 ×)"
    summary tlsnew nginx-tls-new "13. new TLS connections per second, one request each (Connection: close), Perch vs nginx $(nginx -v 2>&1 | sed 's/.*\///') with the same certificate, one worker each (goal ≥ 0.9 ×)"
    {
        echo
        echo "HTTP/2 over TLS (h2load, ALPN h2, $CONNS connections × 10 streams):"
        echo
        echo '```'
        taskset -c "$LOAD_CPU" h2load -n 50000 -c "$CONNS" -m 10 -H ":authority: $HELLO_HOST" "https://$tls/" 2>&1 |
            grep -E '^(finished|requests|status codes|Application protocol)' || true
        echo '```'
    } | tee -a "$REPORT"
    stop_pid "$perch_pid"
    scenario_acme_time
    ADMIN=$MAIN_ADMIN DATA=$PERCH_DATA
}

# How long ACME takes against Pebble: from the route's PUT to the first
# handshake that serves the issued certificate (ROUNDS times).
scenario_acme_time() {
    local w=$WORK/acme times=()
    mkdir -p "$w"
    # Pebble's own HTTPS: a leaf for 127.0.0.1 under a CA made here (a
    # self-signed certificate carries CA:TRUE, which TLS clients refuse as
    # a server's certificate).
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$w/ca.key" -out "$w/ca.pem" -subj /CN=bench-pebble-ca 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
        -keyout "$w/pebble.key" -out "$w/pebble.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$w/ext.cnf"
    openssl x509 -req -in "$w/pebble.csr" -CA "$w/ca.pem" -CAkey "$w/ca.key" -CAcreateserial \
        -days 2 -extfile "$w/ext.cnf" -out "$w/pebble.pem" 2>/dev/null
    for round in $(seq 1 "$ROUNDS"); do
        local dir dns mgmt dnsmgmt
        dir=$(free_port) mgmt=$(free_port) dns=$(free_port) dnsmgmt=$(free_port)
        start_perch "$w/perch-$round" "$(printf '[tls]\nlisten = "127.0.0.1:0"\n[tls.acme]\ndirectory = "https://127.0.0.1:%s/dir"\nca_file = "%s"\n' "$dir" "$w/ca.pem")"
        local pid=$PERCH_PID
        cat >"$w/pebble-$round.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$dir", "managementListenAddress": "127.0.0.1:$mgmt",
 "certificate": "$w/pebble.pem", "privateKey": "$w/pebble.key", "httpPort": ${DATA##*:},
 "tlsPort": $(free_port), "ocspResponderURL": "", "externalAccountBindingRequired": false}}
JSON
        pebble-challtestsrv -http01 "" -tlsalpn01 "" -https01 "" -defaultIPv6 "" -defaultIPv4 127.0.0.1 \
            -dns01 "127.0.0.1:$dns" -management "127.0.0.1:$dnsmgmt" >"$w/challtestsrv-$round.log" 2>&1 &
        local c1=$!
        PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 pebble -config "$w/pebble-$round.json" \
            -dnsserver "127.0.0.1:$dns" >"$w/pebble-$round.log" 2>&1 &
        local c2=$!
        PIDS+=("$c1" "$c2")
        for _ in $(seq 1 3000); do curl -s --cacert "$w/ca.pem" -o /dev/null "https://127.0.0.1:$dir/dir" && break; sleep 0.01; done
        curl -s --cacert "$w/ca.pem" "https://127.0.0.1:$mgmt/roots/0" >"$w/root-$round.pem"
        local t0 t1
        t0=$(date +%s%3N)
        deploy bench hello "$HELLO" shop.bench.test
        until curl -s --cacert "$w/root-$round.pem" --resolve "shop.bench.test:${TLS##*:}:127.0.0.1" \
            -o /dev/null "https://shop.bench.test:${TLS##*:}/"; do
            (( $(date +%s%3N) - t0 < 60000 )) || { log "no ACME certificate within 60 s"; break; }
            sleep 0.02
        done
        t1=$(date +%s%3N)
        times+=("$(( t1 - t0 ))")
        log "acme round $round: $(( t1 - t0 )) ms"
        stop_pid "$pid"; stop_pid "$c2"; stop_pid "$c1"
    done
    python3 - "${times[@]}" <<'EOF' | tee -a "$REPORT"
import sys, statistics as st
ms = [int(a) for a in sys.argv[1:]]
print(f"\n### 14. ACME against Pebble: from the route's PUT to the issued certificate served\n")
print(f"| median | per round |\n|---|---|\n| {st.median(ms):,.0f} ms | {' / '.join(f'{m:,}' for m in ms)} ms |")
EOF
}

scenario_ops() {
    log "scenario ops: split, followed, stalled follower"
    deploy bench hello-split "$HELLO" split.bench.test
    settings bench hello-split '{"vars":{"V":"2"}}'
    api PUT /v1/tenants/bench/functions/hello-split/deployment -H 'content-type: application/json' \
        -d '{"versions":[{"version":1,"percent":50},{"version":2,"percent":50}]}' -o /dev/null
    deploy bench hello-follow "$HELLO" follow.bench.test
    deploy bench hello-stalled "$HELLO" stalled.bench.test
    # One follower that reads everything, one that never reads.
    curl -sN -H "Authorization: Bearer $TOKEN" \
        "$ADMIN/v1/tenants/bench/logs?follow=1&function=hello-follow" >/dev/null &
    PIDS+=($!)
    python3 - "${ADMIN#http://}" "$TOKEN" <<'PY' &
import socket, sys, time
s = socket.create_connection(tuple(sys.argv[1].rsplit(":", 1)))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.sendall(f"GET /v1/tenants/bench/logs?follow=1&function=hello-stalled HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {sys.argv[2]}\r\n\r\n".encode())
time.sleep(1e6)
PY
    PIDS+=($!)
    local variants=(perch-plain perch-split perch-followed perch-stalled-follower)
    local hosts=("$HELLO_HOST" split.bench.test follow.bench.test stalled.bench.test)
    for round in $(seq 1 "$ROUNDS"); do
        for i in 0 1 2 3; do
            local j=$(( (i + round) % 4 ))
            wrk_run ops "${variants[$j]}" "$round" "$PERCH_DATA" "${hosts[$j]}"
        done
    done
    summary ops perch-plain "10. hello: plain, behind a 50/50 split of two versions, with a log follower, with a follower that stopped reading"
    python3 "$ROOT/bench/logdelay.py" "${ADMIN#http://}" "$PERCH_DATA" "$TOKEN" follow.bench.test hello-follow | tee -a "$REPORT"
}

scenario_image() {
    if [ ! -f "$IMAGE" ]; then
        log "scenario image: examples/image-resize not built (the example does not exist yet); skipped"
        printf '\n### 8. image-resize\n\nSkipped: examples/image-resize does not exist in this tree.\n' | tee -a "$REPORT"
        return
    fi
    # The example's README documents its request; POST a generated PNG.
    deploy bench image "$IMAGE" image.bench.test
    python3 - "$WORK/in.png" <<'EOF'
import struct, sys, zlib
w = h = 512
raw = b"".join(b"\x00" + bytes((x * 7 + y * 3) & 255 for x in range(w * 3)) for y in range(h))
def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
EOF
    cat >"$WORK/image.lua" <<EOF
local f = io.open("$WORK/in.png", "rb"); local body = f:read("*all"); f:close()
request = function() return wrk.format("POST", "${IMAGE_PATH:-/?w=128&h=128}", {Host = "image.bench.test", ["content-type"] = "image/png"}, body) end
EOF
    for round in $(seq 1 "$ROUNDS"); do
        wrk_run image image-resize "$round" "$PERCH_DATA" image.bench.test -s "$WORK/image.lua"
    done
    summary image image-resize "8. image-resize, 512×512 PNG (POST ${IMAGE_PATH:-/?w=128&h=128})"
}

# ---------------------------------------------------------------- main

install_tools
build
scenario_containers() {
    log "scenario containers: cold start through Perch against the raw engine"
    local w=$WORK/podman
    mkdir -p "$w/networks" "$w/rootfs/bin" "$w/rootfs/www"
    cat >"$w/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$w/events.log"
lock_type = "file"
tmp_dir = "$w/libpod-tmp"
[network]
network_config_dir = "$w/networks"
CONF
    export CONTAINERS_CONF=$w/containers.conf
    local P=(podman --root "$w/storage" --runroot "$w/run")
    cp /bin/busybox "$w/rootfs/bin/busybox"
    echo '<h1>hello from container</h1>' >"$w/rootfs/www/index.html"
    tar -C "$w/rootfs" -cf "$w/rootfs.tar" .
    "${P[@]}" import -q --change 'CMD ["/bin/busybox","httpd","-f","-p","8080","-h","/www"]' \
        "$w/rootfs.tar" localhost/bench-httpd:1 >/dev/null
    "${P[@]}" save -q -o "$w/httpd.tar" localhost/bench-httpd:1
    "${P[@]}" system service --time=0 "unix://$w/podman.sock" >"$w/service.log" 2>&1 &
    local svc=$!
    PIDS+=("$svc")
    for _ in $(seq 1 500); do
        curl -sf --unix-socket "$w/podman.sock" http://d/_ping >/dev/null 2>&1 && break
        sleep 0.02
    done
    local node=bench-node
    start_perch "$WORK/containers" "$(printf '[node]\nname = "%s"\n[containers]\nengine = "unix://%s/podman.sock"\n' "$node" "$w")"
    local pid=$PERCH_PID
    api PUT /v1/tenants/bench-c -o /dev/null
    local image
    image=$(api PUT /v1/tenants/bench-c/images -H 'content-type: application/x-tar' \
        --data-binary @"$w/httpd.tar" | python3 -c 'import json,sys; print(json.load(sys.stdin)["image"])')
    api PUT /v1/tenants/bench-c/functions/web -H 'content-type: application/json' \
        -d "{\"container\":{\"image\":\"$image\",\"port\":8080,\"idle_timeout_s\":1}}" -o /dev/null
    api PUT /v1/tenants/bench-c/routes/web.containers.bench -H 'content-type: application/json' \
        -d '{"function":"web"}' -o /dev/null
    # One start first: the tenant's network exists for the raw rounds too.
    curl -sf -o /dev/null -H 'Host: web.containers.bench' "http://$DATA/" || { log "the container does not answer"; exit 1; }
    python3 "$ROOT/bench/coldstart.py" --socket "$w/podman.sock" --image "$image" \
        --network perch-net-bench-c --perch "$DATA" --host web.containers.bench --node "$node" \
        --rounds "${CROUNDS:-10}" | sed 's/^/containers\t/' >>"$SAMPLES"
    stop_pid "$pid"
    stop_pid "$svc"
    "${P[@]}" rm -f -a -t 0 >/dev/null 2>&1 || true
    "${P[@]}" system reset -f >/dev/null 2>&1 || true
    unset CONTAINERS_CONF
    python3 "$ROOT/bench/coldstart.py" --report "$SAMPLES" | tee -a "$REPORT"
}

# start_postgres — a throwaway PostgreSQL cluster in $WORK/pg on a loopback
# port (as the postgres user when run as root: initdb refuses root); sets
# PG_URL, PG_CTL
start_postgres() {
    local bin dir=$WORK/pg port as=()
    bin=$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -1)")
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        # mktemp's 0700: the postgres user must pass through to its dir.
        chmod 711 "$WORK"
        chown postgres "$dir"
        as=(runuser -u postgres --)
    fi
    "${as[@]}" "$bin/initdb" -A trust -D "$dir/data" >/dev/null
    port=$(free_port)
    PG_CTL=("${as[@]}" "$bin/pg_ctl" -D "$dir/data")
    taskset -c "$SERVER_CPU" "${PG_CTL[@]}" -l "$dir/log" -w -o \
        "-k $dir -c listen_addresses=127.0.0.1 -p $port -c max_connections=200" start >/dev/null
    PG_URL="host=127.0.0.1 port=$port user=postgres dbname=postgres"
}

scenario_cluster() {
    log "scenario cluster: three nodes on one PostgreSQL"
    start_postgres
    local key nodes=() admins=() pids=() n
    key=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
    for n in 1 2 3; do
        # Unpinned while changes propagate (nodes 2 and 3 compile a new
        # component at the same time, as separate machines would); pinned
        # to SERVER_CPU for the throughput runs below.
        EXTRA_ENV=("PERCH_STORAGE_URL=$PG_URL" "PERCH_SECRET_KEY=$key")
        UNPINNED=1 start_perch "$WORK/cluster-n$n" "$(printf '[node]\nname = "n%s"\n' "$n")"
        EXTRA_ENV=()
        nodes+=("$DATA") admins+=("$ADMIN") pids+=("$PERCH_PID")
    done
    start_perch "$WORK/cluster-redb"
    local redb=$DATA redb_admin=$ADMIN redb_pid=$PERCH_PID
    local others="${nodes[1]},${nodes[2]}" changes=${CHANGES:-100}
    local delays=(taskset -c "$LOAD_CPU" python3 "$ROOT/bench/cluster.py")
    ADMIN=${admins[0]}
    deploy bench kv "$KVEXT" kv.cluster.bench
    {
        echo
        echo "### 15. cluster mode: from the 2xx on node 1 to nodes 2 and 3 answering the change ($changes changes, ms)"
        echo
        echo "| change | node | n | p50 | p90 | p99 | max |"
        echo "|---|---|---|---|---|---|---|"
        "${delays[@]}" versions --admin "${admins[0]}" --token "$TOKEN" --wasm "$HELLO" \
            --nodes "$others" --changes "$changes" --label "new version (upload; the node fetches and compiles it)"
        "${delays[@]}" routes --admin "${admins[0]}" --token "$TOKEN" --wasm "$HELLO" \
            --nodes "$others" --changes "$changes" --label "route switch (warm functions)"
        "${delays[@]}" kv --writer "${nodes[0]}" --nodes "$others" --changes "$changes" \
            --label "KV write (guest put on node 1, the old value cached on 2 and 3)"
    } | tee -a "$REPORT"
    # Throughput: node 1 of the cluster against a redb node, alternating,
    # every server on SERVER_CPU.
    for n in "${pids[@]}"; do taskset -a -p -c "$SERVER_CPU" "$n" >/dev/null; done
    deploy bench hello "$HELLO" "$HELLO_HOST"
    ADMIN=$redb_admin
    deploy bench hello "$HELLO" "$HELLO_HOST"
    deploy bench kv "$KVEXT" kv.cluster.bench
    local addr
    for addr in "$redb" "${nodes[0]}"; do
        curl -sS -f -X PUT -H "Host: kv.cluster.bench" --data 'hot value' "http://$addr/set/probe" -o /dev/null
    done
    kv_scripts
    local round variant
    for round in $(seq 1 "$ROUNDS"); do
        for variant in redb cluster; do
            [ $(( round % 2 )) -eq 0 ] && variant=$([ "$variant" = redb ] && echo cluster || echo redb)
            addr=$redb
            [ "$variant" = cluster ] && addr=${nodes[0]}
            wrk_run cluster-hello "$variant" "$round" "$addr" "$HELLO_HOST"
            wrk_run cluster-kv-get "$variant" "$round" "$addr" kv.cluster.bench -s "$WORK/get.lua"
            wrk_run cluster-kv-put "$variant" "$round" "$addr" kv.cluster.bench -s "$WORK/put.lua"
        done
    done
    summary cluster-hello redb "15a. hello on cluster node 1 (PostgreSQL) vs a redb node (goal ≥ 0.95 ×: routing never touches the database)"
    summary cluster-kv-get redb "15b. guest KV get of one hot key: cluster node vs redb node ($CONNS connections)"
    summary cluster-kv-put redb "15c. guest KV put of new keys, durable before the answer: PostgreSQL (fsync on, PostgreSQL pinned with the nodes) vs redb"
    for n in "${pids[@]}" "$redb_pid"; do stop_pid "$n"; done
    "${PG_CTL[@]}" -m fast stop >/dev/null
    ADMIN=$MAIN_ADMIN DATA=$PERCH_DATA
}

for f in "$PERCH" "$HELLO"; do [ -f "$f" ] || { log "missing $f"; exit 1; }; done
if has_scenario isolation && [ ! -f "$FAULTY" ]; then log "missing $FAULTY"; exit 1; fi

{
    echo
    echo "## Run of $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "- machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
    echo "- load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- command: \`ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS bench/run.sh ${SCENARIOS[*]}\`"
    echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- runtime kv gateway 2>/dev/null || echo ' (with local changes)')"
    echo "- servers pinned to CPU $SERVER_CPU, load generator to CPU $LOAD_CPU$([ -x "$WASMTIME" ] && echo "; wasmtime-cli $WASMTIME_VERSION")"
} | tee -a "$REPORT"

MAIN_ADMIN= PERCH_DATA=
if has_scenario hello || has_scenario reuse || has_scenario latency || has_scenario kv || has_scenario image || has_scenario ops || has_scenario tracing; then
    start_perch "$WORK/perch"
    PERCH_DATA=$DATA
    MAIN_ADMIN=$ADMIN
    deploy bench hello "$HELLO" "$HELLO_HOST"
    [ "$(curl -s -H "Host: $HELLO_HOST" "http://$PERCH_DATA/")" = "Hello, world!" ] || { log "hello does not answer"; exit 1; }
fi
for s in "${SCENARIOS[@]}"; do
    case $s in
        hello) scenario_hello ;;
        reuse) scenario_reuse ;;
        latency) scenario_latency ;;
        first) scenario_first ;;
        instantiate) scenario_instantiate ;;
        many) scenario_many ;;
        kv) scenario_kv ;;
        isolation) scenario_isolation ;;
        image) scenario_image ;;
        ops) scenario_ops ;;
        tracing) scenario_tracing ;;
        tls) scenario_tls ;;
        containers) scenario_containers ;;
        cluster) scenario_cluster ;;
        *) log "unknown scenario $s"; exit 2 ;;
    esac
done
echo "- load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$REPORT"
mkdir -p "$TARGET"
cat "$REPORT" >>"$TARGET/results.md"
log "report appended to $TARGET/results.md"
