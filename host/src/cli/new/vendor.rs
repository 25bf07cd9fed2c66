//! The SDK as `flex new` vendors it into a project: the Rust SDK's manifest made standalone,
//! a `Cargo.lock` pinning the versions this workspace tested, and the JavaScript SDK's lock
//! file renamed to the project.

use super::templates;
use std::collections::BTreeMap;

/// The Rust SDK's manifest without workspace inheritance: every `key.workspace = true` is
/// given the workspace's value, so the vendored copy builds on its own.
pub(super) fn standalone_sdk_manifest() -> Result<String, String> {
    let workspace: toml::Table = toml::from_str(templates::WORKSPACE_MANIFEST)
        .map_err(|e| format!("the embedded workspace manifest: {e}"))?;
    let inherited = |table: &str, key: &str| {
        workspace
            .get("workspace")
            .and_then(|w| w.get(table))
            .and_then(|t| t.get(key))
            .ok_or_else(|| format!("the workspace has no {table}.{key} for the SDK"))
    };
    let mut out = format!(
        "# The flex-guest-sdk sources of flex {}, vendored by `flex new` (this manifest made\n\
         # standalone). Once the crate is on crates.io, depend on `flex-guest-sdk = \"0.1\"`\n\
         # instead and delete vendor/.\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut section = "";
    for line in templates::GUEST_SDK_MANIFEST.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            // The repository's notes (the `wit/` symlink...) do not apply to the copy.
            continue;
        }
        if trimmed.starts_with('[') {
            section = trimmed.trim_matches(['[', ']']);
        }
        let Some(key) = trimmed.strip_suffix(".workspace = true") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let value = match section {
            "package" => inherited("package", key)?,
            "dependencies" | "dev-dependencies" | "build-dependencies" => {
                let value = inherited("dependencies", key)?;
                if value.get("path").is_some() || value.get("git").is_some() {
                    return Err(format!(
                        "the SDK's dependency {key} is not from a registry: it cannot be vendored"
                    ));
                }
                value
            }
            _ => return Err(format!("cannot inherit {key} in [{section}]")),
        };
        out.push_str(&format!("{key} = {}\n", toml_inline(value)?));
    }
    Ok(out)
}

/// A TOML value on one line.
fn toml_inline(value: &toml::Value) -> Result<String, String> {
    Ok(match value {
        // JSON's string escapes are TOML basic-string escapes.
        toml::Value::String(s) => serde_json::to_string(s).map_err(|e| e.to_string())?,
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(items) => {
            let items: Result<Vec<_>, _> = items.iter().map(toml_inline).collect();
            format!("[{}]", items?.join(", "))
        }
        toml::Value::Table(table) => {
            let mut entries = Vec::new();
            for (key, value) in table {
                let bare = key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                let key = if bare {
                    key.clone()
                } else {
                    serde_json::to_string(key).map_err(|e| e.to_string())?
                };
                entries.push(format!("{key} = {}", toml_inline(value)?));
            }
            format!("{{ {} }}", entries.join(", "))
        }
        other => return Err(format!("cannot write the TOML value {other:?} inline")),
    })
}

#[derive(serde::Deserialize)]
pub(super) struct Lock {
    version: u32,
    pub(super) package: Vec<LockedPackage>,
}

#[derive(serde::Deserialize, Clone)]
pub(super) struct LockedPackage {
    pub(super) name: String,
    pub(super) version: String,
    pub(super) source: Option<String>,
    pub(super) checksum: Option<String>,
    #[serde(default)]
    pub(super) dependencies: Vec<String>,
}

