#!/usr/bin/env python3
"""IPAM benchmark: netattach's pooled lease store against the CNI host-local plugin.

One operation is "allocate one address, then release it", each half its own
process, as a container start/stop does it:

  netattach   `lease reserve --owner ID NET`   then `lease release --owner ID`
  host-local  `CNI_COMMAND=ADD host-local`      then `CNI_COMMAND=DEL host-local`

measured at 0 %, 50 % and 95 % fill of a /16 (65 533 allocatable addresses: the
subnet's hosts minus the gateway), N operations per tool and level, the tools
interleaved (alternating which goes first).

Fill, the same for both tools: allocate every address sequentially through each
tool's own allocator order (.0.1 upwards, skipping the gateway), then release
one seeded random subset down to 95 %, measure, release a further random subset
down to 50 %, measure. The lease sets of the two tools are checked to be equal,
and each tool's cursor is where its own allocation left it (the last address
handed out), so the two pick the same addresses in every measured operation
(checked too). netattach is filled only through its CLI (parallel processes);
host-local is filled by writing its on-disk store directly (one file per address
holding "ID\\r\\nIFNAME", plus last_reserved_ip.0), which the script checks first
is byte-for-byte what the plugin itself writes. 0 % is a fresh store.

Worst case for netattach's allocator (it walks the lease index from the range's
cursor to the first gap): the first 95 % of the range taken contiguously and the
cursor at the range's end, so the next allocation wraps and walks every lease.
That state is produced through the CLI once (fill to 100 %, release the top 5 %)
and the database file restored from a copy before each sample.

Results: a markdown table on stdout and JSON (default bench/results/ipam.json;
--smoke writes none unless --out is given). Only stdlib; run as root or as any
user who can write the temporary directory. No network, no netns: host-local
needs CNI_NETNS set for ADD but never opens it (IPAM only), so a path that does
not exist is passed.
"""

import argparse
import hashlib
import ipaddress
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HOST_LOCAL = "/usr/lib/cni/host-local"
NET = "big"
IFNAME = "eth0"

FULL = dict(subnet="10.20.0.0/16", gateway="10.20.255.254", ops=200, worst=20)
SMOKE = dict(subnet="10.20.0.0/24", gateway="10.20.0.254", ops=5, worst=3)
LEVELS = (0.0, 0.50, 0.95)


