//! Per-call latency of an installed flex driver against the exec floor (`/bin/true`), measured
//! interleaved in the same run so machine noise hits both alike. Prints a table.
//!
//! `make bench` (or `cargo run --release -p flex-tests --bin bench -- [RUNS]`).

use flex_tests::{Node, guest, shipped_policy};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn time_exec(program: &Path, args: &[&str], node: &Node) -> Duration {
    let start = Instant::now();
    let status = Command::new(program)
        .args(args)
        .env("FLEX_POLICY_DIR", node.path("policy"))
        .env("FLEX_LOG_DIR", node.path("log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("exec");
    let elapsed = start.elapsed();
    assert!(status.success(), "{} {args:?} failed", program.display());
    elapsed
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let node = Node::new();
    let driver = node.install("flex~tmpfs", &guest("flex_tmpfs"));
    node.set_policy("flex~tmpfs", &shipped_policy("tmpfs"));
    time_exec(&driver, &["init"], &node); // compile and cache the artifact

    let floor = Path::new("/bin/true");
    let mut samples: [(&str, Vec<Duration>); 2] =
        [("/bin/true", vec![]), ("flex init (tmpfs)", vec![])];
    for _ in 0..runs {
        samples[0].1.push(time_exec(floor, &[], &node));
        samples[1].1.push(time_exec(&driver, &["init"], &node));
    }
    let floor_median = {
        let mut s = samples[0].1.clone();
        s.sort();
        percentile(&s, 0.5)
    };
    println!("{runs} runs each, interleaved, warm artifact cache");
    println!(
        "{:<20} {:>12} {:>12} {:>14}",
        "command", "median ms", "p99 ms", "median ratio"
    );
    for (name, mut times) in samples {
        times.sort();
        let median = percentile(&times, 0.5);
        println!(
            "{name:<20} {:>12.3} {:>12.3} {:>13.2}x",
            median.as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3,
            median.as_secs_f64() / floor_median.as_secs_f64()
        );
    }
    let size = std::fs::metadata(flex_tests::flex_binary())
        .map(|m| m.len())
        .unwrap_or(0);
    println!("flex binary: {:.1} MiB", size as f64 / (1 << 20) as f64);
}
