//! The tmpfs driver (`plugins/tmpfs`) written as an ordinary native FlexVolume driver: the
//! baseline `make bench` compares flex against. Same verbs, options and mount as the
//! WebAssembly driver, no sandbox, no policy, no log.

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde_json::{Value, json};

const DEFAULT_SIZE: u64 = 64 << 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reply = match args.first().map(String::as_str) {
        Some("init") => Ok(json!({
            "status": "Success",
            "capabilities": {"attach": false, "selinuxRelabel": true, "supportsMetrics": true,
                             "fsGroup": false, "requiresFSResize": false}
        })),
        Some("mount") => match (args.get(1), args.get(2)) {
            (Some(dir), Some(options)) => mount_tmpfs(dir, options).map(|()| success()),
            _ => Err("mount: expected <dir> <json options>".to_string()),
        },
        Some("unmount") => match args.get(1) {
            Some(dir) => unmount(dir).map(|()| success()),
            None => Err("unmount: expected <dir>".to_string()),
        },
        _ => Ok(json!({"status": "Not supported", "message": "not supported by this driver"})),
    };
    let (reply, code) = match reply {
        Ok(reply) => (reply, 0),
        Err(message) => (json!({"status": "Failure", "message": message}), 1),
    };
    println!("{reply}");
    std::process::exit(code);
}

fn success() -> Value {
    json!({"status": "Success"})
}

fn mount_tmpfs(dir: &str, options: &str) -> Result<(), String> {
    let options: Value =
        serde_json::from_str(options).map_err(|e| format!("invalid options JSON: {e}"))?;
    let text = |key: &str| options.get(key).and_then(Value::as_str);
    let size = match text("size") {
        Some(size) => parse_size(size)?,
        None => DEFAULT_SIZE,
    };
    if is_mountpoint(dir)? {
        return Ok(());
    }
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if text("kubernetes.io/readwrite") == Some("ro") {
        flags |= MsFlags::MS_RDONLY;
    }
    let data = match text("kubernetes.io/mounterArgs.FsGroup") {
        Some(gid) => format!("size={size},gid={gid},mode=2775"),
        None => format!("size={size},mode=0777"),
    };
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        flags,
        Some(data.as_str()),
    )
    .map_err(|e| format!("mount tmpfs on {dir}: {e}"))
}

fn unmount(dir: &str) -> Result<(), String> {
    if is_mountpoint(dir)? {
        umount2(dir, MntFlags::UMOUNT_NOFOLLOW).map_err(|e| format!("unmount {dir}: {e}"))?;
    }
    Ok(())
}

fn is_mountpoint(dir: &str) -> Result<bool, String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{dir}: {e}"))?;
    let dir = dir.to_string_lossy();
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| mount_point == dir))
}

/// Bytes from `1048576`, `64Mi`, `1G`... (Kubernetes quantity suffixes).
fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size {text:?}");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let unit: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(unit)
        .filter(|&size| size > 0)
        .ok_or_else(invalid)
}
