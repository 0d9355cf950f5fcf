#!/usr/bin/env bash
# Installs Perch on a systemd machine (as root):
#   deploy/install.sh [--root DIR] [--no-start] [PERCH_BINARY]
# PERCH_BINARY defaults to target/release/perch. It
#   - creates the `perch` system user and group (home /var/lib/perch, no shell),
#   - installs the binary as /usr/local/bin/perch and the unit as
#     /etc/systemd/system/perch.service (both replaced on every run: upgrades),
#   - creates /etc/perch/perch.toml from perch.example.toml (root:perch 0640),
#   - creates /etc/perch/perch.env (root 0600) with PERCH_ADMIN_TOKEN and
#     PERCH_SECRET_KEY, reusing /var/lib/perch/admin.token and secret.key when
#     an earlier install generated them (a new secret key would make the
#     stored secrets unreadable),
#   - then, when systemd is running and DIR is /, `systemctl daemon-reload`,
#     `enable --now perch` (a restart when it was already running).
# Existing perch.toml and perch.env are never overwritten.
# --root DIR installs into DIR instead of / (a throwaway root, an image being
# built) and starts nothing; --no-start installs without starting.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=/
start=1
binary=
while [ $# -gt 0 ]; do
    case $1 in
        --root) root=${2:?--root needs a directory}; shift 2 ;;
        --root=*) root=${1#--root=}; shift ;;
        --no-start) start=0; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
        *) [ -z "$binary" ] || { echo "install.sh: one binary only" >&2; exit 2; }
           binary=$1; shift ;;
    esac
done
binary=${binary:-target/release/perch}
root=${root%/}
template=$here/../perch.example.toml

say() { echo "install.sh: $*"; }
die() { echo "install.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root"
[ -x "$binary" ] || die "$binary is not an executable (build it with cargo build --release --bin perch, or pass its path)"
"$binary" --version >/dev/null 2>&1 || die "$binary --version failed: not a perch binary for this machine?"
[ -f "$template" ] || die "$template not found (run the script from a Perch source tree)"
[ -z "$root" ] || [ -d "$root" ] || die "--root $root is not a directory"

# 1. The user. In another root useradd edits that root's files (--prefix).
if [ -z "$root" ]; then
    has_user() { getent passwd perch >/dev/null; }
    useradd_in() { useradd "$@"; }
else
    has_user() { grep -q '^perch:' "$root/etc/passwd" 2>/dev/null; }
    useradd_in() {
        mkdir -p "$root/etc"
        touch "$root/etc/passwd" "$root/etc/group" "$root/etc/shadow" "$root/etc/gshadow"
        useradd --prefix "$root" "$@"
    }
fi
if has_user; then
    say "user perch exists"
else
    useradd_in --system --user-group --home-dir /var/lib/perch --no-create-home \
        --shell /usr/sbin/nologin --comment "Perch gateway" perch
    say "created user perch"
fi

# 2. Binary and unit, replaced atomically (a running server keeps its inode).
install -d -m 0755 "$root/usr/local/bin" "$root/etc/systemd/system"
install -m 0755 "$binary" "$root/usr/local/bin/.perch.new"
mv -f "$root/usr/local/bin/.perch.new" "$root/usr/local/bin/perch"
install -m 0644 "$here/perch.service" "$root/etc/systemd/system/perch.service"
say "installed /usr/local/bin/perch ($("$binary" --version)) and /etc/systemd/system/perch.service"

# 3. Configuration, only when absent. The group is looked up in the target
# root's files (useradd --prefix wrote them there).
gid=$(awk -F: '$1 == "perch" { print $3 }' "$root/etc/group")
install -d -m 0755 "$root/etc/perch"
if [ -e "$root/etc/perch/perch.toml" ]; then
    say "kept /etc/perch/perch.toml"
else
    install -m 0640 -o 0 -g "$gid" "$template" "$root/etc/perch/perch.toml"
    say "created /etc/perch/perch.toml (from perch.example.toml)"
fi

hex32() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
existing() { # the first line of a file written by an earlier perch serve
    [ -s "$1" ] && head -n1 "$1" | tr -d '[:space:]'
}
env_file=$root/etc/perch/perch.env
if [ -e "$env_file" ]; then
    say "kept /etc/perch/perch.env"
else
    token=$(existing "$root/var/lib/perch/admin.token" || echo "perch_admin_$(hex32)")
    key=$(existing "$root/var/lib/perch/secret.key" || hex32)
    [[ $key =~ ^[0-9a-fA-F]{64}$ ]] || die "/var/lib/perch/secret.key is not 64 hex characters"
    (
        umask 077
        cat > "$env_file.new" <<EOF
# Read by systemd (EnvironmentFile= in perch.service), not by the perch user.
# PERCH_SECRET_KEY seals tenant secrets at rest: keep a copy outside this
# machine; backups exclude it and restoring one needs the same key.
PERCH_ADMIN_TOKEN=$token
PERCH_SECRET_KEY=$key
EOF
    )
    chown 0:0 "$env_file.new"
    chmod 0600 "$env_file.new"
    mv "$env_file.new" "$env_file"
    say "created /etc/perch/perch.env (admin token and secret key, mode 0600)"
fi

# 4. Start, only on this machine's running systemd.
if [ -n "$root" ] || [ "$start" -eq 0 ]; then
    say "not starting the service (--root or --no-start)"
elif [ ! -d /run/systemd/system ]; then
    say "systemd is not running here: start perch with systemctl once it is"
else
    systemctl daemon-reload
    if systemctl is-active --quiet perch; then
        systemctl restart perch
        say "restarted perch"
    else
        systemctl enable --now perch
        say "enabled and started perch"
    fi
    systemctl --no-pager --lines=5 status perch || true
fi
