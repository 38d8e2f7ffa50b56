#!/usr/bin/env python3
"""Is loadgen fast enough? The same load from loadgen and from wrk against
the mock directly (the fastest server here): requests/s and the
generator's own CPU per request (utime+stime of the finished child).

    python3 benches/load/vs_wrk.py [reps=3] [seconds=5]
"""

import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import bench  # noqa: E402


def run(argv):
    before = os.times()
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return out, cpu


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    secs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    root = bench.ROOT
    tollgate = os.path.join(root, "target", "release", "tollgate")
    loadgen = os.path.join(root, "target", "release", "loadgen")
    body = bench.chat_body("gpt-4o-mini", False, 65)
    work = tempfile.mkdtemp(prefix="vs-wrk-")
    with open(os.path.join(work, "body.json"), "w") as f:
        f.write(body)
    lua = os.path.join(work, "req.lua")
    with open(lua, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f'local f = io.open("{work}/body.json"); wrk.body = f:read("*a"); f:close()\n')
    addr = f"127.0.0.1:{bench.free_port()}"
    argv = [tollgate, "mock", "--listen", addr, "--workers", "1"]
    if bench.NCPU > 1:
        argv += ["--pin-cpu", str(bench.NCPU - 1)]
    mock = bench.Proc("mock", argv, work)
    try:
        bench.wait_until(lambda: bench.port_open(addr), 20, mock)
        print(f"load average {open('/proc/loadavg').read().split()[:3]}")
        for rep in range(reps):
            out, cpu = run([loadgen, "--addr", addr, "-c", "64", "-t", "2", "-d", str(secs),
                            "--warmup", "0", "--body", body])
            j = json.loads(out)
            print(f"rep {rep + 1} loadgen {j['rps']:9.0f} req/s  {cpu / (j['ok'] or 1) * 1e6:5.1f} "
                  f"µs CPU/req  errors {j['errors']}")
            out, cpu = run(["wrk", "-t2", "-c64", f"-d{secs}s", "-s", lua, f"http://{addr}/v1/chat/completions"])
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            n = int(re.search(r"(\d+) requests in", out).group(1))
            print(f"rep {rep + 1} wrk     {rps:9.0f} req/s  {cpu / n * 1e6:5.1f} µs CPU/req")
    finally:
        mock.stop()


if __name__ == "__main__":
    main()
