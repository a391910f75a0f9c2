//! Host-side runner for the tests that need a kernel this machine lacks
//! (ipvlan, 802.1Q): boots Debian's kernel in qemu (software emulation) with
//! an initramfs holding netattach and the test binaries, runs
//!
//!   - tests/in_vm.rs (its `#[ignore]`d tests: ipvlan, VLAN parents), and
//!   - tests/attach_macvlan.rs (the host's macvlan tests, proving the VM path),
//!   - the runc tests of tests/e2e_runtimes.rs (a real container start),
//!
//! and boots Debian 11's kernel (5.10: no `SO_NETNS_COOKIE`, so namespaces
//! are told apart by netattach's own mark) for the attach, release, gc and
//! crash tests again (tests/attach_macvlan.rs, tests/crash_safety.rs,
//! tests/netns_identity.rs). It
//! reports one libtest-style line per in-VM test, read from markers on
//! the serial console; the old kernel's tests are named `bullseye::SUITE::NAME`. Not a libtest harness (`harness = false`): it is one
//! boot for many tests. Filters given to `cargo test` select in-VM tests by
//! `SUITE::NAME` substring; when none is selected the VM is not booted.
//!
//! Needs root, qemu-system-x86_64 and the kernel from scripts/vm/kernel.sh
//! (both installed by scripts/install-deps.sh).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A test binary run in the VM.
struct Suite {
    name: &'static str,
    /// Arguments that select its tests (`--ignored` for tests/in_vm.rs).
    args: &'static [&'static str],
    /// Only the tests whose name starts with this run in the VM.
    prefix: &'static str,
}

const SUITES: &[Suite] = &[
    Suite {
        name: "in_vm",
        args: &["--ignored"],
        prefix: "",
    },
    Suite {
        name: "attach_macvlan",
        args: &[],
        prefix: "",
    },
    // runc end to end; crun and podman are proven on the host only.
    Suite {
        name: "e2e_runtimes",
        args: &[],
        prefix: "runc_",
    },
];

/// The test suites run again under Debian 11's kernel.
const OLD_KERNEL_SUITES: &[Suite] = &[
    Suite {
        name: "attach_macvlan",
        args: &[],
        prefix: "",
    },
    Suite {
        name: "crash_safety",
        args: &[],
        prefix: "",
    },
    Suite {
        name: "netns_identity",
        args: &[],
        prefix: "",
    },
];

/// A kernel to boot and the suites to run under it.
struct Kernel {
    /// Prefix of its tests' names (`""` for the machine's own release).
    label: &'static str,
    /// The folder scripts/vm/kernel.sh fills for it.
    dir: PathBuf,
    suites: &'static [Suite],
}

fn kernels() -> Vec<Kernel> {
    let base = std::env::var_os("NETATTACH_VM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/netattach/vm"));
    let mut old = base.clone().into_os_string();
    old.push("-bullseye");
    vec![
        Kernel {
            label: "",
            dir: base,
            suites: SUITES,
        },
        Kernel {
            label: "bullseye::",
            dir: PathBuf::from(old),
            suites: OLD_KERNEL_SUITES,
        },
    ]
}

