//! Mount options as the kernel will read them: split on commas before anything is matched.
//!
//! A driver's option list is flattened into single options (`size=8m,uid=0` is two), each
//! parsed into a per-mount flag (`nosuid`, `ro`, atime...), a superblock flag (`sync`...) or
//! one `key[=value]` file system parameter that is later handed to the kernel on its own with
//! `fsconfig`, so no value can carry a second option. Each single option must match one
//! policy pattern, a pattern matches one whole option, and the options the policy requires
//! (`nosuid,nodev` unless it says otherwise) are always applied and can never be turned off,
//! by a mount or by a remount.

use super::super::Patterns;
use crate::audit::redact_option;
use rustix::mount::MountAttrFlags;

/// Options whose only meaning is in mount(8) or fstab, or that change what kind of mount this
/// is: never passed to the kernel, whatever the policy says.
const REFUSED: [&str; 22] = [
    "bind",
    "rbind",
    "move",
    "remount",
    "rec",
    "shared",
    "rshared",
    "private",
    "rprivate",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
    "defaults",
    "user",
    "users",
    "owner",
    "group",
    "nofail",
    "auto",
    "noauto",
    "_netdev",
];

/// One option after splitting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOption {
    /// A per-mount attribute: set (`nosuid`) or cleared (`suid`).
    Attr { flag: MountAttrFlags, set: bool },
    /// `sync`, `dirsync`, `lazytime`...: superblock flags `fsconfig` understands by name.
    SuperblockFlag(String),
    /// A file system parameter: `size=64m`, `mode=0775`, `inode64`.
    Param { key: String, value: Option<String> },
}

fn attr(name: &str) -> Option<(MountAttrFlags, bool)> {
    Some(match name {
        "ro" => (MountAttrFlags::MOUNT_ATTR_RDONLY, true),
        "rw" => (MountAttrFlags::MOUNT_ATTR_RDONLY, false),
        "nosuid" => (MountAttrFlags::MOUNT_ATTR_NOSUID, true),
        "suid" => (MountAttrFlags::MOUNT_ATTR_NOSUID, false),
        "nodev" => (MountAttrFlags::MOUNT_ATTR_NODEV, true),
        "dev" => (MountAttrFlags::MOUNT_ATTR_NODEV, false),
        "noexec" => (MountAttrFlags::MOUNT_ATTR_NOEXEC, true),
        "exec" => (MountAttrFlags::MOUNT_ATTR_NOEXEC, false),
        "nodiratime" => (MountAttrFlags::MOUNT_ATTR_NODIRATIME, true),
        "diratime" => (MountAttrFlags::MOUNT_ATTR_NODIRATIME, false),
        "nosymfollow" => (MountAttrFlags::MOUNT_ATTR_NOSYMFOLLOW, true),
        "noatime" => (MountAttrFlags::MOUNT_ATTR_NOATIME, true),
        "relatime" => (MountAttrFlags::MOUNT_ATTR_RELATIME, true),
        "strictatime" => (MountAttrFlags::MOUNT_ATTR_STRICTATIME, true),
        _ => return None,
    })
}

const SUPERBLOCK_FLAGS: [&str; 6] = [
    "sync",
    "async",
    "dirsync",
    "lazytime",
    "nolazytime",
    "silent",
];

/// Splits and parses the options a driver sent; nothing is matched yet.
pub fn parse(requested: &[String]) -> Result<Vec<(String, MountOption)>, String> {
    let mut parsed = Vec::new();
    for piece in requested.iter().flat_map(|o| o.split(',')) {
        let shown = redact_option(piece);
        if piece.is_empty() {
            return Err("denied: empty mount option".into());
        }
        if piece.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "denied: mount option {shown:?} contains whitespace or control characters"
            ));
        }
        let (key, value) = match piece.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (piece, None),
        };
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(format!("denied: invalid mount option {shown:?}"));
        }
        if REFUSED.contains(&key) || key.starts_with("x-") {
            return Err(format!(
                "denied: mount option {shown:?} is not a file system option"
            ));
        }
        let option = match (attr(key), value) {
            (Some((flag, set)), None) => MountOption::Attr { flag, set },
            (Some(_), Some(_)) => return Err(format!("denied: invalid mount option {shown:?}")),
            (None, None) if SUPERBLOCK_FLAGS.contains(&key) => {
                MountOption::SuperblockFlag(key.to_string())
            }
            (None, value) => MountOption::Param {
                key: key.to_string(),
                value: value.map(str::to_string),
            },
        };
        parsed.push((piece.to_string(), option));
    }
    Ok(parsed)
}

