//! The log view's data: the daemon's JSON log (`<state>/logs/convagent.
//! YYYY-MM-DD.log`), followed from where it was last read, parsed into
//! lines the view filters by level and by correlation ids.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use convagent::telemetry::LOG_FILE_PREFIX;

/// Lines kept in memory; older ones scroll out.
pub const KEPT: usize = 5_000;
/// How much of a file is read when the view first opens it.
const FIRST_READ: u64 = 1 << 20;

/// A log level, least to most verbose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl Level {
    fn parse(s: &str) -> Level {
        match s {
            "ERROR" => Level::Error,
            "WARN" => Level::Warn,
            "DEBUG" => Level::Debug,
            "TRACE" => Level::Trace,
            _ => Level::Info,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }

    /// The next filter `v` chooses: more and more verbose, then back.
    pub fn next(self) -> Level {
        match self {
            Level::Error => Level::Warn,
            Level::Warn => Level::Info,
            Level::Info => Level::Debug,
            Level::Debug => Level::Trace,
            Level::Trace => Level::Error,
        }
    }
}

/// One line of the JSON log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `HH:MM:SS` (UTC, as the log writes it).
    pub time: String,
    pub level: Level,
    pub message: String,
    /// The other fields, `key=value`, span fields included.
    pub fields: String,
    /// The line as written, for matching correlation ids anywhere in it.
    pub raw: String,
}

impl LogLine {
    /// Parses one line; a line that is not JSON is kept as its text.
    pub fn parse(raw: &str) -> LogLine {
        let Ok(serde_json::Value::Object(v)) = serde_json::from_str::<serde_json::Value>(raw)
        else {
            return LogLine {
                time: String::new(),
                level: Level::Info,
                message: raw.to_string(),
                fields: String::new(),
                raw: raw.to_string(),
            };
        };
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let time = v
            .get("timestamp")
            .and_then(|t| t.as_str())
            .and_then(|t| t.get(11..19))
            .unwrap_or_default()
            .to_string();
        let level = Level::parse(v.get("level").and_then(|l| l.as_str()).unwrap_or(""));
        let mut message = String::new();
        let mut fields = Vec::new();
        if let Some(serde_json::Value::Object(f)) = v.get("fields") {
            for (k, v) in f {
                if k == "message" {
                    message = text(v);
                } else {
                    fields.push(format!("{k}={}", text(v)));
                }
            }
        }
        if let Some(serde_json::Value::Object(span)) = v.get("span") {
            for (k, v) in span {
                let pair = format!("{k}={}", text(v));
                if k != "name" && !fields.contains(&pair) {
                    fields.push(pair);
                }
            }
        }
        LogLine {
            time,
            level,
            message,
            fields: fields.join(" "),
            raw: raw.to_string(),
        }
    }

    /// Whether the view shows this line under these filters.
    pub fn shown(&self, level: Level, ids: Option<&[String]>) -> bool {
        self.level <= level
            && ids.is_none_or(|ids| ids.iter().any(|id| self.raw.contains(id.as_str())))
    }
}

/// Follows the newest log file in a directory: each `read` returns the
/// lines written since the last one, switching files when the day rolls.
#[derive(Debug, Default)]
pub struct Tail {
    dir: PathBuf,
    file: Option<PathBuf>,
    offset: u64,
    /// A line not finished yet when last read.
    partial: String,
    /// The first read began mid-line: its first piece is dropped.
    mid_line: bool,
}

