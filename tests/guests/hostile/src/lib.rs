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
            // Not an attack: the e2e tier's secretRef check. Records the decoded secrets it
            // received in its own state dir (never a log), then mounts a tmpfs for the pod.
            "record-secrets" => {
                let seen: String = options
                    .secrets
                    .iter()
                    .map(|s| format!("{}={}\n", s.name, String::from_utf8_lossy(&s.value)))
                    .collect();
                std::fs::write("/state/secrets-seen", seen)
                    .map_err(|e| failure(format!("cannot write /state/secrets-seen: {e}")))?;
                mounts::Mount::new("tmpfs", &target_dir)
                    .fs_type("tmpfs")
                    .option("nosuid")
                    .option("nodev")
                    .mount()
            }
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
            // As "exec", with one argument per line of `args` (arguments with spaces), and the
            // program's stdout in the reply.
            "exec-lines" => {
                let env: Vec<(&str, &str)> = options
                    .extra
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix("env.")?, v.as_str())))
                    .collect();
                let args = arg("args");
                let args: Vec<&str> = match args.is_empty() {
                    true => Vec::new(),
                    false => args.split('\n').collect(),
                };
                let out = exec::run(&arg("program"), &args, &env)?;
                Err(failure(format!(
                    "ran, exit code {:?}, stdout {:?}",
                    out.exit_code,
                    String::from_utf8_lossy(&out.stdout)
                )))
            }
            // Flood the host's log: `lines` lines of `line_bytes` bytes each, tagged `tag`,
            // through the `log` import (`via=log`) or printed (`via=stdout` / `stderr`; write
            // errors once the capture is full are ignored).
            "log-flood" => {
                use std::io::Write;
                let number = |key: &str, default: usize| arg(key).parse().unwrap_or(default);
                let (lines, line_bytes) = (number("lines", 1000), number("line_bytes", 100));
                let tag = arg("tag");
                for i in 0..lines {
                    let mut line = format!("flood {tag} {i:08} ");
                    let pad = line_bytes.saturating_sub(line.len());
                    line.extend(std::iter::repeat_n('x', pad));
                    match arg("via").as_str() {
                        "stdout" => {
                            let _ = writeln!(std::io::stdout(), "{line}");
                        }
                        "stderr" => {
                            let _ = writeln!(std::io::stderr(), "{line}");
                        }
                        _ => flex_sdk::log::info(&line),
                    }
                }
                Ok(())
            }
            // A tmpfs mount onto the call's own directory with `option` sent as ONE option
            // string (e.g. comma-joined `size=1m,password=x`).
            "mount-option" => mounts::Mount::new("tmpfs", &target_dir)
                .fs_type("tmpfs")
                .option(arg("option"))
                .mount(),
            // Write through the state directory, then try to leave it.
            "state" => {
                std::fs::write("/state/marker", b"written by the driver")
                    .map_err(|e| failure(format!("cannot write /state/marker: {e}")))?;
                match std::fs::read(arg("path")) {
                    Ok(bytes) => Err(failure(format!("read {} bytes", bytes.len()))),
                    Err(e) => Err(failure(format!("cannot read: {e}"))),
                }
            }
            // Mount attacks with options given as `;`-separated strings, so a single string
            // may carry commas (`size=8m,uid=0`).
            "mount-options" => {
                let list = arg("options");
                let mut mount = mounts::Mount::new("tmpfs", &target_dir).fs_type("tmpfs");
                for option in list.split(';').filter(|o| !o.is_empty()) {
                    mount = mount.option(option);
                }
                mount.mount()
            }
            "bind" => {
                let list = arg("options");
                let mut mount = mounts::Mount::bind(&arg("source"), &target_dir);
                for option in list.split(';').filter(|o| !o.is_empty()) {
                    mount = mount.option(option);
                }
                mount.mount()
            }
            // `repeat` remounts with the given options.
            "remount" => {
                let list = arg("options");
                let options: Vec<&str> = list.split(';').filter(|o| !o.is_empty()).collect();
                let times: u32 = arg("repeat").parse().unwrap_or(1);
                for _ in 0..times {
                    mounts::remount(&target_dir, &options)?;
                }
                Ok(())
            }
            "unmount-other" => mounts::unmount(&arg("target")),
            // Read-only probes whose answers must not reveal host paths outside the grant.
            "is-mountpoint" => Err(failure(format!(
                "answer {:?}",
                mounts::is_mountpoint(&arg("path"))
            ))),
            // One block call (`op`: probe, mkfs, resize, size, wait, create-image, image-size,
            // grow-image, delete-image, attach-image, image-device, detach-image,
            // attach-detach, or mount-device: mount `device` onto the call's directory),
            // `repeat` times, `sleep_ms` apart; `op` may list several, comma-separated, done in
            // order each time. The reply is a Failure whose message has one
            // line per call: `ok <value>` or `err <message>`.
            "block-op" => {
                let (device, name) = (arg("device"), arg("name"));
                let number = |key: &str, default: u64| arg(key).parse().unwrap_or(default);
                let fs = match arg("fs").as_str() {
                    "" => "ext4".to_string(),
                    fs => fs.to_string(),
                };
                let one = |op: &str| -> Result<String> {
                    Ok(match op {
                        "probe" => format!("{:?}", block::probe_fs(&device)?),
                        "mkfs" => format!("{:?}", block::mkfs(&device, &fs)?),
                        "resize" => format!("{:?}", block::resize_fs(&device, &arg("path"))?),
                        "size" => format!("{:?}", block::device_size(&device)?),
                        "wait" => {
                            let timeout = number("timeout_ms", 0) as u32;
                            format!("{:?}", block::wait_for_device(&device, timeout)?)
                        }
                        "create-image" => {
                            format!("{:?}", block::create_image(&name, number("size", 1 << 20))?)
                        }
                        "image-size" => format!("{:?}", block::image_size(&name)?),
                        "grow-image" => {
                            format!("{:?}", block::grow_image(&name, number("size", 1 << 20))?)
                        }
                        "delete-image" => format!("{:?}", block::delete_image(&name)?),
                        "attach-image" => block::attach_image(&name)?,
                        "image-device" => format!("{:?}", block::image_device(&name)?),
                        "detach-image" => format!("{:?}", block::detach_image(&name)?),
                        "attach-detach" => {
                            let device = block::attach_image(&name)?;
                            block::detach_image(&name)?;
                            device
                        }
                        "mount-device" => format!(
                            "{:?}",
                            mounts::Mount::new(&device, &target_dir)
                                .fs_type(&fs)
                                .option("nosuid")
                                .option("nodev")
                                .mount()?
                        ),
                        other => return Err(failure(format!("unknown op {other:?}"))),
                    })
                };
                let ops = arg("op");
                let lines: Vec<String> = (0..number("repeat", 1))
                    .flat_map(|i| {
                        if i > 0 {
                            std::thread::sleep(std::time::Duration::from_millis(number(
                                "sleep_ms", 0,
                            )));
                        }
                        ops.split(',').map(one).collect::<Vec<_>>()
                    })
                    .map(|result| match result {
                        Ok(value) => format!("ok {value}"),
                        Err(flex_sdk::Error::Failure(message)) => format!("err {message}"),
                        Err(other) => format!("err {other:?}"),
                    })
                    .collect();
                Err(failure(lines.join("\n")))
            }
            // `count` files of `bytes` bytes each under /state (`/state/f<N>`).
            "state-fill" => {
                let bytes: usize = arg("bytes").parse().unwrap_or(0);
                let count: u32 = arg("count").parse().unwrap_or(1);
                let chunk = vec![7u8; bytes];
                for n in 0..count {
                    std::fs::write(format!("/state/f{n}"), &chunk)
                        .map_err(|e| failure(format!("write /state/f{n}: {e}")))?;
                }
                Err(failure(format!("wrote {count} files")))
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
