#!/usr/bin/env python3
"""Checks the board test's guest console log: the LED and buzzer line values the kernel's
gpio-sim chip saw, against the demo's script and systemd's journal.

Usage: analyze.py CONSOLE_LOG [REPORT]

The guest (board/test/guest.sh) prints, prefixed so kernel and systemd lines in between do no
harm:
  TGB <A|B> <epoch> <led> <buzzer>   one line per change of either line value
  TGB <J-A|J-B> <journal line>       `journalctl -o short-unix` of tickguard.service
  TGB-COUNT <tag> <n>                lines of each block (checks nothing was lost)
  TGM <name> ...                     marks, RSS
  TICKGUARD-BOARD-RESULT: ok|fail    the guest's own verdict

Phase A (demo, 63 s; the demo's round is 18 s, its feed dies 10 s in and returns 15 s in):
  - live (15 s .. 19.5 s of each round, all prices live): a heartbeat, short flashes;
  - stale (3 s .. 11 s: a quiet instrument, then the feed down): the slow even blink;
  - blind (RELIANCE blind from ~11.5 s until 15 s): the buzzer chirps, the LED blinks fast;
  - the buzzer never sounds outside the blind windows and the start-up self-test.
Phase B (--fault engine-hang@4s): the LED blinks, freezes from the hang until systemd's
watchdog kills the process, and blinks again once systemd has restarted it.
Phase C: the chip unplugged and plugged back under the running service.
Phase D (idle-connection flood, TGM D-*): the peaks of the process's threads and RSS and of
the unit's cgroup stay under the unit's TasksMax and MemoryMax, the process is the same one
afterwards (NRestarts unchanged), and the right token was answered throughout.

Emulated time stretches under load: every bound below is generous.
"""

import re
import sys

FAILURES = []
REPORT = []


def check(ok, what):
    REPORT.append(("ok  " if ok else "FAIL") + "  " + what)
    if not ok:
        FAILURES.append(what)
    return ok


