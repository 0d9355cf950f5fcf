#!/usr/bin/env bash
# Validates what deploy/ ships, offline, in a few seconds (CI's `deploy` phase):
#   deploy/check.sh [PERCH_BINARY]      (default target/debug/perch)
# - k3s: deploy/k3s/base renders (kubectl kustomize) and every object passes
#   kubernetes-validate --strict for Kubernetes 1.32; the validator rejects a
#   deliberately broken copy (so the check cannot pass by validating nothing);
#   overlays/traefik renders (its Traefik custom resources have no schema in
#   kubernetes-validate: only the built-in objects are validated there).
# - k3s cluster mode: overlays/cluster, overlays/cluster-cnpg,
#   overlays/cluster-postgres and storage-migrate render, and every built-in
#   object passes the same validation; the CloudNativePG Cluster (a custom
#   resource) is not schema-validated, only the custom resources expected
#   may go unvalidated. deploy/check-k3s.py then checks what cluster mode
#   depends on: 3 replicas of a Parallel StatefulSet rolled one at a time,
#   no volumeClaimTemplates (the data directory an emptyDir with a
#   sizeLimit), PERCH_STORAGE_URL from a secretKeyRef (perch-storage/url;
#   perch-pg-app/uri with CloudNativePG), a PodDisruptionBudget, spreading
#   over hosts, [storage] type = "postgres" with base/perch.toml's settings;
#   the Cluster's instances and initdb database; the plain server's user,
#   PGDATA, probe and Service; NetworkPolicies admitting Perch (and the
#   migration Job) to 5432; the Job on the single node's volume. Broken
#   copies must fail those checks too.
# - systemd: install.sh installs PERCH_BINARY, the unit and /etc/perch into a
#   throwaway root; `systemd-analyze verify` of the unit there prints nothing;
#   `systemd-analyze security` scores it 4.0 or less.
# - the shell scripts in deploy/ parse (bash -n).
# Needs kubectl, kubernetes-validate (pip; PyYAML, which check-k3s.py uses,
# comes with it), systemd-analyze; exits non-zero on any failure.
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

# --- k3s: cluster mode --------------------------------------------------------
# validated LABEL FILE [CR_KINDS]: every object of FILE valid, but those of
# the custom resource kinds CR_KINDS (space-separated, sorted), which
# kubernetes-validate has no schema for and which must be the only ones it
# skips; sets n_valid to the number validated.
validated() {
    local objects skipped n_skipped
    n_valid=0
    if ! validate "$2"; then
        grep -v '^INFO' "$W/validate.out" >&2
        fail "$1: kubernetes-validate --strict -k $k8s_version"
        return 1
    fi
    objects=$(grep -c '^kind:' "$2")
    n_valid=$(grep -c 'passed for resource' "$W/validate.out")
    n_skipped=$(grep -c "find schema for kind" "$W/validate.out")
    skipped=$(grep -o "find schema for kind [A-Za-z]*" "$W/validate.out" |
        awk '{ print $NF }' | sort -u | paste -sd ' ')
    if [ "$skipped" != "${3:-}" ] || [ $((n_valid + n_skipped)) -ne "$objects" ]; then
        cat "$W/validate.out" >&2
        fail "$1: $n_valid of $objects objects validated (no schema: ${skipped:-none}; expected: ${3:-none})"
        return 1
    fi
}
# shape MODE FILE: deploy/check-k3s.py on one render (what it found in
# $W/shape.out, its complaints in $W/shape.err).
shape() {
    python3 deploy/check-k3s.py "$1" "$2" "$W/base.yaml" "$W/storage-migrate.yaml" \
        > "$W/shape.out" 2> "$W/shape.err"
}
# cluster_check DIR MODE [CR_KINDS] [NOTE]: render DIR, validate it, check
# its shape.
cluster_check() {
    local name label=${1#deploy/}
    name=$(basename "$1")
    if ! kubectl kustomize "$1" > "$W/$name.yaml" 2> "$W/kustomize.err"; then
        cat "$W/kustomize.err" >&2
        fail "$label: kubectl kustomize"
        return
    fi
    validated "$label" "$W/$name.yaml" "${3:-}" || return
    if shape "$2" "$W/$name.yaml"; then
        shaped+=" $name"
        pass "$label: $n_valid ${3:+built-in }object$([ "$n_valid" = 1 ] || echo s) valid for Kubernetes $k8s_version${4:+; $4}; $(cat "$W/shape.out")"
    else
        cat "$W/shape.err" >&2
        fail "$label: $(head -1 "$W/shape.err")"
    fi
}
# First the migration Job: the overlays' PostgreSQL NetworkPolicies must
# admit its pods.
shaped=
cluster_check deploy/k3s/storage-migrate migrate
cluster_check deploy/k3s/overlays/cluster cluster
cluster_check deploy/k3s/overlays/cluster-cnpg cnpg Cluster \
    "the CloudNativePG Cluster is a custom resource: NOT schema-validated, only its shape checked"
cluster_check deploy/k3s/overlays/cluster-postgres postgres
# The shape checks must refuse broken copies (so they cannot pass by
# looking at nothing), of the renders they passed.
for breakage in 'cluster cluster s/^  replicas: 3$/  replicas: 1/' \
                'cluster cluster s/^kind: PodDisruptionBudget$/kind: PodDisruptionBudgetX/' \
                'cnpg cluster-cnpg s/name: perch-pg-app$/name: perch-storage/' \
                'postgres cluster-postgres s/runAsUser: 999$/runAsUser: 0/'; do
    read -r mode name expr <<< "$breakage"
    [[ " $shaped " == *" $name "* ]] || continue
    sed -e "$expr" "$W/$name.yaml" > "$W/broken.yaml"
    if cmp -s "$W/$name.yaml" "$W/broken.yaml"; then
        fail "k3s/overlays/$name: self-test '$expr' changed nothing"
    elif shape "$mode" "$W/broken.yaml"; then
        fail "k3s/overlays/$name: check-k3s.py accepted a broken copy ($expr)"
    else
        pass "k3s/overlays/$name: a broken copy is refused: $(head -1 "$W/shape.err")"
    fi
done

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
