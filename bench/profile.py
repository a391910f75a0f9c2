#!/usr/bin/env python3
"""Where one static-IPv4 macvlan attach spends its time, measured:

1. floors: the wall time of /bin/true and of `netattach --version` spawned
   from here (process start and exit, nothing else);
2. phases: `netattach attach` with NETATTACH_TRACE=1, the median time of each
   phase over N runs (src/timing.rs marks them);
3. CPU: `perf stat` of the same attaches (task-clock against wall time: the
   rest is waiting, for the disk or the kernel);
4. profile: `perf record` of the same attaches, split by binary (kernel,
   netattach, libc) and the top symbols.

The binary is the static release build with debug info and symbols
(`--profile profiling`, see Cargo.toml), so that perf can name functions.
Everything runs in namespaces this script makes (see bench/attach.py), one
fresh container netns per attach. Run as root; needs linux-perf.

  bench/profile.py [--runs N] [--binary PATH]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

import attach as bench  # bench/attach.py: the fake LAN and spawn helpers

REPO = bench.REPO


def build():
    triple = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    triple = re.search(r"^host: (\S+)", triple, re.M).group(1)
    env = dict(os.environ, RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static")  # as scripts/build.sh
    subprocess.run(["cargo", "build", "--quiet", "--profile", "profiling", "--target", triple, "--bin", "netattach"],
                   cwd=REPO, env=env, check=True)
    return f"{REPO}/target/{triple}/profiling/netattach"


def attach_args(binary, i):
    ns = f"{bench.PREFIX}-p{i}"
    return ns, [binary, "attach", "--netns", f"/run/netns/{ns}", "--id", ns, "--ip", f"192.168.32.{10 + i % 240}", "lan"]


def fresh_namespaces(first, n):
    for i in range(first, first + n):
        bench.sh("ip", "netns", "add", f"{bench.PREFIX}-p{i}")


def drop_namespaces():
    for name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
        if name.startswith(f"{bench.PREFIX}-p"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def detach_all(binary, env, first, n):
    for i in range(first, first + n):
        subprocess.run([binary, "detach", "--id", f"{bench.PREFIX}-p{i}"], env=env, capture_output=True, check=True)


def floors(binary, runs):
    out = {}
    for name, args in (("/bin/true", ["/bin/true"]), ("netattach --version", [binary, "--version"])):
        out[name] = statistics.median(bench.timed(args) for _ in range(runs))
    return out


def phases(binary, env, runs):
    """Median duration of each traced phase, and the median wall time."""
    fresh_namespaces(0, runs)
    per_phase, walls = {}, []
    trace_env = dict(env, NETATTACH_TRACE="1")
    for i in range(runs):
        _, args = attach_args(binary, i)
        start = bench.time.perf_counter_ns()
        r = subprocess.run(args, env=trace_env, capture_output=True, text=True, check=True)
        walls.append((bench.time.perf_counter_ns() - start) / 1e6)
        last = 0.0
        for line in r.stderr.splitlines():
            m = re.match(r"netattach trace:\s+([\d.]+) ms  (.*)", line)
            if m:
                at = float(m.group(1))
                per_phase.setdefault(m.group(2), []).append(at - last)
                last = at
    detach_all(binary, env, 0, runs)
    drop_namespaces()
    return {k: statistics.median(v) for k, v in per_phase.items()}, statistics.median(walls)


def perf_stat(binary, env, runs):
    fresh_namespaces(1000, runs)
    task, wall = [], []
    for i in range(1000, 1000 + runs):
        _, args = attach_args(binary, i)
        r = subprocess.run(["perf", "stat", "-x,", "-e", "task-clock,duration_time", *args], env=env,
                           capture_output=True, text=True, check=True)
        for line in r.stderr.splitlines():
            value, _, event = line.split(",")[:3]
            if event.startswith("task-clock"):
                task.append(float(value))  # msec
            elif event.startswith("duration_time"):
                wall.append(float(value) / 1e6)  # ns
    detach_all(binary, env, 1000, runs)
    drop_namespaces()
    return statistics.median(task), statistics.median(wall)


def perf_record(binary, env, runs, work):
    fresh_namespaces(2000, runs)
    script = "\n".join(" ".join(attach_args(binary, i)[1]) + " >/dev/null" for i in range(2000, 2000 + runs))
    data = f"{work}/perf.data"
    subprocess.run(["perf", "record", "-q", "-F", "20000", "-o", data, "--", "sh", "-c", script], env=env,
                   capture_output=True, check=True)
    detach_all(binary, env, 2000, runs)
    drop_namespaces()
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "-q", "-g", "none",
                          "--sort", "comm,dso,sym"], capture_output=True, text=True, check=True).stdout
    rows = []  # (percent of all samples, dso, symbol) of the netattach processes only
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+netattach\s+(\S+)\s+\[.\]\s+(.*)", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3).strip()))
    total = sum(r[0] for r in rows)
    return [(pct / total * 100, dso, sym) for pct, dso, sym in rows]


# glibc's start-up code that asks the CPU for its features and cache sizes
# (cpuid, which traps to the hypervisor on a virtual machine).
CPU_PROBING = re.compile(r"intel_check_word|handle_intel|get_common_|get_extended_indices|update_active|init_cpu_features")


def categories(rows):
    """Shares of the netattach process's samples: kernel, glibc's CPU probing
    at start, SQLite, the rest of the binary."""
    shares = {"kernel (syscalls, netlink, page faults, exec)": 0.0, "C library start-up: CPU feature probing": 0.0,
              "SQLite": 0.0, "everything else in netattach": 0.0}
    keys = list(shares)
    for pct, dso, sym in rows:
        if dso.startswith("[kernel"):
            shares[keys[0]] += pct
        elif CPU_PROBING.search(sym):
            shares[keys[1]] += pct
        elif sym.startswith("sqlite3"):
            shares[keys[2]] += pct
        else:
            shares[keys[3]] += pct
    return shares


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--binary", help="netattach built with symbols (default: build --profile profiling)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the profile creates network namespaces")
    binary = os.path.abspath(args.binary or build())
    work = tempfile.mkdtemp(prefix="nabench-")
    env = dict(os.environ, NETATTACH_CONFIG_DIR=f"{work}/config", NETATTACH_STATE_DIR=f"{work}/state")
    try:
        bench.fake_lan()
        bench.enter_host_ns()
        bench.sh(binary, "network", "create", "-d", "macvlan", "--subnet", "192.168.32.0/24", "--gateway",
                 "192.168.32.254", "-o", "parent=lan0", "lan", env=env)
        base = floors(binary, args.runs)
        steps, wall = phases(binary, env, args.runs)
        task, perf_wall = perf_stat(binary, env, args.runs)
        rows = perf_record(binary, env, args.runs, work)
    finally:
        drop_namespaces()
        bench.cleanup(work)

    print(f"## Where an attach goes ({args.runs} runs, medians, ms)\n")
    print("| what | ms |\n|---|---|")
    for name, ms in base.items():
        print(f"| spawn + exit of `{name}` | {ms:.2f} |")
    print(f"| `netattach attach`, whole process | {wall:.2f} |")
    print("\nPhases inside `main` (NETATTACH_TRACE=1; each row is the time since the previous mark):\n")
    print("| phase | ms |\n|---|---|")
    for name, ms in steps.items():
        print(f"| {name} | {ms:.3f} |")
    print(f"\nperf stat: task-clock {task:.2f} ms of {perf_wall:.2f} ms wall "
          f"({task / perf_wall:.0%} on a CPU, the rest waiting)\n")
    print("perf record, shares of the netattach process's samples:\n")
    print("| where | share |\n|---|---|")
    for name, pct in categories(rows).items():
        print(f"| {name} | {pct:.0f}% |")
    print("\ntop symbols:\n")
    print("```")
    for pct, dso, sym in rows[:25]:
        print(f"{pct:6.2f}%  {dso:20} {sym}")
    print("```")

if __name__ == "__main__":
    main()
