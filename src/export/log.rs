//! Structured log lines for the daemons (`skprof export`): one line per
//! event on stderr, `key=value` text (logfmt) or JSON (`--log-format`), so
//! journald and log shippers can parse them.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `ts=... level=info msg="..." key=value`
    Text,
    /// One JSON object per line: `ts`, `level`, `msg`, then the fields.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// RFC 3339 UTC time with milliseconds, from ms since the epoch.
pub fn rfc3339_ms(unix_ms: u128) -> String {
    let secs = (unix_ms / 1000) as i64;
    let ms = (unix_ms % 1000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = crate::model::clock::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// One log line (without the newline).
pub fn format_line(
    format: LogFormat,
    unix_ms: u128,
    level: Level,
    msg: &str,
    fields: &[(&str, String)],
) -> String {
    let fields: Vec<(&str, serde_json::Value)> = fields
        .iter()
        .map(|(k, v)| (*k, serde_json::Value::from(v.as_str())))
        .collect();
    format_values(format, unix_ms, level, msg, &fields)
}

/// One log line with typed values: in JSON, numbers, booleans, arrays
/// stay what they are; in text, strings are written as logfmt values and
/// anything else as its JSON text.
pub fn format_values(
    format: LogFormat,
    unix_ms: u128,
    level: Level,
    msg: &str,
    fields: &[(&str, serde_json::Value)],
) -> String {
    let ts = rfc3339_ms(unix_ms);
    match format {
        LogFormat::Json => {
            let mut m = serde_json::Map::new();
            m.insert("ts".into(), ts.into());
            m.insert("level".into(), level.name().into());
            m.insert("msg".into(), msg.into());
            for (k, v) in fields {
                m.insert((*k).into(), v.clone());
            }
            serde_json::Value::Object(m).to_string()
        }
        LogFormat::Text => {
            let mut s = format!("ts={ts} level={} msg={}", level.name(), logfmt_value(msg));
            for (k, v) in fields {
                let v = match v {
                    serde_json::Value::String(x) => logfmt_value(x),
                    x => logfmt_value(&x.to_string()),
                };
                s += &format!(" {k}={v}");
            }
            s
        }
    }
}

/// A logfmt value: bare when it has no space, quote, `=` or control
/// character, else quoted with those escaped.
fn logfmt_value(v: &str) -> String {
    let bare = !v.is_empty()
        && !v
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c == '\\' || c.is_control());
    if bare {
        return v.to_string();
    }
    let mut s = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => s += "\\\"",
            '\\' => s += "\\\\",
            '\n' => s += "\\n",
            c if c.is_control() => s += &format!("\\u{{{:x}}}", c as u32),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// Writes log lines to stderr.
#[derive(Debug, Clone, Copy)]
pub struct Logger {
    pub format: LogFormat,
}

impl Logger {
    pub fn log(&self, level: Level, msg: &str, fields: &[(&str, String)]) {
        let fields: Vec<(&str, serde_json::Value)> = fields
            .iter()
            .map(|(k, v)| (*k, serde_json::Value::from(v.as_str())))
            .collect();
        self.log_values(level, msg, &fields);
    }

    /// A line with typed values (see [`format_values`]).
    pub fn log_values(&self, level: Level, msg: &str, fields: &[(&str, serde_json::Value)]) {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let line = format_values(self.format, ms, level, msg, fields);
        // A closed stderr must not stop the daemon: the line is lost.
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    pub fn info(&self, msg: &str, fields: &[(&str, String)]) {
        self.log(Level::Info, msg, fields);
    }

    pub fn warn(&self, msg: &str, fields: &[(&str, String)]) {
        self.log(Level::Warn, msg, fields);
    }

    pub fn error(&self, msg: &str, fields: &[(&str, String)]) {
        self.log(Level::Error, msg, fields);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        // 2024-02-29 12:34:56.789 (a leap day).
        assert_eq!(rfc3339_ms(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn text_lines_are_logfmt() {
        let l = format_line(
            LogFormat::Text,
            0,
            Level::Warn,
            "listening on a non-loopback address",
            &[
                ("addr", "0.0.0.0:9435".into()),
                ("why", "say \"hi\"\n".into()),
                ("empty", String::new()),
            ],
        );
        assert_eq!(
            l,
            "ts=1970-01-01T00:00:00.000Z level=warn msg=\"listening on a non-loopback address\" \
             addr=0.0.0.0:9435 why=\"say \\\"hi\\\"\\n\" empty=\"\""
        );
    }

    #[test]
    fn json_lines_parse_back() {
        let l = format_line(
            LogFormat::Json,
            1000,
            Level::Info,
            "rescan",
            &[("programs", "3".into())],
        );
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["ts"], "1970-01-01T00:00:01.000Z");
        assert_eq!(v["level"], "info");
        assert_eq!(v["msg"], "rescan");
        assert_eq!(v["programs"], "3");
    }

    #[test]
    fn typed_values_stay_typed_in_json_and_bare_in_text() {
        let fields = [
            ("count", serde_json::json!(20)),
            ("netns", serde_json::json!([4026531840u32])),
            ("program", serde_json::json!("wl tc[7]")),
        ];
        let j = format_values(LogFormat::Json, 0, Level::Warn, "leak", &fields);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["count"], 20);
        assert_eq!(v["netns"][0], 4026531840u32);
        assert_eq!(v["program"], "wl tc[7]");
        let t = format_values(LogFormat::Text, 0, Level::Warn, "leak", &fields);
        assert_eq!(
            t,
            "ts=1970-01-01T00:00:00.000Z level=warn msg=leak count=20 netns=[4026531840] \
             program=\"wl tc[7]\""
        );
    }
}
