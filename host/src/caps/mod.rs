//! Host imports, one module per capability, each with its policy check beside it.

pub mod block;
pub mod config;
pub mod exec;
pub mod http;
pub mod log;
pub mod mounts;
pub mod paths;
pub mod state;

/// Glob patterns from a policy, compiled once per call. `*` never crosses a `/`.
#[derive(Debug, Default)]
pub struct Patterns(Vec<glob::Pattern>);

impl Patterns {
    pub fn compile(patterns: &[String]) -> Result<Patterns, String> {
        patterns
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| format!("invalid pattern {p:?}: {e}")))
            .collect::<Result<_, _>>()
            .map(Patterns)
    }

    /// The first pattern that matches, to name the rule that allowed something.
    pub fn matching(&self, text: &str) -> Option<&str> {
        let options = glob::MatchOptions {
            require_literal_separator: true,
            ..Default::default()
        };
        self.0
            .iter()
            .find(|p| p.matches_with(text, options))
            .map(|p| p.as_str())
    }
}
