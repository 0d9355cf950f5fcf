#!/usr/bin/env bash
# Builds Perch's container image from a host-built binary with Podman and no
# registry, then checks it: runs it read-only on 127.0.0.1, waits for
# /healthz, deploys the hello example and calls it, and removes everything.
#   deploy/build-image.sh [--save FILE] [--wasm HELLO.wasm] [PERCH_BINARY]
# PERCH_BINARY defaults to target/release/perch (built for this machine's
# Debian). The base image is a debootstrap --variant=minbase root of this
# machine's Debian suite, cached as a tarball in $PERCH_IMAGE_CACHE
# (default /var/tmp/perch-image-cache; delete it to rebuild the base).
# --save FILE keeps the image (localhost/perch:VERSION and :latest) as an
# archive (`podman save`), e.g. for
#   k3s ctr images import FILE
# Needs root (debootstrap, rootful Podman); installs podman, runc,
# debootstrap and curl with apt-get when missing. Not run in CI (network
# for debootstrap, about two minutes on the first run).
set -euo pipefail

save=
wasm=
binary=
while [ $# -gt 0 ]; do
    case $1 in
        --save) save=$(realpath -m "${2:?--save needs a file}"); shift 2 ;;
        --wasm) wasm=${2:?--wasm needs a file}; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "build-image.sh: unknown option $1" >&2; exit 2 ;;
        *) binary=$1; shift ;;
    esac
done
# Paths given are relative to where the script was started; defaults to the
# repository root.
[ -z "$binary" ] || binary=$(realpath -m "$binary")
[ -z "$wasm" ] || wasm=$(realpath -m "$wasm")
cd "$(dirname "$0")/.."
binary=${binary:-target/release/perch}
if [ -z "$wasm" ]; then
    for w in examples/target/wasm32-wasip2/release/hello.wasm \
             target/guests/wasm32-wasip2/release/hello.wasm; do
        [ -f "$w" ] && { wasm=$w; break; }
    done
fi

