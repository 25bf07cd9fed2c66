//! `flex inspect COMPONENT [--policy FILE]`: a component's digest (as a policy's `digest =`
//! pins it), what it imports and exports and, with a policy, which imports the policy grants,
//! which it does not (the call is refused) and which would not link at all (flex does not
//! provide them: every call fails at instantiation), and which grants the component never
//! uses. Read from the component's own sections: nothing is compiled or run.

use crate::cli::InspectArgs;
use crate::policy::{self, Policy};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use wasmparser::{Parser, Payload};

/// How a policy treats one import.
#[derive(Clone, Copy, PartialEq)]
enum Verdict {
    Granted,
    /// Linked, but every use is refused.
    Denied,
    /// flex provides no such interface: the component does not instantiate.
    WontLink,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Granted => "granted",
            Verdict::Denied => "denied",
            Verdict::WontLink => "no-link",
        }
    }
}

pub fn command(a: &InspectArgs) -> Result<i32, String> {
    let shown = a.component.display().to_string();
    let bytes = std::fs::read(&a.component).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let (imports, exports) = top_level_names(&bytes)
        .map_err(|e| format!("{shown} is not a WebAssembly component: {e}"))?;
    let digest = {
        use sha2::{Digest, Sha256};
        crate::artifact::digest_string(&Sha256::digest(&bytes).into())
    };
    let policy = match &a.policy {
        Some(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read policy {}: {e}", file.display()))?;
            Some(policy::parse(&text, file)?)
        }
        None => None,
    };
    // Without a policy, judged as a driver with no policy file: nothing privileged granted.
    let deny_all = Policy::default();
    let judge = policy.as_ref().unwrap_or(&deny_all);
    let verdicts: Vec<(&str, Verdict, String)> = imports
        .iter()
        .map(|import| {
            let (verdict, why) = decide(unversioned(import), judge);
            (import.as_str(), verdict, why)
        })
        .collect();
    let unused: Vec<&str> = policy
        .as_ref()
        .map(|policy| {
            grants(policy)
                .into_iter()
                .filter(|(_, prefix)| !imports.iter().any(|i| i.starts_with(prefix)))
                .map(|(table, _)| table)
                .collect()
        })
        .unwrap_or_default();
    let with = |v: Verdict| -> Vec<&str> {
        verdicts
            .iter()
            .filter(|(_, x, _)| *x == v)
            .map(|(i, _, _)| *i)
            .collect()
    };
    let (no_link, denied) = (with(Verdict::WontLink), with(Verdict::Denied));
    if let Some(file) = &a.suggest_policy {
        write_suggestion(file, &shown, &digest, &imports)?;
    }
    if a.json {
        let report = json!({
            "component": shown,
            "digest": digest,
            "policy": a.policy.as_ref().map(|p| p.display().to_string()),
            "exports": exports,
            "imports": verdicts.iter().map(|(i, v, why)| json!({
                "name": i, "verdict": v.word(), "reason": why, "needs": needs(unversioned(i)),
            })).collect::<Vec<_>>(),
            "would_not_link": no_link,
            "not_granted": denied,
            "unused_grants": unused,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let mut out = format!("component {shown}\ndigest = \"{digest}\"\nexports:\n");
        exports
            .iter()
            .for_each(|e| out.push_str(&format!("  {e}\n")));
        out.push_str("imports:\n");
        for (import, verdict, why) in &verdicts {
            match (&policy, verdict) {
                (Some(_), _) | (None, Verdict::WontLink) => {
                    out.push_str(&format!("  {import:<44} {:<8} {why}\n", verdict.word()))
                }
                (None, _) => match needs(unversioned(import)) {
                    Some(table) => out.push_str(&format!("  {import:<44} needs {table}\n")),
                    None => out.push_str(&format!("  {import}\n")),
                },
            }
        }
        if !no_link.is_empty() {
            out.push_str(&format!(
                "would not link (flex provides no such interface; every call fails): {}\n",
                no_link.join(", ")
            ));
        }
        if policy.is_some() && !denied.is_empty() {
            out.push_str(&format!(
                "linked but not granted (every use is refused): {}\n",
                denied.join(", ")
            ));
        }
        if !unused.is_empty() {
            out.push_str(&format!(
                "unused grants (the component never imports them): {}\n",
                unused.join(", ")
            ));
        }
        let _ = std::io::stdout().write_all(out.as_bytes());
    }
    let strict_failure = !no_link.is_empty() || !denied.is_empty();
    Ok(i32::from(a.strict && strict_failure))
}

/// The policy table an import needs, if any.
fn needs(import: &str) -> Option<&'static str> {
    Some(match import {
        "flex:volume/mounts" => "[mount]",
        "flex:volume/block" => "[block]",
        "flex:volume/exec" => "[exec]",
        "flex:volume/config" => "[config]",
        i if i.starts_with("wasi:http/") => "[http]",
        i if i.starts_with("wasi:filesystem/") => "[state]",
        _ => return None,
    })
}

/// The least policy the imports need: one commented, empty table per privileged import, the
/// digest pinned. Nothing is granted until someone fills a table in.
fn suggestion(component: &str, digest: &str, imports: &[String]) -> String {
    let mut tables: Vec<&str> = imports
        .iter()
        .filter_map(|i| needs(unversioned(i)))
        .collect();
    tables.dedup();
    let mut text = format!(
        "# Least policy skeleton for {component}, from its imports (flex inspect --suggest-policy).\n\
         # Every table below is empty: it grants nothing until you list what the driver may use.\n\
         # Check the result with `flex policy check FILE`; install it with `flex install --policy FILE`.\n\n\
         # Only this exact component may run under the policy (remove to allow any).\n\
         digest = \"{digest}\"\n"
    );
    for table in tables {
        text.push('\n');
        text.push_str(match table {
            "[mount]" => "# The component imports flex:volume/mounts. File systems, sources (globs) and options\n\
                          # it may mount onto the call's own directory.\n\
                          [mount]\nfs_types = []\nsources = []\noptions = []\n",
            "[block]" => "# It imports flex:volume/block: devices (globs) it may probe and format, file systems\n\
                          # mkfs may create, and where loop-backed images live.\n\
                          [block]\ndevices = []\nfs_types = []\n# image_dir = \"/var/lib/flex/images\"\n# max_image_bytes = 1073741824\n",
            "[exec]" => "# It imports flex:volume/exec: one [[exec.programs]] table per host program, with\n\
                         # each argument vector it may get.\n\
                         # [[exec.programs]]\n# path = \"/usr/bin/true\"\n# args = [[]]\n# env = []\n",
            "[config]" => "# It imports flex:volume/config: settings handed to the driver (keep credentials\n\
                           # in a 0600 file).\n\
                           [config]\n",
            "[http]" => "# It imports wasi:http: the destinations it may reach.\n\
                         [http]\ndestinations = []\n",
            "[state]" => "# It imports wasi:filesystem: a private state directory (FLEX_STATE_DIR/<vendor~driver>).\n\
                          # Remove the table if the driver needs none.\n\
                          [state]\n",
            _ => "",
        });
    }
    text
}

fn write_suggestion(
    file: &Path,
    component: &str,
    digest: &str,
    imports: &[String],
) -> Result<(), String> {
    let text = suggestion(component, digest, imports);
    if file == Path::new("-") {
        print!("{text}");
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("write {}: {e}", file.display()))?;
    eprintln!("wrote a policy skeleton to {}", file.display());
    Ok(())
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
fn decide(import: &str, policy: &Policy) -> (Verdict, String) {
    let granted = |yes: bool, what: String, otherwise: &str| match yes {
        true => (Verdict::Granted, what),
        false => (Verdict::Denied, otherwise.to_string()),
    };
    let p = policy;
    match import {
        "flex:volume/log" => (
            Verdict::Granted,
            "always: lines go to the host's log file".into(),
        ),
        "flex:volume/config" => (
            Verdict::Granted,
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
                "devices {:?}, mkfs {:?}, images in {}",
                p.block.devices,
                p.block.fs_types,
                p.block
                    .image_dir
                    .as_ref()
                    .map_or("(none)".into(), |d| d.display().to_string())
            ),
            "no [block] grant: every device and image is refused",
        ),
        "flex:volume/exec" => granted(
            !p.exec.programs.is_empty(),
            format!("programs {}", p.exec.summary()),
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
        i if i.starts_with("wasi:sockets/") => {
            (Verdict::Denied, "sockets are never granted".into())
        }
        "flex:volume/types" => (Verdict::Granted, "type definitions only".into()),
        "wasi:cli/environment" => (Verdict::Granted, "an empty environment".into()),
        i if i.starts_with("wasi:cli/") || i.starts_with("wasi:io/") => (
            Verdict::Granted,
            "stdio, captured into the log; never reaches kubelet".into(),
        ),
        i if i.starts_with("wasi:clocks/") || i.starts_with("wasi:random/") => {
            (Verdict::Granted, "clocks and random numbers".into())
        }
        _ => (
            Verdict::WontLink,
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
            "[mount]\nfs_types = [\"tmpfs\"]\nsources = [\"tmpfs\"]\n[[exec.programs]]\npath = \"/bin/true\"\nargs = []",
            Path::new("p.toml"),
        )
        .unwrap();
        let word = |import| decide(import, &policy).0.word();
        assert_eq!(word("flex:volume/mounts"), "granted");
        assert_eq!(word("flex:volume/block"), "denied");
        assert_eq!(word("wasi:http/outgoing-handler"), "denied");
        assert_eq!(word("wasi:sockets/tcp"), "denied");
        assert_eq!(word("wasi:clocks/wall-clock"), "granted");
        assert_eq!(word("wasi:keyvalue/store"), "no-link");
        assert_eq!(word("acme:x/y"), "no-link");
        let tables: Vec<_> = grants(&policy).into_iter().map(|(t, _)| t).collect();
        assert_eq!(tables, ["[mount]", "[exec]"]);
    }

    #[test]
    fn core_modules_and_garbage_are_refused() {
        assert!(top_level_names(b"\0asm\x01\0\0\0").is_err());
        assert!(top_level_names(b"not wasm").is_err());
    }
}
