#!/usr/bin/env python3
"""Attach latency, side by side with the peers on the same machine and run.

One macvlan, attach and release / teardown:

  netattach-hook  `netattach hook attach|release`, the OCI state on stdin, as runc calls it
  netattach-cli   `netattach attach ...` / `netattach detach`
  netavark        `netavark --config DIR setup|teardown NETNS` (podman's network tool)
  cni             the CNI reference `macvlan` plugin, ADD / DEL
  floor-ip-batch  one `ip -batch -` doing a static attach's kernel work: the
                  macvlan on `lan0` into the netns under a temporary name,
                  renamed to eth0, address(es), up, default route(s); release
                  `ip link del eth0` (both spawned inside the netns, since
                  `ip -n` adds a mount namespace and a /sys remount)
  floor-spawn     `/bin/true`: the cost of starting a process (no release row)

The floors run in the same rounds as the tools: what no one-process-per-attach
tool can go below on this machine. Every row gets ratios of its median over
netavark's, CNI's and floor-ip-batch's.

In three variants: a static IPv4 address (CNI IPAM `static`), dual stack
(IPv4 + IPv6), and pooled IPv4 (netattach's pool, netavark's own IPAM, CNI
`host-local`). Then a whole container: `runc create` + `runc start` of busybox
`true` without a network hook and with the netattach hook (createRuntime
attach; poststop release runs at the untimed delete), so the latency the hook
adds to a container start is visible. Then
the NRI face: RunPodSandbox / RemovePodSandbox round trips from the test
runtime side (tests/nri.rs `run_pod_sandbox_latency`, run through cargo), and
the same through a real containerd 1.7 over CRI, pods without and with a
netattach network interleaved (tests/containerd.rs `run_pod_sandbox_latency`;
left out when scripts/containerd.sh has not fetched containerd).

Every measured attach goes into a fresh network namespace, created before the
timer starts; tools are interleaved run by run so drift hits them alike. The
order of the tools rotates from round to round (whoever runs right after a
release pays for the kernel's deferred teardown work). The
namespaces are deleted in batches between rounds (a netns deletion makes the
kernel hold the rtnl lock for a while; deleting between measurements would
charge that to whichever tool runs next). A run's time is the wall time of the
tool's process, fork to exit, as measured from here (the same spawn overhead
for every tool); this script enters the host-side netns itself, so the tools
are spawned directly, as a runtime spawns its hook. The first run of each tool
is checked: the interface must be in the namespace with its address, or the
benchmark stops.

--busy-disk measures the attach variants and the runc starts while a
background writer loops write + fsync (a 64 MB file, rewritten in 1 MB writes,
an fsync every 8 MB) on the file system holding netattach's state directories
(the benchmark's temporary directory), so a lease commit's fsync waits behind
other I/O; the writer stops and its file goes when the measurement ends, on
every exit path. --both runs quiet, then busy. The NRI rows run once, without
the writer. The report's `disk` says which ran.

Everything happens in namespaces this script creates (`nabench-*`): a host side
holding the parent `lan0`, a LAN side holding the gateway. Run as root:

  bench/attach.py [--runs N] [--smoke] [--binary PATH] [--baseline PATH] [--json FILE]
                  [--skip-nri] [--busy-disk | --both]

--baseline PATH adds a row `netattach-hook-base`: the hook of another build
(say, the commit before a change), with its own state, in the same rounds.
"""

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import socket
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
CLONE_NEWNET = 0x40000000


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, **kw)


