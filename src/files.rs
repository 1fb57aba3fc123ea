//! Private files in a state dir: folders 0700, files 0600, written atomically.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// Creates `dir` (and its parents) if needed and makes it readable by its
/// owner only.
///
/// # Errors
///
/// When the folder cannot be created or its mode set, naming the folder.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create state dir {}: pick a writable one with --state-dir",
            dir.display()
        )
    })?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict state dir {} to mode 0700", dir.display()))
}

/// Makes sure the file at `path` exists with mode 0600 before a database
/// opens it: SQLite gives its `-wal` and `-shm` files the database file's
/// mode, and redb keeps the mode it finds.
///
/// # Errors
///
/// When the file cannot be created or its mode set, naming it.
pub fn ensure_private_file(path: &Path) -> anyhow::Result<()> {
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .and_then(|_| fs::set_permissions(path, fs::Permissions::from_mode(0o600)))
        .with_context(|| {
            format!(
                "cannot create {} with mode 0600: pick a writable --state-dir",
                path.display()
            )
        })
}

/// Writes `contents` to `path` with mode 0600 so that a crash leaves either
/// the old file or the new one, never half of it.
///
/// # Errors
///
/// When the file cannot be written, synced or renamed, naming it.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        if let Some(parent) = path.parent() {
            fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_and_folders_get_owner_only_modes() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state/nested");
        ensure_private_dir(&dir).unwrap();
        let file = dir.join("token");
        write_private(&file, b"one").unwrap();
        write_private(&file, b"two").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
    }
}
