//! The NRI face's log: one line per event with a UTC timestamp, to stderr
//! (external mode, where systemd's journal or a terminal takes it) or appended
//! to a file (launched by the runtime, whose stdout and stderr go nowhere).

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the launched plugin logs unless told otherwise.
pub const DEFAULT_LOG_FILE: &str = "/var/log/netattach-nri.log";

enum Sink {
    Stderr,
    File(PathBuf, std::fs::File),
}

static SINK: Mutex<Option<Sink>> = Mutex::new(None);

/// Logs to stderr from now on.
pub fn to_stderr() {
    *SINK.lock().unwrap_or_else(|p| p.into_inner()) = Some(Sink::Stderr);
}

/// Appends to `path` from now on (created 0640 if missing). On failure the
/// previous destination stays and the error is returned.
pub fn to_file(path: &Path) -> std::io::Result<()> {
    let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(&*sink, Some(Sink::File(p, _)) if p == path) {
        return Ok(());
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    *sink = Some(Sink::File(path.to_path_buf(), file));
    Ok(())
}

/// Writes one line. Used through [`nri_log!`](crate::nri_log).
pub fn write(level: &str, args: fmt::Arguments<'_>) {
    let line = format!(
        "{} netattach-nri[{}] {level} {args}\n",
        timestamp(SystemTime::now()),
        std::process::id()
    );
    let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
    match &mut *sink {
        Some(Sink::File(_, f)) => {
            let _ = f.write_all(line.as_bytes());
        }
        _ => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// `nri_log!(info, "...", args)`; levels `info`, `warn`, `error`.
#[macro_export]
macro_rules! nri_log {
    (info, $($arg:tt)*) => { $crate::nri::log::write("INFO", format_args!($($arg)*)) };
    (warn, $($arg:tt)*) => { $crate::nri::log::write("WARN", format_args!($($arg)*)) };
    (error, $($arg:tt)*) => { $crate::nri::log::write("ERROR", format_args!($($arg)*)) };
}

/// RFC 3339 in UTC with milliseconds: `2025-03-01T12:34:56.789Z`.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (leap day) 12:34:56.789
        let t = UNIX_EPOCH + Duration::from_millis(951_827_696_789);
        assert_eq!(timestamp(t), "2000-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_767_225_599);
        assert_eq!(timestamp(t), "2025-12-31T23:59:59.000Z");
    }
}