/// The new crate's `Cargo.lock`: the crate, the vendored SDK and the SDK's dependency closure
/// at exactly the versions this repository's `Cargo.lock` pins, the ones `flex` is tested
/// with (and that building `flex` put into cargo's cache).
pub(super) fn cargo_lock(crate_name: &str) -> Result<String, String> {
    let lock: Lock = toml::from_str(templates::WORKSPACE_LOCK)
        .map_err(|e| format!("the embedded Cargo.lock: {e}"))?;
    let find = |spec: &str| -> Result<&LockedPackage, String> {
        let mut parts = spec.split_whitespace();
        let name = parts.next().unwrap_or_default();
        let version = parts.next();
        let source = parts.next().map(|s| s.trim_matches(['(', ')']));
        let mut found = lock.package.iter().filter(|p| {
            p.name == name
                && version.is_none_or(|v| p.version == v)
                && source.is_none_or(|s| p.source.as_deref() == Some(s))
        });
        match (found.next(), found.next()) {
            (Some(package), None) => Ok(package),
            _ => Err(format!("Cargo.lock: no single package {spec:?}")),
        }
    };
    let sdk = lock
        .package
        .iter()
        .find(|p| p.name == "flex-guest-sdk" && p.source.is_none())
        .ok_or("Cargo.lock has no flex-guest-sdk")?;
    // The closure, keyed by (name, version, source).
    let mut closure: BTreeMap<(String, String, Option<String>), LockedPackage> = BTreeMap::new();
    let mut todo = vec![sdk];
    while let Some(package) = todo.pop() {
        let key = (
            package.name.clone(),
            package.version.clone(),
            package.source.clone(),
        );
        if closure.insert(key, package.clone()).is_some() {
            continue;
        }
        for dependency in &package.dependencies {
            todo.push(find(dependency)?);
        }
    }
    let mut packages: Vec<LockedPackage> = closure.into_values().collect();
    // Each dependency as `name version`, shortened below to the name where that is unique.
    // (This repository's lock file has no name and version from two sources.)
    let mut resolved = Vec::new();
    for package in &packages {
        let specs: Result<Vec<String>, String> = package
            .dependencies
            .iter()
            .map(|d| find(d).map(|p| format!("{} {}", p.name, p.version)))
            .collect();
        resolved.push(specs?);
    }
    for (package, specs) in packages.iter_mut().zip(resolved) {
        package.dependencies = specs;
    }
    packages.push(LockedPackage {
        name: crate_name.to_string(),
        version: "0.1.0".into(),
        source: None,
        checksum: None,
        dependencies: vec![format!("{} {}", sdk.name, sdk.version)],
    });
    // A name alone is enough when only one version of it is locked (cargo's own form).
    let counts = packages.iter().fold(BTreeMap::new(), |mut counts, p| {
        *counts.entry(p.name.clone()).or_insert(0) += 1;
        counts
    });
    for package in &mut packages {
        for dependency in &mut package.dependencies {
            let name = dependency.split_whitespace().next().unwrap_or_default();
            if counts.get(name) == Some(&1) {
                *dependency = name.to_string();
            }
        }
        package.dependencies.sort();
    }
    packages.sort_by(|a, b| {
        (&a.name, version_key(&a.version), &a.source).cmp(&(
            &b.name,
            version_key(&b.version),
            &b.source,
        ))
    });
    let mut out = format!(
        "# This file is automatically @generated by Cargo.\n# It is not intended for manual editing.\nversion = {}\n",
        lock.version
    );
    for p in &packages {
        out.push_str(&format!(
            "\n[[package]]\nname = {}\nversion = {}\n",
            quoted(&p.name),
            quoted(&p.version)
        ));
        if let Some(source) = &p.source {
            out.push_str(&format!("source = {}\n", quoted(source)));
        }
        if let Some(checksum) = &p.checksum {
            out.push_str(&format!("checksum = {}\n", quoted(checksum)));
        }
        if !p.dependencies.is_empty() {
            out.push_str("dependencies = [\n");
            for dependency in &p.dependencies {
                out.push_str(&format!(" {},\n", quoted(dependency)));
            }
            out.push_str("]\n");
        }
    }
    Ok(out)
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// Semantic version order for `major.minor.patch[-pre]` (cargo's order in a lock file).
fn version_key(version: &str) -> (Vec<u64>, String) {
    let (numbers, pre) = version.split_once('-').unwrap_or((version, ""));
    (
        numbers.split('.').map(|n| n.parse().unwrap_or(0)).collect(),
        pre.to_string(),
    )
}

/// The JavaScript SDK's dependencies (componentize-js, pinned), as package.json's value.
pub(super) fn js_dependencies() -> Result<String, String> {
    let package: serde_json::Value = serde_json::from_str(templates::JS_PACKAGE)
        .map_err(|e| format!("the embedded sdk/js/package.json: {e}"))?;
    let dependencies = package
        .get("dependencies")
        .ok_or("the embedded sdk/js/package.json has no dependencies")?;
    let text = serde_json::to_string_pretty(dependencies).map_err(|e| e.to_string())?;
    Ok(text.replace('\n', "\n  "))
}

/// The JavaScript SDK's lock file, naming the new package: `npm ci` installs exactly the
/// componentize-js tree the SDK is tested with.
pub(super) fn npm_lock(package_name: &str) -> Result<String, String> {
    let lock: serde_json::Value = serde_json::from_str(templates::JS_LOCK)
        .map_err(|e| format!("the embedded sdk/js/package-lock.json: {e}"))?;
    let old = lock
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or("the embedded sdk/js/package-lock.json has no name")?;
    let from = format!("\"name\": {}", quoted(old));
    let to = format!("\"name\": {}", quoted(package_name));
    let text = templates::JS_LOCK.replacen(&from, &to, 2);
    let renamed: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if renamed["name"] != package_name || renamed["packages"][""]["name"] != package_name {
        return Err("could not rename the embedded package-lock.json".into());
    }
    Ok(text)
}
