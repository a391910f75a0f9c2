#!/usr/bin/env python3
"""Shared networks on a real etcd: attach latency by path, and throughput.

Latency (`netattach hook attach|release`, the OCI state on stdin, each attach
into a fresh netns; one interleaved run, the order rotating every round):

  local          pooled IPv4 on a network of this host alone (the baseline)
  shared-hit     pooled IPv4 on a shared network whose block has room: the
                 common path, no etcd call (a heartbeat at most every 30 s)
  shared-claim   the first attach of a host that joined and holds no block:
                 it claims one (a range read, one transaction, a FULL-sync
                 local record); a new host (state dir, joined beforehand,
                 untimed) per run
  shared-borrow  an attach on a host whose block is full while no block is
                 free: it borrows one address of a block another host lent
                 (two range reads, one transaction); its release deletes the
                 address key in etcd

Throughput: N attaches (`netattach attach`, 16 at once per host, each into a
fresh netns made beforehand), for a network of each host alone and for a
shared one: on one host and on three hosts at once sharing the machine's
CPUs (what etcd and the protocol cost), then on one host pinned to one CPU
and on one host per CPU, each pinned to its own (as close to hosts on
machines of their own as one machine gets: etcd is not pinned).

etcd (Debian's etcd-server) runs in the benchmark's host netns on 127.0.0.1
with its data dir in the benchmark's temporary directory; everything else as
bench/attach.py (fake LAN in `nabench-*` namespaces, removed at the end).
Run as root:

  bench/shared.py [--runs N] [--per-host N] [--smoke] [--binary PATH] [--json FILE]
"""

import argparse
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attach as base  # noqa: E402  (fake LAN, timing, tables)

