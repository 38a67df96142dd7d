//! Where providers reach the daemon. A configured URL wins; otherwise the
//! one `convagent tunnel` recorded in the state dir, re-read when the file
//! changes (a new tunnel needs no restart); otherwise the Host header.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

/// What identifies one version of the recorded file. `tunnel` replaces it
/// by renaming a new file over it, so the inode changes with every write,
/// even two writes within one tick of the file system's clock.
type Version = (SystemTime, u64, u64);

pub struct PublicUrl {
    configured: Option<String>,
    recorded: Option<PathBuf>,
    cache: Mutex<Option<(Version, Option<String>)>>,
}

impl PublicUrl {
    pub fn new(configured: Option<String>, recorded: Option<PathBuf>) -> Self {
        PublicUrl {
            configured,
            recorded,
            cache: Mutex::new(None),
        }
    }

    /// The public base URL now, if one is known.
    pub fn current(&self) -> Option<String> {
        if let Some(c) = &self.configured {
            return Some(c.clone());
        }
        let path = self.recorded.as_ref()?;
        let meta = std::fs::metadata(path).ok()?;
        let version = (meta.modified().ok()?, meta.ino(), meta.len());
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, url)) = cache.as_ref()
            && *seen == version
        {
            return url.clone();
        }
        let url = std::fs::read_to_string(path)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| t.starts_with("http"));
        *cache = Some((version, url.clone()));
        url
    }
}

/// The file `convagent tunnel` writes the public URL to.
pub fn recorded_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("public_url")
}
