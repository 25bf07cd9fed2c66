//! kubelet's side of the FlexVolume protocol: argv in, one JSON reply out.
//!
//! Argument positions follow kubelet's code (protocol notes §4): the options JSON comes first
//! for attach/isattached/getvolumename/expandvolume/expandfs and last for
//! waitforattach/mountdevice/mount. Empty strings are valid arguments, extra trailing
//! arguments are ignored, and unknown or historical verbs answer `Not supported`.

use crate::bindings::{Capabilities, Options};
use crate::options::{self, Secrets};
use serde::Serialize;

/// One verb call with its arguments parsed.
pub enum Call {
    Init,
    GetVolumeName {
        options: Options,
    },
    Attach {
        options: Options,
        node: String,
    },
    Detach {
        volume: String,
        node: String,
    },
    WaitForAttach {
        device: String,
        options: Options,
    },
    IsAttached {
        options: Options,
        node: String,
    },
    MountDevice {
        path: String,
        device: String,
        options: Options,
    },
    UnmountDevice {
        path: String,
    },
    Mount {
        dir: String,
        options: Options,
    },
    Unmount {
        dir: String,
    },
    ExpandVolume {
        options: Options,
        path: String,
        new_size: u64,
        old_size: u64,
    },
    ExpandFs {
        options: Options,
        device: String,
        path: String,
        new_size: u64,
        old_size: u64,
    },
    Provision {
        options: Options,
    },
    Delete {
        options: Options,
    },
}

#[cfg(test)]
pub const VERBS: [&str; 14] = [
    "init",
    "getvolumename",
    "attach",
    "detach",
    "waitforattach",
    "isattached",
    "mountdevice",
    "unmountdevice",
    "mount",
    "unmount",
    "expandvolume",
    "expandfs",
    "provision",
    "delete",
];

/// Parses `args` (everything after the verb). `Err` is the reply to print instead.
pub fn parse(verb: &str, args: &[String]) -> Result<Call, Reply> {
    let a = Args { verb, args };
    Ok(match verb {
        "init" => Call::Init,
        "getvolumename" => Call::GetVolumeName {
            options: a.options(0)?,
        },
        "attach" => Call::Attach {
            options: a.options(0)?,
            node: a.text(1, "node name")?,
        },
        "detach" => Call::Detach {
            volume: a.text(0, "volume name")?,
            node: a.text(1, "node name")?,
        },
        "waitforattach" => Call::WaitForAttach {
            device: a.text(0, "device path")?,
            options: a.options_last(1)?,
        },
        "isattached" => Call::IsAttached {
            options: a.options(0)?,
            node: a.text(1, "node name")?,
        },
        "mountdevice" => Call::MountDevice {
            path: a.text(0, "device mount path")?,
            device: a.text(1, "device path")?,
            options: a.options_last(2)?,
        },
        "unmountdevice" => Call::UnmountDevice {
            path: a.text(0, "device mount path")?,
        },
        "mount" => Call::Mount {
            dir: a.text(0, "mount dir")?,
            options: a.options_last(1)?,
        },
        "unmount" => Call::Unmount {
            dir: a.text(0, "mount dir")?,
        },
        "expandvolume" => Call::ExpandVolume {
            options: a.options(0)?,
            path: a.text(1, "device mount path")?,
            new_size: a.size(2, "new size")?,
            old_size: a.size(3, "old size")?,
        },
        "expandfs" => Call::ExpandFs {
            options: a.options(0)?,
            device: a.text(1, "device path")?,
            path: a.text(2, "device mount path")?,
            new_size: a.size(3, "new size")?,
            old_size: a.size(4, "old size")?,
        },
        "provision" => Call::Provision {
            options: a.options(0)?,
        },
        "delete" => Call::Delete {
            options: a.options(0)?,
        },
        _ => {
            return Err(Reply::not_supported(format!(
                "verb {verb:?} is not supported"
            )));
        }
    })
}

struct Args<'a> {
    verb: &'a str,
    args: &'a [String],
}

impl Args<'_> {
    fn text(&self, index: usize, what: &str) -> Result<String, Reply> {
        self.args.get(index).cloned().ok_or_else(|| {
            Reply::failure(format!(
                "{}: missing argument {} ({what})",
                self.verb,
                index + 1
            ))
        })
    }

    fn options(&self, index: usize) -> Result<Options, Reply> {
        let json = self.text(index, "options JSON")?;
        // Only `mount` receives secrets from kubelet; nothing else gets to see them.
        let secrets = if self.verb == "mount" {
            Secrets::Keep
        } else {
            Secrets::Drop
        };
        options::parse(&json, secrets).map_err(|e| Reply::failure(format!("{}: {e}", self.verb)))
    }

    /// For verbs whose JSON is the last argument: kubelet puts it at `index`; very old kubelets
    /// sent `mount <dir> <device> <json>`, so a later argument that is a JSON object wins.
    fn options_last(&self, index: usize) -> Result<Options, Reply> {
        let later_json = (index..self.args.len())
            .find(|&i| self.args[i].trim_start().starts_with('{'))
            .unwrap_or(index);
        self.options(later_json)
    }

    fn size(&self, index: usize, what: &str) -> Result<u64, Reply> {
        let text = self.text(index, what)?;
        text.parse().map_err(|_| {
            Reply::failure(format!(
                "{}: {what} must be a number of bytes, not {text:?}",
                self.verb
            ))
        })
    }
}

/// The one JSON object kubelet reads (protocol notes §2). Field names are kubelet's.
#[derive(Serialize, Debug, Default)]
pub struct Reply {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attached: Option<bool>,
    #[serde(rename = "volumeNewSize", skip_serializing_if = "Option::is_none")]
    pub volume_new_size: Option<u64>,
    #[serde(rename = "volumeName", skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<CapabilitiesReply>,
}

