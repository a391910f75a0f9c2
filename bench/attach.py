#!/usr/bin/env python3
"""Attach latency of one macvlan, side by side on the same machine and run:

  netattach-hook  `netattach hook attach`, the OCI state on stdin, as runc calls it
  netattach-cli   `netattach attach --netns PATH lan --ip ...`
  netavark        `netavark --config DIR setup NETNS` (podman's network tool)
  cni             the CNI reference `macvlan` plugin with `static` IPAM

and their release / teardown (`netattach hook release`, `netavark teardown`,
CNI DEL). Two variants: a static IPv4 address, and dual stack (IPv4 + IPv6).

Every measured attach goes into a fresh network namespace, created before the
timer starts; tools are interleaved run by run so drift hits them alike. The
namespaces are deleted in batches between rounds (a netns deletion makes the
kernel hold the rtnl lock for a while; deleting between measurements would
charge that to whichever tool runs next). A run's time is the wall time of the
tool's process, fork to exit, as measured from here (the same spawn overhead
for every tool). The first run of each tool is checked: the interface must be
in the namespace with its address, or the benchmark stops.

Everything happens in namespaces this script creates (`nabench-*`): a host side
holding the parent `lan0`, a LAN side holding the gateway. Run as root:

  bench/attach.py [--runs N] [--smoke] [--json FILE]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETAVARK = "/usr/lib/podman/netavark"
CNI_PATH = "/usr/lib/cni"
PREFIX = f"nabench-{os.getpid()}"
HOST_NS, LAN_NS = f"{PREFIX}-h", f"{PREFIX}-x"


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, **kw)


def in_host(args):
    """A command line that runs `args` in the host-side netns."""
    return ["nsenter", f"--net=/run/netns/{HOST_NS}", *args]


def timed(args, stdin=b"", env=None):
    start = time.perf_counter_ns()
    r = subprocess.run(args, input=stdin, capture_output=True, env=env)
    elapsed = (time.perf_counter_ns() - start) / 1e6
    if r.returncode != 0:
        sys.exit(f"{' '.join(args[-4:])} failed: {r.stderr.decode().strip()}")
    return elapsed


def fake_lan():
    sh("ip", "netns", "add", HOST_NS)
    sh("ip", "netns", "add", LAN_NS)
    sh("ip", "-n", HOST_NS, "link", "add", "lan0", "type", "veth", "peer", "name", "gw0", "netns", LAN_NS)
    sh("ip", "-n", LAN_NS, "addr", "add", "192.168.32.254/24", "dev", "gw0")
    sh("ip", "-n", LAN_NS, "addr", "add", "2001:db8:32::fe/64", "dev", "gw0", "nodad")
    sh("ip", "-n", LAN_NS, "link", "set", "gw0", "up")
    sh("ip", "-n", HOST_NS, "link", "set", "lan0", "up")


def cleanup(work):
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for name in names:
        if name.startswith(PREFIX):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)


class Tools:
    """Each tool's attach and release for run `i` into netns `ns`."""

    def __init__(self, work, binary, dual):
        self.work, self.bin, self.dual = work, binary, dual
        self.env = dict(os.environ, NETATTACH_CONFIG_DIR=f"{work}/na-config", NETATTACH_STATE_DIR=f"{work}/na-state")
        create = [binary, "network", "create", "-d", "macvlan", "--subnet", "192.168.32.0/24", "--gateway", "192.168.32.254"]
        if dual:
            create += ["--subnet", "2001:db8:32::/64", "--gateway", "2001:db8:32::fe"]
        subprocess.run(create + ["-o", "parent=lan0", "lan"], env=self.env, check=True, capture_output=True)
        os.makedirs(f"{work}/netavark", exist_ok=True)

    def addresses(self, i):
        v4 = f"192.168.32.{10 + i % 240}"
        v6 = f"2001:db8:32::{10 + i % 240:x}"
        return (v4, v6) if self.dual else (v4, None)

    def netattach_hook(self, i, ns, release=False):
        v4, v6 = self.addresses(i)
        ips = [f"{v4}/24"] + ([f"{v6}/64"] if v6 else [])
        bundle = f"{self.work}/bundle-{ns}"
        os.makedirs(bundle, exist_ok=True)
        with open(f"{bundle}/config.json", "w") as f:
            json.dump({"ociVersion": "1.0.2", "linux": {"namespaces": [{"type": "network", "path": f"/run/netns/{ns}"}]}}, f)
        state = {
            "ociVersion": "1.0.2-dev", "id": f"hook-{ns}", "bundle": bundle,
            "status": "stopped" if release else "creating",
            "annotations": {"netattach/networks": json.dumps([{"name": "lan", "ips": ips}])},
        }
        verb = "release" if release else "attach"
        return timed(in_host([self.bin, "hook", verb]), json.dumps(state).encode(), self.env)

    def netattach_cli(self, i, ns, release=False):
        if release:
            return timed(in_host([self.bin, "detach", "--id", f"cli-{ns}"]), env=self.env)
        v4, v6 = self.addresses(i)
        args = [self.bin, "attach", "--netns", f"/run/netns/{ns}", "--id", f"cli-{ns}", "--ip", v4]
        if v6:
            args += ["--ip", v6]
        return timed(in_host(args + ["lan"]), env=self.env)

    def netavark(self, i, ns, release=False):
        v4, v6 = self.addresses(i)
        subnets = [{"subnet": "192.168.32.0/24", "gateway": "192.168.32.254"}]
        if v6:
            subnets.append({"subnet": "2001:db8:32::/64", "gateway": "2001:db8:32::fe"})
        doc = {
            "container_id": f"{i:064x}", "container_name": f"c{i}",
            "networks": {"lan": {"interface_name": "eth0", "static_ips": [a for a in (v4, v6) if a]}},
            "network_info": {"lan": {
                "name": "lan", "id": "b" * 64, "driver": "macvlan", "network_interface": "lan0",
                "subnets": subnets, "ipv6_enabled": bool(v6), "internal": False, "dns_enabled": False,
                "ipam_options": {"driver": "host-local"}, "options": {"mode": "bridge"},
            }},
        }
        verb = "teardown" if release else "setup"
        args = [NETAVARK, "--config", f"{self.work}/netavark", verb, f"/run/netns/{ns}"]
        return timed(in_host(args), json.dumps(doc).encode())

    def cni(self, i, ns, release=False):
        v4, v6 = self.addresses(i)
        addresses = [{"address": f"{v4}/24", "gateway": "192.168.32.254"}]
        routes = [{"dst": "0.0.0.0/0"}]
        if v6:
            addresses.append({"address": f"{v6}/64", "gateway": "2001:db8:32::fe"})
            routes.append({"dst": "::/0"})
        conf = {
            "cniVersion": "0.4.0", "name": "lan", "type": "macvlan", "master": "lan0", "mode": "bridge",
            "ipam": {"type": "static", "addresses": addresses, "routes": routes},
        }
        env = dict(os.environ, CNI_COMMAND="DEL" if release else "ADD", CNI_CONTAINERID=f"cni-{ns}",
                   CNI_NETNS=f"/run/netns/{ns}", CNI_IFNAME="eth0", CNI_PATH=CNI_PATH)
        return timed(in_host([f"{CNI_PATH}/macvlan"]), json.dumps(conf).encode(), env)