def enter_netns(name):
    """Moves this process into netns `name`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            sys.exit(f"setns {name}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


def enter_host_ns():
    """Moves this process into the host-side netns, so that every tool is
    spawned straight from here (no nsenter exec in the timed path, which would
    add the same ~1 ms to every tool and hide the differences)."""
    enter_netns(HOST_NS)


def timed(args, stdin=b"", env=None):
    start = time.perf_counter_ns()
    r = subprocess.run(args, input=stdin, capture_output=True, env=env)
    elapsed = (time.perf_counter_ns() - start) / 1e6
    if r.returncode != 0:
        sys.exit(f"{' '.join(args[-4:])} failed: {(r.stderr or r.stdout).decode().strip()}")
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

    def __init__(self, work, binary, dual=False, pooled=False, baseline=None):
        self.work, self.bin, self.dual, self.pooled = work, binary, dual, pooled
        self.baseline = baseline
        self.env = dict(os.environ, NETATTACH_CONFIG_DIR=f"{work}/na-config", NETATTACH_STATE_DIR=f"{work}/na-state")
        # The baseline binary (--baseline) gets state and config of its own.
        self.env_base = dict(os.environ, NETATTACH_CONFIG_DIR=f"{work}/base-config",
                             NETATTACH_STATE_DIR=f"{work}/base-state")
        create = ["network", "create", "-d", "macvlan", "--subnet", "192.168.32.0/24", "--gateway", "192.168.32.254"]
        if dual:
            create += ["--subnet", "2001:db8:32::/64", "--gateway", "2001:db8:32::fe"]
        for b, env in ((binary, self.env), (baseline, self.env_base)):
            if b:
                subprocess.run([b] + create + ["-o", "parent=lan0", "lan"], env=env, check=True, capture_output=True)
        os.makedirs(f"{work}/netavark", exist_ok=True)
        self.parent = socket.if_nametoindex("lan0")  # in the host netns, where this process is

    def addresses(self, i):
        if self.pooled:
            return (None, None)
        v4 = f"192.168.32.{10 + i % 240}"
        v6 = f"2001:db8:32::{10 + i % 240:x}"
        return (v4, v6) if self.dual else (v4, None)

    def netattach_hook(self, i, ns, release=False):
        return self.hook(self.bin, self.env, i, ns, release)

    def netattach_hook_base(self, i, ns, release=False):
        return self.hook(self.baseline, self.env_base, i, ns, release)

    def hook(self, binary, env, i, ns, release):
        v4, v6 = self.addresses(i)
        ips = [f"{a}/{p}" for a, p in ((v4, 24), (v6, 64)) if a]
        bundle = f"{self.work}/bundle-{ns}"
        os.makedirs(bundle, exist_ok=True)
        with open(f"{bundle}/config.json", "w") as f:
            json.dump({"ociVersion": "1.0.2", "linux": {"namespaces": [{"type": "network", "path": f"/run/netns/{ns}"}]}}, f)
        state = {
            "ociVersion": "1.0.2-dev", "id": f"hook-{ns}", "bundle": bundle,
            "status": "stopped" if release else "creating",
            "annotations": {"netattach/networks": json.dumps([{"name": "lan", "ips": ips}]) if ips else "lan"},
        }
        verb = "release" if release else "attach"
        return timed([binary, "hook", verb], json.dumps(state).encode(), env)

    def netattach_cli(self, i, ns, release=False):
        if release:
            return timed([self.bin, "detach", "--id", f"cli-{ns}"], env=self.env)
        v4, v6 = self.addresses(i)
        args = [self.bin, "attach", "--netns", f"/run/netns/{ns}", "--id", f"cli-{ns}"]
        for a in (v4, v6):
            if a:
                args += ["--ip", a]
        return timed(args + ["lan"], env=self.env)

    def netavark(self, i, ns, release=False):
        v4, v6 = self.addresses(i)
        subnets = [{"subnet": "192.168.32.0/24", "gateway": "192.168.32.254"}]
        if v6:
            subnets.append({"subnet": "2001:db8:32::/64", "gateway": "2001:db8:32::fe"})
        doc = {
            "container_id": f"{i:064x}", "container_name": f"c{i}",
            "networks": {"lan": {"interface_name": "eth0", "static_ips": [a for a in (v4, v6) if a] or None}},
            "network_info": {"lan": {
                "name": "lan", "id": "b" * 64, "driver": "macvlan", "network_interface": "lan0",
                "subnets": subnets, "ipv6_enabled": bool(v6), "internal": False, "dns_enabled": False,
                "ipam_options": {"driver": "host-local"}, "options": {"mode": "bridge"},
            }},
        }
        verb = "teardown" if release else "setup"
        args = [NETAVARK, "--config", f"{self.work}/netavark", verb, f"/run/netns/{ns}"]
        return timed(args, json.dumps(doc).encode())

    def cni(self, i, ns, release=False):
        v4, v6 = self.addresses(i)
        routes = [{"dst": "0.0.0.0/0"}]
        if self.pooled:
            ipam = {"type": "host-local", "dataDir": f"{self.work}/cni-ipam", "routes": routes,
                    "ranges": [[{"subnet": "192.168.32.0/24", "gateway": "192.168.32.254"}]]}
        else:
            addresses = [{"address": f"{v4}/24", "gateway": "192.168.32.254"}]
            if v6:
                addresses.append({"address": f"{v6}/64", "gateway": "2001:db8:32::fe"})
                routes.append({"dst": "::/0"})
            ipam = {"type": "static", "addresses": addresses, "routes": routes}
        conf = {"cniVersion": "0.4.0", "name": "lan", "type": "macvlan", "master": "lan0", "mode": "bridge",
                "ipam": ipam}
        env = dict(os.environ, CNI_COMMAND="DEL" if release else "ADD", CNI_CONTAINERID=f"cni-{ns}",
                   CNI_NETNS=f"/run/netns/{ns}", CNI_IFNAME="eth0", CNI_PATH=CNI_PATH)
        return timed([f"{CNI_PATH}/macvlan"], json.dumps(conf).encode(), env)

    def floor_ip_batch(self, i, ns, release=False):
        """The kernel work of a static attach from one iproute2 process: the
        macvlan on `lan0` created straight into the netns under a temporary
        name, renamed to eth0, addressed, up, default route(s). A batch line
        cannot take `-n`, and `ip -n NS` unshares a mount namespace and
        remounts /sys on top (milliseconds no attach needs), so `ip -batch` is
        spawned inside the netns (this process enters it before the timer
        starts and returns after) and names the parent in the host netns by
        ifindex and `link-netns`. Pooled variant: a static address all the
        same (the floor has no IPAM)."""
        enter_netns(ns)
        try:
            if release:
                return timed(["ip", "link", "del", "eth0"])
            v4, v6 = self.addresses(i)
            v4 = v4 or f"192.168.32.{10 + i % 240}"
            lines = [f"link add link if{self.parent} link-netns {HOST_NS} name na-tmp type macvlan mode bridge",
                     "link set na-tmp name eth0", f"addr add {v4}/24 dev eth0"]
            if v6:
                lines.append(f"addr add {v6}/64 dev eth0 nodad")
            lines += ["link set eth0 up", "route add default via 192.168.32.254 dev eth0"]
            if v6:
                lines.append("route add default via 2001:db8:32::fe dev eth0")
            return timed(["ip", "-batch", "-"], "\n".join(lines).encode() + b"\n")
        finally:
            enter_netns(HOST_NS)

    def floor_spawn(self, i, ns, release=False):
        """Spawn and exit of /bin/true: the process-start floor (no release)."""
        return None if release else timed(["/bin/true"])


FLOORS = ["floor-ip-batch", "floor-spawn"]
TOOLS = ["netattach-hook", "netattach-cli", "netavark", "cni"] + FLOORS
# netavark takes only static_ips (podman allocates addresses before calling
# it), so it has no pooled variant of its own.
POOLED_TOOLS = ["netattach-hook", "netattach-cli", "cni"] + FLOORS
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


def run_variant(work, binary, dual, pooled, runs, batch, cni_dual_runs=CNI_DUAL_RUNS, baseline=None):
    tools = Tools(work, binary, dual, pooled, baseline)
    fns = {"netattach-hook": tools.netattach_hook, "netattach-hook-base": tools.netattach_hook_base,
           "netattach-cli": tools.netattach_cli,
           "netavark": tools.netavark, "cni": tools.cni,
           "floor-ip-batch": tools.floor_ip_batch, "floor-spawn": tools.floor_spawn}
    names = POOLED_TOOLS if pooled else TOOLS
    if baseline:
        names = names[:1] + ["netattach-hook-base"] + names[1:]
    attach = {t: [] for t in names}
    release = {t: [] for t in names}
    for start in range(0, runs, batch):
        rounds = range(start, min(runs, start + batch))
        spaces = {(i, t): f"{PREFIX}-{i}-{k}" for i in rounds for k, t in enumerate(names)}
        for ns in spaces.values():
            sh("ip", "netns", "add", ns)
        for i in rounds:
            # Each round starts with a different tool: a release leaves work
            # the kernel finishes in the background (RCU, deferred netdev
            # teardown) that would otherwise always land on the same tool.
            for t in names[i % len(names):] + names[:i % len(names)]:
                if t == "cni" and dual and i >= cni_dual_runs:
                    continue
                ns = spaces[(i, t)]
                attach[t].append(fns[t](i, ns))
                if i == 0 and t != "floor-spawn":
                    v4, v6 = tools.addresses(i)
                    verify(ns, t, f"{v4}/24" if v4 else "inet 192.168.32.")
                    if v6:
                        verify(ns, t, f"{v6}/64")
                released = fns[t](i, ns, release=True)
                if released is not None:
                    release[t].append(released)
        for ns in spaces.values():
            sh("ip", "netns", "del", ns)
        time.sleep(0.5)  # let the kernel finish tearing the namespaces down
    return {"attach": {t: summary(v) for t, v in attach.items()},
            "release": {t: summary(v) for t, v in release.items() if v}}


RATIO_BASES = ("netavark", "cni", "floor-ip-batch")


def table(title, results, bases=RATIO_BASES):
    """Markdown table; the last columns are each row's median over each base's
    median (— where the base has no row)."""
    lines = [f"### {title}", "",
             "| tool | runs | median ms | p90 | p99 | min | max | " + " | ".join(f"vs {b}" for b in bases) + " |",
             "|---" * (7 + len(bases)) + "|"]
    for t, r in results.items():
        ratios = [f"{r['median'] / results[b]['median']:.2f}x" if b in results else "—" for b in bases]
        lines.append(f"| {t} | {r['n']} | {r['median']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['min']:.2f} "
                     f"| {r['max']:.2f} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


# The --busy-disk writer: 1 MB writes, an fsync every 8 MB, rewound at 64 MB;
# it ignores Ctrl-C (the benchmark stops it) and ends by itself when the
# benchmark is gone.
BUSY_WRITER = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
path, parent = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
chunk, n = b"\\0" * (1 << 20), 0
while os.getppid() == parent:
    os.write(fd, chunk)
    n += 1
    if n % 8 == 0:
        os.fsync(fd)
    if n == 64:
        os.lseek(fd, 0, os.SEEK_SET)
        n = 0
"""


