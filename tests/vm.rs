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
//! Each result line is printed as it comes from the console. A soft lockup or
//! RCU stall of the guest kernel (seen once under TCG) stops the VM after its
//! trace is read; the tests without a result then run once more in a fresh
//! VM (a second lockup fails them). A panic or other `BUG:` stops the VM too,
//! without a retry. `-- --self-check` checks this console reading alone (no
//! VM); every run checks it first.
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
    // This runner's console reading, without a VM (nor root): alone with
    // `--self-check`, else before every VM run, as tests of their own.
    let checks = self_check();
    if args.iter().any(|a| a == "--self-check") || checks != ExitCode::SUCCESS {
        return checks;
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
    // Said again just before the closing line, where a CI log is read first.
    let mut notes = Vec::new();
    for (kernel, plan) in &plans {
        let mut results: BTreeMap<String, SuiteResult> = BTreeMap::new();
        let mut todo = plan.clone();
        let mut consoles = Vec::new();
        let mut retried = false;
        // Why the tests still without a result have none (after the last boot).
        let mut no_result;
        loop {
            let run = match boot(kernel, &binaries, &todo) {
                Ok(r) => r,
                Err(e) => return fail_whole_run(&format!("VM: {e}"), started),
            };
            no_result = "no result from the VM".to_string();
            for (suite, got) in run.results {
                results.entry(suite).or_default().tests.extend(got.tests);
            }
            consoles.push(run.console);
            let Some(trouble) = run.trouble else { break };
            let console = consoles.last().expect("this boot's console");
            let during = match &trouble.during {
                Some(test) => format!("during {}{test}", kernel.label),
                None => "outside any test".to_string(),
            };
            let what = trouble.kind.describe();
            println!(
                "\n---- guest {what} {during} ({}, boot {}): the console from its report on ----",
                kernel.dir.display(),
                consoles.len()
            );
            print_console(&console[trouble.line..]);
            println!("---- end of the guest {what} report ----\n");
            let left = missing_tests(plan, &results);
            let count = match left.iter().map(|(_, names)| names.len()).sum::<usize>() {
                1 => "1 test".to_string(),
                n => format!("{n} tests"),
            };
            no_result = format!("no result from the VM: guest {what} {during}");
            if left.is_empty() {
                notes.push(format!(
                    "note: guest {what} {during} ({}), after every test had its result: not retried",
                    kernel.dir.display()
                ));
                break;
            }
            if trouble.kind != KernelTrouble::Lockup {
                notes.push(format!(
                    "note: guest {what} {during} ({}): {count} got no result",
                    kernel.dir.display()
                ));
                break;
            }
            if retried {
                notes.push(format!(
                    "note: guest {what} again {during} ({}), in the retry too: {count} got no result",
                    kernel.dir.display()
                ));
                break;
            }
            retried = true;
            let note = format!(
                "note: guest {what} {during} ({}): {count} without a result, so retried once in a fresh VM",
                kernel.dir.display()
            );
            println!("{note}\n");
            notes.push(note);
            todo = left;
        }

        let mut failed_here = 0;
        for (suite, chosen) in plan {
            let got = results.get(suite.name);
            for name in chosen {
                match got.and_then(|r| r.tests.get(name)).map(String::as_str) {
                    Some("ok") => passed += 1,
                    // Printed as it arrived.
                    Some(_) => failed_here += 1,
                    None => {
                        println!(
                            "test {}{}::{name} ... FAILED ({no_result})",
                            kernel.label, suite.name
                        );
                        failed_here += 1;
                    }
                }
            }
        }
        if failed_here > 0 {
            for (i, console) in consoles.iter().enumerate() {
                let boot = if consoles.len() > 1 {
                    format!(", boot {}", i + 1)
                } else {
                    String::new()
                };
                println!("\n---- VM console ({}{boot}) ----", kernel.dir.display());
                print_console(console);
            }
        }
        failed += failed_here;
    }
    if !notes.is_empty() {
        println!();
        for note in &notes {
            println!("{note}");
        }
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

/// What one boot gave.
struct Boot {
    /// The console lines, cleaned.
    console: Vec<String>,
    /// The results of the planned tests, each printed as it arrived.
    results: BTreeMap<String, SuiteResult>,
    /// The first sign of a sick guest kernel, after which qemu was stopped.
    trouble: Option<Trouble>,
}

struct Trouble {
    kind: KernelTrouble,
    /// Index of its first line in the console.
    line: usize,
    /// `SUITE::NAME` of the test that was running.
    during: Option<String>,
}

/// How long the console is still read after a sign of a sick kernel, for
/// the stack traces that follow it (a panic stops qemu sooner).
const TRACE_WINDOW: Duration = Duration::from_secs(10);

/// Builds the initramfs, boots it, prints each planned test's result line as
/// it arrives on the console (named `LABEL SUITE::NAME`) and returns them with
/// the console lines. Stops the VM shortly after a soft lockup, an RCU stall,
/// a `BUG:` or a panic of the guest kernel.
fn boot(
    kernel: &Kernel,
    binaries: &BTreeMap<&'static str, PathBuf>,
    plan: &[(&Suite, Vec<String>)],
) -> Result<Boot, String> {
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
        // A soft lockup panics (-no-reboot then ends qemu): the panic shows
        // its stack even at the console log level /init sets (1: emergencies
        // only), and panic_print=0x20 replays the kernel log, with the stuck
        // CPU's registers and the other CPUs' backtraces, which that level hid.
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet softlockup_panic=1 softlockup_all_cpu_backtrace=1 panic_print=0x20",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("qemu: {e}"))?;
    let stdout = qemu.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        // Not `lines()`: a byte that is not UTF-8 must not end the console.
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let mut deadline = Instant::now() + VM_TIMEOUT;
    let mut console = Vec::new();
    let mut parser = ConsoleParser::default();
    let mut trouble = None;
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let line = clean(line.trim_end_matches('\n'));
                match parser.feed(&line) {
                    Some(Event::Result {
                        suite,
                        name,
                        outcome,
                    }) if planned(plan, &suite, &name) => {
                        println!("test {}{suite}::{name} ... {outcome}", kernel.label);
                    }
                    Some(Event::Trouble(kind)) => {
                        trouble = Some(Trouble {
                            kind,
                            line: console.len(),
                            during: running_test(&line, &parser, plan),
                        });
                        deadline = deadline.min(Instant::now() + TRACE_WINDOW);
                    }
                    _ => {}
                }
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = trouble.is_none();
                break;
            }
        }
    }
    let _ = qemu.kill();
    let out = qemu.wait_with_output().map_err(|e| e.to_string())?;
    if timed_out {
        console.push(format!("(VM killed after {VM_TIMEOUT:?})"));
    } else if trouble.is_some() {
        console.push("(VM stopped after the guest kernel's report)".to_string());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        console.push(format!("(qemu stderr) {}", err.trim()));
    }
    let mut results = parser.results;
    // Only the planned tests count (and were printed).
    for (suite, got) in &mut results {
        got.tests.retain(|name, _| planned(plan, suite, name));
    }
    Ok(Boot {
        console,
        results,
        trouble,
    })
}