impl Tail {
    pub fn new(dir: PathBuf) -> Tail {
        Tail {
            dir,
            ..Tail::default()
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest `convagent.*.log` (the date in the name sorts).
    fn newest(&self) -> Option<PathBuf> {
        let prefix = format!("{LOG_FILE_PREFIX}.");
        std::fs::read_dir(&self.dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".log"))
            })
            .max()
    }

    /// Appends what was written since the last call to `lines`, keeping
    /// the newest [`KEPT`].
    pub fn read(&mut self, lines: &mut VecDeque<LogLine>) -> std::io::Result<()> {
        let Some(newest) = self.newest() else {
            return Ok(());
        };
        if self.file.as_ref() != Some(&newest) {
            let first = self.file.is_none();
            self.file = Some(newest.clone());
            self.partial.clear();
            // The first file is read from near its end; a new day's file
            // from its start.
            let len = std::fs::metadata(&newest)?.len();
            self.offset = if first {
                len.saturating_sub(FIRST_READ)
            } else {
                0
            };
            self.mid_line = self.offset > 0;
        }
        let mut file = File::open(&newest)?;
        let len = file.metadata()?.len();
        if len < self.offset {
            // Truncated: start again.
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::with_capacity((len - self.offset) as usize);
        file.take(len - self.offset).read_to_end(&mut bytes)?;
        let skip_first = std::mem::take(&mut self.mid_line);
        self.offset += bytes.len() as u64;
        let text = String::from_utf8_lossy(&bytes);
        let mut pieces: Vec<&str> = text.split('\n').collect();
        let rest = pieces.pop().unwrap_or_default().to_string();
        for (i, piece) in pieces.into_iter().enumerate() {
            if i == 0 && skip_first {
                continue; // began mid-line
            }
            let line = if i == 0 {
                std::mem::take(&mut self.partial) + piece
            } else {
                piece.to_string()
            };
            if !line.trim().is_empty() {
                lines.push_back(LogLine::parse(&line));
            }
        }
        self.partial.push_str(&rest);
        while lines.len() > KEPT {
            lines.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_is_parsed_with_its_span() {
        let l = LogLine::parse(
            r#"{"timestamp":"2026-12-04T17:20:32.331021Z","level":"WARN","fields":{"message":"reply stored","reply_id":8},"target":"convagent::core::agent","span":{"channel":"cli","correlation_id":"01a2","name":"message"}}"#,
        );
        assert_eq!(
            (l.time.as_str(), l.level, l.message.as_str()),
            ("17:20:32", Level::Warn, "reply stored")
        );
        assert_eq!(l.fields, "reply_id=8 channel=cli correlation_id=01a2");
        assert!(l.shown(Level::Info, Some(&["01a2".into()])));
        assert!(!l.shown(Level::Error, None), "warn is under error");
        assert!(!l.shown(Level::Info, Some(&["ffff".into()])));
        let odd = LogLine::parse("not json");
        assert_eq!(odd.message, "not json");
    }

    #[test]
    fn the_tail_follows_appends_partial_lines_and_a_new_day() {
        let dir = tempfile::tempdir().unwrap();
        let mut tail = Tail::new(dir.path().to_path_buf());
        let mut lines = VecDeque::new();
        tail.read(&mut lines).unwrap();
        assert!(lines.is_empty(), "no file yet");
        let day1 = dir.path().join("convagent.2026-12-03.log");
        std::fs::write(
            &day1,
            "{\"level\":\"INFO\",\"fields\":{\"message\":\"one\"}}\n{\"lev",
        )
        .unwrap();
        tail.read(&mut lines).unwrap();
        assert_eq!(lines.len(), 1);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&day1)
            .unwrap();
        std::io::Write::write_all(
            &mut f,
            b"el\":\"ERROR\",\"fields\":{\"message\":\"two\"}}\n",
        )
        .unwrap();
        tail.read(&mut lines).unwrap();
        assert_eq!(
            lines.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
        assert_eq!(lines[1].level, Level::Error);
        std::fs::write(
            dir.path().join("convagent.2026-12-04.log"),
            "{\"level\":\"INFO\",\"fields\":{\"message\":\"three\"}}\n",
        )
        .unwrap();
        tail.read(&mut lines).unwrap();
        assert_eq!(lines.back().unwrap().message, "three", "the new day's file");
    }
}
