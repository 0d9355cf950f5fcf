#!/usr/bin/env python3
"""A hostile tenant's load, for `bench/run.sh isolation`.

  hostile.py once ADDR HOST PATH N
      N requests at once, each on its own connection; prints
      "STATUS MILLISECONDS" for each when all are answered.
  hostile.py keep ADDR HOST PATH N SECONDS
      N clients, each sending its next request as soon as the last one is
      answered, for SECONDS; prints the answers by status ("504×12 ...").

Status 0 is a request that got no answer (connection refused, reset, or
no answer within 120 s).
"""
import http.client
import sys
import threading
import time


def one(addr, host, path):
    hostname, port = addr.rsplit(":", 1)
    start = time.monotonic()
    try:
        conn = http.client.HTTPConnection(hostname, int(port), timeout=120)
        conn.request("GET", path, headers={"Host": host, "Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        status = resp.status
        conn.close()
    except OSError:
        status = 0
    return status, (time.monotonic() - start) * 1000


def run_threads(n, target):
    threading.stack_size(256 * 1024)
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main():
    mode, addr, host, path, n = sys.argv[1:6]
    n = int(n)
    if mode == "once":
        out = [None] * n

        def request(i):
            out[i] = one(addr, host, path)

        run_threads(n, request)
        for status, ms in out:
            print(f"{status} {ms:.1f}")
    elif mode == "keep":
        end = time.monotonic() + float(sys.argv[6])
        counts = {}
        lock = threading.Lock()

        def client(_):
            while time.monotonic() < end:
                status, _ms = one(addr, host, path)
                with lock:
                    counts[status] = counts.get(status, 0) + 1

        run_threads(n, client)
        print(" ".join(f"{s}×{c}" for s, c in sorted(counts.items())))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
