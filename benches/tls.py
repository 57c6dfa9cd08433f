#!/usr/bin/env python3
"""TLS termination side by side: HAProxy (`bind ... ssl crt`), nginx `stream`
(`listen ... ssl`) and switchyard (`[listeners.tls]`), one ECDSA P-256
certificate, one plain backend, in one run.

Scenarios:
  hs      new TLS 1.3 handshakes per second, no resumption: two
          `openssl s_time -new` clients at once, each connection a full
          handshake (the backend connection each one opens included).
  resume  the same with resumption (`s_time -reuse`: session tickets).
  bulk    Gbit/s from a TLS client (Python's ssl module) through the
          terminating proxy to a backend that discards, counted at the
          backend (iperf3 cannot speak TLS).
  idle    memory per idle TLS connection: 2,000 clients that finished their
          handshake and send nothing, the proxy's RSS before and after.

usage: benches/tls.py [--proxies haproxy,nginx,ours] [--ours BIN] [--seconds N]
                      [--scenarios hs,resume,bulk,idle] [--rounds N] [--json OUT]
                      [--variant NAME=BIN ...]   (more builds of ours, side by side)
"""
import argparse, json, os, re, resource, signal, socket, ssl, statistics, subprocess, sys, tempfile, threading, time

BACKEND = 25400
FRONT = {"haproxy": 25401, "nginx": 25402, "ours": 25403}
VARIANTS = {}
THREADS = os.cpu_count() or 2


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def sink_backend(stop):
    """A plain backend that reads and discards; counts bytes per connection."""
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", BACKEND))
    l.listen(4096)
    l.settimeout(0.2)
    totals = {"bytes": 0}
    lock = threading.Lock()

    def drain(c):
        buf = bytearray(1 << 18)
        n = 0
        try:
            while True:
                k = c.recv_into(buf)
                if k == 0:
                    break
                n += k
        except OSError:
            pass
        c.close()
        with lock:
            totals["bytes"] += n

    def loop():
        while not stop.is_set():
            try:
                c, _ = l.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            threading.Thread(target=drain, args=(c,), daemon=True).start()
        l.close()

    threading.Thread(target=loop, daemon=True).start()
    return totals, lock


def make_cert(tmp):
    key, crt = os.path.join(tmp, "bench.key"), os.path.join(tmp, "bench.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=bench.test", "-addext", "subjectAltName=DNS:bench.test",
                    "-keyout", key, "-out", crt], check=True, capture_output=True)
    pem = os.path.join(tmp, "bench.pem")
    open(pem, "w").write(open(crt).read() + open(key).read())
    return crt, key, pem


def start(proxy, tmp, ours, crt, key, pem):
    port = FRONT[proxy]
    ours = VARIANTS.get(proxy, ours)
    if proxy == "haproxy":
        path = os.path.join(tmp, "haproxy.cfg")
        open(path, "w").write(
            f"global\n  nbthread {THREADS}\n  maxconn 9000\n  pidfile {tmp}/haproxy.pid\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n"
            f"listen tls\n  bind 127.0.0.1:{port} ssl crt {pem}\n  server b1 127.0.0.1:{BACKEND}\n")
        cmd = ["haproxy", "-f", path, "-db"]
    elif proxy == "nginx":
        path = os.path.join(tmp, "nginx.conf")
        open(path, "w").write(f"""
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes {THREADS}; worker_rlimit_nofile 100000; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;
events {{ worker_connections 50000; }}
stream {{
  server {{
    listen 127.0.0.1:{port} ssl reuseport backlog=4096;
    ssl_certificate {crt}; ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets on;
    proxy_pass 127.0.0.1:{BACKEND};
  }}
}}
""")
        cmd = ["nginx", "-c", path, "-g", "daemon off;"]
    else:
        path = os.path.join(tmp, f"{proxy}.toml")
        open(path, "w").write(
            f'[[listeners]]\nname = "tls"\nbind = "127.0.0.1:{port}"\npool = "b"\naccess_log = false\n'
            f'[listeners.tls]\ncert = "{crt}"\nkey = "{key}"\n'
            f'[pools.b]\nbackends = [{{ addr = "127.0.0.1:{BACKEND}" }}]\n')
        cmd = [ours, "run", "--config", path]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(port)
    return p


