//! `flex policy check FILE|vendor~driver`: validates a policy as every call would read it,
//! shows what it grants (credentials redacted) and warns about grants nothing can use.

use crate::audit::redact_option;
use crate::policy::{self, Policy};
use clap::Args;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct CheckArgs {
    /// A policy file, or an installed driver's name (vendor~driver: FLEX_POLICY_DIR/<name>.toml)
    target: String,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

pub fn command(a: &CheckArgs) -> Result<i32, String> {
    let (path, driver) = resolve(&a.target)?;
    let checked = check(&path, driver.as_deref());
    let file = path.display().to_string();
    if a.json {
        let report = match &checked {
            Ok((policy, warnings)) => json!({
                "file": file, "driver": driver, "valid": true, "warnings": warnings,
                "summary": policy::summary(policy), "grants": grants(policy),
            }),
            Err(e) => json!({"file": file, "driver": driver, "valid": false, "error": e}),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(i32::from(checked.is_err()));
    }
    let (policy, warnings) = checked?;
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    let grants = serde_json::to_string_pretty(&grants(&policy)).unwrap_or_default();
    println!(
        "policy {file} is valid; {}\n{grants}",
        policy::summary(&policy)
    );
    Ok(0)
}

/// A path is a file; a bare `vendor~driver` names an installed policy.
fn resolve(target: &str) -> Result<(PathBuf, Option<String>), String> {
    let path = Path::new(target);
    let looks_like_name =
        !target.contains('/') && !target.ends_with(".toml") && target.contains('~');
    if looks_like_name && !path.exists() {
        let installed = policy::policy_path(target);
        if !installed.exists() {
            return Err(format!(
                "{target} has no installed policy ({} does not exist): it is granted nothing",
                installed.display()
            ));
        }
        return Ok((installed, Some(target.to_string())));
    }
    let driver = path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| s.contains('~'))
        .map(String::from);
    Ok((path.to_path_buf(), driver))
}

fn check(path: &Path, driver: Option<&str>) -> Result<(Policy, Vec<String>), String> {
    let (text, mode) = policy::read_with_mode(path)
        .map_err(|e| format!("cannot read policy {}: {e}", path.display()))?;
    let policy = policy::parse(&text, path)?;
    policy::check_overlaps(&policy, driver, path)?;
    let mut warnings = Vec::new();
    // Installed like this it would fail every call; `flex install` caps it at 0640.
    if let Err(e) = crate::caps::config::check_exposure(path, mode, &policy.config) {
        warnings.push(format!("{e}; `flex install` installs it 0640 at most"));
    }
    warnings.extend(policy.mount.warnings());
    warnings.extend(policy.block.warnings());
    for program in &policy.exec.programs {
        if !Path::new(&program.path).exists() {
            warnings.push(format!(
                "exec.programs: {} does not exist on this node: every call of it fails",
                program.path
            ));
        }
    }
    Ok((policy, warnings))
}

/// The grants as JSON; `[config]` values that look like credentials are shown as set only.
fn grants(policy: &Policy) -> Value {
    let mut grants = serde_json::to_value(policy).unwrap_or_default();
    if let Some(config) = grants["config"].as_object_mut() {
        for (key, value) in config.iter_mut() {
            if redact_option(&format!("{key}=")) != format!("{key}=") {
                *value = "<redacted>".into();
            }
        }
    }
    grants
}
