#!/usr/bin/env python3
"""Container cold starts, Perch against the raw engine, side by side.

Each round, in alternating order:
- raw: through the engine's Docker-compatible API, create and start a
  container of the image (the same limits, network and loopback port
  publish Perch uses), then poll its port with GET / every 5 ms until it
  answers 200; the time from the create call to that 200.
- perch: with no instance of the container version running (the script
  waits until the engine lists none for the node), GET / through Perch's
  data plane; the time from sending the request to the first byte of the
  answer.

Prints one tab-separated sample per line: variant, round, milliseconds.
"""
import argparse
import http.client
import json
import socket
import sys
import time
import urllib.parse


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost")
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def engine(sock, method, path, body=None):
    conn = UnixHTTPConnection(sock)
    headers = {"Content-Type": "application/json"}
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status >= 300:
        raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
    return json.loads(data) if data else None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get_status(port, host="localhost", timeout=1.0):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", "/", headers={"Host": host})
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return None


def raw_round(args):
    port = free_port()
    body = {
        "Image": args.image,
        "Cmd": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
        "ExposedPorts": {"8080/tcp": {}},
        "Labels": {"perch.bench": "raw"},
        "HostConfig": {
            "Init": True,
            "Memory": 256 << 20,
            "MemorySwap": 256 << 20,
            "NanoCpus": 1_000_000_000,
            "PidsLimit": 512,
            "CapDrop": ["ALL"],
            "CapAdd": ["CHOWN", "SETUID", "SETGID", "NET_BIND_SERVICE"],
            "SecurityOpt": ["no-new-privileges"],
            "NetworkMode": args.network,
            "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]},
        },
    }
    t0 = time.perf_counter()
    created = engine(args.socket, "POST", "/v1.41/containers/create", body)
    engine(args.socket, "POST", f"/v1.41/containers/{created['Id']}/start")
    while get_status(port) != 200:
        time.sleep(0.005)
    took = (time.perf_counter() - t0) * 1000
    engine(args.socket, "DELETE", f"/v1.41/containers/{created['Id']}?force=1")
    return took


def node_containers(args):
    filters = urllib.parse.quote(json.dumps({"label": [f"perch.node={args.node}"]}))
    return engine(args.socket, "GET", f"/v1.41/containers/json?all=true&filters={filters}")


def perch_round(args):
    deadline = time.time() + 60
    while node_containers(args):
        if time.time() > deadline:
            raise RuntimeError("the idle instance was not stopped within 60 s")
        time.sleep(0.05)
    host, port = args.perch.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.connect()
    t0 = time.perf_counter()
    conn.request("GET", "/", headers={"Host": args.host})
    resp = conn.getresponse()
    resp.read(1)
    took = (time.perf_counter() - t0) * 1000
    resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"perch answered {resp.status}")
    return took


def report(samples):
    """The Markdown table of the `containers` samples in bench/run.sh's file."""
    import statistics as st
    rows = {}
    for line in open(samples):
        f = line.rstrip("\n").split("\t")
        if f[0] == "containers":
            rows.setdefault(f[1], []).append(float(f[3]))
    raw, perch = rows["raw"], rows["perch"]
    print(f"\n### containers: cold start, no instance running (ms, {len(perch)} rounds, alternating)\n")
    print("| variant | median | per round |")
    print("|---|---|---|")
    print(f"| raw engine: create + start + first 200 | {st.median(raw):.0f} | {' / '.join(f'{x:.0f}' for x in raw)} |")
    print(f"| Perch: request to first byte | {st.median(perch):.0f} | {' / '.join(f'{x:.0f}' for x in perch)} |")
    print(f"\n- Perch's overhead over the raw engine (difference of the medians): {st.median(perch) - st.median(raw):.0f} ms")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        report(sys.argv[2])
        return
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--network", required=True)
    p.add_argument("--perch", required=True, help="data plane host:port")
    p.add_argument("--host", required=True, help="the container function's route")
    p.add_argument("--node", required=True)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    for r in range(1, args.rounds + 1):
        order = [("raw", raw_round), ("perch", perch_round)]
        if r % 2 == 0:
            order.reverse()
        for name, run in order:
            ms = run(args)
            print(f"{name}\t{r}\t{ms:.1f}", flush=True)
            print(f"[bench] containers round {r} {name}: {ms:.1f} ms", file=sys.stderr)


if __name__ == "__main__":
    main()