die() { echo "build-image.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, rootful podman)"
[ -x "$binary" ] || die "$binary is not an executable (cargo build --release --bin perch)"
[ -n "$wasm" ] && [ -f "$wasm" ] ||
    die "no hello component: cargo build --release --target wasm32-wasip2 --manifest-path examples/Cargo.toml, or --wasm FILE"

t0=$(date +%s)
step() { echo "[$(( $(date +%s) - t0 ))s] $*"; }

missing=
for tool in podman:podman runc:runc debootstrap:debootstrap curl:curl; do
    command -v "${tool%%:*}" >/dev/null || missing+=" ${tool#*:}"
done
if [ -n "$missing" ]; then
    step "apt-get install$missing"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
arch=$(dpkg --print-architecture)
version=$("$binary" --version | awk '{ print $2 }')
cache=${PERCH_IMAGE_CACHE:-/var/tmp/perch-image-cache}
base_tar=$cache/debian-$suite-minbase-$arch.tar
image=localhost/perch:$version

# Podman for this sandbox (as /work/shared/container-ci.sh): runc, cgroupfs,
# ulimits within our hard limits, storage and networks in the work dir.
W=$(mktemp -d /var/tmp/perch-image.XXXXXX)
cat > "$W/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
[network]
network_config_dir = "$W/networks"
CONF
mkdir -p "$W/networks"
export CONTAINERS_CONF=$W/containers.conf
P=(podman --root "$W/storage" --runroot "$W/run")
name=perch-image-check-$$
cleanup() {
    "${P[@]}" rm -f -t 0 "$name" >/dev/null 2>&1 || true
    "${P[@]}" system reset -f >/dev/null 2>&1 || true   # also unmounts the storage
    rm -rf "$W"
}
trap cleanup EXIT

# 1. The base image: a minimal Debian root of this machine's suite.
if [ ! -s "$base_tar" ]; then
    step "debootstrap --variant=minbase $suite ($arch) into $base_tar"
    mkdir -p "$cache"
    debootstrap --variant=minbase --arch="$arch" "$suite" "$W/rootfs" \
        http://deb.debian.org/debian > "$W/debootstrap.log" 2>&1 ||
        { tail -20 "$W/debootstrap.log" >&2; die "debootstrap failed"; }
    # What an image does not need: package lists and caches, manuals, locales.
    rm -rf "$W"/rootfs/var/lib/apt/lists/* "$W"/rootfs/var/cache/apt/* \
        "$W"/rootfs/usr/share/{man,info,locale}/* "$W"/rootfs/var/log/*
    find "$W/rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    tar -C "$W/rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -cf "$base_tar.tmp" .
    mv "$base_tar.tmp" "$base_tar"
    rm -rf "$W/rootfs"
else
    step "base rootfs cached: $base_tar"
fi
step "podman import -> localhost/perch-base:$suite"
"${P[@]}" import -q "$base_tar" "localhost/perch-base:$suite" >/dev/null

# 2. The runtime stage of deploy/Dockerfile, the binary as the whole context.
mkdir "$W/ctx"
cp "$binary" "$W/ctx/perch"
chmod 0755 "$W/ctx/perch"
step "podman build --target runtime ($binary, $(du -h "$binary" | cut -f1)) -> $image"
"${P[@]}" build -q --pull=never --network=none --target runtime \
    --build-arg "RUNTIME_BASE=localhost/perch-base:$suite" \
    -f deploy/Dockerfile -t "$image" -t localhost/perch:latest "$W/ctx" >/dev/null
"${P[@]}" images --format '  {{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' localhost/perch

# 3. Run it as Kubernetes would (read-only root, no capabilities), on
# loopback ports chosen by Podman.
token=perch_admin_$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
step "podman run --read-only --cap-drop ALL, ports on 127.0.0.1"
"${P[@]}" run -d --name "$name" --read-only --cap-drop ALL \
    --security-opt no-new-privileges \
    -p 127.0.0.1::8080 -p 127.0.0.1::8081 \
    -e PERCH_ADMIN_TOKEN="$token" "$image" >/dev/null
data=$("${P[@]}" port "$name" 8080/tcp)
admin=$("${P[@]}" port "$name" 8081/tcp)
fail() {
    "${P[@]}" logs "$name" 2>&1 | tail -20 >&2
    die "$*"
}
for _ in $(seq 150); do
    curl -sf "http://$admin/healthz" >/dev/null 2>&1 && break
    "${P[@]}" container exists "$name" &&
        [ "$("${P[@]}" inspect -f '{{.State.Running}}' "$name")" = true ] ||
        fail "the container exited"
    sleep 0.2
done
health=$(curl -sf "http://$admin/healthz") || fail "no answer on http://$admin/healthz"
step "GET http://$admin/healthz: $health"
"${P[@]}" logs "$name" 2>&1 | grep -E '^perch listening' | sed 's/^/  /'
uid=$("${P[@]}" exec "$name" id -u)
[ "$uid" = 10001 ] || fail "runs as uid $uid, not 10001"

# 4. Deploy hello with the admin API (this binary as the client) and call it.
export PERCH_URL=http://$admin PERCH_TOKEN=$token
step "deploy $wasm as acme/hello, route hello.acme.localhost"
"$binary" tenants create acme --domain '*.acme.localhost' >/dev/null
"$binary" deploy "$wasm" --tenant acme --name hello --route hello.acme.localhost | sed 's/^/  /'
answer=$(curl -sS --max-time 10 -H 'Host: hello.acme.localhost' "http://$data/?name=image") ||
    fail "no answer from hello"
[ "$answer" = "Hello, image!" ] || fail "hello answered: $answer"
step "GET http://$data/?name=image (Host: hello.acme.localhost): $answer"

if [ -n "$save" ]; then
    "${P[@]}" save -q -o "$save" "$image" localhost/perch:latest
    step "saved $image and localhost/perch:latest to $save ($(du -h "$save" | cut -f1))"
fi
"${P[@]}" rm -f -t 10 "$name" >/dev/null
step "image OK ($image); removing the work dir"
