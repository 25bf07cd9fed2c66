//! `flex:volume/log`: the driver's diagnostics, into the host's log file (never to kubelet).

use crate::bindings::flex::volume::log::{Host, Level};
use crate::logfile::Logger;

/// Longer messages are cut: a driver must not be able to fill the node's disk through its log.
const MAX_MESSAGE_BYTES: usize = 4096;

impl Host for Logger {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        let mut end = message.len().min(MAX_MESSAGE_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        Logger::log(self, level, "driver", &message[..end]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_lines_are_json_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flex.log");
        let mut logger = Logger::to_file(&path, "acme~x", "mount");
        Host::log(&mut logger, Level::Warn, "one\nline".into());
        Host::log(&mut logger, Level::Info, "é".repeat(5000));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
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
        assert_eq!(
            lines[1]["message"].as_str().unwrap().len(),
            MAX_MESSAGE_BYTES
        );
    }
}
