//! `flex inspect COMPONENT [--policy FILE]`: what a component imports and exports and, with a
//! policy, which of its imports the policy grants or denies and which grants it never uses.
//! Read from the component's own sections: nothing is compiled or run.

use crate::policy::{self, Policy};
use std::path::Path;
use wasmparser::{Parser, Payload};

pub fn inspect(args: &[String]) -> Result<String, String> {
    let (component, policy_file) = match args {
        [component] => (component, None),
        [component, flag, file] if flag == "--policy" => (component, Some(file)),
        _ => return Err("usage: flex inspect COMPONENT [--policy FILE]".into()),
    };
    let bytes = std::fs::read(component).map_err(|e| format!("cannot read {component}: {e}"))?;
    let (imports, exports) = top_level_names(&bytes)
        .map_err(|e| format!("{component} is not a WebAssembly component: {e}"))?;
    let policy = match policy_file {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read policy {file}: {e}"))?;
            Some(policy::parse(&text, Path::new(file))?)
        }
        None => None,
    };
    let mut out = format!("component {component}\nexports:\n");
    exports
        .iter()
        .for_each(|e| out.push_str(&format!("  {e}\n")));
    out.push_str("imports:\n");
    for import in &imports {
        match &policy {
            Some(policy) => {
                let (verdict, why) = decide(unversioned(import), policy);
                out.push_str(&format!("  {import:<44} {verdict:<8} {why}\n"));
            }
            None => out.push_str(&format!("  {import}\n")),
        }
    }
    if let Some(policy) = &policy {
        let unused: Vec<&str> = grants(policy)
            .into_iter()
            .filter(|(_, prefix)| !imports.iter().any(|i| i.starts_with(prefix)))
            .map(|(table, _)| table)
            .collect();
        if !unused.is_empty() {
            out.push_str(&format!(
                "unused grants (the component never imports them): {}\n",
                unused.join(", ")
            ));
        }
    }
    Ok(out)
}

/// The component's own imports and exports, not those of the modules nested inside it.
fn top_level_names(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let (mut imports, mut exports, mut depth) = (Vec::new(), Vec::new(), 0);
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| e.to_string())? {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding != wasmparser::Encoding::Component {
                    return Err("it is a core module".into());
                }
                depth += 1;
            }
            Payload::End(_) => depth -= 1,
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    imports.push(import.map_err(|e| e.to_string())?.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 1 => {
                for export in reader {
                    exports.push(export.map_err(|e| e.to_string())?.name.name.to_string());
                }
            }
            _ => {}
        }
    }
    Ok((imports, exports))
}

fn unversioned(import: &str) -> &str {
    import.split('@').next().unwrap_or(import)
}

/// Policy tables that grant something, with the import prefix that would use them.
fn grants(policy: &Policy) -> Vec<(&'static str, &'static str)> {
    let mut used = Vec::new();
    if !policy.mount.fs_types.is_empty() || !policy.mount.sources.is_empty() {
        used.push(("[mount]", "flex:volume/mounts"));
    }
    if !policy.block.devices.is_empty() || policy.block.image_dir.is_some() {
        used.push(("[block]", "flex:volume/block"));
    }
    if !policy.exec.programs.is_empty() {
        used.push(("[exec]", "flex:volume/exec"));
    }
    if !policy.http.destinations.is_empty() {
        used.push(("[http]", "wasi:http/outgoing-handler"));
    }
    if policy.state.is_some() {
        used.push(("[state]", "wasi:filesystem/preopens"));
    }
    if !policy.config.is_empty() {
        used.push(("[config]", "flex:volume/config"));
    }
    used
}

/// Whether `policy` lets the component use `import`, and why.
fn decide(import: &str, policy: &Policy) -> (&'static str, String) {
    let granted = |yes: bool, what: String, otherwise: &str| match yes {
        true => ("granted", what),
        false => ("denied", otherwise.to_string()),
    };
    let p = policy;
    match import {
        "flex:volume/log" => ("granted", "always: lines go to the host's log file".into()),
        "flex:volume/config" => (
            "granted",
            format!("keys: {:?}", p.config.keys().collect::<Vec<_>>()),
        ),
        "flex:volume/mounts" => granted(
            !p.mount.fs_types.is_empty() || !p.mount.sources.is_empty(),
            format!(
                "fs types {:?}, sources {:?}, onto the call's directory",
                p.mount.fs_types, p.mount.sources
            ),
            "no [mount] grant: every mount is refused",
        ),
        "flex:volume/block" => granted(
            !p.block.devices.is_empty() || p.block.image_dir.is_some(),
            format!(
                "devices {:?}, mkfs {:?}, images in {:?}",
                p.block.devices, p.block.fs_types, p.block.image_dir
            ),
            "no [block] grant: every device and image is refused",
        ),
        "flex:volume/exec" => granted(
            !p.exec.programs.is_empty(),
            format!("programs {:?}", p.exec.programs),
            "no [exec] grant: every program is refused",
        ),
        i if i.starts_with("wasi:http/") => granted(
            !p.http.destinations.is_empty(),
            format!("destinations {:?}", p.http.destinations),
            "no [http] grant: every request is refused",
        ),
        i if i.starts_with("wasi:filesystem/") => granted(
            p.state.is_some(),
            "the [state] directory only, as /state".into(),
            "no [state] grant: no directory is visible",
        ),
        i if i.starts_with("wasi:sockets/") => ("denied", "sockets are never granted".into()),
        "flex:volume/types" => ("granted", "type definitions only".into()),
        "wasi:cli/environment" => ("granted", "an empty environment".into()),
        i if i.starts_with("wasi:cli/") || i.starts_with("wasi:io/") => (
            "granted",
            "stdio, captured into the log; never reaches kubelet".into(),
        ),
        i if i.starts_with("wasi:clocks/") || i.starts_with("wasi:random/") => {
            ("granted", "clocks and random numbers".into())
        }
        _ => (
            "denied",
            "unknown to flex: the component will not link".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_judged_against_the_policy() {
        let policy = policy::parse(
            "[mount]\nfs_types = [\"tmpfs\"]\nsources = [\"tmpfs\"]\n[exec]\nprograms = [\"/bin/true\"]",
            Path::new("p.toml"),
        )
        .unwrap();
        assert_eq!(decide("flex:volume/mounts", &policy).0, "granted");
        assert_eq!(decide("flex:volume/block", &policy).0, "denied");
        assert_eq!(decide("wasi:http/outgoing-handler", &policy).0, "denied");
        assert_eq!(decide("wasi:sockets/tcp", &policy).0, "denied");
        assert_eq!(decide("wasi:clocks/wall-clock", &policy).0, "granted");
        let tables: Vec<_> = grants(&policy).into_iter().map(|(t, _)| t).collect();
        assert_eq!(tables, ["[mount]", "[exec]"]);
    }

    #[test]
    fn core_modules_and_garbage_are_refused() {
        assert!(top_level_names(b"\0asm\x01\0\0\0").is_err());
        assert!(top_level_names(b"not wasm").is_err());
    }
}
