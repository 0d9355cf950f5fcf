#!/usr/bin/env python3
"""How soon the other nodes of a Perch cluster see a change (bench/run.sh cluster).

    cluster.py versions --admin URL --token T --wasm HELLO --nodes H:P,H:P --changes N
    cluster.py routes   --admin URL --token T --wasm HELLO --nodes H:P,H:P --changes N
    cluster.py kv       --writer H:P --nodes H:P,H:P --changes N

versions: N uploads of a new component (the bench hello with a distinct
marker each time) to the function `bench/cv` on the node at --admin; after
each 2xx, `GET /variant` on every node of --nodes (a keep-alive connection
and a thread per node) until each answers the new marker. The delay of a node is
from the upload's 2xx to its first answer with the new marker: the change
reaching the node (PostgreSQL NOTIFY, the node applying it to its snapshot)
and the node fetching the component from the shared store and compiling it
on first use. The upload's own duration on node 1 (its compile of the
same component) is reported beside them.

routes: N switches of the route `switch.cluster.bench` between two functions
whose components every node already runs: the registry change alone.

kv: N writes of a new value to one key through a KV guest on --writer, after
which every node of --nodes, which has read (and cached) the old value, is
polled until it reads the new one.

Prints one markdown table row per node (n, p50, p90, p99, max in ms).
"""
import argparse
import http.client
import json
import statistics
import sys
import threading
import time

MARKER = b"perch-bench-variant:000000"
TIMEOUT = 30.0


class Node:
    """A keep-alive connection to one node's data plane."""

    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.addr = addr
        self.host, self.port = host, int(port)
        self.conn = None

    def get(self, host, path):
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                self.conn.request("GET", path, headers={"Host": host})
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def put(self, host, path, body):
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        self.conn.request("PUT", path, body=body, headers={"Host": host})
        r = self.conn.getresponse()
        return r.status, r.read()


class Admin:
    def __init__(self, url, token):
        rest = url.split("://", 1)[1]
        host, port = rest.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.auth = {"Authorization": f"Bearer {token}"}

    def call(self, method, path, body=None, content_type="application/json"):
        headers = dict(self.auth)
        if body is not None:
            headers["Content-Type"] = content_type
            if content_type == "application/json":
                body = json.dumps(body).encode()
        self.conn.request(method, path, body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        if r.status // 100 != 2:
            sys.exit(f"[cluster] {method} {path}: {r.status} {data[:200]!r}")
        return data


def wait_all(nodes, host, path, want):
    """Polls every node, each from a thread of its own (a node compiling on
    its first request must not hold up the polling of the others), until
    each answers `want`; the seconds each took."""
    start = time.monotonic()
    seen, failed = {}, []

    def poll(n):
        while time.monotonic() - start <= TIMEOUT:
            status, body = n.get(host, path)
            if status == 200 and body == want:
                seen[n.addr] = time.monotonic() - start
                return
        failed.append(n.addr)

    threads = [threading.Thread(target=poll, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        sys.exit(f"[cluster] {failed} did not see {want!r} within {TIMEOUT} s")
    return seen


def variant(hello, i):
    assert hello.count(MARKER) == 1, "marker not found once"
    return hello.replace(MARKER, b"perch-bench-variant:%06d" % i)


def versions(a, delays):
    admin = Admin(a.admin, a.token)
    nodes = [Node(x) for x in a.nodes.split(",")]
    hello = open(a.wasm, "rb").read()
    host = "cv.cluster.bench"
    admin.call("PUT", "/v1/tenants/bench")
    admin.call("PUT", "/v1/tenants/bench/functions/cv", variant(hello, 500000), "application/wasm")
    admin.call("PUT", f"/v1/tenants/bench/routes/{host}", {"function": "cv"})
    wait_all(nodes, host, "/variant", b"perch-bench-variant:500000\n")
    for i in range(a.changes):
        n = 500001 + i
        t0 = time.monotonic()
        admin.call("PUT", "/v1/tenants/bench/functions/cv", variant(hello, n), "application/wasm")
        delays.setdefault("node 1's upload itself (its compile)", []).append(time.monotonic() - t0)
        for addr, s in wait_all(nodes, host, "/variant", b"perch-bench-variant:%06d\n" % n).items():
            delays.setdefault(addr, []).append(s)


def routes(a, delays):
    admin = Admin(a.admin, a.token)
    nodes = [Node(x) for x in a.nodes.split(",")]
    hello = open(a.wasm, "rb").read()
    host = "switch.cluster.bench"
    markers = {"cv-a": 600001, "cv-b": 600002}
    admin.call("PUT", "/v1/tenants/bench")
    # The two functions, each compiled and warm on every node (under a
    # host of its own) before the switches start.
    for f, n in markers.items():
        admin.call("PUT", f"/v1/tenants/bench/functions/{f}", variant(hello, n), "application/wasm")
        admin.call("PUT", f"/v1/tenants/bench/routes/{f}.cluster.bench", {"function": f})
        wait_all(nodes, f"{f}.cluster.bench", "/variant", b"perch-bench-variant:%06d\n" % n)
    for i in range(a.changes + 1):
        f = "cv-a" if i % 2 == 0 else "cv-b"
        admin.call("PUT", f"/v1/tenants/bench/routes/{host}", {"function": f})
        seen = wait_all(nodes, host, "/variant", b"perch-bench-variant:%06d\n" % markers[f])
        if i:
            for addr, s in seen.items():
                delays.setdefault(addr, []).append(s)


def kv(a, delays):
    writer = Node(a.writer)
    nodes = [Node(x) for x in a.nodes.split(",")]
    host = "kv.cluster.bench"
    for i in range(a.changes + 1):
        value = f"value-{i:06d}".encode()
        status, body = writer.put(host, "/set/probe", value)
        if status != 204:
            sys.exit(f"[cluster] set on {a.writer}: {status} {body[:200]!r}")
        seen = wait_all(nodes, host, "/get/probe", value)
        if i:
            for addr, s in seen.items():
                delays.setdefault(addr, []).append(s)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["versions", "routes", "kv"])
    p.add_argument("--admin")
    p.add_argument("--token")
    p.add_argument("--wasm")
    p.add_argument("--writer")
    p.add_argument("--nodes", required=True)
    p.add_argument("--changes", type=int, default=100)
    p.add_argument("--label", default="")
    a = p.parse_args()
    delays = {}
    {"versions": versions, "routes": routes, "kv": kv}[a.mode](a, delays)
    for addr, d in delays.items():
        ms = sorted(x * 1000 for x in d)
        pct = lambda q: ms[min(len(ms) - 1, int(len(ms) * q))]
        print(f"| {a.label or a.mode} | {addr} | {len(ms)} | {statistics.median(ms):.1f} | "
              f"{pct(0.9):.1f} | {pct(0.99):.1f} | {ms[-1]:.1f} |")


if __name__ == "__main__":
    main()
