//! `flex:volume/log`: the driver's diagnostics, into the host's log file (never to kubelet),
//! within the call's log budget (`limits.log_line_bytes`, `limits.log_bytes_per_call`).

use crate::bindings::flex::volume::log::{Host, Level};
use crate::logfile::Logger;

impl Host for Logger {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.driver_log(level, "driver", &message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;

    fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn driver_lines_are_json_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flex.log");
        let mut logger = Logger::to_file(&path, "acme~x", "mount");
        Host::log(&mut logger, Level::Warn, "one\nline".into());
        Host::log(&mut logger, Level::Info, "é".repeat(5000));
        let lines = lines(&path);
        assert_eq!(
            lines.len(),
            2,
            "a newline in a message must not split the line"
        );
        assert_eq!(
            (lines[0]["level"].as_str(), lines[0]["message"].as_str()),
            (Some("warn"), Some("one\nline"))
        );
        assert_eq!(
            (lines[0]["driver"].as_str(), lines[0]["source"].as_str()),
            (Some("acme~x"), Some("driver"))
        );
        let default = Limits::default().log_line_bytes as usize;
        assert_eq!(lines[1]["message"].as_str().unwrap().len(), default);
        assert_eq!(lines[1]["truncated"], true);
    }

    #[test]
    fn a_flood_is_cut_at_the_call_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flex.log");
        let mut logger = Logger::to_file(&path, "acme~x", "mount");
        logger.set_limits(&Limits {
            log_bytes_per_call: 64 << 10,
            ..Limits::default()
        });
        for _ in 0..10_000 {
            Host::log(&mut logger, Level::Info, "x".repeat(1000));
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size < (64 << 10) + 1024, "{size}");
        let lines = lines(&path);
        assert!(
            lines.last().unwrap()["message"]
                .as_str()
                .unwrap()
                .contains("limits.log_bytes_per_call")
        );
    }
}
