//! A deliberately misbehaving driver for the tests: its `mount` verb performs the attack named
//! by the `attack` option. Each attack must end in a Failure reply (or be contained) without a
//! stray byte reaching kubelet.

use flex_sdk::{Capabilities, Driver, Options, Result, block, exec, failure, mounts};

struct Hostile;

impl Driver for Hostile {
    fn init() -> Result<Capabilities> {
        Ok(Capabilities::default())
    }

    fn mount(target_dir: String, options: Options) -> Result<()> {
        let arg = |key: &str| options.get(key).unwrap_or_default().to_string();
        match options.get("attack").unwrap_or_default() {
            // Mount onto a directory kubelet did not pass in this call.
            "mount-elsewhere" => mounts::Mount::new("tmpfs", &arg("target"))
                .fs_type("tmpfs")
                .mount(),
            // Bind the host's root file system into the pod.
            "bind-root" => mounts::Mount::bind("/", &target_dir).mount(),
            // WASI gives drivers no preopened directories: no host file is reachable.
            "read-host-file" => match std::fs::read(arg("path")) {
                Ok(bytes) => Err(failure(format!("read {} bytes", bytes.len()))),
                Err(e) => Err(failure(format!("cannot read: {e}"))),
            },
            "panic" => panic!("hostile driver panicked on purpose"),
            "print" => {
                println!("{{\"status\":\"Success\"}}");
                eprintln!("noise on stderr");
                Err(failure("printed to stdout and stderr"))
            }
            "loop" => loop {
                std::hint::black_box(());
            },
            "memory" => {
                let mut hoard = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "huge-reply" => Err(failure("x".repeat(8 << 20))),
            "stack-overflow" => Err(failure(format!("depth {}", recurse(0)))),
            // Format a device: one not in the policy, or one that already holds a file system.
            "mkfs" => block::mkfs(&arg("device"), "ext4"),
            "http" => http_get(&arg("url")).map(|status| {
                flex_sdk::log::info(&format!("HTTP status {status}"));
            }),
            "exec" => {
                let env: Vec<(&str, &str)> = options
                    .extra
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix("env.")?, v.as_str())))
                    .collect();
                let args = arg("args");
                let args: Vec<&str> = args.split_whitespace().collect();
                let out = exec::run(&arg("program"), &args, &env)?;
                Err(failure(format!("ran, exit code {:?}", out.exit_code)))
            }
            // Write through the state directory, then try to leave it.
            "state" => {
                std::fs::write("/state/marker", b"written by the driver")
                    .map_err(|e| failure(format!("cannot write /state/marker: {e}")))?;
                match std::fs::read(arg("path")) {
                    Ok(bytes) => Err(failure(format!("read {} bytes", bytes.len()))),
                    Err(e) => Err(failure(format!("cannot read: {e}"))),
                }
            }
            other => Err(failure(format!("unknown attack {other:?}"))),
        }
    }
}

flex_sdk::export_driver!(Hostile);

fn recurse(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    let frame = std::hint::black_box([depth; 64]);
    recurse(depth + 1) + frame[3]
}

/// A plain GET through `wasi:http`, the only way out of the sandbox; returns the status.
fn http_get(url: &str) -> Result<u16> {
    use wasip2::http::outgoing_handler::handle;
    use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
    let (scheme, rest) = url.split_once("://").ok_or_else(|| failure("bad url"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::new());
    let scheme = if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let refused = |_| failure("invalid request");
    request.set_scheme(Some(&scheme)).map_err(refused)?;
    request.set_authority(Some(authority)).map_err(refused)?;
    request
        .set_path_with_query(Some(if path.is_empty() { "/" } else { path }))
        .map_err(refused)?;
    let pending = handle(request, None).map_err(|e| failure(format!("refused: {e:?}")))?;
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(Ok(response))) => Ok(response.status()),
        Some(Ok(Err(e))) => Err(failure(format!("request failed: {e:?}"))),
        _ => Err(failure("no response")),
    }
}