TOOLS = ["netattach-hook", "netattach-cli", "netavark", "cni"]
# The CNI macvlan plugin waits for IPv6 addresses to settle (about 10 s here),
# so dual stack through CNI is measured on a few runs only.
CNI_DUAL_RUNS = 5


def verify(ns, name, want):
    out = subprocess.run(["ip", "-n", ns, "-o", "addr", "show"], capture_output=True, text=True).stdout
    if want not in out:
        sys.exit(f"{name}: {want} not found in {ns} after attach:\n{out}")


def summary(samples):
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]
    return {"median": statistics.median(s), "p90": pick(0.90), "p99": pick(0.99), "min": s[0], "max": s[-1], "n": len(s)}


def run_variant(work, binary, dual, runs, batch, cni_dual_runs=CNI_DUAL_RUNS):
    tools = Tools(work, binary, dual)
    fns = {"netattach-hook": tools.netattach_hook, "netattach-cli": tools.netattach_cli,
           "netavark": tools.netavark, "cni": tools.cni}
    attach = {t: [] for t in TOOLS}
    release = {t: [] for t in TOOLS}
    for start in range(0, runs, batch):
        rounds = range(start, min(runs, start + batch))
        spaces = {(i, t): f"{PREFIX}-{i}-{k}" for i in rounds for k, t in enumerate(TOOLS)}
        for ns in spaces.values():
            sh("ip", "netns", "add", ns)
        for i in rounds:
            for t in TOOLS:
                if t == "cni" and dual and i >= cni_dual_runs:
                    continue
                ns = spaces[(i, t)]
                attach[t].append(fns[t](i, ns))
                if i == 0:
                    v4, v6 = tools.addresses(i)
                    verify(ns, t, f"{v4}/24")
                    if v6:
                        verify(ns, t, f"{v6}/64")
                release[t].append(fns[t](i, ns, release=True))
        for ns in spaces.values():
            sh("ip", "netns", "del", ns)
        time.sleep(0.5)  # let the kernel finish tearing the namespaces down
    return {"attach": {t: summary(v) for t, v in attach.items()},
            "release": {t: summary(v) for t, v in release.items()}}


def table(title, results):
    base = results["netattach-hook"]["median"]
    lines = [f"### {title}", "", "| tool | runs | median ms | p90 | p99 | min | max | median vs netattach-hook |",
             "|---|---|---|---|---|---|---|---|"]
    for t in TOOLS:
        r = results[t]
        lines.append(f"| {t} | {r['n']} | {r['median']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['min']:.2f} | {r['max']:.2f} | {r['median'] / base:.2f}x |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--smoke", action="store_true", help="a few runs, to check the benchmark works")
    ap.add_argument("--binary", help="netattach binary (default: build the static release binary)")
    ap.add_argument("--json", default=os.path.join(REPO, "bench/results/attach.json"))
    args = ap.parse_args()
    runs = 3 if args.smoke else args.runs
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark creates network namespaces")
    for path in (NETAVARK, f"{CNI_PATH}/macvlan"):
        if not os.path.exists(path):
            sys.exit(f"{path} missing: run scripts/install-deps.sh")
    binary = args.binary or subprocess.run([f"{REPO}/scripts/build.sh"], check=True, capture_output=True, text=True).stdout.strip()
    work = tempfile.mkdtemp(prefix="nabench-")
    report = {"runs": runs, "binary": binary, "kernel": os.uname().release, "variants": {}}
    try:
        fake_lan()
        for name, dual in (("ipv4", False), ("dual-stack", True)):
            shutil.rmtree(f"{work}/{name}", ignore_errors=True)
            os.makedirs(f"{work}/{name}")
            report["variants"][name] = run_variant(
                f"{work}/{name}", binary, dual, runs, batch=25, cni_dual_runs=1 if args.smoke else CNI_DUAL_RUNS)
    finally:
        cleanup(work)
    for name, v in report["variants"].items():
        print(table(f"attach, one macvlan, {name} ({runs} runs)", v["attach"]))
        print()
        print(table(f"release / teardown, {name}", v["release"]))
        print()
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