def parse(path):
    blocks = {}
    counts = {}
    marks = {}
    result = None
    with open(path, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
            i = line.find("TGB ")
            j = line.find("TGB-COUNT ")
            k = line.find("TGM ")
            r = line.find("TICKGUARD-BOARD-RESULT: ")
            if j >= 0:
                parts = line[j:].split()
                if len(parts) >= 3:
                    counts[parts[1]] = int(parts[2])
            elif i >= 0:
                rest = line[i + 4:]
                tag, _, body = rest.partition(" ")
                blocks.setdefault(tag, []).append(body)
            elif k >= 0:
                parts = line[k + 4:].split(" ", 1)
                marks[parts[0]] = parts[1] if len(parts) > 1 else ""
            elif r >= 0:
                result = line[r + len("TICKGUARD-BOARD-RESULT: "):].strip()
    return blocks, counts, marks, result


def samples(lines):
    """Line changes (t, led, buzzer), and the sampler's blind spots (from, to) in seconds."""
    out, gaps = [], []
    for l in lines:
        p = l.split()
        if len(p) == 3 and p[0] == "G":
            gaps.append((int(p[1]) / 1e6, int(p[2]) / 1e6))
        elif len(p) == 3:
            out.append((float(p[0]), p[1] == "1", p[2] == "1"))
    return out, gaps


GAPS = []


def seen(a, b):
    """Whether the interval [a, b] was observed without a sampler blind spot."""
    return not any(g0 < b and g1 > a for g0, g1 in GAPS)


JOURNAL = re.compile(r"^(\d+\.\d+) \S+ (\S+?): (.*)$")


def journal(lines):
    out = []
    for l in lines:
        m = JOURNAL.match(l)
        if m:
            out.append((float(m.group(1)), m.group(2), m.group(3)))
    return out


def intervals(ss, which, level, lo, hi):
    """Complete intervals within [lo, hi] during which the line `which` (1 LED, 2 buzzer)
    held `level`: (start, end)."""
    out = []
    start = None
    prev = None
    for s in ss:
        v = s[which]
        if prev is not None and v != prev:
            if v == level:
                start = s[0]
            elif start is not None:
                if start >= lo and s[0] <= hi and seen(start, s[0]):
                    out.append((start, s[0]))
                start = None
        prev = v
    return out


def edges(ss, which, lo, hi, rising_only=False):
    out = []
    prev = None
    for s in ss:
        v = s[which]
        if prev is not None and v != prev and lo <= s[0] <= hi and (v or not rising_only):
            out.append(s[0])
        prev = v
    return out


def fmt(xs):
    return "[" + ", ".join("%.2f" % x for x in xs) + "]"


def identity(marks):
    """The service runs as the package's user, in the gpio group the udev rule gives the chip."""
    ids = dict(kv.split("=", 1) for kv in marks.get("A-ids", "").split() if "=" in kv)
    user = marks.get("A-user", "").split()
    uid, groups = (user[0], user[1:]) if user else ("", [])
    check(
        bool(ids.get("tickguard")) and uid == ids.get("tickguard") and uid != "0",
        "the service runs as user tickguard (uid %s), not root" % (uid or "?"),
    )
    check(bool(ids.get("gpio")) and ids.get("gpio") in groups, "the service is in the gpio group (%s in %s)" % (ids.get("gpio"), groups))
    dev = marks.get("A-dev", "")
    check(dev.endswith("crw-rw---- root:gpio"), "udev rule: the chip is rw for group gpio (%s)" % dev)
    status = marks.get("A-status", "")
    check("status_text=" in status and "feed" in status.split("status_text=", 1)[-1], "STATUS= reached systemd (%s)" % status)


def phase_a(ss, jr):
    downs = [t for t, _, m in jr if "demo: feed and network down" in m]
    ups = [t for t, _, m in jr if "demo: network and feed back" in m]
    ready = [t for t, _, m in jr if "[SYSTEMD] event=ready" in m]
    indicator = [m for _, _, m in jr if "[INDICATOR] event=ready" in m]
    check(bool(ss), "phase A: line samples recorded (%d changes)" % len(ss))
    if not ss:
        return
    start, end = ss[0][0], ss[-1][0]
    check(bool(ready), "phase A: READY=1 reached systemd's socket ([SYSTEMD] event=ready)")
    check(
        any("board=qemu-virt" in m and "chip=tickguard-sim" in m for m in indicator),
        "phase A: board = \"auto\" resolved to the qemu-virt profile (%s)" % (indicator[:1] or "no [INDICATOR] event=ready"),
    )
    t0 = ready[0] if ready else start
    # Self-test: the buzzer sounds once right at start-up, with the LED.
    st = [t for t in edges(ss, 2, t0 - 1.0, t0 + 2.5, rising_only=True)]
    check(len(st) >= 1, "phase A: start-up self-test sounded the buzzer (rising edges at %s s after READY)" % fmt([t - t0 for t in st]))
    rounds = 0
    live_pulses, live_periods, stale_on, stale_off, blind_led, chirps = [], [], [], [], [], []
    for d in downs:
        u = next((x for x in ups if x > d), None)
        if u is None or d - 7.5 < t0 + 2.0 or u + 4.5 > end:
            continue
        rounds += 1
        # live: from just after the feed returns until the next round's quiet instrument.
        lp = intervals(ss, 1, True, u + 0.5, u + 4.5)
        live_pulses += [b - a for a, b in lp]
        rises = edges(ss, 1, u + 0.5, u + 4.5, rising_only=True)
        live_periods += [b - a for a, b in zip(rises, rises[1:]) if seen(a, b)]
        check(not edges(ss, 2, u + 0.5, u + 4.5), "round at %.1f: buzzer silent while live" % (d - t0))
        # stale: the quiet instrument (from 2 s into the round), then the feed down until blind.
        son = intervals(ss, 1, True, d - 7.5, d + 1.3)
        soff = intervals(ss, 1, False, d - 7.5, d + 1.3)
        stale_on += [b - a for a, b in son]
        stale_off += [b - a for a, b in soff]
        check(not edges(ss, 2, d - 7.5, d + 0.8), "round at %.1f: buzzer silent while stale" % (d - t0))
        # blind: RELIANCE from ~11.5 s to 15 s of the round.
        ch = edges(ss, 2, d + 1.0, u + 0.5, rising_only=True)
        chirps.append(len(ch))
        check(len(ch) >= 1, "round at %.1f: buzzer sounded when the position went blind (chirps at %s s after the outage)" % (d - t0, fmt([c - d for c in ch])))
        blind_led += [b - a for a, b in intervals(ss, 1, True, d + 2.0, u - 0.1)]
    check(rounds >= 2, "phase A: %d complete demo rounds analysed (need 2)" % rounds)
    if rounds == 0:
        return
    # Intervals across a sampler blind spot are left out (see samples()); enough remain.
    check(
        len(live_pulses) >= rounds and all(0.15 <= p <= 0.6 for p in live_pulses),
        "live: heartbeat flashes of %s s (expect 0.3)" % fmt(live_pulses),
    )
    check(
        len(live_periods) >= 1 and all(1.5 <= p <= 2.7 for p in live_periods),
        "live: heartbeat every %s s (expect 2.0)" % fmt(live_periods),
    )
    check(
        len(stale_on) >= rounds and all(0.7 <= p <= 1.4 for p in stale_on),
        "stale: LED on for %s s (expect 1.0)" % fmt(stale_on),
    )
    check(
        len(stale_off) >= rounds and all(0.6 <= p <= 1.4 for p in stale_off),
        "stale: LED off for %s s (expect 1.0)" % fmt(stale_off),
    )
    check(
        len(blind_led) >= rounds and all(0.15 <= p <= 0.6 for p in blind_led),
        "blind: fast blink, LED on for %s s (expect 0.3)" % fmt(blind_led),
    )
    # The buzzer only ever sounds for the self-test and in the blind windows.
    windows = [(t0 - 1.0, t0 + 2.5)]
    for d in downs:
        u = next((x for x in ups if x > d), end + 10)
        windows.append((d + 1.0, u + 0.6))
    stray = [t for t in edges(ss, 2, start, end, rising_only=True) if not any(a <= t <= b for a, b in windows)]
    check(not stray, "buzzer never sounded outside self-test and blind windows (stray at %s)" % fmt([t - t0 for t in stray]))


def phase_b(ss, jr, marks):
    hang = [t for t, _, m in jr if "[FAULT] event=engine_hang" in m]
    wd = [t for t, _, m in jr if "Watchdog timeout" in m]
    stalled = [t for t, _, m in jr if "[WATCHDOG] event=engine_stalled" in m]
    check(bool(ss), "phase B: line samples recorded (%d changes)" % len(ss))
    check(bool(hang), "phase B: the engine loop stalled ([FAULT] event=engine_hang)")
    check(bool(stalled), "phase B: the notifier saw the stall and withheld WATCHDOG=1 ([WATCHDOG] event=engine_stalled)")
    check(bool(wd), "phase B: systemd's watchdog fired (\"Watchdog timeout\" in the journal)")
    check("B-restarted" in marks, "phase B: systemd restarted the service (%s)" % marks.get("B-restarted", "no restart seen"))
    if not (ss and hang and wd):
        return
    h = hang[0]
    w = next((x for x in wd if x > h), None)
    if not check(w is not None, "phase B: watchdog after the hang"):
        return
    before = edges(ss, 1, h - 3.5, h)
    frozen = edges(ss, 1, h + 0.6, w - 0.1)
    restart_ready = [t for t, _, m in jr if "[SYSTEMD] event=ready" in m and t > w]
    r = restart_ready[0] if restart_ready else w + 2.0
    after = edges(ss, 1, r, ss[-1][0] + 0.01)
    check(len(before) >= 2, "phase B: LED blinking before the hang (%d changes in the 3.5 s before)" % len(before))
    check(
        not frozen and w - h >= 3.0,
        "phase B: heartbeat stopped: no LED change from the hang until the watchdog kill, %.1f s later (changes: %s)"
        % (w - h, fmt([t - h for t in frozen])),
    )
    check(w - h <= 20.0, "phase B: the watchdog fired %.1f s after the hang (WatchdogSec=10s, keep-alives every 2.5 s)" % (w - h))
    check(len(after) >= 2, "phase B: LED blinking again after the restart (%d changes)" % len(after))
    REPORT.append("      hang at %.1f s, watchdog kill %.1f s after the hang" % (h - ss[0][0], w - h))


def phase_c(ss, jr, marks):
    unplug = re.search(r"^(\d+\.\d+) chip=(\S+)", marks.get("C-unplug", ""))
    replug = re.search(r"^(\d+\.\d+) chip=(\S+)", marks.get("C-replug", ""))
    if not check(bool(unplug and replug), "phase C: the chip was unplugged and plugged back"):
        return
    tu, tr = float(unplug.group(1)), float(replug.group(1))
    failed = [t for t, _, m in jr if "[INDICATOR] event=line_failed" in m and t >= tu]
    restored = [t for t, _, m in jr if "[INDICATOR] event=line_restored" in m and t >= tr]
    st = dict(kv.split("=", 1) for kv in marks.get("C-status", "").split() if "=" in kv)
    me = "tickguard[%s]" % st.get("pid")
    stalls = [m for _, who, m in jr if who == me and "[WATCHDOG] event=engine_stalled" in m]
    check(
        bool(failed),
        "phase C: the failed line was logged ([INDICATOR] event=line_failed %s s after the unplug)"
        % fmt([t - tu for t in failed[:1]]),
    )
    check(
        st.get("pid") == st.get("pid_before")
        and st.get("nrestarts") == st.get("nrestarts_before")
        and st.get("active") == "active"
        and not stalls,
        "phase C: the protection kept running through it (same process, no restart, no stall: %s)"
        % marks.get("C-status", ""),
    )
    check(
        bool(restored),
        "phase C: the lines were found again by label on %s (was %s), %s s after the replug"
        % (replug.group(2), unplug.group(2), fmt([t - tr for t in restored[:1]])),
    )
    if restored and ss:
        after = edges(ss, 1, restored[0], ss[-1][0] + 0.01)
        check(len(after) >= 2, "phase C: LED blinking on the new chip (%d changes)" % len(after))


def kv(text):
    return dict(x.split("=", 1) for x in text.split() if "=" in x)


def phase_d(jr, marks):
    """The idle-connection flood under the unit's TasksMax and MemoryMax."""
    lim, fl, pk, st = (kv(marks.get(k, "")) for k in ("D-limits", "D-flood", "D-peak", "D-status"))
    if not check(bool(fl) and bool(pk) and bool(st), "phase D: the flood ran (%s)" % (marks.get("D-flood") or "no result")):
        return
    tasks_max, mem_max = lim.get("tasks_max", ""), lim.get("memory_max", "")
    if not check(
        tasks_max.isdigit() and mem_max.isdigit(),
        "phase D: the shipped unit limits tasks and memory (TasksMax=%s, MemoryMax=%s)" % (tasks_max, mem_max),
    ):
        return
    tmax, mmax = int(tasks_max), int(mem_max)
    check(
        int(fl.get("attempted", 0)) == 1300 and int(fl.get("up", 0)) > 0,
        "phase D: %s connections attempted (1000 over 8 addresses, 300 from one), %s up, %s still open after the hold"
        % (fl.get("attempted"), fl.get("up"), fl.get("open_at_end")),
    )
    th, tasks = int(pk.get("threads", 0)), int(pk.get("tasks", 0))
    check(0 < th < tmax and tasks < tmax, "phase D: peak threads %d, cgroup tasks %d < TasksMax=%d" % (th, tasks, tmax))
    rss, hwm, cur = int(pk.get("rss_kb", 0)) * 1024, int(pk.get("hwm_kb", 0)) * 1024, int(pk.get("memory_current", 0))
    check(
        0 < rss < mmax and hwm < mmax and cur < mmax,
        "phase D: peak VmRSS %.1f MiB, VmHWM %.1f MiB, cgroup memory.current %.1f MiB < MemoryMax=%.0f MiB (memory.peak %s)"
        % (rss / 2**20, hwm / 2**20, cur / 2**20, mmax / 2**20, pk.get("memory_peak", "-")),
    )
    me = "tickguard[%s]" % st.get("pid")
    stalls = [m for _, who, m in jr if who == me and "[WATCHDOG] event=engine_stalled" in m]
    check(
        st.get("pid") == st.get("pid_before")
        and st.get("nrestarts") == st.get("nrestarts_before")
        and st.get("active") == "active"
        and not stalls,
        "phase D: nothing restarted (same MainPID, NRestarts unchanged, active, no stall: %s)" % marks.get("D-status", ""),
    )
    probes, ok = int(fl.get("probes", 0)), int(fl.get("probes_200", 0))
    check(
        probes > 0 and ok == probes,
        "phase D: the right token was answered 200 throughout the flood (%d of %d, slowest %s ms under emulation)"
        % (ok, probes, fl.get("probe_max_ms")),
    )


def main():
    path = sys.argv[1]
    blocks, counts, marks, result = parse(path)
    check(result is not None and result.startswith("ok"), "guest result marker: %s" % (result or "missing"))
    for tag, n in counts.items():
        got = len(blocks.get(tag, []))
        check(got == n, "block %s: %d of %d lines arrived intact" % (tag, got, n))
    (a, gaps_a), (b, gaps_b) = samples(blocks.get("A", [])), samples(blocks.get("B", []))
    ja, jb = journal(blocks.get("J-A", [])), journal(blocks.get("J-B", []))
    identity(marks)
    GAPS[:] = gaps_a
    phase_a(a, ja)
    GAPS[:] = gaps_b
    phase_b(b, jb, marks)
    c, gaps_c = samples(blocks.get("C", []))
    GAPS[:] = gaps_c
    phase_c(c, journal(blocks.get("J-C", [])), marks)
    phase_d(journal(blocks.get("J-D", [])), marks)
    for name, gaps in (("A", gaps_a), ("B", gaps_b)):
        longest = max((g1 - g0 for g0, g1 in gaps), default=0.0)
        REPORT.append("      phase %s: %d sampler blind spots over 100 ms, longest %.2f s" % (name, len(gaps), longest))
    rss = re.search(r"rss_kb=(\d+)", marks.get("A-rss", ""))
    if rss:
        REPORT.append("      RSS 60 s into the demo: %s KiB (%s)" % (rss.group(1), marks.get("A-rss")))
    threads = re.search(r"threads=(\d+)", marks.get("A-rss", ""))
    tasks_max = kv(marks.get("D-limits", "")).get("tasks_max", "")
    if threads and tasks_max.isdigit():
        check(
            int(threads.group(1)) <= int(tasks_max) // 2,
            "threads 60 s into the demo: %s, within half of TasksMax=%s" % (threads.group(1), tasks_max),
        )
    text = "\n".join(REPORT) + "\n" + ("board test: PASS" if not FAILURES else "board test: FAIL (%d)" % len(FAILURES)) + "\n"
    sys.stdout.write(text)
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            f.write(text)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