/// Programs and files the VM suites need besides netattach, each at its own
/// absolute path: runc, and bash for scripts/make-rootfs.sh.
fn extra_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["runc", "bash"].iter().filter_map(|p| which(p)).collect();
    files.push(Path::new(REPO).join("scripts/make-rootfs.sh"));
    files
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// A whole VM run may not take longer than this (software emulation is slow,
/// but a hang must still end the run).
const VM_TIMEOUT: Duration = Duration::from_secs(30 * 60);

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        // Listing needs no VM; the in-VM tests are listed by their own binaries.
        println!("vm: test");
        return ExitCode::SUCCESS;
    }
    let filters = filters(&args);
    let started = Instant::now();

    let kernels = kernels();
    let missing = missing_prerequisites(&kernels);
    if !missing.is_empty() {
        let reason = missing.join("; ");
        if std::env::var("NETATTACH_TESTS_STRICT").is_ok_and(|v| v == "1") {
            println!("\nrunning 1 test\ntest vm ... FAILED\n\nprerequisite missing (NETATTACH_TESTS_STRICT=1): {reason}\n");
            summary(0, 1, 0, started);
            return ExitCode::FAILURE;
        }
        eprintln!("SKIP: {reason}");
        summary(0, 0, 0, started);
        return ExitCode::SUCCESS;
    }

    let binaries = match build_test_binaries(&kernels) {
        Ok(b) => b,
        Err(e) => return fail_whole_run(&format!("building the test binaries: {e}"), started),
    };
    // Which tests run under which kernel: listed on the host (listing needs
    // no ipvlan).
    let mut plans = Vec::new();
    let mut filtered_out = 0;
    for kernel in &kernels {
        let mut plan = Vec::new();
        for suite in kernel.suites {
            let names = list_tests(&binaries[suite.name], suite.args);
            let (chosen, rest): (Vec<String>, Vec<String>) = names
                .into_iter()
                .filter(|n| n.starts_with(suite.prefix))
                .partition(|n| selected(&format!("{}{}::{n}", kernel.label, suite.name), &filters));
            filtered_out += rest.len();
            if !chosen.is_empty() {
                plan.push((suite, chosen));
            }
        }
        if !plan.is_empty() {
            plans.push((kernel, plan));
        }
    }
    let total: usize = plans
        .iter()
        .flat_map(|(_, plan)| plan.iter().map(|(_, c)| c.len()))
        .sum();
    println!("\nrunning {total} tests (in a VM)");
    if total == 0 {
        summary(0, 0, filtered_out, started);
        return ExitCode::SUCCESS;
    }

    let (mut passed, mut failed) = (0, 0);
    for (kernel, plan) in &plans {
        let console = match boot(kernel, &binaries, plan) {
            Ok(c) => c,
            Err(e) => return fail_whole_run(&format!("VM: {e}"), started),
        };
        let results = parse_console(&console);
        let mut failed_here = 0;
        for (suite, chosen) in plan {
            let suite = suite.name;
            let got = results.get(suite);
            for name in chosen {
                let outcome = got
                    .and_then(|r| r.tests.get(name))
                    .map(String::as_str)
                    .unwrap_or("FAILED (no result from the VM)");
                println!("test {}{suite}::{name} ... {outcome}", kernel.label);
                if outcome == "ok" {
                    passed += 1;
                } else {
                    failed_here += 1;
                }
            }
        }
        if failed_here > 0 {
            println!("\n---- VM console ({}) ----", kernel.dir.display());
            for line in &console {
                println!("{line}");
            }
        }
        failed += failed_here;
    }
    summary(passed, failed, filtered_out, started);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Free arguments are name filters; options (with `=`) and their values are
/// libtest's and mean nothing here.
fn filters(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
        } else if a.starts_with('-') {
            // `--test-threads 2`, `--skip X`, ... take a separate value.
            skip_value = !a.contains('=')
                && matches!(
                    a.as_str(),
                    "--test-threads" | "--skip" | "--color" | "--format" | "-Z"
                );
        } else {
            out.push(a.clone());
        }
    }
    out
}

fn selected(name: &str, filters: &[String]) -> bool {
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

fn missing_prerequisites(kernels: &[Kernel]) -> Vec<String> {
    let mut missing = Vec::new();
    if !common::is_root() {
        missing.push("needs root (network namespaces in the VM's initramfs build)".into());
    }
    if !common::have("qemu-system-x86_64") {
        missing.push("needs qemu-system-x86_64 (scripts/install-deps.sh)".into());
    }
    for tool in [
        "cpio", "gzip", "busybox", "ip", "nsenter", "ping", "ldd", "runc", "bash",
    ] {
        if !common::have(tool) {
            missing.push(format!("needs {tool} to build the initramfs"));
        }
    }
    for kernel in kernels {
        if !kernel.dir.join("modules.order").is_file() {
            missing.push(format!(
                "no VM kernel in {} (scripts/vm/kernel.sh{})",
                kernel.dir.display(),
                if kernel.label.is_empty() {
                    ""
                } else {
                    " bullseye"
                }
            ));
        }
    }
    missing
}

/// The executables of the in-VM suites, built (or found up to date) by the
/// same cargo and profile as this runner.
fn build_test_binaries(kernels: &[Kernel]) -> Result<BTreeMap<&'static str, PathBuf>, String> {
    let mut suites: Vec<&str> = kernels
        .iter()
        .flat_map(|k| k.suites.iter().map(|s| s.name))
        .collect();
    suites.sort_unstable();
    suites.dedup();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["test", "--no-run", "--message-format=json"])
        .current_dir(REPO)
        .stderr(Stdio::inherit());
    // This runner lives in target/[TRIPLE/]PROFILE/deps.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    match exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
    {
        Some(p) if p == "release" => {
            cmd.arg("--release");
        }
        Some(p) if p == "debug" => {}
        Some(p) => {
            cmd.arg("--profile").arg(p);
        }
        None => return Err(format!("unexpected location {}", exe.display())),
    }
    for suite in &suites {
        cmd.args(["--test", suite]);
    }
    let out = cmd.output().map_err(|e| format!("cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo test --no-run failed ({})", out.status));
    }
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        if let Some(suite) = suites.iter().find(|s| **s == name) {
            if msg["profile"]["test"] == true {
                found.insert(*suite, PathBuf::from(exe));
            }
        }
    }
    match suites.iter().find(|s| !found.contains_key(*s)) {
        Some(s) => Err(format!("cargo named no executable for {s}")),
        None => Ok(found),
    }
}