def log(msg):
    print(f"[ipam-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg):
    log("ERROR: " + msg)
    sys.exit(1)


def cid(tag, i):
    """A container id as runtimes make them: 64 hex digits."""
    return hashlib.sha256(f"{tag}-{i}".encode()).hexdigest()


def pct(values, p):
    """Percentile with linear interpolation between closest ranks."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary(values):
    return {
        "n": len(values),
        "median_ms": round(pct(values, 50), 3),
        "p90_ms": round(pct(values, 90), 3),
        "p99_ms": round(pct(values, 99), 3),
        "min_ms": round(min(values), 3),
        "max_ms": round(max(values), 3),
    }


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def pressure():
    """Share of the last 60 s some task waited for CPU / IO (PSI), in %: how busy the box was."""
    out = {}
    for r in ("cpu", "io"):
        try:
            with open(f"/proc/pressure/{r}") as f:
                out[r] = float(f.readline().split()[2].split("=")[1])
        except (OSError, IndexError, ValueError):
            pass
    return out


def run(argv, input=None, env=None, what=None):
    p = subprocess.run(argv, input=input, env=env, capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(
            f"{what or argv[0]} failed (rc {p.returncode}): "
            f"{p.stderr.decode(errors='replace').strip()} {p.stdout.decode(errors='replace').strip()}"
        )
    return p.stdout


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# CPU time (user + sys) of the last timed() child, in ms. Exact only while no
# other child runs, which holds for the single-threaded measurement loops.
last_cpu_ms = [0.0]


def timed(argv, input=None, env=None, what=None):
    c0 = children_cpu()
    t0 = time.perf_counter_ns()
    out = run(argv, input=input, env=env, what=what)
    ms = (time.perf_counter_ns() - t0) / 1e6
    last_cpu_ms[0] = (children_cpu() - c0) * 1e3
    return ms, out


class Pool:
    """The allocatable addresses of the subnet, in allocator order."""

    def __init__(self, subnet, gateway):
        self.subnet = ipaddress.ip_network(subnet)
        self.gateway = ipaddress.ip_address(gateway)
        self.addrs = [str(a) for a in self.subnet.hosts() if a != self.gateway]
        self.size = len(self.addrs)
        self.last = self.addrs[-1]

    def count(self, fill):
        return int(fill * self.size + 0.5)


class Netattach:
    def __init__(self, binary, cfg, state):
        self.bin, self.cfg, self.state = binary, cfg, state

    def argv(self, *args):
        return [self.bin, "--config-dir", self.cfg, "--state-dir", self.state, *args]

    def alloc(self, owner):
        ms, out = timed(self.argv("lease", "reserve", "--owner", owner, NET), what="netattach lease reserve")
        return ms, out.decode().split()[0].split("/")[0]

    def release(self, owner):
        ms, _ = timed(self.argv("lease", "release", "--owner", owner), what="netattach lease release")
        return ms

    def leases(self):
        out = run(self.argv("lease", "ls", NET, "--json"), what="netattach lease ls")
        return {l["address"]: l["owner"] for l in json.loads(out)}


class HostLocal:
    def __init__(self, pool, data_dir, netns):
        self.data_dir = data_dir
        self.dir = os.path.join(data_dir, NET)
        self.conf = json.dumps({
            "cniVersion": "0.4.0",
            "name": NET,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(pool.subnet), "gateway": str(pool.gateway)}]],
                "dataDir": data_dir,
            },
        }).encode()
        self.base_env = dict(os.environ, CNI_NETNS=netns, CNI_IFNAME=IFNAME, CNI_PATH=os.path.dirname(HOST_LOCAL))

    def _env(self, command, container):
        return dict(self.base_env, CNI_COMMAND=command, CNI_CONTAINERID=container)

    def alloc(self, container):
        ms, out = timed([HOST_LOCAL], input=self.conf, env=self._env("ADD", container), what="host-local ADD")
        return ms, json.loads(out)["ips"][0]["address"].split("/")[0]

    def release(self, container):
        ms, _ = timed([HOST_LOCAL], input=self.conf, env=self._env("DEL", container), what="host-local DEL")
        return ms

    # The plugin's on-disk store (backend/disk): one file per address named after
    # it, holding "<container id>\r\n<ifname>"; last_reserved_ip.<range index>
    # holding the last address handed out; an empty lock file.
    def write_leases(self, owners_by_addr, last):
        os.makedirs(self.dir, exist_ok=True)
        lock = os.path.join(self.dir, "lock")
        open(lock, "a").close()
        os.chmod(lock, 0o750)  # as the plugin creates it
        for addr, owner in owners_by_addr.items():
            with open(os.path.join(self.dir, addr), "x") as f:
                f.write(owner + "\r\n" + IFNAME)
        self.set_cursor(last)

    def set_cursor(self, addr):
        with open(os.path.join(self.dir, "last_reserved_ip.0"), "w") as f:
            f.write(addr)

    def remove(self, addrs):
        for a in addrs:
            os.unlink(os.path.join(self.dir, a))

    def leases(self):
        return {n for n in os.listdir(self.dir) if n not in ("lock",) and not n.startswith("last_reserved_ip.")}


KINDS = ("alloc", "release", "op", "alloc_cpu", "release_cpu", "op_cpu")


def one_op(tool, owner, rec):
    """Allocates then releases; records wall and CPU ms into rec (unless None); returns the address."""
    a_ms, addr = tool.alloc(owner)
    a_cpu = last_cpu_ms[0]
    r_ms = tool.release(owner)
    r_cpu = last_cpu_ms[0]
    if rec is not None:
        for k, v in (("alloc", a_ms), ("release", r_ms), ("op", a_ms + r_ms),
                     ("alloc_cpu", a_cpu), ("release_cpu", r_cpu), ("op_cpu", a_cpu + r_cpu)):
            rec[k].append(v)
    return addr


def snapshot_dir(d):
    """name -> (mode, content) of every file."""
    return {n: (oct(os.stat(os.path.join(d, n)).st_mode), open(os.path.join(d, n), "rb").read())
            for n in sorted(os.listdir(d))}


def check_host_local_format(tmp, netns):
    """Files written by write_leases == files the plugin writes for the same ADDs."""
    pool = Pool("10.99.0.0/24", "10.99.0.254")
    by_plugin = HostLocal(pool, os.path.join(tmp, "hl-format-plugin"), netns)
    by_us = HostLocal(pool, os.path.join(tmp, "hl-format-direct"), netns)
    owners = {}
    for i in range(12):
        _, addr = by_plugin.alloc(cid("fmt", i))
        owners[addr] = cid("fmt", i)
    if list(owners) != pool.addrs[:12]:
        die(f"host-local did not allocate sequentially from the start: {list(owners)}")
    by_us.write_leases(owners, pool.addrs[11])
    a, b = snapshot_dir(by_plugin.dir), snapshot_dir(by_us.dir)
    if a != b:
        die(f"direct host-local fill differs from the plugin's own files:\n plugin {a}\n direct {b}")
    # And the plugin reads it back: the next ADD continues after the cursor, DEL frees by id.
    _, nxt = by_us.alloc("probe")
    by_us.release("probe")
    if nxt != pool.addrs[12]:
        die(f"host-local on a directly written store handed out {nxt}, expected {pool.addrs[12]}")
    log(f"host-local on-disk format checked: direct writes == plugin's files ({len(a)} files)")


class Bench:
    def __init__(self, args, params):
        self.args = args
        self.p = params
        self.pool = Pool(params["subnet"], params["gateway"])
        self.tmp = tempfile.mkdtemp(prefix="netattach-ipam-bench.", dir=args.tmp)
        self.netns = os.path.join(self.tmp, "no-such-netns")  # never opened by host-local
        self.bin = os.path.join(self.tmp, "netattach")
        shutil.copy2(args.netattach, self.bin)  # immune to rebuilds while we run
        self.cfg = os.path.join(self.tmp, "networks.d")
        run([self.bin, "--config-dir", self.cfg, "--state-dir", os.path.join(self.tmp, "state-init"),
             "network", "create", "-d", "macvlan", "--subnet", params["subnet"],
             "--gateway", params["gateway"], "-o", "parent=lan0", NET], what="netattach network create")
        self.rng = random.Random(args.seed)
        self.results = {"levels": [], "fill": {}, "worst_case": {}}

    def na(self, name):
        return Netattach(self.bin, self.cfg, os.path.join(self.tmp, "state-" + name))

    def hl(self, name):
        return HostLocal(self.pool, os.path.join(self.tmp, "hl-" + name), self.netns)

    # ---- parallel CLI work with progress ------------------------------------

    def parallel(self, label, jobs):
        """Runs argv lists over --workers threads (one process each); returns seconds."""
        total = len(jobs)
        if total == 0:
            return 0.0
        lock = threading.Lock()
        state = {"next": 0, "done": 0, "err": None}

        def worker():
            while True:
                with lock:
                    if state["err"] or state["next"] >= total:
                        return
                    i = state["next"]
                    state["next"] += 1
                try:
                    run(jobs[i], what=label)
                except Exception as e:  # noqa: BLE001
                    with lock:
                        state["err"] = e
                    return
                with lock:
                    state["done"] += 1

        t0 = time.monotonic()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.args.workers)]
        for t in threads:
            t.start()
        last = t0
        while any(t.is_alive() for t in threads):
            time.sleep(0.2)
            now = time.monotonic()
            if now - last >= self.args.progress:
                last = now
                done = state["done"]
                rate = done / (now - t0)
                eta = (total - done) / rate if rate else float("inf")
                log(f"  {label}: {done}/{total} ({rate:.0f}/s, ~{eta:.0f} s left, load {loadavg()})")
        if state["err"]:
            die(str(state["err"]))
        took = time.monotonic() - t0
        log(f"  {label}: {total} in {took:.1f} s ({total / took:.0f}/s, {took / total * 1e3:.2f} ms each"
            f" with {self.args.workers} workers)")
        return took

    # ---- measurement ---------------------------------------------------------

    def measure(self, tag, na, hl, n, warmup):
        rec = {t: {k: [] for k in KINDS} for t in ("netattach", "host-local")}
        mismatches = []
        tools = {"netattach": na, "host-local": hl}
        for i in range(-warmup, n):
            owner = cid(f"op-{tag}", i)
            order = ("netattach", "host-local") if i % 2 == 0 else ("host-local", "netattach")
            got = {}
            for t in order:
                got[t] = one_op(tools[t], owner, rec[t] if i >= 0 else None)
            if got["netattach"] != got["host-local"]:
                mismatches.append((i, got["netattach"], got["host-local"]))
            if i >= 0 and n >= 20 and (i + 1) % max(1, n // 4) == 0:
                log(f"  {tag}: {i + 1}/{n} ops (load {loadavg()})")
        return rec, mismatches

    def verify_same(self, na, hl, expect):
        na_set = set(na.leases())
        hl_set = hl.leases()
        if na_set != expect or hl_set != expect:
            die(f"lease sets differ: netattach {len(na_set)}, host-local {len(hl_set)}, expected {len(expect)}; "
                f"netattach-only {sorted(na_set - expect)[:5]} host-local-only {sorted(hl_set - expect)[:5]}")

    def level(self, fill, na, hl, fill_info):
        n = self.p["ops"]
        count = len(na.leases())
        log(f"measuring {fill:.0%} fill ({count} leases): {n} ops per tool, interleaved")
        load0 = loadavg()
        pressure0 = pressure()
        t0 = time.monotonic()
        rec, mism = self.measure(f"{int(fill * 100)}", na, hl, n, self.args.warmup)
        entry = {
            "fill": fill,
            "leases": count,
            "ops": n,
            "seconds": round(time.monotonic() - t0, 1),
            "pressure_before_pct_60s": pressure0,
            "loadavg_before": load0,
            "loadavg_after": loadavg(),
            "pressure_after_pct_60s": pressure(),
            "same_address_picked": not mism,
            "address_mismatches": mism[:10],
            **fill_info,
        }
        for t, r in rec.items():
            entry[t] = {k: summary(v) for k, v in r.items()}
        entry["ratio_host_local_over_netattach_median"] = round(
            entry["host-local"]["op"]["median_ms"] / entry["netattach"]["op"]["median_ms"], 2)
        if mism:
            log(f"  note: the tools picked different addresses in {len(mism)} ops, e.g. {mism[:3]}")
        self.results["levels"].append(entry)

    # ---- phases ----------------------------------------------------------------

    def baseline(self):
        ms, cpu = [], []
        for _ in range(max(20, self.p["ops"])):
            ms.append(timed(["/bin/true"])[0])
            cpu.append(last_cpu_ms[0])
        self.results["baseline_spawn_true"] = summary(ms)
        self.results["baseline_spawn_true_cpu"] = summary(cpu)
        log(f"process spawn floor (/bin/true): median {pct(ms, 50):.2f} ms")

    def run(self):
        pool = self.pool
        check_host_local_format(self.tmp, self.netns)
        self.baseline()

        levels = self.args.levels
        # 0 %: fresh stores.
        if 0.0 in levels:
            self.level(0.0, self.na("empty"), self.hl("empty"), {})
        if not any(f > 0 for f in levels) and not self.p["worst"]:
            return

        # Fill both to 100 % in allocator order.
        na, hl = self.na("fill"), self.hl("fill")
        log(f"filling netattach to 100 % ({pool.size} leases) through `lease reserve`, {self.args.workers} workers")
        jobs = [na.argv("lease", "reserve", "--owner", cid("fill", i), NET) for i in range(pool.size)]
        fill_na = self.parallel("netattach reserve", jobs)
        owners = na.leases()
        if list(sorted(owners, key=ipaddress.ip_address)) != pool.addrs:
            die("netattach's 100 % fill is not exactly the allocatable addresses")
        t0 = time.monotonic()
        hl.write_leases({a: owners[a] for a in pool.addrs}, pool.last)
        fill_hl = time.monotonic() - t0
        log(f"  host-local: {pool.size} lease files written directly in {fill_hl:.1f} s")
        self.verify_same(na, hl, set(pool.addrs))
        snap100 = os.path.join(self.tmp, "snap-100")
        shutil.copytree(na.state, snap100)
        self.results["fill"]["to_100"] = {
            "leases": pool.size, "netattach_cli_seconds": round(fill_na, 1),
            "netattach_ms_per_reserve": round(fill_na / pool.size * 1e3, 3),
            "host_local_direct_write_seconds": round(fill_hl, 1), "workers": self.args.workers}

        # Random release down to 95 %, then 50 %.
        remaining = list(pool.addrs)
        for fill in sorted((f for f in levels if f > 0), reverse=True):
            target = pool.count(fill)
            drop = set(self.rng.sample(remaining, len(remaining) - target))
            remaining = [a for a in remaining if a not in drop]
            log(f"releasing a random {len(drop)} leases to reach {fill:.0%} ({target})")
            jobs = [na.argv("lease", "release", "--owner", owners[a]) for a in sorted(drop)]
            rel_na = self.parallel("netattach release", jobs)
            t0 = time.monotonic()
            hl.remove(drop)
            rel_hl = time.monotonic() - t0
            self.verify_same(na, hl, set(remaining))
            info = {"released_to_reach": len(drop), "netattach_release_cli_seconds": round(rel_na, 1),
                    "host_local_unlink_seconds": round(rel_hl, 2)}
            self.results["fill"][f"to_{int(fill * 100)}"] = info
            self.level(fill, na, hl, {"fill_step": info})

        if self.p["worst"]:
            self.worst_case(snap100, owners)
        self.results["levels"].sort(key=lambda e: e["fill"])

    def worst_case(self, snap100, owners):
        """95 % taken contiguously from the range start, the cursor at the range end."""
        pool = self.pool
        keep = pool.count(0.95)
        top = pool.addrs[keep:]
        na, hl = self.na("worst"), self.hl("worst")
        shutil.copytree(snap100, na.state)
        log(f"worst case: releasing the top {len(top)} addresses (contiguous), cursor stays at {pool.last}")
        self.parallel("netattach release", [na.argv("lease", "release", "--owner", owners[a]) for a in top])
        hl.write_leases({a: owners[a] for a in pool.addrs[:keep]}, pool.last)
        self.verify_same(na, hl, set(pool.addrs[:keep]))
        snap = os.path.join(self.tmp, "snap-worst")
        shutil.copytree(na.state, snap)
        rec = {t: {k: [] for k in KINDS} for t in ("netattach", "host-local")}
        picked = set()
        for i in range(self.p["worst"]):
            # Restore the state the CLI produced; the copy is outside the timing.
            for name in os.listdir(snap):
                shutil.copyfile(os.path.join(snap, name), os.path.join(na.state, name))
            hl.set_cursor(pool.last)
            owner = cid("worst", i)
            order = (("netattach", na), ("host-local", hl)) if i % 2 == 0 else (("host-local", hl), ("netattach", na))
            for t, tool in order:
                picked.add(one_op(tool, owner, rec[t]))
        if picked != {top[0]}:
            log(f"  note: worst-case allocations picked {sorted(picked)}, expected only {top[0]}")
        w = {"leases": keep, "walked_rows": keep, "picked": sorted(picked), "samples": self.p["worst"]}
        for t, r in rec.items():
            w[t] = {k: summary(v) for k, v in r.items()}
        self.results["worst_case"] = w

    def close(self):
        if self.args.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def fmt(s):
    return f"{s['median_ms']:.2f} / {s['p90_ms']:.2f} / {s['p99_ms']:.2f}"


def table(res):
    lines = [
        f"IPAM alloc+release, {res['subnet']} ({res['pool_size']} allocatable), {res['ops']} ops per tool per level, "
        "each op = 2 processes; ms median / p90 / p99",
        "",
        "| fill | leases | netattach | host-local | host-local / netattach (median) |",
        "|-----:|-------:|----------:|-----------:|------:|",
    ]
    for e in res["levels"]:
        lines.append(f"| {e['fill']:.0%} | {e['leases']} | {fmt(e['netattach']['op'])} | {fmt(e['host-local']['op'])} "
                     f"| {e['ratio_host_local_over_netattach_median']:.2f}x |")
    lines += ["", "Split, medians in ms, alloc / release: wall, and CPU (user+sys of the processes, "
              "less sensitive to a busy machine):", "",
              "| fill | netattach wall | host-local wall | netattach CPU | host-local CPU | CPU ratio (op) |",
              "|-----:|------:|------:|------:|------:|------:|"]
    for e in res["levels"]:
        n, h = e["netattach"], e["host-local"]

        def ar(x, sfx=""):
            return f"{x['alloc' + sfx]['median_ms']:.2f} / {x['release' + sfx]['median_ms']:.2f}"
        ratio = h["op_cpu"]["median_ms"] / max(n["op_cpu"]["median_ms"], 1e-9)
        lines.append(f"| {e['fill']:.0%} | {ar(n)} | {ar(h)} | {ar(n, '_cpu')} | {ar(h, '_cpu')} | {ratio:.2f}x |")
    w = res.get("worst_case")
    if w:
        n, h = w["netattach"], w["host-local"]
        lines += ["", f"Worst case for netattach ({w['leases']} leases contiguous from the range start, cursor at the "
                  f"range end: the allocation walks {w['walked_rows']} index rows; {w['samples']} samples): "
                  f"netattach reserve {n['alloc']['median_ms']:.2f} ms median (max {n['alloc']['max_ms']:.2f}), "
                  f"alloc+release {fmt(n['op'])}; host-local in the same state: ADD {h['alloc']['median_ms']:.2f} ms, "
                  f"ADD+DEL {fmt(h['op'])}."]
    b = res.get("baseline_spawn_true")
    if b:
        lines.append(f"Process spawn floor (/bin/true from the harness): {b['median_ms']:.2f} ms median wall, "
                     f"{res['baseline_spawn_true_cpu']['median_ms']:.2f} ms CPU; an op is two spawns.")
    f = res.get("fill", {}).get("to_100")
    if f:
        extra = "; ".join(f"to {k[3:]} %: released {v['released_to_reach']} in {v['netattach_release_cli_seconds']} s"
                          for k, v in res["fill"].items() if k != "to_100")
        lines.append(f"Fill: netattach {f['leases']} x `lease reserve` in {f['netattach_cli_seconds']} s "
                     f"({f['workers']} workers, {f['netattach_ms_per_reserve']} ms each); {extra}; "
                     f"host-local written directly in {f['host_local_direct_write_seconds']} s.")
    return "\n".join(lines)


def goals(res):
    lv = res["levels"]
    def spread(tool, kind):
        v = [e[tool][kind]["median_ms"] for e in lv]
        return round(max(v) / min(v), 2)
    return {
        "netattach_median_max_over_min": spread("netattach", "op"),
        "host_local_median_max_over_min": spread("host-local", "op"),
        "netattach_cpu_median_max_over_min": spread("netattach", "op_cpu"),
        "host_local_cpu_median_max_over_min": spread("host-local", "op_cpu"),
        "netattach_faster_at_every_level": all(e["ratio_host_local_over_netattach_median"] > 1 for e in lv),
    }


def report(res):
    print(table(res))
    g = goals(res)
    print(f"\nGoals: netattach median max/min across levels {g['netattach_median_max_over_min']}x wall, "
          f"{g['netattach_cpu_median_max_over_min']}x CPU (host-local {g['host_local_median_max_over_min']}x, "
          f"{g['host_local_cpu_median_max_over_min']}x); faster than host-local (wall median) at every level: "
          f"{'yes' if g['netattach_faster_at_every_level'] else 'NO'}")


def git_info(repo):
    def g(*a):
        try:
            return subprocess.run(["git", "-C", repo, *a], capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""
    dirty = [l[3:] for l in g("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {"commit": g("rev-parse", "HEAD"), "dirty": bool(dirty), "dirty_files": dirty}


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="a /24, 5 ops per level, 3 worst-case samples (CI)")
    ap.add_argument("--netattach", default=os.path.join(repo, "target/release/netattach"))
    ap.add_argument("--subnet", help="IPv4 subnet of the pool (default 10.20.0.0/16, smoke 10.20.0.0/24)")
    ap.add_argument("--gateway", help="its gateway (default: the subnet's last host)")
    ap.add_argument("--ops", type=int, help="ops per tool per level (default 200, smoke 5)")
    ap.add_argument("--worst-samples", type=int, help="worst-case samples (default 20, smoke 3; 0: skip)")
    ap.add_argument("--levels", default=",".join(str(int(f * 100)) for f in LEVELS),
                    help="fill levels in %%, comma-separated (default 0,50,95)")
    ap.add_argument("--warmup", type=int, default=3, help="unrecorded ops per tool before each level")
    ap.add_argument("--workers", type=int, default=4, help="parallel processes while filling")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tmp", help="parent of the private temporary directory")
    ap.add_argument("--out", help="JSON results (default bench/results/ipam.json; none for --smoke)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--progress", type=float, default=10.0, help="seconds between progress lines")
    ap.add_argument("--report", metavar="JSON", help="only print the table of an earlier run's results")
    args = ap.parse_args()
    if args.report:
        with open(args.report) as f:
            report(json.load(f))
        return

    try:
        args.levels = sorted({int(x) / 100 for x in args.levels.split(",") if x.strip()})
    except ValueError:
        die("--levels takes whole percentages, e.g. 0,50,95")
    if any(not 0 <= f < 1 for f in args.levels):
        die("--levels must lie in 0..99")
    params = dict(SMOKE if args.smoke else FULL)
    if args.subnet:
        params["subnet"] = args.subnet
        params["gateway"] = args.gateway or str(list(ipaddress.ip_network(args.subnet).hosts())[-1])
    elif args.gateway:
        die("--gateway needs --subnet")
    if args.ops:
        params["ops"] = args.ops
    if args.worst_samples is not None:
        params["worst"] = args.worst_samples
    if not os.access(HOST_LOCAL, os.X_OK):
        die(f"{HOST_LOCAL} missing: apt-get install containernetworking-plugins")
    if not os.access(args.netattach, os.X_OK):
        die(f"{args.netattach} missing: cargo build --release")

    # What is measured: the binary as it is now (it is copied before anything runs).
    netattach_info = {**git_info(repo), "binary": os.path.abspath(args.netattach),
                      "binary_sha256": hashlib.sha256(open(args.netattach, "rb").read()).hexdigest()}
    bench = Bench(args, params)
    t0 = time.monotonic()
    try:
        bench.run()
    finally:
        bench.close()
    pkg = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins"],
                         capture_output=True, text=True).stdout.strip()
    res = {
        "benchmark": "ipam alloc+release, netattach vs CNI host-local",
        "mode": "smoke" if args.smoke else "full",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "netattach": netattach_info,
        "host_local": {"path": HOST_LOCAL, "package_version": pkg},
        "subnet": params["subnet"], "gateway": params["gateway"], "pool_size": bench.pool.size,
        "ops": params["ops"], "warmup_ops": args.warmup, "seed": args.seed,
        "method": {
            "op": "alloc then release, each its own process, wall time from the harness (includes spawn)",
            "netattach": "lease reserve --owner ID big; lease release --owner ID",
            "host-local": "CNI_COMMAND=ADD / DEL, cniVersion 0.4.0, CNI_NETNS set to a path that does not exist",
            "fill": "sequential in allocator order to 100 %, then seeded random release to 95 %, measure, to 50 %, measure",
            "netattach_fill": "through the CLI only",
            "host_local_fill": "lease files written directly, format checked against the plugin's own",
        },
        **bench.results,
        "total_seconds": round(time.monotonic() - t0, 1),
    }
    res["goals"] = goals(res)
    out = args.out or (None if args.smoke else os.path.join(repo, "bench/results/ipam.json"))
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
        log(f"wrote {out}")
    report(res)


if __name__ == "__main__":
    main()
