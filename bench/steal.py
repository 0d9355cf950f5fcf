#!/usr/bin/env python3
"""Hypervisor steal time on this (virtual) machine, per CPU.

    steal.py sample OUT CPU...   sample /proc/stat every 5 ms until SIGTERM;
                                 append "epoch_ms cpu ticks" whenever a CPU's
                                 steal counter moved
    steal.py ticks CPU...        print the CPUs' steal counters (clock
                                 ticks), space-separated

A virtual CPU whose host runs something else stops for milliseconds at a
time; nothing inside the guest runs then, and every request in flight, or
sent by a load generator that stopped, waits. bench/run.sh reports steal next
to each result and, for the paced latency runs, the p99 of the requests that
started away from any steal event.
"""
import signal
import sys
import time


def steal_ticks():
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                fields = line.split()
                out[fields[0][3:]] = int(fields[8])
    return out


def sample(path, cpus):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    prev = steal_ticks()
    with open(path, "a") as out:
        while not stop:
            time.sleep(0.005)
            now = steal_ticks()
            t = time.time() * 1000
            for cpu in cpus:
                if now[cpu] != prev[cpu]:
                    out.write(f"{t:.1f} {cpu} {now[cpu] - prev[cpu]}\n")
            out.flush()
            prev = now


if __name__ == "__main__":
    if sys.argv[1] == "sample":
        sample(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "ticks":
        ticks = steal_ticks()
        print(" ".join(str(ticks[cpu]) for cpu in sys.argv[2:]))
    else:
        sys.exit(__doc__)
