//! Any text as a config file: the loader answers with a config or an error
//! that names the file and the key, and never panics. `cargo fuzz run config`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("convagent-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("config.toml");
    if std::fs::write(&path, text).is_err() {
        return;
    }
    if let Ok(config) = convagent::config::read_file(&path) {
        let _ = config.validate();
    }
});
