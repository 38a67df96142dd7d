//! The alerting rules we ship (`deploy/prometheus`): valid for Prometheus,
//! raising what they promise on sample series, and about metrics the daemon
//! really exports.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Harness, Options};

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is needed to check the alerting rules ({e}): install Debian's \
                 `prometheus` package (`./install.sh --deps-only` does)"
            )
        })
}

#[test]
fn the_rules_are_valid_and_raise_what_they_promise() {
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
    ] {
        let out = promtool(args);
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every `convagent_*` series a rule reads is one the daemon registers (a
/// renamed metric would leave its alert silent for ever); the families with
/// series from the start are checked on a running daemon's `/metrics` too.
#[tokio::test]
async fn the_rules_read_metrics_the_daemon_exports() {
    let rules = std::fs::read_to_string(rules_dir().join("alerts.yml")).unwrap();
    let registered = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/daemon/metrics.rs"),
    )
    .unwrap();
    let h = Harness::start(Options::default()).await;
    let exported = h.metrics().await;
    h.stop().await;
    let mut read = Vec::new();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("convagent_") && !read.contains(&word) {
            read.push(word);
        }
    }
    assert!(read.len() >= 5, "{read:?}");
    for name in read {
        // Counters are exported as `name_total`, registered as `name`.
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            registered.contains(&format!("\"{family}\"")),
            "the rules read {name}, which the daemon does not register"
        );
    }
    for gauge in [
        "convagent_outbox_depth",
        "convagent_dead_letters",
        "convagent_waiting_for_human",
        "convagent_waiting_for_human_oldest_seconds",
    ] {
        assert!(
            exported.contains(&format!("# TYPE {gauge} gauge")),
            "{exported}"
        );
    }
}
