//! `flex provisioner` processes the provisioning scenarios start against the cluster: the
//! built `flex-provisioner` with the node's `FLEX_*` dirs (the driver's images and state are
//! the node's, as for a provisioner on that node), its own log dir, a kubeconfig, a Lease of
//! the scenario's own. Killed with SIGKILL when dropped.

use crate::{Cluster, Side};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Provisioner {
    child: Option<Child>,
    pub identity: String,
    pub port: u16,
    stderr: PathBuf,
}

/// The executable `make build` puts beside `flex`.
pub fn binary() -> PathBuf {
    std::env::var_os("FLEX_PROVISIONER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            flex_tests::flex_binary()
                .parent()
                .unwrap()
                .join("flex-provisioner")
        })
}

/// The flex log dir of every provisioner the scenarios start (audit and driver lines).
pub fn log_dir(c: &Cluster) -> PathBuf {
    PathBuf::from(c.var("FLEX_E2E_RUN")).join("provisioner-flex-log")
}

impl Provisioner {
    /// Starts one replica serving `drivers`, leading through the Lease `lease` (4 s, so a
    /// takeover is quick); `pause_at` is a step it stops at (see provisioner/src/step.rs).
    pub fn start(
        c: &Cluster,
        identity: &str,
        lease: &str,
        drivers: &[&str],
        pause_at: Option<&str>,
    ) -> Provisioner {
        let binary = binary();
        assert!(
            binary.is_file(),
            "{} is missing: run `make build`",
            binary.display()
        );
        let port = flex_tests::free_port();
        let run = PathBuf::from(c.var("FLEX_E2E_RUN"));
        let stderr = run.join(format!("provisioner-{identity}.log"));
        let log_dir = log_dir(c);
        std::fs::create_dir_all(&log_dir).unwrap();
        let mut command = c.flex_command(Side::Kubelet, &binary);
        command
            .env("FLEX_LOG_DIR", &log_dir)
            .env("FLEX_PROVISIONER_LOG", "info,kube_lease_manager=warn")
            .env_remove("FLEX_PROVISIONER_PAUSE_AT")
            .args(["--kubeconfig", &c.var("KUBECONFIG")])
            .args([
                "--plugin-dir",
                c.plugin_dir(Side::Kubelet).to_str().unwrap(),
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--identity", identity])
            .args(["--node-name", &c.node_name()])
            .args(["--lease-namespace", "default", "--lease-name", lease])
            .args(["--lease-seconds", "4"]);
        for driver in drivers {
            command.args(["--driver", driver]);
        }
        if let Some(step) = pause_at {
            command.env("FLEX_PROVISIONER_PAUSE_AT", step);
        }
        let file = std::fs::File::create(&stderr).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start flex-provisioner");
        Provisioner {
            child: Some(child),
            identity: identity.to_string(),
            port,
            stderr,
        }
    }

    /// What it logged (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for a line containing `needle` in its log.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited ({status}) before logging {needle:?}:\n{}",
                    self.identity,
                    self.log()
                );
            }
            assert!(
                start.elapsed() < timeout,
                "{}: no {needle:?} in its log after {timeout:?}:\n{}",
                self.identity,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no cleanup, no Lease release, as a crashed node or OOM kill leaves it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// Resident memory, KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// `GET path` on its metrics port: (status line, body).
    pub fn get(&self, path: &str) -> (String, String) {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }

    /// Waits until `/healthz` answers.
    pub fn wait_serving(&mut self) {
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(self.running(), "{} exited:\n{}", self.identity, self.log());
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "not serving:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Provisioner {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The Lease's holder, if any.
pub fn lease_holder(c: &Cluster, lease: &str) -> Option<String> {
    let out = Command::new(c.var("KUBECTL"))
        .env("KUBECONFIG", c.var("KUBECONFIG"))
        .args([
            "get",
            "lease",
            lease,
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .output()
        .ok()?;
    let holder = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !holder.is_empty()).then_some(holder)
}