/// Console lines, indented: scripts/test.sh sums the lines that start with
/// `test result:`, and the suites in the VM print theirs.
fn print_console(lines: &[String]) {
    for line in lines {
        println!("  {line}");
    }
}

fn planned(plan: &[(&Suite, Vec<String>)], suite: &str, name: &str) -> bool {
    plan.iter()
        .any(|(s, chosen)| s.name == suite && chosen.iter().any(|n| n == name))
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
            } else {
                // Two-character sequences, like SeaBIOS's reset (ESC c).
                chars.next();
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

/// A sign on the console that the guest kernel is sick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KernelTrouble {
    /// A soft or hard lockup or an RCU stall (or the panic it caused): seen
    /// once under TCG in a test that passes on its own, so it is retried once.
    Lockup,
    /// A kernel panic or another `BUG:`: not retried.
    Crash,
}

impl KernelTrouble {
    fn describe(self) -> &'static str {
        match self {
            KernelTrouble::Lockup => "kernel soft lockup (or RCU stall)",
            KernelTrouble::Crash => "kernel BUG or panic",
        }
    }
}

/// Whether a console line reports a sick guest kernel. Looked for anywhere in
/// the line: a kernel message may land after the start of a test's line.
fn kernel_trouble(line: &str) -> Option<KernelTrouble> {
    const LOCKUP: &[&str] = &[
        "BUG: soft lockup",
        "detected hard LOCKUP",
        "self-detected stall on CPU",
        "detected stalls on CPUs",
        // What softlockup_panic=1 and panic_on_rcu_stall make of them.
        "Kernel panic - not syncing: softlockup",
        "Kernel panic - not syncing: RCU Stall",
    ];
    const CRASH: &[&str] = &["BUG: ", "Kernel panic"];
    if LOCKUP.iter().any(|p| line.contains(p)) {
        Some(KernelTrouble::Lockup)
    } else if CRASH.iter().any(|p| line.contains(p)) {
        Some(KernelTrouble::Crash)
    } else {
        None
    }
}