/// Always sent in full: kubelet's default for a missing `attach` is true.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct CapabilitiesReply {
    attach: bool,
    selinux_relabel: bool,
    supports_metrics: bool,
    fs_group: bool,
    #[serde(rename = "requiresFSResize")]
    requires_fs_resize: bool,
}

impl From<Capabilities> for CapabilitiesReply {
    fn from(c: Capabilities) -> Self {
        CapabilitiesReply {
            attach: c.attach,
            selinux_relabel: c.selinux_relabel,
            supports_metrics: c.supports_metrics,
            fs_group: c.fs_group,
            requires_fs_resize: c.requires_fs_resize,
        }
    }
}

pub const SUCCESS: &str = "Success";
pub const FAILURE: &str = "Failure";
pub const NOT_SUPPORTED: &str = "Not supported";

impl Reply {
    pub fn success() -> Reply {
        Reply {
            status: SUCCESS,
            ..Reply::default()
        }
    }

    /// Messages end up in kubelet's events: long ones (a driver's, say) are cut short.
    pub fn failure(message: impl Into<String>) -> Reply {
        Reply {
            status: FAILURE,
            message: Some(shorten(message.into())),
            ..Reply::default()
        }
    }

    pub fn not_supported(message: impl Into<String>) -> Reply {
        Reply {
            status: NOT_SUPPORTED,
            message: Some(message.into()),
            ..Reply::default()
        }
    }

    /// kubelet treats a non-zero exit with a `Success` body as a driver bug, so exit 0 exactly
    /// when the status is `Success`.
    pub fn exit_code(&self) -> i32 {
        if self.status == SUCCESS { 0 } else { 1 }
    }

    /// One line of compact JSON.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"status":"Failure","message":"flex could not encode its reply"}"#.into()
        });
        line.push('\n');
        line
    }
}

const MAX_MESSAGE_BYTES: usize = 4096;

fn shorten(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let cut = message.len();
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(&format!("... ({} bytes cut)", cut - end));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const BASE: &str = r#"{"kubernetes.io/fsType":"ext4","kubernetes.io/pvOrVolumeName":"pv","kubernetes.io/readwrite":"rw"}"#;

    #[test]
    fn json_position_per_verb() {
        let Ok(Call::Attach { options, node }) = parse("attach", &args(&[BASE, "node-1"])) else {
            panic!("attach")
        };
        assert_eq!(
            (options.pv_or_volume_name.as_deref(), node.as_str()),
            (Some("pv"), "node-1")
        );
        let Ok(Call::MountDevice {
            path,
            device,
            options,
        }) = parse("mountdevice", &args(&["/m", "/dev/loop0", BASE]))
        else {
            panic!("mountdevice")
        };
        assert_eq!(
            (path.as_str(), device.as_str(), options.fs_type.as_deref()),
            ("/m", "/dev/loop0", Some("ext4"))
        );
        let Ok(Call::ExpandFs {
            new_size, old_size, ..
        }) = parse("expandfs", &args(&[BASE, "/dev/x", "/m", "2048", "1024"]))
        else {
            panic!("expandfs")
        };
        assert_eq!((new_size, old_size), (2048, 1024));
    }

    #[test]
    fn empty_extra_and_historical_arguments() {
        let Ok(Call::WaitForAttach { device, .. }) =
            parse("waitforattach", &args(&["", BASE, "extra"]))
        else {
            panic!("waitforattach")
        };
        assert_eq!(device, "");
        let Ok(Call::Mount { dir, .. }) = parse("mount", &args(&["/d", "/dev/sdb", BASE])) else {
            panic!("old-style mount")
        };
        assert_eq!(dir, "/d");
        assert!(matches!(
            parse("unmount", &args(&["/d", "x", "y"])),
            Ok(Call::Unmount { .. })
        ));
    }

    #[test]
    fn bad_arguments_fail_and_unknown_verbs_are_not_supported() {
        let missing = parse("attach", &args(&[BASE])).err().unwrap();
        assert_eq!(missing.status, FAILURE);
        assert!(missing.message.unwrap().contains("node name"));
        let size = parse("expandvolume", &args(&[BASE, "/m", "big", "1"]))
            .err()
            .unwrap();
        assert!(size.message.unwrap().contains("new size"));
        for verb in ["waitfordetach", "getdevicemountpath", "frobnicate", ""] {
            assert_eq!(parse(verb, &[]).err().unwrap().status, NOT_SUPPORTED);
        }
        for verb in VERBS {
            assert!(
                !matches!(
                    parse(verb, &[]),
                    Err(Reply {
                        status: NOT_SUPPORTED,
                        ..
                    })
                ),
                "{verb}"
            );
        }
    }

    #[test]
    fn reply_encoding() {
        assert_eq!(Reply::success().to_line(), "{\"status\":\"Success\"}\n");
        assert_eq!(Reply::failure("x").exit_code(), 1);
        let long = Reply::failure("é".repeat(10_000)).message.unwrap();
        assert!(long.len() < 4200 && long.ends_with("bytes cut)"), "{long}");
        let caps = Capabilities {
            attach: false,
            selinux_relabel: true,
            supports_metrics: false,
            fs_group: true,
            requires_fs_resize: false,
        };
        let reply = Reply {
            capabilities: Some(caps.into()),
            ..Reply::success()
        };
        assert_eq!(
            reply.to_line(),
            "{\"status\":\"Success\",\"capabilities\":{\"attach\":false,\"selinuxRelabel\":true,\"supportsMetrics\":false,\"fsGroup\":true,\"requiresFSResize\":false}}\n"
        );
    }
}
