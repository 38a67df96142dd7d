//! Small formatting helpers shared by the commands' human output.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// `println!` for command output: when the reader went away
/// (`convagent history | head -1`) the command ends quietly, as Unix
/// tools do, instead of panicking on the broken pipe.
macro_rules! outln {
    () => { $crate::output::write_stdout(format_args!("\n"), true) };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)), true)
    };
}

/// `print!` (flushed) with the same behaviour as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*), true) };
}

/// Status lines of a long-running command (`tunnel`) that must keep
/// running, and clean up, whether or not anyone reads its output.
macro_rules! sayln {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)), false)
    };
}

/// Writes to stdout. A closed stdout ends the process with success when
/// `exit_on_close`, and is ignored otherwise; other write errors are
/// ignored too (there is nowhere left to report them).
pub fn write_stdout(args: std::fmt::Arguments<'_>, exit_on_close: bool) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| stdout.flush());
    if let Err(e) = written
        && e.kind() == std::io::ErrorKind::BrokenPipe
        && exit_on_close
    {
        std::process::exit(0);
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// "12s ago", "5m ago", "3h ago", "2d ago".
pub fn age(then_ms: i64, now_ms: i64) -> String {
    let secs = (now_ms - then_ms).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The first line of `text`, cut to `max` characters.
pub fn preview(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut out: String = line.chars().take(max).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// What a refusal was, by who made it: a guardrail's rule, a limit's
/// notice, or the notice for media the agent cannot take in.
pub fn refusal(provider: &str, model: &str) -> String {
    match provider {
        convagent::core::limits::NOTICE_PROVIDER => format!("limit notice `{model}`"),
        convagent::core::media::NOTICE_PROVIDER => format!("{model} notice (media not taken in)"),
        _ => format!("refused by guardrail `{model}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_and_ages() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_709_251_199_000), "2024-02-29 23:59:59");
        assert_eq!(utc(1_795_000_000_000), "2026-11-18 11:06:40");
        assert_eq!(age(0, 59_000), "59s ago");
        assert_eq!(age(0, 7_200_000), "2h ago");
        assert_eq!(preview("hello\nworld", 10), "hello…");
        assert_eq!(preview("hi", 10), "hi");
    }
}
