//! Every per-call and per-driver bound, in one place: the policy's `[limits]` table.
//!
//! A hostile driver may fail its own calls by exceeding one of these, never the node's: each
//! has a safe default, a hard ceiling a policy cannot raise it past, and the capability that
//! enforces it names the limit in its error message (`limit exceeded: limits.<name> ...`).

use serde::{Deserialize, Serialize};

/// The `[limits]` table of a policy (defaults shown in [`Limits::default`]).
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory of the whole store, in MiB.
    pub memory_mib: u64,
    /// Elements of any one table (a table of funcrefs costs host memory outside `memory_mib`).
    pub table_elements: u64,
    /// Core instances, tables and memories per store.
    pub instances: u64,
    pub tables: u64,
    pub memories: u64,
    /// Per verb; kubelet itself has no timeout.
    pub deadline_seconds: u64,
    /// kubelet kills `waitforattach` after 10 minutes; it must end, with a reply, before that.
    pub wait_for_attach_deadline_seconds: u64,
    /// Bytes of driver log (the `log` import and captured stdout/stderr) one call may write.
    pub log_bytes_per_call: u64,
    /// Longest driver log line; longer messages are cut.
    pub log_line_bytes: u64,
    /// Longest audit line; arguments are truncated to fit.
    pub audit_line_bytes: u64,
    /// Size of the driver's `[state]` directory, all files together.
    pub state_bytes: u64,
    /// Files and directories in the state directory.
    pub state_files: u64,
    /// Mounts (mount, bind, remount) one call may make.
    pub mounts_per_call: u64,
    /// Processes (threads included) an `exec`'d program and its descendants may run at once.
    pub exec_processes: u64,
    /// How long one call may hold a device lock.
    pub lock_hold_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 256,
            table_elements: 100_000,
            instances: 100,
            tables: 100,
            memories: 10,
            deadline_seconds: 120,
            wait_for_attach_deadline_seconds: 570,
            log_bytes_per_call: 1 << 20,
            log_line_bytes: 4096,
            audit_line_bytes: 8192,
            state_bytes: 64 << 20,
            state_files: 10_000,
            mounts_per_call: 16,
            exec_processes: 32,
            lock_hold_seconds: 60,
        }
    }
}

impl Limits {
    /// Each limit: its name, its value, and its ceiling (a policy may lower a limit, or raise
    /// it up to the ceiling).
    pub fn entries(&self) -> [(&'static str, u64, u64); 15] {
        [
            ("memory_mib", self.memory_mib, 4096),
            ("table_elements", self.table_elements, 10_000_000),
            ("instances", self.instances, 10_000),
            ("tables", self.tables, 10_000),
            ("memories", self.memories, 1000),
            ("deadline_seconds", self.deadline_seconds, 3600),
            (
                "wait_for_attach_deadline_seconds",
                self.wait_for_attach_deadline_seconds,
                590,
            ),
            ("log_bytes_per_call", self.log_bytes_per_call, 64 << 20),
            ("log_line_bytes", self.log_line_bytes, 1 << 20),
            ("audit_line_bytes", self.audit_line_bytes, 1 << 20),
            ("state_bytes", self.state_bytes, 64 << 30),
            ("state_files", self.state_files, 10_000_000),
            ("mounts_per_call", self.mounts_per_call, 1000),
            ("exec_processes", self.exec_processes, 4096),
            ("lock_hold_seconds", self.lock_hold_seconds, 600),
        ]
    }

    pub fn validate(&self) -> Result<(), String> {
        for (name, value, max) in self.entries() {
            if !(1..=max).contains(&value) {
                return Err(format!(
                    "limits.{name} must be between 1 and {max}, not {value}"
                ));
            }
        }
        Ok(())
    }
}

/// The message every capability uses when a call goes past a limit.
pub fn exceeded(name: &str, detail: impl std::fmt::Display) -> String {
    format!("limit exceeded: limits.{name} ({detail})")
}

/// The store's resource limiter: linear memory, table elements and the counts of instances,
/// tables and memories. A growth past a limit fails (the guest sees `memory.grow` or
/// `table.grow` return -1, as the spec allows) and is remembered, so that whatever the guest
/// does next (usually trap), the reply names the limit.
pub struct CallLimiter {
    limits: Limits,
    /// The first limit a growth ran into, as the message the call fails with.
    pub hit: Option<String>,
}

impl CallLimiter {
    pub fn new(limits: &Limits) -> CallLimiter {
        CallLimiter {
            limits: *limits,
            hit: None,
        }
    }

    fn refuse(&mut self, message: String) -> wasmtime::Result<bool> {
        self.hit.get_or_insert(message);
        Ok(false)
    }
}

fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl wasmtime::ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = count(self.limits.memory_mib.saturating_mul(1 << 20));
        if desired <= allowed {
            return Ok(true);
        }
        self.refuse(exceeded(
            "memory_mib",
            format!("the driver asked for {} MiB", desired >> 20),
        ))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired <= count(self.limits.table_elements) {
            return Ok(true);
        }
        self.refuse(exceeded(
            "table_elements",
            format!("the driver asked for a table of {desired} elements"),
        ))
    }

    fn instances(&self) -> usize {
        count(self.limits.instances)
    }

    fn tables(&self) -> usize {
        count(self.limits.tables)
    }

    fn memories(&self) -> usize {
        count(self.limits.memories)
    }
}

/// Which count limit a wasmtime instantiation error is about, if any.
pub fn count_limit_in(error: &str) -> Option<&'static str> {
    let error = error.to_ascii_lowercase();
    if !error.contains("resource limit exceeded") {
        return None;
    }
    ["instance", "table", "memor"]
        .iter()
        .zip(["instances", "tables", "memories"])
        .find(|(word, _)| error.contains(**word))
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_every_limit_is_listed_once() {
        let limits = Limits::default();
        assert_eq!(limits.validate(), Ok(()));
        let mut names: Vec<&str> = limits.entries().iter().map(|(n, _, _)| *n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), limits.entries().len());
        // Each entry names the field it reads: the policy key of that name changes it.
        for (name, _, _) in limits.entries() {
            let policy: Limits = toml::from_str(&format!("{name} = 7")).unwrap();
            let value = policy
                .entries()
                .into_iter()
                .find(|(n, _, _)| *n == name)
                .unwrap()
                .1;
            assert_eq!(value, 7, "{name}");
        }
    }

    #[test]
    fn growth_past_a_limit_fails_and_is_remembered() {
        use wasmtime::ResourceLimiter;
        let mut limiter = CallLimiter::new(&Limits {
            memory_mib: 1,
            table_elements: 10,
            ..Limits::default()
        });
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert!(limiter.table_growing(0, 10, None).unwrap());
        assert!(limiter.hit.is_none());
        assert!(!limiter.table_growing(10, 1 << 30, None).unwrap());
        assert!(!limiter.memory_growing(0, 2 << 20, None).unwrap());
        let hit = limiter.hit.unwrap();
        assert!(hit.contains("limits.table_elements"), "{hit}");
        assert_eq!(
            count_limit_in("resource limit exceeded: instance count too high at 2"),
            Some("instances")
        );
        assert_eq!(count_limit_in("unrelated"), None);
    }

    #[test]
    fn zero_and_values_past_the_ceiling_are_refused() {
        let zero = Limits {
            mounts_per_call: 0,
            ..Limits::default()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .contains("limits.mounts_per_call")
        );
        let huge = Limits {
            table_elements: u64::MAX,
            ..Limits::default()
        };
        assert!(
            huge.validate()
                .unwrap_err()
                .contains("limits.table_elements")
        );
    }
}
