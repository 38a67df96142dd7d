//! Fetched files on disk, content-addressed: `<dir>/<first two hex digits>/
//! <sha256>`. The same file sent twice is kept once; a name says what it
//! holds, so a file is never half-written under it (written beside it,
//! synced, then renamed). The directory is the owner's alone (0700).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::core::media::MediaFiles;

pub struct DiskFiles {
    root: PathBuf,
}

impl DiskFiles {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DiskFiles { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `file` is kept, if it is a SHA-256 in hex (nothing else names
    /// a file here, so no name reaches outside the directory).
    fn path(&self, file: &str) -> Option<PathBuf> {
        let valid = file.len() == 64
            && file
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| self.root.join(&file[..2]).join(file))
    }
}

fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

impl MediaFiles for DiskFiles {
    fn put(&self, bytes: &[u8]) -> Result<String, String> {
        let file = hex::encode(Sha256::digest(bytes));
        let path = self.path(&file).ok_or("unnamed file")?;
        if path.exists() {
            return Ok(file);
        }
        let dir = path.parent().ok_or("no directory")?;
        let said = |e: std::io::Error| format!("cannot keep a file in {}: {e}", dir.display());
        private_dir(dir).map_err(said)?;
        let partial = dir.join(format!(
            ".{file}.{}.{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let written = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)?;
            out.write_all(bytes)?;
            out.sync_all()?;
            std::fs::rename(&partial, &path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&partial);
            return Err(said(e));
        }
        Ok(file)
    }

    fn get(&self, file: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(file)?).ok()
    }

    fn remove(&self, file: &str) -> Result<bool, String> {
        let Some(path) = self.path(file) else {
            return Ok(false);
        };
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
        }
    }

    fn locate(&self, file: &str) -> String {
        self.path(file)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_kept_once_under_its_hash_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let files = DiskFiles::new(dir.path().join("media"));
        let name = files.put(b"hello").unwrap();
        assert_eq!(
            name,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(files.put(b"hello").unwrap(), name);
        assert_eq!(files.get(&name).as_deref(), Some(&b"hello"[..]));
        let path = dir.path().join("media/2c").join(&name);
        assert_eq!(files.locate(&name), path.display().to_string());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // Nothing but the file is left beside it.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        assert!(files.remove(&name).unwrap());
        assert!(!files.remove(&name).unwrap());
        assert_eq!(files.get(&name), None);
        // A name that is not a hash reaches nothing.
        assert_eq!(files.get("../../etc/passwd"), None);
        assert!(!files.remove("../x").unwrap());
    }
}
