"""deploy/check.sh's checks of the k3s cluster mode's shape, on rendered
manifests (kubectl kustomize), beyond their schemas:

    python3 deploy/check-k3s.py MODE RENDER BASE_RENDER MIGRATE_RENDER

MODE is cluster (overlays/cluster), cnpg (overlays/cluster-cnpg), postgres
(overlays/cluster-postgres) or migrate (storage-migrate); BASE_RENDER is
k3s/base's render, MIGRATE_RENDER k3s/storage-migrate's. Prints what it
found on one line; prints each problem on stderr and exits 1 if any.
The CloudNativePG Cluster is a custom resource with no schema here: only
the fields below are looked at.
"""
import os
import sys

import yaml

mode, path, base_path, migrate_path = sys.argv[1:5]


def load(p):
    """The objects of a render; none if it is missing (check.sh has said
    why: its kustomize failed)."""
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [d for d in yaml.safe_load_all(f) if d]


docs = load(path)
problems, facts = [], []


def find(kind, name=None, docs=docs):
    return [d for d in docs if d.get("kind") == kind
            and (name is None or d["metadata"]["name"] == name)]


def one(kind, name, docs=docs):
    found = find(kind, name, docs)
    if len(found) != 1:
        problems.append(f"{len(found)} {kind} {name}, want 1")
        return None
    return found[0]


def matches(selector, labels):
    """Does a label selector (matchLabels, matchExpressions) select labels?"""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        op, k, values = e["operator"], e["key"], e.get("values") or []
        if ((op == "In" and labels.get(k) not in values)
                or (op == "NotIn" and labels.get(k) in values)
                or (op == "Exists" and k not in labels)
                or (op == "DoesNotExist" and k in labels)):
            return False
    return True


def pod_labels(workload):
    return workload["spec"]["template"]["metadata"].get("labels") or {}


def container(workload, name=None):
    cs = workload["spec"]["template"]["spec"]["containers"]
    cs = [c for c in cs if name is None or c["name"] == name]
    return cs[0] if len(cs) == 1 else {}


def secret_ref(c, var):
    """(secret, key) of env var `var`, or None unless it is one secretKeyRef."""
    env = [e for e in c.get("env") or [] if e["name"] == var]
    if len(env) != 1 or "value" in env[0]:
        return None
    ref = (env[0].get("valueFrom") or {}).get("secretKeyRef")
    return (ref["name"], ref["key"]) if ref else None


def env_value(c, var):
    env = [e for e in c.get("env") or [] if e["name"] == var]
    return env[0].get("value") if len(env) == 1 else None


def settings(cm):
    """perch.toml's lines that are not comments."""
    lines = [l.strip() for l in cm["data"]["perch.toml"].splitlines()]
    return [l for l in lines if l and not l.startswith("#")]


def workloads():
    return [d for d in docs if d["kind"] in ("StatefulSet", "Deployment", "Job")]


def admits(policy, labels, port):
    """Does a NetworkPolicy's ingress admit same-namespace pods with labels on port?"""
    for rule in policy["spec"].get("ingress") or []:
        ports = [p.get("port") for p in rule.get("ports") or []]
        if ports and port not in ports:
            continue
        for peer in rule.get("from") or []:
            if "namespaceSelector" not in peer and "podSelector" in peer \
                    and matches(peer["podSelector"], labels):
                return True
    return False