/// Test names of a suite binary, from libtest's `--list`.
fn list_tests(binary: &Path, suite_args: &[&str]) -> Vec<String> {
    let out = Command::new(binary)
        .args(suite_args)
        .args(["--list", "--format", "terse"])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(String::from)
        .collect()
}

/// Builds the initramfs, boots it and returns the console lines.
fn boot(
    kernel: &Kernel,
    binaries: &BTreeMap<&'static str, PathBuf>,
    plan: &[(&Suite, Vec<String>)],
) -> Result<Vec<String>, String> {
    let work = common::TempDir::new(&format!("netattach-test-{}-vm", common::unique_tag()));
    let plan_file = work.path().join("plan");
    let mut lines = String::new();
    for (suite, chosen) in plan {
        // One test at a time: the VM has little memory and slow CPUs.
        lines.push_str(&format!(
            "{} {} {} --test-threads=1 --exact {}\n",
            suite.name,
            binaries[suite.name].display(),
            suite.args.join(" "),
            chosen.join(" ")
        ));
    }
    std::fs::write(&plan_file, lines).map_err(|e| e.to_string())?;
    let initrd = work.path().join("initrd.gz");
    let status = Command::new(Path::new(REPO).join("scripts/vm/initramfs.sh"))
        .env("NETATTACH_VM_DIR", &kernel.dir)
        .arg(&initrd)
        .arg(common::bin())
        .arg(&plan_file)
        .args(extra_files())
        .status()
        .map_err(|e| format!("initramfs.sh: {e}"))?;
    if !status.success() {
        return Err(format!("initramfs.sh failed ({status})"));
    }

    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=multi", "-smp", "2", "-m", "1024"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(kernel.dir.join("vmlinuz"))
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("qemu: {e}"))?;
    let stdout = qemu.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + VM_TIMEOUT;
    let mut console = Vec::new();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => console.push(clean(&line)),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    let _ = qemu.kill();
    let out = qemu.wait_with_output().map_err(|e| e.to_string())?;
    if timed_out {
        console.push(format!("(VM killed after {VM_TIMEOUT:?})"));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        console.push(format!("(qemu stderr) {}", err.trim()));
    }
    Ok(console)
}

/// A console line without the carriage return and terminal escapes.
fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// What one suite reported in the VM.
#[derive(Default)]
struct SuiteResult {
    /// test name -> "ok", "FAILED", "ignored"
    tests: BTreeMap<String, String>,
}

/// Reads `@@NAVM begin/end` blocks and libtest's `test NAME ... RESULT` lines.
fn parse_console(console: &[String]) -> BTreeMap<String, SuiteResult> {
    let mut results: BTreeMap<String, SuiteResult> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in console {
        if let Some(name) = line.strip_prefix("@@NAVM begin ") {
            current = Some(name.trim().to_string());
            results.entry(name.trim().to_string()).or_default();
        } else if line.starts_with("@@NAVM end ") {
            current = None;
        } else if let (Some(suite), Some(rest)) = (&current, line.strip_prefix("test ")) {
            if let Some((name, outcome)) = rest.rsplit_once(" ... ") {
                results
                    .get_mut(suite)
                    .expect("suite entry")
                    .tests
                    .insert(name.to_string(), outcome.trim().to_string());
            }
        }
    }
    results
}

fn fail_whole_run(why: &str, started: Instant) -> ExitCode {
    println!("test vm ... FAILED\n\n{why}\n");
    summary(0, 1, 0, started);
    ExitCode::FAILURE
}

/// libtest's closing line, which scripts/test.sh sums over all binaries.
fn summary(passed: usize, failed: usize, filtered_out: usize, started: Instant) {
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; {filtered_out} filtered out; finished in {:.2}s\n",
        started.elapsed().as_secs_f64()
    );
}
