#!/usr/bin/python3
"""How full the pipe is during one libtorrent download from a seeder (issue 15, case (d)).

    scripts/seed-recvq.py TORRENT PORT LABEL

Runs one lt_bench.py download from 127.0.0.1:PORT and samples, every ~5 ms with `ss`, the
downloader socket's Recv-Q and the seeder socket's Send-Q. "empty" is the share of samples
under 64 KiB: a downloader whose receive queue is often empty is waiting for the seeder.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

torrent, port, label = sys.argv[1], sys.argv[2], sys.argv[3]
helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benches", "helpers", "lt_bench.py")
out = tempfile.mkdtemp(prefix="seed-recvq-")
p = subprocess.Popen(["/usr/bin/python3", helper, "download", torrent, out, f"127.0.0.1:{port}", "120"],
                     stdout=subprocess.PIPE)
rq, sq = [], []
while p.poll() is None:
    s = subprocess.run(["ss", "-tnH", "state", "established", f"( sport = :{port} or dport = :{port} )"],
                       capture_output=True, text=True).stdout
    for line in s.splitlines():
        f = line.split()
        r, q, local, peer = int(f[0]), int(f[1]), f[2], f[3]
        if peer.endswith(f":{port}"):
            rq.append(r)
        elif local.endswith(f":{port}"):
            sq.append(q)
    time.sleep(0.005)
shutil.rmtree(out, ignore_errors=True)


def stats(v):
    v = sorted(v)
    n = len(v)
    if not n:
        return "-"
    return f"n={n} empty={sum(1 for x in v if x < 65536) / n:.0%} p50={v[n // 2] // 1024}K p90={v[9 * n // 10] // 1024}K"


load = open("/proc/loadavg").read().split()[0]
print(f"{label:6} downloader Recv-Q {stats(rq)} | seeder Send-Q {stats(sq)} | load {load}")