@contextlib.contextmanager
def busy_disk(directory):
    """A writer looping write + fsync in `directory` (on the file system of
    the state directories) for as long as the block runs; the file is removed
    afterwards."""
    path = f"{directory}/busy-disk.fill"
    writer = subprocess.Popen([sys.executable, "-c", BUSY_WRITER, path, str(os.getpid())])
    try:
        yield
    finally:
        writer.terminate()
        writer.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def measure(work, binary, runs, smoke, busy, baseline=None):
    """The attach variants and the runc starts, with the disk quiet or busy.
    `work` holds netattach's state directories, and the busy writer's file."""
    results = {"disk": "busy" if busy else "quiet", "variants": {}}
    with busy_disk(work) if busy else contextlib.nullcontext():
        for name, dual, pooled in (("ipv4", False, False), ("dual-stack", True, False), ("pooled-ipv4", False, True)):
            os.makedirs(f"{work}/{name}")
            results["variants"][name] = run_variant(
                f"{work}/{name}", binary, dual, pooled, runs, batch=25, cni_dual_runs=1 if smoke else CNI_DUAL_RUNS,
                baseline=baseline)
        os.makedirs(f"{work}/containers")
        results["container"] = run_containers(f"{work}/containers", binary, runs)
    return results


def print_tables(results, runs):
    """Prints the tables of measure()'s results, and adds the derived numbers."""
    disk = "" if results["disk"] == "quiet" else ", disk busy"
    names = {"ipv4": "static IPv4", "dual-stack": "static dual stack", "pooled-ipv4": "pooled IPv4 (CNI: host-local)"}
    for name, v in results["variants"].items():
        print(table(f"attach, one macvlan, {names[name]} ({runs} runs{disk})", v["attach"]))
        print()
        print(table(f"release / teardown, {names[name]}{disk}", v["release"]))
        print()
    static, pooled = (results["variants"][n]["attach"]["netattach-hook"]["median"] for n in ("ipv4", "pooled-ipv4"))
    results["pooled_over_static_hook"] = pooled / static
    print(f"netattach-hook attach, medians: pooled IPv4 {pooled:.2f} ms, static IPv4 {static:.2f} ms, "
          f"pooled / static {pooled / static:.2f}x\n")
    c = results["container"]
    print(table(f"container start: runc create + start of busybox true ({runs} runs{disk})", c, bases=("runc",)))
    added = c["runc+netattach-hook"]["median"] - c["runc"]["median"]
    results["container_start_added_ms"] = added
    print(f"\nadded to the container start by the hook, medians: {added:.2f} ms\n")


