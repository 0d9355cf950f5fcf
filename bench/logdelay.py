"""Delay from a data-plane response to its event reaching a log follower.

    logdelay.py ADMIN_HOST:PORT DATA_HOST:PORT TOKEN HOST FUNCTION

Follows FUNCTION's log (NDJSON), sends 200 requests to HOST one at a time,
and for each takes the time from the end of the response to the arrival of
the event with its Perch-Request-Id. Prints a markdown line with the median
and p99 (goal: ≤ 100 ms).
"""
import http.client
import statistics
import sys
import threading
import time

admin, data, token, host, function = sys.argv[1:6]
arrived = {}
ready = threading.Event()


def follow():
    c = http.client.HTTPConnection(admin)
    c.request("GET", f"/v1/tenants/bench/logs?follow=1&function={function}",
              headers={"Authorization": f"Bearer {token}"})
    r = c.getresponse()
    ready.set()
    import json
    while True:
        line = r.readline()
        if not line:
            return
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("type") == "request":
            arrived[e["request_id"]] = time.monotonic()


threading.Thread(target=follow, daemon=True).start()
ready.wait(10)
time.sleep(0.2)
sent = {}
c = http.client.HTTPConnection(data)
for _ in range(200):
    c.request("GET", "/", headers={"Host": host})
    r = c.getresponse()
    r.read()
    sent[r.getheader("perch-request-id")] = time.monotonic()
    time.sleep(0.005)
deadline = time.monotonic() + 10
while len([i for i in sent if i in arrived]) < len(sent) and time.monotonic() < deadline:
    time.sleep(0.01)
delays = sorted((arrived[i] - t) * 1000 for i, t in sent.items() if i in arrived)
missing = len(sent) - len(delays)
if not delays:
    print("\n- log follow delay: no event arrived")
    sys.exit(1)
p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
print(f"\n- log follow delay (response end → event at a follower), {len(delays)} requests: "
      f"median {statistics.median(delays):.2f} ms, p99 {p99:.2f} ms, max {delays[-1]:.2f} ms"
      + (f", {missing} events missing" if missing else ""))
