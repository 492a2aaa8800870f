#!/usr/bin/env python3
"""The idle-connection flood of `scripts/bench-api --flood` (loopback only, every wait bounded).

Usage: bench-api-flood.py PID BASE_URL TOKEN_FILE HOLD_S ENTRY...

For each ENTRY ("N", "N/S", "N/S+M": N connections from 127.0.0.1, or spread over S source
addresses 127.0.0.2 .. 127.0.0.S+1, plus M more from 127.0.0.1): opens them (TCP, and the TLS
handshake when BASE_URL is https), holds them idle HOLD_S seconds, and meanwhile samples the
process's /proc/PID/status (Threads, VmRSS, VmHWM) and open descriptors every 100 ms and sends
a request with the right token every 0.5 s on a fresh connection from 127.0.0.250 (the
operator reaching the emergency close while the flood holds the server). Then closes them and waits up to 20 s for
the thread count to settle. Prints one human line and one "FLOOD|..." line per entry.
"""
import http.client
import os
import selectors
import socket
import ssl
import sys
import threading
import time
import urllib.parse

PID = int(sys.argv[1])
BASE = urllib.parse.urlparse(sys.argv[2])
TOKEN = open(sys.argv[3]).read().strip()
HOLD = float(sys.argv[4])
ENTRIES = sys.argv[5:]
HOST, PORT = BASE.hostname, BASE.port
TLS = BASE.scheme == "https"
if not HOST.startswith("127."):
    sys.exit("loopback (127.0.0.0/8) only")
CTX = ssl._create_unverified_context()
OPEN_DEADLINE = 30.0  # seconds for all the connects (and handshakes) of one entry
SETTLE = 20.0
PROBE_FROM = "127.0.0.250"
# FLOOD_PARTIAL=1: each connection sends the start of a request head and stops there (the
# server holds a read buffer and a head deadline for it, not just a socket).
# FLOOD_SLOW=1: each connection (receive buffer shrunk to 4 KiB before it connects) sends a
# whole anonymous request for the largest page and never reads the answer: the server holds
# the response bytes that do not fit in the socket.
PARTIAL = b"GET /api/v1/monitoring/connection-health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
PARTIAL_ON = os.environ.get("FLOOD_PARTIAL") == "1"
SLOW_ON = os.environ.get("FLOOD_SLOW") == "1"
SLOW = b"GET /api/v1/monitoring/connection-health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % PORT


def status():
    out = {}
    try:
        with open(f"/proc/{PID}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Threads", "VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{PID}/fd"))
    except (OSError, ValueError):
        return None
    return out


class Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.stop, self.lock = [], threading.Event(), threading.Lock()

    def run(self):
        while not self.stop.is_set():
            s = status()
            if s:
                with self.lock:
                    self.samples.append(s)
            self.stop.wait(0.1)

    def take(self):
        with self.lock:
            s, self.samples = self.samples, []
        return s


