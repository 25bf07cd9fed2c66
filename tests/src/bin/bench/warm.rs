//! The Rust, JavaScript and Python drivers through `flex serve`'s warm children, interleaved
//! with the same calls run in process, in one run: issue 12's target for a large component's
//! `init` (within 2x the Rust driver's, and under 3 ms).

use super::{Stats, Subject, args_for, exec, ms, stats};
use flex_tests::{Node, Value, WarmServer, flex_binary};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Between two calls. kubelet's calls on a node are far apart next to this; without a pause
/// the child that replaces the one just used (about 5 ms of CPU for the Python driver, at
/// nice 19) starts on the same 2 cores as the next call.
const PAUSE: Duration = Duration::from_millis(10);

const MODES: [(&str, &str); 2] = [("in process", "0"), ("warm", "1")];

pub fn report(node: &Node, subjects: &[&Subject], runs: usize) {
    let env = |node: &Node| {
        vec![
            (
                "FLEX_RUN_DIR",
                node.path("run").to_string_lossy().into_owned(),
            ),
            (
                "FLEX_STATE_DIR",
                node.path("state").to_string_lossy().into_owned(),
            ),
        ]
    };
    let mut server = Command::new(flex_binary());
    server
        .args(["serve", "--plugin-dir"])
        .arg(node.path("plugins"))
        .env("FLEX_POLICY_DIR", node.path("policy"))
        .env("FLEX_LOG_DIR", node.path("log"))
        .env("FLEX_CACHE_DIR", node.cache_dir())
        .envs(env(node))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = WarmServer::spawn(server);
    let extra = env(node);
    // Each subject mounts on a directory of its own per mode.
    let dirs: Vec<[PathBuf; 2]> = subjects
        .iter()
        .map(|s| {
            MODES.map(|(mode, _)| {
                node.pod_dir(&format!("{}-{mode}", s.dir.display()).replace(['/', ' '], "-"))
            })
        })
        .collect();
    let call = |i: usize, m: usize, verb: &str| {
        let subject = Subject {
            name: subjects[i].name,
            program: subjects[i].program.clone(),
            dir: dirs[i][m].clone(),
        };
        let mut env: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.push(("FLEX_WARM", MODES[m].1));
        exec(&subject.program, &args_for(verb, &subject), node, &env)
    };
    // Until every driver's first warm call is answered by a child of the server.
    let until = Instant::now() + Duration::from_secs(120);
    for (i, subject) in subjects.iter().enumerate() {
        let driver = driver_name(subject);
        while Instant::now() < until && served_warm(node, Some(&driver)) == 0 {
            call(i, 1, "init");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let served_before = served_warm(node, None);
    let verbs = ["init", "mount", "unmount"];
    let mut samples: BTreeMap<(usize, usize, &str), Vec<super::Sample>> = BTreeMap::new();
    // The exec floor in the same rounds: what the machine's exec and exit cost this run.
    let mut floor = Vec::new();
    for round in 0..runs {
        std::thread::sleep(PAUSE);
        floor.push(exec(Path::new("/bin/true"), &[], node, &[]));
        for verb in verbs {
            for k in 0..subjects.len() * 2 {
                let slot = (round + k) % (subjects.len() * 2);
                let (i, m) = (slot / 2, slot % 2);
                std::thread::sleep(PAUSE);
                samples
                    .entry((i, m, verb))
                    .or_default()
                    .push(call(i, m, verb));
            }
        }
    }
    let served = served_warm(node, None) - served_before;
    drop(server);
    let table: BTreeMap<(usize, usize, &str), Stats> =
        samples.iter().map(|(key, s)| (*key, stats(s))).collect();
    let warm_calls = runs * verbs.len() * subjects.len();

    println!();
    println!(
        "Warm children (`flex serve`, pool 2) against calls in process, interleaved, {runs} runs, \
         {} ms apart; {served} of {warm_calls} warm calls answered by a child:",
        PAUSE.as_millis()
    );
    println!(
        "| verb | driver | in process median ms | p99 | warm median ms | p99 | warm × Rust in process |"
    );
    println!("|---|---|---|---|---|---|---|");
    for verb in verbs {
        let rust = table[&(0, 0, verb)].median.as_secs_f64();
        for (i, subject) in subjects.iter().enumerate() {
            let (cold, warm) = (&table[&(i, 0, verb)], &table[&(i, 1, verb)]);
            let failed = cold.failures + warm.failures;
            println!(
                "| `{verb}` | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}× |{}",
                subject.name,
                ms(cold.median),
                ms(cold.p99),
                ms(warm.median),
                ms(warm.p99),
                warm.median.as_secs_f64() / rust,
                if failed > 0 {
                    format!(" {failed} FAILED")
                } else {
                    String::new()
                }
            );
        }
    }
    let floor = stats(&floor);
    println!(
        "  exec floor (/bin/true) in the same rounds: median {:.2} ms, p99 {:.2} ms",
        ms(floor.median),
        ms(floor.p99)
    );
    let check = |ok: bool| if ok { "met" } else { "NOT met" };
    let rust = ms(table[&(0, 0, "init")].median);
    for (i, subject) in subjects.iter().enumerate().skip(1) {
        let warm = ms(table[&(i, 1, "init")].median);
        println!(
            "  {} warm init {warm:.2} ms, {:.2}× flex (wasm) in process ≤ 2×: {}; ≤ 3 ms: {}",
            subject.name,
            warm / rust,
            check(warm / rust <= 2.0),
            check(warm <= 3.0)
        );
    }
}

/// `vendor~driver`, the directory of the executable kubelet would exec.
fn driver_name(subject: &Subject) -> String {
    let dir = subject.program.parent().and_then(|d| d.file_name());
    dir.map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Replies in the node's log written by warm children (of `driver`, if named).
fn served_warm(node: &Node, driver: Option<&str>) -> usize {
    std::fs::read_to_string(node.path("log/flex.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["warm_caller_pid"].is_u64())
        .filter(|l| driver.is_none_or(|d| l["driver"] == d))
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("reply "))
        })
        .count()
}
