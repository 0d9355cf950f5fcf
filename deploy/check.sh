#!/usr/bin/env bash
# Validates what deploy/ ships, offline, in a few seconds (CI's `deploy` phase):
#   deploy/check.sh [PERCH_BINARY]      (default target/debug/perch)
# - k3s: deploy/k3s/base renders (kubectl kustomize) and every object passes
#   kubernetes-validate --strict for Kubernetes 1.32; the validator rejects a
#   deliberately broken copy (so the check cannot pass by validating nothing);
#   overlays/traefik renders (its Traefik custom resources have no schema in
#   kubernetes-validate: only the built-in objects are validated there).
# - systemd: install.sh installs PERCH_BINARY, the unit and /etc/perch into a
#   throwaway root; `systemd-analyze verify` of the unit there prints nothing;
#   `systemd-analyze security` scores it 4.0 or less.
# - the shell scripts in deploy/ parse (bash -n).
# Needs kubectl, kubernetes-validate (pip), systemd-analyze; exits non-zero
# on any failure.
set -uo pipefail
binary=${1:+$(realpath -m "$1")}
cd "$(dirname "$0")/.."
binary=${binary:-target/debug/perch}
k8s_version=1.32
# systemd-analyze's --threshold is on its internal 0-100 scale: the score it
# prints times ten. 40 means "4.0 or less".
security_threshold=40

W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
failed=0
pass() { echo "deploy/check.sh: ok   $*"; }
fail() { echo "deploy/check.sh: FAIL $*" >&2; failed=$((failed + 1)); }
need() {
    command -v "$1" >/dev/null || { echo "deploy/check.sh: $1 not found ($2)" >&2; exit 1; }
}
need kubectl "the kubectl package"
python3 -c "import kubernetes_validate" 2>/dev/null ||
    { echo "deploy/check.sh: kubernetes-validate not found (python3 -m pip install kubernetes-validate)" >&2; exit 1; }
need systemd-analyze "apt-get install systemd"
[ -x "$binary" ] || { echo "deploy/check.sh: $binary not found: build it or pass a perch binary" >&2; exit 1; }

validate() { # validate FILE: kubernetes-validate on one rendered stream
    python3 -m kubernetes_validate --strict -k "$k8s_version" - < "$1" > "$W/validate.out" 2>&1
}

# --- k3s ---------------------------------------------------------------------
if kubectl kustomize deploy/k3s/base > "$W/base.yaml" 2> "$W/kustomize.err"; then
    kinds=$(awk '/^kind:/ { printf "%s%s", sep, $2; sep=", " }' "$W/base.yaml")
    if validate "$W/base.yaml"; then
        n=$(grep -c 'passed for resource' "$W/validate.out")
        if [ "$n" -ge 7 ] && grep -q 'passed for resource statefulset/perch' "$W/validate.out"; then
            pass "k3s/base: $n objects valid for Kubernetes $k8s_version ($kinds)"
        else
            cat "$W/validate.out" >&2
            fail "k3s/base: only $n objects validated"
        fi
    else
        grep -v '^INFO' "$W/validate.out" >&2
        fail "k3s/base: kubernetes-validate --strict -k $k8s_version"
    fi
    # The validator must refuse an unknown field (--strict) and a wrong type.
    for breakage in 's/^  replicas: 1$/  replicas: 1\n  replicaz: 1/' \
                    's/runAsUser: 10001/runAsUser: "10001"/'; do
        sed -e "$breakage" "$W/base.yaml" > "$W/broken.yaml"
        if cmp -s "$W/base.yaml" "$W/broken.yaml"; then
            fail "k3s/base: self-test '$breakage' changed nothing"
        elif validate "$W/broken.yaml"; then
            fail "k3s/base: kubernetes-validate accepted a broken copy ($breakage)"
        else
            pass "k3s/base: a broken copy is rejected: $(grep -o 'statefulset/perch.*' "$W/validate.out" | head -1)"
        fi
    done
else
    cat "$W/kustomize.err" >&2
    fail "k3s/base: kubectl kustomize"
fi

if kubectl kustomize deploy/k3s/overlays/traefik > "$W/traefik.yaml" 2> "$W/kustomize.err"; then
    if ! grep -q '^kind: IngressRouteTCP' "$W/traefik.yaml"; then
        fail "k3s/overlays/traefik: no IngressRouteTCP rendered"
    elif validate "$W/traefik.yaml"; then
        pass "k3s/overlays/traefik: renders; built-in objects valid (IngressRouteTCP: no schema, not validated)"
    else
        grep -v '^INFO' "$W/validate.out" >&2
        fail "k3s/overlays/traefik: kubernetes-validate"
    fi
else
    cat "$W/kustomize.err" >&2
    fail "k3s/overlays/traefik: kubectl kustomize"
fi

# --- systemd -----------------------------------------------------------------
# A throwaway root: what install.sh installs, and the distribution's units
# (sysinit.target, …) that verify resolves the unit's dependencies against.
R=$W/root
mkdir -p "$R/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$R/usr/lib/systemd/"
if deploy/install.sh --root "$R" --no-start "$binary" > "$W/install.out" 2>&1 &&
    [ -x "$R/usr/local/bin/perch" ] && [ -f "$R/etc/perch/perch.toml" ] &&
    [ "$(stat -c %a "$R/etc/perch/perch.env")" = 600 ] &&
    grep -Eq '^PERCH_ADMIN_TOKEN=perch_admin_[0-9a-f]{64}$' "$R/etc/perch/perch.env" &&
    grep -Eq '^PERCH_SECRET_KEY=[0-9a-f]{64}$' "$R/etc/perch/perch.env" &&
    grep -q '^perch:' "$R/etc/passwd"; then
    pass "install.sh --root: user, binary, unit, perch.toml, perch.env (0600) installed"
else
    cat "$W/install.out" >&2
    fail "install.sh --root"
fi
if [ -f "$R/etc/systemd/system/perch.service" ]; then
    # verify warns (unknown keys, bad values) on stderr yet exits 0: any
    # output is a failure.
    systemd-analyze verify --root="$R" --man=no --generators=no perch.service > "$W/verify.out" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ] && [ ! -s "$W/verify.out" ]; then
        pass "perch.service: systemd-analyze verify"
    else
        cat "$W/verify.out" >&2
        fail "perch.service: systemd-analyze verify (exit $rc)"
    fi
    systemd-analyze security --offline=true --root="$R" --threshold="$security_threshold" \
        --no-pager perch.service > "$W/security.out" 2>&1
    rc=$?
    score=$(grep -o 'Overall exposure level for perch.service: .*' "$W/security.out")
    if [ "$rc" -eq 0 ] && [ -n "$score" ]; then
        pass "perch.service: systemd-analyze security: ${score#Overall exposure level for perch.service: } (at most 4.0)"
    else
        cat "$W/security.out" >&2
        fail "perch.service: systemd-analyze security above 4.0 (exit $rc)"
    fi
else
    fail "perch.service: not installed, not verified"
fi

# --- scripts -----------------------------------------------------------------
parsed=1
for s in deploy/*.sh; do
    bash -n "$s" || { fail "$s: bash -n"; parsed=0; }
done
[ "$parsed" -eq 0 ] || pass "bash -n: $(echo deploy/*.sh)"

if [ "$failed" -gt 0 ]; then
    echo "deploy/check.sh: $failed check(s) failed" >&2
    exit 1
fi
echo "deploy/check.sh: all checks passed"