class Prober(threading.Thread):
    """A request with the right token every 0.5 s, each on a new connection."""

    def __init__(self):
        super().__init__(daemon=True)
        self.results, self.stop = [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                # From the operator's own address, not one of the flood's.
                if TLS:
                    c = http.client.HTTPSConnection(HOST, PORT, timeout=5, context=CTX, source_address=(PROBE_FROM, 0))
                else:
                    c = http.client.HTTPConnection(HOST, PORT, timeout=5, source_address=(PROBE_FROM, 0))
                c.request("GET", "/api/v1/monitoring/status", headers={"Authorization": "Bearer " + TOKEN})
                r = c.getresponse()
                r.read()
                code = r.status
                c.close()
            except Exception as e:  # noqa: BLE001 - any failure is a result here
                code = type(e).__name__
            self.results.append((code, time.monotonic() - t0))
            self.stop.wait(max(0.0, 0.5 - (time.monotonic() - t0)))


def plan(entry):
    extra = 0
    if "+" in entry:
        entry, m = entry.split("+", 1)
        extra = int(m)
    out = []
    if "/" in entry:
        n, s = (int(x) for x in entry.split("/", 1))
        for i in range(s):
            out.append((f"127.0.0.{2 + i}", n // s + (1 if i < n % s else 0)))
    else:
        out.append(("127.0.0.1", int(entry)))
    if extra:
        out.append(("127.0.0.1", extra))
    return out


def open_all(p):
    """Opens the planned connections; returns (sockets that are up, attempted, tcp up, tls up)."""
    sel = selectors.DefaultSelector()
    pending, attempted = {}, 0
    for src, n in p:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.bind((src, 0))
            if SLOW_ON:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            attempted += 1
            s.connect_ex((HOST, PORT))
            sel.register(s, selectors.EVENT_WRITE)
            pending[s.fileno()] = s
    up = []
    deadline = time.monotonic() + OPEN_DEADLINE
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            sel.unregister(s)
            del pending[s.fileno()]
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                up.append(s)
            else:
                s.close()
    for s in pending.values():
        sel.unregister(s)
        s.close()
    tcp_up = len(up)
    if not TLS:
        return up, attempted, tcp_up, 0
    # TLS: drive every handshake at once, non-blocking.
    hs = {}
    for s in up:
        t = CTX.wrap_socket(s, do_handshake_on_connect=False, server_hostname="localhost")
        hs[t.fileno()] = t
        sel.register(t, selectors.EVENT_WRITE)
    done = []
    while hs and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            t = key.fileobj
            try:
                t.do_handshake()
            except ssl.SSLWantReadError:
                sel.modify(t, selectors.EVENT_READ)
                continue
            except ssl.SSLWantWriteError:
                sel.modify(t, selectors.EVENT_WRITE)
                continue
            except (OSError, ssl.SSLError):
                sel.unregister(t)
                del hs[t.fileno()]
                t.close()
                continue
            sel.unregister(t)
            del hs[t.fileno()]
            done.append(t)
    for t in hs.values():
        sel.unregister(t)
        t.close()
    return done, attempted, tcp_up, len(done)


def send_all(socks, data):
    sent = 0
    for s in socks:
        try:
            s.send(data)
            sent += 1
        except (OSError, ssl.SSLError):
            pass
    return sent


def still_open(socks):
    """Idle sockets the server has not ended (an ended one is readable: EOF, RST or an answer)."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    ready = [k.fileobj for k, _ in sel.select(timeout=0)]
    sel.close()
    ended = 0
    for s in ready:
        if not TLS:
            ended += 1
            continue
        # TLS 1.3 servers send session tickets after the handshake: readable is not ended.
        # A read that returns (EOF or an answer such as 408) or fails means ended; one that
        # would block (the TLS layer consumed only tickets) leaves it open.
        try:
            s.recv(4096)
            ended += 1
        except ssl.SSLWantReadError:
            pass
        except (OSError, ssl.SSLError):
            ended += 1
    return len(socks) - ended


def one(entry, sampler):
    p = plan(entry)
    sampler.take()
    time.sleep(1.0)
    base = sampler.take()
    b = base[-1] if base else status()
    prober = Prober()
    prober.start()
    t0 = time.monotonic()
    socks, attempted, tcp_up, tls_up = open_all(p)
    if PARTIAL_ON or SLOW_ON:
        send_all(socks, SLOW if SLOW_ON else PARTIAL)
    t_open = time.monotonic() - t0
    time.sleep(HOLD)
    # A slow reader's socket is readable with its answer: "still open" says nothing there.
    left = "-" if SLOW_ON else still_open(socks)
    prober.stop.set()
    prober.join(timeout=10)
    during = sampler.take()
    for s in socks:
        s.close()
    t1 = time.monotonic()
    settled = None
    while time.monotonic() - t1 < SETTLE:
        time.sleep(0.5)
        s = status()
        if s is None:
            break
        if s["Threads"] <= b["Threads"] + 1:
            settled = (time.monotonic() - t1, s)
            break
    after = status()
    alive = after is not None
    peak = {k: max((x[k] for x in during), default=0) for k in ("Threads", "VmRSS", "VmHWM", "fds")}
    codes = {}
    for c, _ in prober.results:
        codes[str(c)] = codes.get(str(c), 0) + 1
    ok = sum(1 for c, _ in prober.results if c == 200)
    lat = sorted(d for c, d in prober.results if c == 200)
    lat_max = lat[-1] * 1000 if lat else float("nan")
    mode = ("tls" if TLS else "plain") + ("+partial-head" if PARTIAL_ON else "") + ("+slow-reader" if SLOW_ON else "")
    sources = len({src for src, _ in p})
    print(
        f"   {entry} ({mode}, {sources} source address(es)): {attempted} attempted, {tcp_up} TCP up"
        + (f", {tls_up} TLS up" if TLS else "")
        + f" in {t_open:.1f} s, {left} still open after {HOLD:g} s;"
        f" threads {b['Threads']} -> peak {peak['Threads']}; VmRSS {b['VmRSS'] / 1024:.1f} -> peak"
        f" {peak['VmRSS'] / 1024:.1f} MiB; VmHWM {peak['VmHWM'] / 1024:.1f} MiB; fds peak {peak['fds']};"
        f" token probes {ok}/{len(prober.results)} answered 200 (max {lat_max:.0f} ms) {codes};"
        + (f" settled in {settled[0]:.1f} s to {settled[1]['Threads']} threads" if settled else " not settled")
        + ("" if alive else "; PROCESS GONE"),
        flush=True,
    )
    print(
        "FLOOD|"
        + "|".join(
            str(x)
            for x in (
                entry, mode, sources, attempted, tcp_up, tls_up if TLS else "-", left,
                b["Threads"], peak["Threads"], f"{b['VmRSS'] / 1024:.1f}", f"{peak['VmRSS'] / 1024:.1f}",
                f"{peak['VmHWM'] / 1024:.1f}", peak["fds"], f"{ok}/{len(prober.results)}", f"{lat_max:.0f}",
                "alive" if alive else "gone",
            )
        ),
        flush=True,
    )
    return alive


def main():
    sampler = Sampler()
    sampler.start()
    print("FLOOD|entry|mode|sources|attempted|tcp_up|tls_up|open_after_hold|threads_before|threads_peak|"
          "rss_before_mib|rss_peak_mib|hwm_mib|fds_peak|token_probes_200|token_max_ms|process")
    for e in ENTRIES:
        if not one(e, sampler):
            sys.exit(1)
    s = status()
    print(f"   at the end: {s}")


if __name__ == "__main__":
    main()
