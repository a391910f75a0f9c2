//! `NETATTACH_TRACE=1`: one stderr line per phase of an attach, with the
//! milliseconds since `main` began, so an operator can see where a slow
//! container start goes (BENCHMARKS.md uses it). Off, a mark costs one load
//! of a cached flag. Time before `main` (exec, loader) is not in it: that is
//! what `perf stat` of the whole process minus the last mark shows.

use std::sync::OnceLock;
use std::time::Instant;

struct Trace {
    on: bool,
    start: Instant,
}

fn trace() -> &'static Trace {
    static TRACE: OnceLock<Trace> = OnceLock::new();
    TRACE.get_or_init(|| Trace {
        on: std::env::var_os("NETATTACH_TRACE").is_some_and(|v| v == "1"),
        start: Instant::now(),
    })
}

/// Marks the end of a phase (the first call, at the top of `main`, starts the clock).
pub fn mark(phase: &str) {
    let t = trace();
    if t.on {
        eprintln!(
            "netattach trace: {:7.3} ms  {phase}",
            t.start.elapsed().as_secs_f64() * 1e3
        );
    }
}