def run_containers(work, binary, runs):
    """Start of a busybox `true` container under runc: a bundle without hooks
    against the same bundle with netattach's createRuntime/poststop hooks and
    the annotation (pooled address on `lan`). runc creates the container's
    netns itself, as without netattach."""
    env = [f"NETATTACH_CONFIG_DIR={work}/na-config", f"NETATTACH_STATE_DIR={work}/na-state"]
    sh(binary, "network", "create", "-d", "macvlan", "--subnet", "192.168.32.0/24", "--gateway", "192.168.32.254",
       "-o", "parent=lan0", "lan", env=dict(os.environ, **dict(e.split("=", 1) for e in env)))
    rootfs = f"{work}/rootfs"
    sh(f"{REPO}/scripts/make-rootfs.sh", rootfs)
    bundles = {}
    for name in ("runc", "runc+netattach-hook"):
        bundle = f"{work}/bundle-{name}"
        os.makedirs(bundle)
        sh("runc", "spec", "--bundle", bundle)
        with open(f"{bundle}/config.json") as f:
            config = json.load(f)
        config["root"] = {"path": rootfs, "readonly": True}
        config["process"]["args"] = ["/bin/true"]
        config["process"]["terminal"] = False
        if name != "runc":
            hook = lambda verb: {"path": binary, "args": ["netattach", "hook", verb], "env": env}
            config["hooks"] = {"createRuntime": [hook("attach")], "poststop": [hook("release")]}
            config["annotations"] = {"netattach/networks": "lan"}
        with open(f"{bundle}/config.json", "w") as f:
            json.dump(config, f)
        bundles[name] = bundle
    samples = {name: [] for name in bundles}
    runc = ["runc", "--root", f"{work}/runc-state"]
    # No pipes to runc: the container's process inherits them and would keep
    # them open; errors go to a file instead.
    errors = open(f"{work}/runc-errors.log", "w")
    quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors, check=True)
    for i in range(runs):
        for name, bundle in sorted(bundles.items(), reverse=i % 2 == 1):  # alternate who goes first
            cid = f"{PREFIX}-ctr-{i}"
            # Start latency: `runc create` (namespaces, createRuntime hooks) plus
            # `runc start`, until the container's process runs.
            start = time.perf_counter_ns()
            subprocess.run([*runc, "create", "--bundle", bundle, cid], **quiet)
            subprocess.run([*runc, "start", cid], **quiet)
            samples[name].append((time.perf_counter_ns() - start) / 1e6)
            # Not timed: the container ends, poststop releases its lease.
            subprocess.run([*runc, "delete", "--force", cid], **quiet)
            # The kernel tears the container's netns down asynchronously,
            # holding locks a new netns needs: let it finish before the next.
            time.sleep(0.2)
    # Every hooked container got a lease and gave it back.
    leases = subprocess.run([binary, "lease", "ls", "--json"], capture_output=True, text=True,
                            env=dict(os.environ, **dict(e.split("=", 1) for e in env)), check=True).stdout
    if json.loads(leases):
        sys.exit(f"leases left after the runc runs: {leases}")
    return {name: summary(v) for name, v in samples.items()}