def stop(p):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def s_time(port, secs, reuse):
    """Two s_time clients at once; handshakes per second, summed."""
    mode = "-reuse" if reuse else "-new"
    procs = [subprocess.Popen(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", mode, "-tls1_3",
                               "-time", str(secs)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    total = 0.0
    for p in procs:
        out, _ = p.communicate(timeout=secs + 30)
        m = re.search(r"(\d+) connections in (\d+) real seconds", out)
        if m:
            total += int(m.group(1)) / max(int(m.group(2)), 1)
    return round(total, 1)


def bulk(port, secs, totals, lock):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with lock:
        before = totals["bytes"]
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="bench.test")
    chunk = os.urandom(1 << 16)
    start = time.time()
    while time.time() - start < secs:
        for _ in range(64):
            s.sendall(chunk)
    s.close()
    took = time.time() - start
    end = time.time() + 10
    sent_guess = 0
    while time.time() < end:
        time.sleep(0.2)
        with lock:
            now = totals["bytes"]
        if now == sent_guess:
            break
        sent_guess = now
    return round((sent_guess - before) * 8 / took / 1e9, 2)


def rss_kib(root):
    pids = [root] + [int(x) for x in subprocess.run(["ps", "-o", "pid=", "--ppid", str(root)],
                                                     capture_output=True, text=True).stdout.split()]
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def idle(port, proc, n=2000):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    time.sleep(0.5)
    before = rss_kib(proc.pid)
    socks = []
    for _ in range(n):
        socks.append(ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), 5), server_hostname="bench.test"))
    time.sleep(1.5)
    after = rss_kib(proc.pid)
    for s in socks:
        s.close()
    return round((after - before) / n, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxies", default="haproxy,nginx,ours")
    ap.add_argument("--ours", default="target/release/switchyard")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--scenarios", default="hs,resume,bulk,idle")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--variant", action="append", default=[])
    a = ap.parse_args()
    for i, v in enumerate(a.variant):
        name, path = v.split("=", 1)
        VARIANTS[name] = path
        FRONT[name] = 25410 + i
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 100000), hard))
    tmp = tempfile.mkdtemp(prefix="tls-bench-")
    crt, key, pem = make_cert(tmp)
    stop_backend = threading.Event()
    totals, lock = sink_backend(stop_backend)
    proxies = a.proxies.split(",") + list(VARIANTS)
    scenarios = a.scenarios.split(",")
    runs = {p: {s: [] for s in scenarios} for p in proxies}
    for r in range(a.rounds):
        # Interleaved: each round runs every proxy once, in turn.
        for proxy in proxies:
            p = start(proxy, tmp, a.ours, crt, key, pem)
            try:
                port = FRONT[proxy]
                for s in scenarios:
                    if s == "hs":
                        v = s_time(port, a.seconds, False)
                    elif s == "resume":
                        v = s_time(port, a.seconds, True)
                    elif s == "bulk":
                        v = bulk(port, a.seconds, totals, lock)
                    else:
                        v = idle(port, p)
                    runs[proxy][s].append(v)
                    print(f"round {r + 1} {proxy:8} {s:7} {v}", flush=True)
            finally:
                stop(p)
            time.sleep(0.5)
    stop_backend.set()
    units = {"hs": "handshakes/s", "resume": "handshakes/s", "bulk": "Gbit/s", "idle": "KiB/conn"}
    result = {}
    print()
    for s in scenarios:
        meds = {p: statistics.median(runs[p][s]) for p in proxies}
        result[s] = {"unit": units[s], "runs": {p: runs[p][s] for p in proxies}, "median": meds}
        line = "  ".join(f"{p} {meds[p]}" for p in proxies)
        if "ours" in meds:
            others = [meds[p] for p in proxies if p in ("haproxy", "nginx")]
            if others:
                best = min(others) if s == "idle" else max(others)
                ratio = meds["ours"] / best if best else float("nan")
                line += f"  ours/best-peer {ratio:.2f}"
        print(f"{s:7} ({units[s]}): {line}")
    if a.json:
        json.dump(result, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    sys.exit(main())
