//! A deliberately misbehaving driver for the tests: its `mount` verb performs the attack named
//! by the `attack` option. Each attack must end in a Failure reply (or be contained) without a
//! stray byte reaching kubelet.

use flex_sdk::{Capabilities, Driver, Options, Result, failure, mounts};

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
            other => Err(failure(format!("unknown attack {other:?}"))),
        }
    }
}

flex_sdk::export_driver!(Hostile);