/// What a mount or remount will apply, after the policy allowed it.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    /// Per-mount attributes to set and to clear (`mount_setattr`, `fsmount`).
    pub set: MountAttrFlags,
    pub clear: MountAttrFlags,
    /// An atime mode, if one was asked for (one of the `MOUNT_ATTR__ATIME` values).
    pub atime: Option<MountAttrFlags>,
    pub superblock_flags: Vec<String>,
    pub params: Vec<(String, Option<String>)>,
    /// The rules that allowed each option, for the audit.
    pub rule: String,
}

impl Default for Applied {
    fn default() -> Self {
        Applied {
            set: MountAttrFlags::empty(),
            clear: MountAttrFlags::empty(),
            atime: None,
            superblock_flags: Vec::new(),
            params: Vec::new(),
            rule: String::new(),
        }
    }
}

impl Applied {
    /// The attributes for a new mount: what was set, plus the atime mode.
    pub fn mount_attrs(&self) -> MountAttrFlags {
        self.set | self.atime.unwrap_or(MountAttrFlags::empty())
    }
}

/// A policy's option rules, compiled for one call.
#[derive(Debug, Default)]
pub struct OptionRules {
    allowed: Patterns,
    /// Options always applied, already parsed; a request that contradicts one is denied.
    required: Vec<(String, MountOption)>,
}

impl OptionRules {
    /// `allowed` and `required` come from a validated policy.
    pub fn new(allowed: &[String], required: &[String]) -> Result<OptionRules, String> {
        validate_patterns(allowed)?;
        Ok(OptionRules {
            allowed: Patterns::compile(allowed)?,
            required: parse(required).map_err(|e| e.replace("denied: ", "mount.require: "))?,
        })
    }

    /// Checks every single option against the policy and folds in the required ones.
    pub fn apply(&self, requested: &[String]) -> Result<Applied, String> {
        let parsed = parse(requested)?;
        let mut applied = Applied::default();
        let mut rules = Vec::new();
        for (text, option) in &parsed {
            if self.contradicts_required(option) {
                let shown = redact_option(text);
                return Err(format!(
                    "denied: mount option {shown:?} would turn off an option the policy requires ({})",
                    self.required_names()
                ));
            }
            let required = self.required.iter().any(|(_, r)| r == option);
            match self.allowed.matching(text) {
                Some(pattern) => rules.push(format!("{pattern:?}")),
                None if required => {}
                None => {
                    let shown = redact_option(text);
                    return Err(format!(
                        "denied: mount option {shown:?} is not granted by the policy's mount.options"
                    ));
                }
            }
            fold(&mut applied, option);
        }
        for (_, option) in &self.required {
            fold(&mut applied, option);
        }
        applied.rule = format!(
            "mount.options [{}]; mount.require [{}]",
            rules.join(", "),
            self.required_names()
        );
        Ok(applied)
    }

    fn required_names(&self) -> String {
        let names: Vec<&str> = self.required.iter().map(|(t, _)| t.as_str()).collect();
        names.join(",")
    }

    fn contradicts_required(&self, option: &MountOption) -> bool {
        self.required
            .iter()
            .any(|(_, required)| match (required, option) {
                (
                    MountOption::Attr { flag: a, set: sa },
                    MountOption::Attr { flag: b, set: sb },
                ) => a == b && sa != sb,
                // A required atime mode cannot be replaced by another.
                _ => false,
            })
            || self.required.iter().any(|(_, required)| {
                matches!((required, option),
                (MountOption::Attr { flag: a, .. }, MountOption::Attr { flag: b, .. })
                    if is_atime(*a) && is_atime(*b) && a != b)
            })
    }
}

fn is_atime(flag: MountAttrFlags) -> bool {
    [
        MountAttrFlags::MOUNT_ATTR_NOATIME,
        MountAttrFlags::MOUNT_ATTR_RELATIME,
        MountAttrFlags::MOUNT_ATTR_STRICTATIME,
    ]
    .contains(&flag)
}

