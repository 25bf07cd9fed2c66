//! The argument vector as the audit shows it: secrets redacted wherever they sit.
//!
//! `key=value` pieces go through [`redact_option`], one comma-separated piece at a time
//! (`a=1,password=x`); the value after a flag whose name looks secret (`--password X`) is
//! redacted whole; and so is the value that follows a secret-looking setting name, as in
//! `iscsiadm -n node.session.auth.password -v X` or `--set password X`.

use crate::audit::redact_option;

const REDACTED: &str = "<redacted>";

/// Parts of a name that say its value is a credential (the same words as `redact_option`).
fn looks_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token", "key", "cred", "auth"]
        .iter()
        .any(|word| name.contains(word))
}

/// `a=1,password=x` → `a=1,password=<redacted>`.
fn redact_pieces(arg: &str) -> String {
    arg.split(',')
        .map(redact_option)
        .collect::<Vec<_>>()
        .join(",")
}

/// What the previous argument says about this one.
#[derive(Clone, Copy, PartialEq)]
enum Next {
    Plain,
    /// A secret value: redacted whole.
    Secret,
    /// After a setting name that looks secret: the value comes now, or after one more flag.
    AfterSecretName,
}

pub fn arguments(args: &[String]) -> Vec<String> {
    let mut next = Next::Plain;
    args.iter()
        .map(|arg| {
            let this = next;
            next = Next::Plain;
            if this == Next::Secret {
                return REDACTED.to_string();
            }
            if let Some(flag) = arg.strip_prefix('-') {
                return match arg.split_once('=') {
                    Some((name, _)) if this == Next::AfterSecretName => {
                        format!("{name}={REDACTED}")
                    }
                    Some(_) => redact_pieces(arg),
                    None => {
                        if this == Next::AfterSecretName || looks_secret(flag) {
                            next = Next::Secret;
                        }
                        arg.clone()
                    }
                };
            }
            if this == Next::AfterSecretName {
                return REDACTED.to_string();
            }
            if !arg.contains(['=', '/', ',']) && looks_secret(arg) {
                next = Next::AfterSecretName;
            }
            redact_pieces(arg)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(args: &[&str]) -> Vec<String> {
        arguments(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn secrets_are_redacted_wherever_they_sit() {
        for (args, expected) in [
            (vec!["password=hunter2"], vec!["password=<redacted>"]),
            (vec!["--password=hunter2"], vec!["--password=<redacted>"]),
            (
                vec!["-o", "size=1m,password=hunter2,uid=0"],
                vec!["-o", "size=1m,password=<redacted>,uid=0"],
            ),
            (
                vec!["--password", "hunter2", "x"],
                vec!["--password", "<redacted>", "x"],
            ),
            (
                vec!["--api-token", "t0k"],
                vec!["--api-token", "<redacted>"],
            ),
            (vec!["-p", "10.0.0.1"], vec!["-p", "10.0.0.1"]),
            (
                vec!["-n", "node.session.auth.password", "-v", "hunter2"],
                vec!["-n", "node.session.auth.password", "-v", "<redacted>"],
            ),
            (
                vec!["-n", "node.session.auth.password", "--value=hunter2"],
                vec!["-n", "node.session.auth.password", "--value=<redacted>"],
            ),
            (
                vec!["--set", "secret", "s3"],
                vec!["--set", "secret", "<redacted>"],
            ),
            // nothing secret-looking: shown as is
            (
                vec!["-m", "discovery", "-p", "10.0.0.1:3260"],
                vec!["-m", "discovery", "-p", "10.0.0.1:3260"],
            ),
            (vec!["-c", "echo hi"], vec!["-c", "echo hi"]),
        ] {
            assert_eq!(shown(&args), expected, "{args:?}");
        }
    }
}