def bench_test_lines(test_file, runs):
    """The BENCH-JSON lines of the #[ignore]d `run_pod_sandbox_latency` test of
    tests/TEST_FILE.rs, as {"RPC (case)": summary}."""
    env = dict(os.environ, NETATTACH_BENCH_RUNS=str(runs))
    out = subprocess.run(["cargo", "test", "--release", "--quiet", "--test", test_file, "--", "--ignored", "--exact",
                          "run_pod_sandbox_latency", "--nocapture"], cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{test_file} benchmark failed:\n{out.stdout}\n{out.stderr}")
    results = {}
    for line in out.stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            r = json.loads(line.split(" ", 1)[1])
            results[f"{r['rpc']} ({r['case']})"] = summary(r["samples_ms"])
    return results


def containerd_available():
    cache = os.environ.get("NETATTACH_CONTAINERD_DIR", "/var/cache/netattach/containerd")
    return os.path.exists(f"{cache}/bin/containerd")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--smoke", action="store_true", help="a few runs, to check the benchmark works")
    ap.add_argument("--binary", help="netattach binary (default: build the static release binary)")
    ap.add_argument("--json", default=os.path.join(REPO, "bench/results/attach.json"))
    ap.add_argument("--busy-disk", action="store_true",
                    help="measure while a writer loops write + fsync on the state directories' file system")
    ap.add_argument("--both", action="store_true", help="measure with the disk quiet, then busy")
    ap.add_argument("--baseline", help="another netattach binary (an earlier build) measured as one more hook row")
    ap.add_argument("--skip-nri", action="store_true", help="leave out the NRI round trips (they build tests/nri.rs and tests/containerd.rs)")
    args = ap.parse_args()
    runs = 3 if args.smoke else args.runs
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark creates network namespaces")
    for path in (NETAVARK, f"{CNI_PATH}/macvlan", f"{CNI_PATH}/host-local", shutil.which("runc") or "runc"):
        if not os.path.exists(path):
            sys.exit(f"{path} missing: run scripts/install-deps.sh")
    binary = args.binary or subprocess.run([f"{REPO}/scripts/build.sh"], check=True, capture_output=True, text=True).stdout.strip()
    binary = os.path.abspath(binary)
    work = tempfile.mkdtemp(prefix="nabench-")
    modes = [False, True] if args.both else [args.busy_disk]
    report = {"date": time.strftime("%Y-%m-%d"), "runs": runs, "binary": binary, "kernel": os.uname().release,
              "cpus": os.cpu_count()}
    measured = []
    try:
        fake_lan()
        enter_host_ns()
        for busy in modes:
            os.makedirs(f"{work}/{'busy' if busy else 'quiet'}")
            measured.append(measure(f"{work}/{'busy' if busy else 'quiet'}", binary, runs, args.smoke, busy,
                                    baseline=os.path.abspath(args.baseline) if args.baseline else None))
    finally:
        cleanup(work)
    if not args.skip_nri:
        report["nri"] = bench_test_lines("nri", runs)
        if containerd_available():
            report["containerd"] = bench_test_lines("containerd", runs)
        else:
            print("containerd 1.7 not fetched (scripts/containerd.sh): its NRI rows are left out\n")
    for results in measured:
        print_tables(results, runs)
    if args.both:
        report.update(disk="both", quiet=measured[0], busy=measured[1])
    else:
        report.update(measured[0])
    if "nri" in report:
        print(table(f"NRI round trips from the runtime side ({runs} pods)", report["nri"],
                    bases=("RunPodSandbox (no-network)",)))
        print()
    if "containerd" in report:
        print(table(f"RunPodSandbox through containerd 1.7 over CRI ({runs} pods per case)", report["containerd"],
                    bases=("RunPodSandbox (no-network)",)))
        print()
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"written: {args.json}")


if __name__ == "__main__":
    main()
