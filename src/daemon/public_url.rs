//! Where providers reach the daemon. A configured URL wins; otherwise the
//! one `convagent tunnel` recorded in the state dir, re-read when the file
//! changes (a new tunnel needs no restart); otherwise the Host header.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

pub struct PublicUrl {
    configured: Option<String>,
    recorded: Option<PathBuf>,
    cache: Mutex<Option<(SystemTime, Option<String>)>>,
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
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, url)) = cache.as_ref()
            && *at == modified
        {
            return url.clone();
        }
        let url = std::fs::read_to_string(path)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| t.starts_with("http"));
        *cache = Some((modified, url.clone()));
        url
    }
}

/// The file `convagent tunnel` writes the public URL to.
pub fn recorded_path(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("public_url")
}