/// What a console line tells.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A test's first result (`ok`, `FAILED`, ...).
    Result {
        suite: String,
        name: String,
        outcome: String,
    },
    /// The first sign of a sick kernel: the lines after it are not read.
    Trouble(KernelTrouble),
}

/// Reads `@@NAVM begin/end` blocks and libtest's `test NAME ... RESULT` lines,
/// one console line at a time.
#[derive(Default)]
struct ConsoleParser {
    /// The suite between `@@NAVM begin` and `@@NAVM end`.
    current: Option<String>,
    results: BTreeMap<String, SuiteResult>,
    trouble: Option<KernelTrouble>,
}

impl ConsoleParser {
    fn feed(&mut self, line: &str) -> Option<Event> {
        if self.trouble.is_some() {
            return None;
        }
        if let Some(kind) = kernel_trouble(line) {
            self.trouble = Some(kind);
            return Some(Event::Trouble(kind));
        }
        if let Some(name) = line.strip_prefix("@@NAVM begin ") {
            self.current = Some(name.trim().to_string());
            self.results.entry(name.trim().to_string()).or_default();
        } else if line.starts_with("@@NAVM end ") {
            self.current = None;
        } else if let (Some(suite), Some(rest)) = (&self.current, line.strip_prefix("test ")) {
            if let Some((name, outcome)) = rest.rsplit_once(" ... ") {
                let tests = &mut self.results.get_mut(suite).expect("suite entry").tests;
                if !tests.contains_key(name) {
                    let outcome = outcome.trim().to_string();
                    tests.insert(name.to_string(), outcome.clone());
                    return Some(Event::Result {
                        suite: suite.clone(),
                        name: name.to_string(),
                        outcome,
                    });
                }
            }
        }
        None
    }
}

/// `SUITE::NAME` of the test running when `line` came: the one the line
/// starts to report (`test NAME ... ` cut short by a kernel message), else
/// the current suite's first planned test without a result (libtest runs
/// them one at a time here, in the order of its `--list`).
fn running_test(
    line: &str,
    parser: &ConsoleParser,
    plan: &[(&Suite, Vec<String>)],
) -> Option<String> {
    let suite = parser.current.as_deref()?;
    let (_, chosen) = plan.iter().find(|(s, _)| s.name == suite)?;
    let started = line
        .strip_prefix("test ")
        .and_then(|rest| rest.split_once(" ... "))
        .map(|(name, _)| name);
    let done = parser.results.get(suite);
    let name = chosen
        .iter()
        .find(|n| Some(n.as_str()) == started)
        .or_else(|| {
            chosen
                .iter()
                .find(|n| done.is_none_or(|r| !r.tests.contains_key(*n)))
        })?;
    Some(format!("{suite}::{name}"))
}