PARALLEL = 16
ROWS = ("local", "shared-hit", "shared-claim", "shared-borrow")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    """etcd on 127.0.0.1 of the current netns, data under `work`."""

    def __init__(self, work):
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        if not os.path.exists(binary):
            sys.exit("etcd missing: run scripts/install-deps.sh (etcd-server)")
        client, peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        self.log = open(f"{work}/etcd.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "--name", "default", "--data-dir", f"{work}/etcd",
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
             "--initial-cluster", f"default={peer_url}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if b"true" in r.read():
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        sys.exit(f"etcd did not become healthy; see {work}/etcd.log")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Host:
    """One netattach host: its own config and state dirs and host id."""

    def __init__(self, work, binary, name, cpu=None):
        self.bin, self.name, self.cpu = binary, name, cpu
        self.env = dict(os.environ, NETATTACH_CONFIG_DIR=f"{work}/{name}/config",
                        NETATTACH_STATE_DIR=f"{work}/{name}/state")
        os.makedirs(f"{work}/{name}/config", exist_ok=True)
        self.work = work

    def run(self, *args, check=True):
        pin = None if self.cpu is None else (lambda: os.sched_setaffinity(0, {self.cpu}))
        r = subprocess.run([self.bin, *args], capture_output=True, env=self.env, preexec_fn=pin)
        if check and r.returncode != 0:
            sys.exit(f"{self.name}: netattach {' '.join(args)}: {(r.stderr or r.stdout).decode().strip()}")
        return r

    def create(self, etcd, name, subnet, ip_range, block_prefix):
        args = ["network", "create", "--subnet", subnet, "--ip-range", ip_range, "-o", "parent=lan0"]
        if etcd:
            args += ["--etcd", etcd.url, "--host-id", self.name, "--block-prefix", str(block_prefix)]
        self.run(*args, name)

    def join(self, etcd, name):
        self.run("network", "join", "--etcd", etcd.url, "--host-id", self.name, "-o", "parent=lan0", name)

    def attach(self, ns, cid, network):
        """CLI attach into `ns` (untimed setup): the address."""
        out = self.run("attach", "--json", "--netns", f"/run/netns/{ns}", "--id", cid, network).stdout
        return json.loads(out)[0]["addresses"][0].split("/")[0]

    def hook(self, ns, network, release=False):
        bundle = f"{self.work}/bundle-{ns}"
        os.makedirs(bundle, exist_ok=True)
        with open(f"{bundle}/config.json", "w") as f:
            json.dump({"ociVersion": "1.0.2",
                       "linux": {"namespaces": [{"type": "network", "path": f"/run/netns/{ns}"}]}}, f)
        state = {"ociVersion": "1.0.2-dev", "id": f"hook-{ns}", "bundle": bundle,
                 "status": "stopped" if release else "creating",
                 "annotations": {"netattach/networks": network}}
        return base.timed([self.bin, "hook", "release" if release else "attach"],
                          json.dumps(state).encode(), self.env)


def netns(name):
    base.sh("ip", "netns", "add", name)
    return name


def setup_borrow(work, binary, etcd):
    """A lender that lent two blocks and a borrower whose block is full, on
    a /27 in blocks of 8: every attach of the borrower borrows."""
    lender, borrower = Host(work, binary, "lender"), Host(work, binary, "borrower")
    lender.create(etcd, "borrow", "10.78.0.0/24", "10.78.0.0/27", 29)
    borrower.join(etcd, "borrow")
    held = [(f"lend-{k}", lender.attach(netns(f"{base.PREFIX}-l{k}"), f"lend-{k}", "borrow")) for k in range(17)]
    # Three blocks (8, 8, 1): one container left in each, so two can be lent.
    by_block = {}
    for cid, addr in held:
        by_block.setdefault(ipaddress.ip_network(f"{addr}/29", strict=False), []).append(cid)
    for cids in by_block.values():
        for cid in cids[1:]:
            lender.run("detach", "--id", cid)
    # The borrower claims the last block and fills it (6 to 8 addresses: the
    # first block holds the network address and the gateway); the attach
    # that finds no room leaves its wish for the lender to see.
    for k in range(9):
        ns = netns(f"{base.PREFIX}-b{k}")
        r = borrower.run("attach", "--netns", f"/run/netns/{ns}", "--id", f"full-{k}", "borrow", check=False)
        if r.returncode != 0:
            break
    if k < 6 or b"no free address" not in r.stderr:
        sys.exit(f"borrower: expected no free address after 6 to 8 attaches: {r.stderr.decode()}")
    out = lender.run("gc").stderr.decode()
    if "lent to the other hosts" not in out:
        sys.exit(f"lender did not lend: {out}")
    return borrower


def latency(work, binary, etcd, runs, batch=50):
    me = Host(work, binary, "me")
    me.create(None, "local", "192.168.32.0/24", "192.168.32.0/25", 0)
    # 4096 blocks of 16: one per claiming host.
    me.create(etcd, "shared", "10.77.0.0/16", "10.77.0.0/16", 28)
    claimers = []
    for i in range(runs):
        h = Host(work, binary, f"c{i}")
        h.join(etcd, "shared")
        claimers.append(h)
    borrower = setup_borrow(work, binary, etcd)
    rows = {
        "local": lambda i, ns, rel: me.hook(ns, "local", rel),
        "shared-hit": lambda i, ns, rel: me.hook(ns, "shared", rel),
        "shared-claim": lambda i, ns, rel: claimers[i].hook(ns, "shared", rel),
        "shared-borrow": lambda i, ns, rel: borrower.hook(ns, "borrow", rel),
    }
    attach = {r: [] for r in ROWS}
    release = {r: [] for r in ROWS}
    for start in range(0, runs, batch):
        rounds = range(start, min(runs, start + batch))
        spaces = {(i, r): netns(f"{base.PREFIX}-{i}-{k}") for i in rounds for k, r in enumerate(ROWS)}
        for i in rounds:
            for r in ROWS[i % len(ROWS):] + ROWS[:i % len(ROWS)]:
                ns = spaces[(i, r)]
                attach[r].append(rows[r](i, ns, False))
                if i == 0:
                    base.verify(ns, r, "inet ")
                release[r].append(rows[r](i, ns, True))
        for ns in spaces.values():
            base.sh("ip", "netns", "del", ns)
        time.sleep(0.5)
    return {"attach": {r: base.summary(v) for r, v in attach.items()},
            "release": {r: base.summary(v) for r, v in release.items()}}


def burst(hosts, network, per_host, tag):
    """`per_host` CLI attaches on each host at once, 16 at a time per host;
    seconds of wall time."""
    spaces = {h.name: [netns(f"{base.PREFIX}-{tag}-{h.name}-{k}") for k in range(per_host)] for h in hosts}
    failures = []

    def run_host(h):
        todo = list(enumerate(spaces[h.name]))
        lock = threading.Lock()

        def worker():
            while True:
                with lock:
                    if not todo:
                        return
                    k, ns = todo.pop()
                r = h.run("attach", "--netns", f"/run/netns/{ns}", "--id", f"{tag}-{k}", network, check=False)
                if r.returncode != 0:
                    failures.append(r.stderr.decode().strip())
        threads = [threading.Thread(target=worker) for _ in range(PARALLEL)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    started = time.perf_counter()
    threads = [threading.Thread(target=run_host, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - started
    if failures:
        sys.exit(f"{tag}: {len(failures)} attaches failed, e.g. {failures[0]}")
    for names in spaces.values():
        for ns in names:
            base.sh("ip", "netns", "del", ns)
    time.sleep(1)
    return took


def throughput(work, binary, etcd, per_host):
    """Attaches per second of 1 and 3 hosts sharing the machine's CPUs, and
    of 1 host on one CPU against one host per CPU (each pinned to its own),
    which is what hosts on machines of their own would do, as far as this
    machine can show it."""
    out = {}
    ncpu = len(os.sched_getaffinity(0))
    for pinned in (False, True):
        for kind in ("local", "shared"):
            for n in ((1, ncpu) if pinned else (1, 3)):
                hosts = [Host(work, binary, f"t{kind}{n}{'p' if pinned else ''}-{k}", k if pinned else None)
                         for k in range(n)]
                name = f"t{kind}{n}{'p' if pinned else ''}"
                # A /22 each: 3 x 300 fit (shared: 16 blocks of 64).
                subnet = f"10.{90 + n + (20 if pinned else 0)}.{0 if kind == 'local' else 4}.0/22"
                hosts[0].create(etcd if kind == "shared" else None, name, subnet, subnet, 26)
                for h in hosts[1:]:
                    if kind == "shared":
                        h.join(etcd, name)
                    else:
                        h.create(None, name, subnet, subnet, 0)
                took = burst(hosts, name, per_host, name)
                where = (", one CPU each" if n > 1 else ", on one CPU") if pinned else ""
                out[f"{kind}, {n} host{'s' if n > 1 else ''}{where}"] = {
                    "attaches": n * per_host, "seconds": took, "per_second": n * per_host / took,
                    "base": f"{kind}, 1 host{', on one CPU' if pinned else ''}"}
    return out


def print_report(lat, tput, runs, per_host):
    print(base.table(f"Hook attach by path ({runs} runs)", lat["attach"], bases=("local",)))
    print()
    print(base.table(f"Hook release by path ({runs} runs)", lat["release"], bases=("local",)))
    print()
    print(f"### Throughput ({per_host} attaches per host, {PARALLEL} at once per host)\n")
    print("| case | attaches | seconds | attaches/s | vs 1 host |")
    print("|---|---|---|---|---|")
    for case, r in tput.items():
        ratio = "—" if r["base"] == case else f"{r['per_second'] / tput[r['base']]['per_second']:.2f}x"
        print(f"| {case} | {r['attaches']} | {r['seconds']:.2f} | {r['per_second']:.0f} | {ratio} |")
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--per-host", type=int, default=300)
    ap.add_argument("--smoke", action="store_true", help="a few runs, to check the benchmark works")
    ap.add_argument("--binary", help="netattach binary (default: build the static release binary)")
    ap.add_argument("--json", default=os.path.join(base.REPO, "bench/results/shared.json"))
    args = ap.parse_args()
    runs, per_host = (3, 20) if args.smoke else (args.runs, args.per_host)
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark creates network namespaces")
    binary = args.binary or subprocess.run([f"{base.REPO}/scripts/build.sh"], check=True, capture_output=True,
                                           text=True).stdout.strip()
    binary = os.path.abspath(binary)
    work = tempfile.mkdtemp(prefix="nabench-")
    etcd = None
    try:
        base.fake_lan()
        base.enter_host_ns()
        base.sh("ip", "link", "set", "lo", "up")
        etcd = Etcd(work)
        lat = latency(work, binary, etcd, runs)
        tput = throughput(work, binary, etcd, per_host)
    finally:
        if etcd:
            etcd.stop()
        base.cleanup(work)
    print_report(lat, tput, runs, per_host)
    report = {"date": time.strftime("%Y-%m-%d"), "runs": runs, "per_host": per_host, "binary": binary,
              "kernel": os.uname().release, "cpus": os.cpu_count(), "latency": lat, "throughput": tput}
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