def policy_for(labels):
    ps = [p for p in find("NetworkPolicy") if matches(p["spec"]["podSelector"], labels)
          and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if len(ps) != 1:
        problems.append(f"{len(ps)} NetworkPolicies select the database's pods {labels}, want 1")
        return None
    return ps[0]


# The migration Job's pod labels, which the databases' NetworkPolicies must
# admit (mode migrate complains if there is no Job).
jobs = find("Job", "perch-storage-migrate", load(migrate_path))
migrate_labels = pod_labels(jobs[0]) if len(jobs) == 1 else None


def admits_clients(policy, perch):
    """Does the database's NetworkPolicy admit Perch and the migration?"""
    if not admits(policy, perch, 5432):
        problems.append(f"NetworkPolicy {policy['metadata']['name']}: Perch's pods not admitted to 5432")
    if migrate_labels is not None and not admits(policy, migrate_labels, 5432):
        problems.append(f"NetworkPolicy {policy['metadata']['name']}: the migration Job not admitted to 5432")


def database_labelled(objects):
    """deploy/README.md applies the database alone with
    -l app.kubernetes.io/component=database: its objects carry that label,
    Perch's do not."""
    component = "app.kubernetes.io/component"
    for d in objects:
        if d and (d["metadata"].get("labels") or {}).get(component) != "database":
            problems.append(f"{d['kind']} {d['metadata']['name']}: no label {component}: database")
    for d in docs:
        labels = d["metadata"].get("labels") or {}
        if labels.get("app.kubernetes.io/name") == "perch" and labels.get(component) == "database":
            problems.append(f"{d['kind']} {d['metadata']['name']}: Perch's, labelled {component}: database")


def check_nodes(secret, key):
    """The cluster's Perch nodes, as overlays/cluster makes them."""
    sts = one("StatefulSet", "perch")
    if not sts:
        return {}
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    labels = pod_labels(sts)
    if spec.get("replicas") != 3:
        problems.append(f"StatefulSet perch: replicas {spec.get('replicas')}, want 3")
    if spec.get("podManagementPolicy") != "Parallel":
        problems.append("StatefulSet perch: podManagementPolicy is not Parallel")
    update = spec.get("updateStrategy") or {}
    if update.get("type", "RollingUpdate") != "RollingUpdate" \
            or (update.get("rollingUpdate") or {}).get("partition", 0):
        problems.append("StatefulSet perch: not a RollingUpdate of every pod")
    if "volumeClaimTemplates" in spec:
        problems.append("StatefulSet perch: volumeClaimTemplates (a persistent volume per node)")
    c = container(sts, "perch")
    data = [m["name"] for m in c.get("volumeMounts") or [] if m["mountPath"] == "/var/lib/perch"]
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    empty = volumes.get(data[0], {}).get("emptyDir") if len(data) == 1 else None
    if not empty or not empty.get("sizeLimit"):
        problems.append("StatefulSet perch: /var/lib/perch is not an emptyDir with a sizeLimit")
    ref = secret_ref(c, "PERCH_STORAGE_URL")
    if ref != (secret, key):
        problems.append(f"PERCH_STORAGE_URL: secretKeyRef {ref}, want {(secret, key)}")
    for var in ("PERCH_ADMIN_TOKEN", "PERCH_SECRET_KEY"):
        if not secret_ref(c, var):
            problems.append(f"{var}: not from a Secret")
    spread = [t for t in pod.get("topologySpreadConstraints") or []
              if t.get("topologyKey") == "kubernetes.io/hostname"
              and matches(t.get("labelSelector") or {}, labels)]
    if not spread and not (pod.get("affinity") or {}).get("podAntiAffinity"):
        problems.append("StatefulSet perch: neither spread over hosts nor anti-affine")
    pdbs = [p for p in find("PodDisruptionBudget") if matches(p["spec"]["selector"], labels)]
    budget = pdbs[0]["spec"] if len(pdbs) == 1 else {}
    if not ({"maxUnavailable", "minAvailable"} & budget.keys()):
        problems.append(f"{len(pdbs)} PodDisruptionBudgets for Perch's pods, want 1 with a limit")
    # Nothing that selects Perch's pods selects another workload's too.
    for d in find("Service") + find("PodDisruptionBudget"):
        sel = d["spec"].get("selector") or {}
        sel = sel if "matchLabels" in sel or "matchExpressions" in sel else {"matchLabels": sel}
        hit = [w["metadata"]["name"] for w in workloads() if sel and matches(sel, pod_labels(w))]
        if len(hit) > 1:
            problems.append(f"{d['kind']} {d['metadata']['name']} selects {hit}")
    cms = [d for d in find("ConfigMap") if d["metadata"]["name"].startswith("perch-config")]
    if len(cms) != 1:
        problems.append(f"{len(cms)} perch-config ConfigMaps, want 1")
    else:
        lines, section, kind = settings(cms[0]), None, None
        for l in lines:
            if l.startswith("["):
                section = l
            elif section == "[storage]" and l.replace(" ", "") == 'type="postgres"':
                kind = "postgres"
        if kind != "postgres":
            problems.append('perch.toml: no [storage] type = "postgres"')
        base_cm = [d for d in find("ConfigMap", docs=load(base_path))
                   if d["metadata"]["name"].startswith("perch-config")]
        missing = [l for l in settings(base_cm[0]) if l not in lines] if base_cm else ["?"]
        if missing:
            problems.append(f"perch.toml lacks base/perch.toml's {missing}")
    if mode != "cluster":
        facts.append(f"the nodes as overlays/cluster's, PERCH_STORAGE_URL from secret {secret}/{key}")
        return labels
    facts.append(
        f"{spec.get('replicas')} replicas ({spec.get('podManagementPolicy')}, "
        f"rolling one at a time), PERCH_STORAGE_URL from secret {secret}/{key}, "
        f"/var/lib/perch an emptyDir ({(empty or {}).get('sizeLimit')}), "
        "no volumeClaimTemplates, PodDisruptionBudget "
        + ", ".join(f"{k} {budget[k]}" for k in ("maxUnavailable", "minAvailable") if k in budget)
        + ', spread over hosts, [storage] type = "postgres" with base/perch.toml\'s settings')
    return labels


if mode == "cluster":
    check_nodes("perch-storage", "url")
elif mode == "cnpg":
    clusters = [d for d in find("Cluster") if d["apiVersion"] == "postgresql.cnpg.io/v1"]
    if len(clusters) != 1:
        problems.append(f"{len(clusters)} postgresql.cnpg.io/v1 Clusters, want 1")
    else:
        name, spec = clusters[0]["metadata"]["name"], clusters[0]["spec"]
        initdb = (spec.get("bootstrap") or {}).get("initdb") or {}
        if spec.get("instances") != 3:
            problems.append(f"Cluster {name}: instances {spec.get('instances')}, want 3")
        if (initdb.get("database"), initdb.get("owner")) != ("perch", "perch"):
            problems.append(f"Cluster {name}: bootstrap.initdb is not database perch, owner perch")
        if not (spec.get("storage") or {}).get("size"):
            problems.append(f"Cluster {name}: no storage.size")
        perch = check_nodes(f"{name}-app", "uri")
        stale = [w["metadata"]["name"] for w in workloads()
                 for c in w["spec"]["template"]["spec"]["containers"]
                 for e in c.get("env") or []
                 if ((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name") == "perch-storage"]
        if stale:
            problems.append(f"{stale} still read Secret perch-storage")
        # TLS verified against the operator's CA: PERCH_STORAGE_CA_FILE is
        # a file of a mounted volume of Secret <cluster>-ca's ca.crt alone.
        for w in workloads():
            if w["metadata"]["name"] != "perch":
                continue
            c = container(w)
            ca = env_value(c, "PERCH_STORAGE_CA_FILE") or ""
            vols = {v["name"]: v for v in w["spec"]["template"]["spec"].get("volumes") or []}
            mounted = [m for m in c.get("volumeMounts") or []
                       if ca.startswith(m["mountPath"].rstrip("/") + "/")]
            secret = (vols.get(mounted[0]["name"], {}) if mounted else {}).get("secret") or {}
            items = [(i["key"], i["path"]) for i in secret.get("items") or []]
            if not ca:
                problems.append("perch: PERCH_STORAGE_CA_FILE unset: TLS to PostgreSQL unverified")
            elif secret.get("secretName") != f"{name}-ca" or \
                    items != [("ca.crt", ca[len(mounted[0]["mountPath"].rstrip("/")) + 1:])]:
                problems.append(f"perch: {ca} is not ca.crt alone of a mounted Secret {name}-ca")
            else:
                facts.append(f"TLS verified with {name}-ca's ca.crt ({ca})")
        policy = policy_for({"cnpg.io/cluster": name})
        if policy:
            admits_clients(policy, perch)
        database_labelled([clusters[0], policy])
        facts.insert(0, f"Cluster {name} ({spec.get('instances')} instances, "
                        f"database {initdb.get('database')} owned by {initdb.get('owner')}, "
                        f"{(spec.get('storage') or {}).get('size')}); NetworkPolicy admits Perch to 5432")
elif mode == "postgres":
    perch = check_nodes("perch-storage", "url")
    pg = one("StatefulSet", "perch-postgres")
    if pg:
        spec, pod, c = pg["spec"], pg["spec"]["template"]["spec"], container(pg)
        labels, sc = pod_labels(pg), pod.get("securityContext") or {}
        if spec.get("replicas") != 1:
            problems.append("StatefulSet perch-postgres: replicas is not 1")
        claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates") or []}
        mounts = [m["mountPath"] for m in c.get("volumeMounts") or [] if m["name"] in claims]
        pgdata = env_value(c, "PGDATA") or ""
        if not any(pgdata.startswith(m.rstrip("/") + "/") for m in mounts):
            problems.append(f"PGDATA {pgdata!r} is not a subdirectory of a persistent volume {mounts}")
        if not (sc.get("runAsNonRoot") and sc.get("runAsUser") == 999 and sc.get("runAsGroup") == 999):
            problems.append("perch-postgres: not run as the image's postgres user, 999:999")
        if secret_ref(c, "POSTGRES_PASSWORD") != ("perch-postgres", "password"):
            problems.append("POSTGRES_PASSWORD: not from secret perch-postgres/password")
        probe = ((c.get("readinessProbe") or {}).get("exec") or {}).get("command") or [""]
        if probe[0] != "pg_isready":
            problems.append("perch-postgres: no pg_isready readiness probe")
        svc = one("Service", "perch-postgres")
        if svc and not (matches({"matchLabels": svc["spec"]["selector"]}, labels)
                        and 5432 in [p["port"] for p in svc["spec"]["ports"]]):
            problems.append("Service perch-postgres: not port 5432 of the server")
        policy = policy_for(labels)
        if policy:
            peers = [(r, p) for r in policy["spec"].get("ingress") or [] for p in r.get("from") or [None]]
            for rule, peer in peers:
                if (peer is None or set(peer) != {"podSelector"} or not peer["podSelector"]
                        or [p.get("port") for p in rule.get("ports") or []] != [5432]):
                    problems.append(f"NetworkPolicy {policy['metadata']['name']}: a rule admits other peers, or other ports than 5432")
            admits_clients(policy, perch)
        database_labelled([pg, svc, policy])
        facts.insert(0, f"PostgreSQL StatefulSet perch-postgres ({c.get('image')}, {sc.get('runAsUser')}:"
                        f"{sc.get('runAsGroup')}, PGDATA {pgdata}, pg_isready), Service perch-postgres, "
                        "NetworkPolicy admits only Perch and the migration to 5432")
elif mode == "migrate":
    job, base = one("Job", "perch-storage-migrate"), one("StatefulSet", "perch", load(base_path))
    if job and base:
        c, pod = container(job), job["spec"]["template"]["spec"]
        claim = [v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes") or []
                 if "persistentVolumeClaim" in v
                 and v["name"] in [m["name"] for m in c.get("volumeMounts") or []
                                   if m["mountPath"] == "/var/lib/perch"]]
        base_claims = [f"{t['metadata']['name']}-{base['metadata']['name']}-0" for t in base["spec"]["volumeClaimTemplates"]]
        if len(claim) != 1 or claim[0] not in base_claims:
            problems.append(f"the Job mounts {claim} at /var/lib/perch, not the single node's {base_claims}")
        if c.get("command", [])[1:3] != ["storage", "migrate"]:
            problems.append("the Job does not run perch storage migrate")
        if secret_ref(c, "PERCH_STORAGE_URL") != ("perch-storage", "url") or \
                secret_ref(c, "PERCH_SECRET_KEY") != secret_ref(container(base), "PERCH_SECRET_KEY"):
            problems.append("the Job's PERCH_STORAGE_URL or PERCH_SECRET_KEY is not the cluster's")
        if c.get("image") != container(base).get("image"):
            problems.append(f"the Job's image {c.get('image')} is not base's {container(base).get('image')}")
        facts.append(f"Job perch-storage-migrate runs perch storage migrate on {claim[0] if claim else '?'} "
                     f"(base's volume), image {c.get('image')} as base's")

for p in problems:
    print(p, file=sys.stderr)
print("; ".join(facts))
sys.exit(1 if problems else 0)