/// The planned tests without a result, in plan order.
fn missing_tests<'a>(
    plan: &[(&'a Suite, Vec<String>)],
    results: &BTreeMap<String, SuiteResult>,
) -> Vec<(&'a Suite, Vec<String>)> {
    plan.iter()
        .filter_map(|(suite, chosen)| {
            let done = results.get(suite.name);
            let left: Vec<String> = chosen
                .iter()
                .filter(|n| done.is_none_or(|r| !r.tests.contains_key(*n)))
                .cloned()
                .collect();
            (!left.is_empty()).then_some((*suite, left))
        })
        .collect()
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

/// Checks of the console reading above, run by `--self-check` (no VM, no
/// root): `cargo test --test vm -- --self-check`.
fn self_check() -> ExitCode {
    let started = Instant::now();
    type Check = fn() -> Result<(), String>;
    let checks: &[(&str, Check)] = &[
        ("kernel_trouble", check_kernel_trouble),
        ("console_parser", check_console_parser),
        ("running_test", check_running_test),
        ("missing_tests", check_missing_tests),
    ];
    println!("\nrunning {} tests (self-check)", checks.len());
    let mut failed = 0;
    for (name, check) in checks {
        match check() {
            Ok(()) => println!("test self_check::{name} ... ok"),
            Err(e) => {
                println!("test self_check::{name} ... FAILED\n    {e}");
                failed += 1;
            }
        }
    }
    summary(checks.len() - failed, failed, 0, started);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

fn check_plan() -> Vec<(&'static Suite, Vec<String>)> {
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect();
    vec![
        (&SUITES[0], names(&["a", "b", "c"])),
        (&SUITES[1], names(&["d"])),
    ]
}

fn check_kernel_trouble() -> Result<(), String> {
    use KernelTrouble::{Crash, Lockup};
    let cases: &[(&str, Option<KernelTrouble>)] = &[
        (
            "[  812.345678] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [netattach:1234]",
            Some(Lockup),
        ),
        (
            "watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [netattach:99]",
            Some(Lockup),
        ),
        (
            "test in_vm::x ... [  9.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [ip:7]",
            Some(Lockup),
        ),
        (
            "[ 30.0] rcu: INFO: rcu_sched self-detected stall on CPU",
            Some(Lockup),
        ),
        (
            "[ 30.0] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:",
            Some(Lockup),
        ),
        (
            "[ 30.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:",
            Some(Lockup),
        ),
        (
            "[ 30.1] Kernel panic - not syncing: softlockup: hung tasks",
            Some(Lockup),
        ),
        (
            "[ 30.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000",
            Some(Crash),
        ),
        (
            "[ 5.0] BUG: kernel NULL pointer dereference, address: 0000000000000008",
            Some(Crash),
        ),
        ("test in_vm::ipvlan_l3_attach ... ok", None),
        (
            "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
            None,
        ),
        ("@@NAVM begin in_vm", None),
        ("thread 'main' panicked at tests/in_vm.rs:12:5:", None),
        ("[ 1.0] Run /init as init process", None),
    ];
    for (line, want) in cases {
        expect_eq(line, kernel_trouble(line), *want)?;
    }
    Ok(())
}

fn check_console_parser() -> Result<(), String> {
    let mut p = ConsoleParser::default();
    let result = |suite: &str, name: &str, outcome: &str| {
        Some(Event::Result {
            suite: suite.into(),
            name: name.into(),
            outcome: outcome.into(),
        })
    };
    let feed: &[(&str, Option<Event>)] = &[
        ("@@NAVM kernel 6.1.0", None),
        // Outside a suite's block: not a result.
        ("test in_vm::a ... ok", None),
        ("@@NAVM begin in_vm", None),
        ("running 3 tests", None),
        ("test a ... ok", result("in_vm", "a", "ok")),
        // Only a test's first result counts (and is printed).
        ("test a ... FAILED", None),
        ("test b ... FAILED", result("in_vm", "b", "FAILED")),
        ("test result: FAILED. 1 passed; 1 failed; 0 ignored", None),
        ("@@NAVM end in_vm rc=101", None),
        ("test c ... ok", None),
        ("@@NAVM begin attach_macvlan", None),
        // A kernel message at the end of a test's line is no result.
        (
            "test d ... [ 9.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [ip:7]",
            Some(Event::Trouble(KernelTrouble::Lockup)),
        ),
        // Nor is anything after it.
        ("test d ... ok", None),
        (
            "[ 9.2] Kernel panic - not syncing: softlockup: hung tasks",
            None,
        ),
    ];
    for (line, want) in feed {
        expect_eq(line, p.feed(line).as_ref(), want.as_ref())?;
    }
    let got = |suite: &str, name: &str| {
        p.results
            .get(suite)
            .and_then(|r| r.tests.get(name))
            .cloned()
    };
    expect_eq("in_vm::a", got("in_vm", "a"), Some("ok".into()))?;
    expect_eq("in_vm::b", got("in_vm", "b"), Some("FAILED".into()))?;
    expect_eq("in_vm::c", got("in_vm", "c"), None)?;
    expect_eq("attach_macvlan::d", got("attach_macvlan", "d"), None)?;
    expect_eq("trouble", p.trouble, Some(KernelTrouble::Lockup))
}

fn check_running_test() -> Result<(), String> {
    let plan = check_plan();
    let mut p = ConsoleParser::default();
    let lockup = "[ 9.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [ip:7]";
    expect_eq("before any suite", running_test(lockup, &p, &plan), None)?;
    for line in ["@@NAVM begin in_vm", "test a ... ok"] {
        p.feed(line);
    }
    expect_eq(
        "after a",
        running_test(lockup, &p, &plan),
        Some("in_vm::b".into()),
    )?;
    // Named by the line it cut short (b may have been skipped by libtest).
    expect_eq(
        "cut short",
        running_test(&format!("test c ... {lockup}"), &p, &plan),
        Some("in_vm::c".into()),
    )?;
    for line in ["test b ... ok", "test c ... ok", "@@NAVM end in_vm rc=0"] {
        p.feed(line);
    }
    expect_eq("between suites", running_test(lockup, &p, &plan), None)
}

fn check_missing_tests() -> Result<(), String> {
    let plan = check_plan();
    let names = |left: Vec<(&Suite, Vec<String>)>| -> Vec<String> {
        left.into_iter()
            .flat_map(|(s, n)| n.into_iter().map(move |n| format!("{}::{n}", s.name)))
            .collect()
    };
    let mut results: BTreeMap<String, SuiteResult> = BTreeMap::new();
    expect_eq(
        "no results",
        names(missing_tests(&plan, &results)),
        vec!["in_vm::a", "in_vm::b", "in_vm::c", "attach_macvlan::d"]
            .into_iter()
            .map(String::from)
            .collect(),
    )?;
    let tests = &mut results.entry("in_vm".into()).or_default().tests;
    tests.insert("a".into(), "ok".into());
    // A failure is a result too: not run again.
    tests.insert("c".into(), "FAILED".into());
    expect_eq(
        "a and c done",
        names(missing_tests(&plan, &results)),
        vec!["in_vm::b".to_string(), "attach_macvlan::d".to_string()],
    )?;
    let tests = &mut results.entry("in_vm".into()).or_default().tests;
    tests.insert("b".into(), "ok".into());
    results
        .entry("attach_macvlan".into())
        .or_default()
        .tests
        .insert("d".into(), "ok".into());
    expect_eq("all done", missing_tests(&plan, &results).len(), 0)
}
