//! Files and directories of netattach's state, made so that no other local
//! user can interfere: directories 0700, files 0600, opened without following
//! a symlink planted in their place; a state or config directory that other
//! users can write is refused (they could hold the store's lock forever,
//! replace a file with a symlink, or define networks).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Creates `dir` (and missing parents) 0700 if needed, then checks it with
/// [`refuse_shared`].
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    refuse_shared(dir)
}

/// Fails when `dir` is writable by group or others, or owned by someone
/// other than root or this user; the message says how to fix it.
pub fn refuse_shared(dir: &Path) -> io::Result<()> {
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other("not a directory"));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "writable by other users (mode {mode:04o}): they could hold its locks or plant \
                 files in it; fix with `chmod go-w {}`",
                dir.display()
            ),
        ));
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "owned by uid {}, who could open it to anyone; fix with `chown {me} {}`",
                meta.uid(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Opens `path` for reading and writing, creating it 0600; a symlink in its
/// place is refused (ELOOP), not followed.
pub fn private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let p =
            std::env::temp_dir().join(format!("netattach-securefs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn new_dirs_and_files_are_private() {
        let dir = scratch("new").join("state");
        private_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let f = private_file(&dir.join("x")).unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o600);
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_shared_dir_is_refused_with_the_fix() {
        let dir = scratch("shared");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        let err = private_dir(&dir).unwrap_err().to_string();
        assert!(
            err.contains("mode 1777") && err.contains("chmod go-w"),
            "{err}"
        );
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = scratch("link");
        private_dir(&dir).unwrap();
        let target = dir.join("target");
        std::os::unix::fs::symlink(&target, dir.join("lock")).unwrap();
        let err = private_file(&dir.join("lock")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        assert!(!target.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