fn fold(applied: &mut Applied, option: &MountOption) {
    match option {
        MountOption::Attr { flag, .. } if is_atime(*flag) => applied.atime = Some(*flag),
        MountOption::Attr { flag, set: true } => {
            applied.set |= *flag;
            applied.clear.remove(*flag);
        }
        MountOption::Attr { flag, set: false } => {
            applied.clear |= *flag;
            applied.set.remove(*flag);
        }
        MountOption::SuperblockFlag(name) => applied.superblock_flags.push(name.clone()),
        MountOption::Param { key, value } => applied.params.push((key.clone(), value.clone())),
    }
}

/// A pattern must describe one option: no commas, no whitespace.
pub fn validate_patterns(patterns: &[String]) -> Result<(), String> {
    if let Some(p) = patterns
        .iter()
        .find(|p| p.contains(',') || p.chars().any(char::is_whitespace))
    {
        return Err(format!(
            "mount.options: {p:?} must be one option per entry (no commas or spaces)"
        ));
    }
    Patterns::compile(patterns).map(drop)
}

/// The policy's `require` list must itself be valid options.
pub fn validate_required(required: &[String]) -> Result<(), String> {
    parse(required)
        .map(drop)
        .map_err(|e| e.replace("denied: ", "mount.require: "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn rules(allowed: &[&str]) -> OptionRules {
        OptionRules::new(&strings(allowed), &strings(&["nosuid", "nodev"])).unwrap()
    }

    #[test]
    fn comma_joined_options_are_matched_one_by_one() {
        let rules = rules(&["size=[1-9]*", "mode=0777"]);
        let err = rules.apply(&strings(&["size=8m,uid=0"])).unwrap_err();
        assert!(err.contains("\"uid=0\""), "{err}");
        let err = rules.apply(&strings(&["size=8m,huge=always"])).unwrap_err();
        assert!(err.contains("huge=always"), "{err}");
        let ok = rules.apply(&strings(&["size=8m,mode=0777"])).unwrap();
        assert_eq!(
            ok.params,
            [
                ("size".to_string(), Some("8m".to_string())),
                ("mode".to_string(), Some("0777".to_string()))
            ]
        );
    }

    #[test]
    fn required_options_are_always_applied_and_never_dropped() {
        let rules = rules(&["ro", "rw", "suid", "dev", "exec"]);
        let applied = rules.apply(&[]).unwrap();
        assert_eq!(
            applied.set,
            MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV
        );
        for bad in ["suid", "dev", "ro,suid"] {
            let err = rules.apply(&strings(&[bad])).unwrap_err();
            assert!(err.contains("requires"), "{bad}: {err}");
        }
        // `exec` is not contradicting a requirement here, and is granted.
        let applied = rules.apply(&strings(&["exec"])).unwrap();
        assert!(applied.clear.contains(MountAttrFlags::MOUNT_ATTR_NOEXEC));
    }

    #[test]
    fn mount_kinds_and_userspace_options_are_refused() {
        let rules = rules(&["*"]);
        for bad in [
            "bind",
            "remount",
            "shared",
            "defaults",
            "x-systemd.automount",
            "nofail",
            "",
            "a b",
            "ro=1",
            "=x",
            "size=1m,",
            "key\u{7}=1",
        ] {
            assert!(rules.apply(&strings(&[bad])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn patterns_are_one_option_each_and_secrets_are_not_echoed() {
        assert!(validate_patterns(&strings(&["size=*,uid=*"])).is_err());
        assert!(validate_patterns(&strings(&["size=*"])).is_ok());
        let err = rules(&[])
            .apply(&strings(&["password=hunter2"]))
            .unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(validate_required(&strings(&["nosuid", "bind"])).is_err());
    }

    #[test]
    fn atime_modes() {
        let rules =
            OptionRules::new(&strings(&["noatime", "relatime"]), &strings(&["relatime"])).unwrap();
        assert!(rules.apply(&strings(&["noatime"])).is_err());
        let applied = rules.apply(&[]).unwrap();
        assert_eq!(applied.atime, Some(MountAttrFlags::MOUNT_ATTR_RELATIME));
    }
}
