//! Per-call cost of the tmpfs driver through an installed `flex`, against the same driver as a
//! native Rust executable (`tests/native-tmpfs`), as a bash + jq script
//! (`tests/bench/tmpfs-bash.sh`) and against the exec floor (`/bin/true`). Every figure comes
//! from this run: the subjects are exec'd round-robin, so machine noise hits them alike.
//!
//! `make bench` (root: the mounts are real), or
//! `cargo run --release -p flex-tests --bin bench -- [RUNS] [CALLGRIND_RUNS] [warm]` (`warm`:
//! only the table of `flex serve`'s warm children against calls in process).
//!
//! Prints, per verb (`init`, `mount`, `unmount`): median and p99 wall time, peak RSS of the
//! call (the child's `ru_maxrss` from `wait4`), instructions per call (`perf stat` where
//! hardware counters work, else `valgrind --tool=callgrind`), ratios; then 64 concurrent calls,
//! and where one flex call spends its time (`FLEX_TIMINGS=1`): the Rust driver's verbs, and
//! `init` of the Rust, JavaScript and Python drivers side by side.

use flex_tests::{Node, Value, flex_binary, guest, mount_json, shipped_policy};
use nix::libc;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "bench/warm.rs"]
mod warm;

const CONCURRENCY: usize = 64;
const CONCURRENT_ROUNDS: usize = 5;
const VERBS: [&str; 3] = ["init", "mount", "unmount"];

struct Subject {
    name: &'static str,
    program: PathBuf,
    /// A pod volume directory of its own, for mount and unmount.
    dir: PathBuf,
}

impl Subject {
    /// The JavaScript and Python drivers: large components, whose `init` issue 12 measures
    /// against the Rust driver's.
    fn is_other_language(&self) -> bool {
        self.name.contains("JS") || self.name.contains("Python")
    }
}

/// The Rust driver in flex (the third subject) and the JavaScript and Python ones.
fn warm_subjects(subjects: &[Subject]) -> Vec<&Subject> {
    subjects[2..3]
        .iter()
        .chain(subjects.iter().filter(|s| s.is_other_language()))
        .collect()
}

/// One exec: wall time from spawn to reap, and the child's peak RSS in KiB.
struct Sample {
    wall: Duration,
    rss_kib: u64,
    ok: bool,
}

// The child is reaped by `wait4` (for its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn exec(program: &Path, args: &[String], node: &Node, extra_env: &[(&str, &str)]) -> Sample {
    let start = Instant::now();
    let child = Command::new(program)
        .args(args)
        .env("FLEX_POLICY_DIR", node.path("policy"))
        .env("FLEX_LOG_DIR", node.path("log"))
        .env("FLEX_CACHE_DIR", node.cache_dir())
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("exec {}: {e}", program.display()));
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain syscall on a pointer to locals; reaps the child std spawned (std never
    // waits for it: the `Child` is dropped without wait, which does not touch the pid).
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    Sample {
        wall,
        rss_kib: usage.ru_maxrss as u64,
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    }
}

fn args_for(verb: &str, subject: &Subject) -> Vec<String> {
    let dir = subject.dir.to_string_lossy().into_owned();
    match verb {
        "init" => vec!["init".into()],
        "mount" => vec![
            "mount".into(),
            dir,
            mount_json("bench", false, Some(2000), &[("size", "16Mi")]),
        ],
        _ => vec!["unmount".into(), dir],
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[derive(Default, Clone)]
struct Stats {
    median: Duration,
    p99: Duration,
    rss_kib: u64,
    failures: usize,
}

fn stats(samples: &[Sample]) -> Stats {
    let mut walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    walls.sort();
    Stats {
        median: percentile(&walls, 0.5),
        p99: percentile(&walls, 0.99),
        rss_kib: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        failures: samples.iter().filter(|s| !s.ok).count(),
    }
}

fn main() {
    let mut cli = std::env::args().skip(1);
    let runs: usize = cli.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let callgrind_runs: usize = cli.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    // `bench RUNS 0 warm`: the warm-children table alone (issue 12's figures).
    let warm_only = cli.next().as_deref() == Some("warm");
    flex_tests::require_root();
    let node = Node::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let native = root.join("../target/release/native-tmpfs");
    let bash = root.join("bench/tmpfs-bash.sh");
    for (what, path) in [("native driver", &native), ("bash driver", &bash)] {
        assert!(
            path.is_file(),
            "{what} {} missing: run `make bench`",
            path.display()
        );
    }
    assert!(
        Command::new("jq").arg("--version").output().is_ok(),
        "the bash driver needs jq (apt-get install jq)"
    );
    let flex = install_flex(&flex_binary(), &node, &node.path("plugins"));
    // A/B: `FLEX_BENCH_BASELINE=/path/to/another/flex` adds that build, installed the same way.
    let baseline = std::env::var_os("FLEX_BENCH_BASELINE")
        .map(|other| install_flex(Path::new(&other), &node, &node.path("plugins-baseline")));

    let mut subjects: Vec<Subject> = [
        ("/bin/true", PathBuf::from("/bin/true")),
        ("native Rust", native),
        ("flex (wasm)", flex.clone()),
        ("bash + jq", bash),
    ]
    .into_iter()
    .chain(baseline.map(|b| ("flex baseline", b)))
    // The same driver in JavaScript (tmpfs) and a Python driver (a bind from its state dir):
    // large components (12-19 MB) against the 85 KB Rust one.
    .chain([
        (
            "flex JS tmpfs",
            install_driver(
                &flex_binary(),
                &node,
                &node.path("plugins"),
                "flex~tmpfs-js",
                &flex_tests::script_guest("flex_tmpfs_js"),
                "tmpfs-js",
            ),
        ),
        (
            "flex Python hostpath",
            install_driver(
                &flex_binary(),
                &node,
                &node.path("plugins"),
                "flex~hostpath-py",
                &flex_tests::script_guest("flex_hostpath_py"),
                "hostpath-py",
            ),
        ),
    ])
    .map(|(name, program)| Subject {
        name,
        program,
        dir: node.pod_dir(&name.replace(|c: char| !c.is_ascii_alphanumeric(), "-")),
    })
    .collect();
    if warm_only {
        warm::report(&node, &warm_subjects(&subjects), runs);
        return;
    }
    // Warm-up: page cache, and a first check that every subject really works.
    for subject in &subjects {
        for verb in VERBS {
            let sample = exec(&subject.program, &args_for(verb, subject), &node, &[]);
            assert!(sample.ok, "{} {verb} failed", subject.name);
        }
    }

    // Round-robin per verb, rotating the order each round: every exec follows another
    // program's, so each pays the same switch (each subject mounts on its own directory).
    let n = subjects.len();
    let mut samples: Vec<BTreeMap<&str, Vec<Sample>>> = (0..n).map(|_| BTreeMap::new()).collect();
    for round in 0..runs {
        for verb in VERBS {
            for k in 0..n {
                let i = (round + k) % n;
                let sample = exec(
                    &subjects[i].program,
                    &args_for(verb, &subjects[i]),
                    &node,
                    &[],
                );
                samples[i].entry(verb).or_default().push(sample);
            }
        }
    }
    let table: Vec<BTreeMap<&str, Stats>> = samples
        .iter()
        .map(|per_verb| per_verb.iter().map(|(v, s)| (*v, stats(s))).collect())
        .collect();

    let instructions = instruction_counts(&node, &mut subjects, callgrind_runs);
    let concurrent: Vec<Stats> = subjects.iter().map(|s| concurrent_init(s, &node)).collect();
    let phases = phase_breakdown(&flex, &subjects[2], &node, runs.min(100), &VERBS);
    // The same phases of the baseline: its `call` phase of `mount` is the capability layer's
    // in-process cost there (checks plus the mount system calls), to compare with this one's.
    let baseline_phases = subjects
        .iter()
        .position(|s| s.name == "flex baseline")
        .map(|b| {
            phase_breakdown(
                &subjects[b].program,
                &subjects[b],
                &node,
                runs.min(100),
                &VERBS,
            )
        });
    // The same phases of the Python and JavaScript drivers' `init`: where a large component's
    // extra cost per call goes (issue 12's target is their warm `init` within 2x the Rust one).
    let guest_phases: Vec<(&str, BTreeMap<String, u64>)> = subjects
        .iter()
        .filter(|s| s.is_other_language())
        .map(|s| {
            let mut verbs = phase_breakdown(&s.program, s, &node, runs.min(100), &["init"]);
            (s.name, verbs.swap_remove(0).1)
        })
        .collect();

    // Report.
    println!(
        "{runs} runs per subject and verb, round-robin; warm flex artifact; {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "instructions: {}",
        instructions.as_ref().map_or("unavailable", |(how, _)| how)
    );
    println!();
    println!(
        "| verb | driver | median ms | p99 ms | peak RSS MiB | instructions | × /bin/true | × native | × bash+jq |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for verb in VERBS {
        let of = |i: usize| table[i][verb].median.as_secs_f64();
        for (i, subject) in subjects.iter().enumerate() {
            let s = &table[i][verb];
            let instr = instructions
                .as_ref()
                .and_then(|(_, counts)| counts.get(&(i, verb)))
                .map_or("n/a".to_string(), |c| format_count(*c));
            println!(
                "| `{verb}` | {} | {:.2} | {:.2} | {:.1} | {instr} | {:.2}× | {:.2}× | {:.3}× |{}",
                subject.name,
                ms(s.median),
                ms(s.p99),
                s.rss_kib as f64 / 1024.0,
                of(i) / of(0),
                of(i) / of(1),
                of(i) / of(3),
                if s.failures > 0 {
                    format!(" {} FAILED", s.failures)
                } else {
                    String::new()
                }
            );
        }
    }
    if let Some(b) = subjects.iter().position(|s| s.name == "flex baseline") {
        println!();
        println!("flex against the baseline build, same run (positive: this build is slower):");
        println!("| verb | median Δ ms | p99 Δ ms | median ratio |");
        println!("|---|---|---|---|");
        for verb in VERBS {
            let (now, before) = (&table[2][verb], &table[b][verb]);
            println!(
                "| `{verb}` | {:+.3} | {:+.3} | {:.3}× |",
                ms(now.median) - ms(before.median),
                ms(now.p99) - ms(before.p99),
                now.median.as_secs_f64() / before.median.as_secs_f64()
            );
        }
    }
    println!();
    println!(
        "{CONCURRENCY} concurrent `init` calls, {CONCURRENT_ROUNDS} rounds ({} calls each):",
        CONCURRENCY * CONCURRENT_ROUNDS
    );
    println!("| driver | failures | median ms | p99 ms | peak RSS MiB |");
    println!("|---|---|---|---|---|");
    for (subject, s) in subjects.iter().zip(&concurrent) {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.1} |",
            subject.name,
            s.failures,
            ms(s.median),
            ms(s.p99),
            s.rss_kib as f64 / 1024.0
        );
    }
    println!();
    println!(
        "Where one flex call's time goes (median µs over {} calls, FLEX_TIMINGS=1):",
        runs.min(100)
    );
    println!("| phase | init | mount | unmount |");
    println!("|---|---|---|---|");
    let phase_names: Vec<String> = phases
        .first()
        .map(|(_, p)| p.keys().cloned().collect())
        .unwrap_or_default();
    let mut ordered = vec!["exec + exit (wall − in-process)".to_string()];
    ordered.extend(PHASE_ORDER.iter().map(|s| s.to_string()));
    let extra: Vec<String> = phase_names
        .into_iter()
        .filter(|p| !PHASE_ORDER.contains(&p.as_str()) && !ordered.contains(p) && p != "wall")
        .collect();
    ordered.extend(extra);
    ordered.push("wall".to_string());
    for phase in &ordered {
        let cells: Vec<String> = phases
            .iter()
            .map(|(_, p)| p.get(phase).map_or("-".into(), |us| format!("{us}")))
            .collect();
        if cells.iter().all(|c| c == "-") {
            continue;
        }
        println!("| {phase} | {} |", cells.join(" | "));
    }
    if !guest_phases.is_empty() {
        println!();
        println!("`init` by driver language (median µs, FLEX_TIMINGS=1):");
        let names: Vec<&str> = guest_phases.iter().map(|(name, _)| *name).collect();
        println!("| phase | flex (wasm) | {} |", names.join(" | "));
        println!("|---|---|{}", "---|".repeat(names.len()));
        let rust_init = phases.first().map(|(_, p)| p);
        for phase in &ordered {
            let cells: Vec<String> = rust_init
                .into_iter()
                .chain(guest_phases.iter().map(|(_, p)| p))
                .map(|p| p.get(phase).map_or("-".to_string(), |us| us.to_string()))
                .collect();
            println!("| {phase} | {} |", cells.join(" | "));
        }
    }
    if let Some(before) = &baseline_phases {
        println!();
        println!("The `call` phase (the verb itself: checks and system calls), median µs:");
        println!("| verb | this build | baseline | Δ |");
        println!("|---|---|---|---|");
        for ((verb, now), (_, then)) in phases.iter().zip(before) {
            let (Some(now), Some(then)) = (now.get("call"), then.get("call")) else {
                continue;
            };
            let delta = *now as i64 - *then as i64;
            println!("| `{verb}` | {now} | {then} | {delta:+} |");
        }
    }
    println!();
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len()) as f64 / (1 << 20) as f64;
    let built = flex_binary();
    println!("flex binary (per call): {:.1} MiB", size(&built));
    let compiler = built.with_file_name("flex-compile");
    if compiler.is_file() {
        println!(
            "flex-compile (install, first call): {:.1} MiB",
            size(&compiler)
        );
    }
    println!();
    let init = |i: usize| table[i]["init"].median.as_secs_f64() * 1e3;
    let flex_rss = VERBS
        .iter()
        .map(|v| table[2][*v].rss_kib)
        .max()
        .unwrap_or(0) as f64
        / 1024.0;
    println!("targets (flex init):");
    let check = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "  median {:.2} ms ≤ 1.2 ms: {}; {:+.2} ms over /bin/true ≤ 0.5 ms: {}",
        init(2),
        check(init(2) <= 1.2),
        init(2) - init(0),
        check(init(2) - init(0) <= 0.5)
    );
    let mount = |i: usize| table[i]["mount"].median.as_secs_f64();
    println!(
        "  {:.2}× native ≤ 1.5×: {}; {:.3}× bash+jq ≤ 0.05×: {} (the script's init only echoes; \
         mount, where it runs jq: {:.3}×, {})",
        init(2) / init(1),
        check(init(2) / init(1) <= 1.5),
        init(2) / init(3),
        check(init(2) / init(3) <= 0.05),
        mount(2) / mount(3),
        check(mount(2) / mount(3) <= 0.05)
    );
    println!(
        "  peak RSS {flex_rss:.1} MiB ≤ 16 MiB: {}; {CONCURRENCY} concurrent calls, {} failures: {}",
        check(flex_rss <= 16.0),
        concurrent[2].failures,
        check(concurrent[2].failures == 0)
    );
    // Issue 12: a large component's warm `init` against the Rust driver's, in this same run.
    for (i, subject) in subjects.iter().enumerate() {
        if !subject.is_other_language() {
            continue;
        }
        let ratio = init(i) / init(2);
        println!(
            "  {} init {:.2} ms, {ratio:.2}× flex (wasm) ≤ 2×: {}; ≤ 3 ms: {}",
            subject.name,
            init(i),
            check(ratio <= 2.0),
            check(init(i) <= 3.0)
        );
    }
    warm::report(&node, &warm_subjects(&subjects), runs);
}

/// `flex install` of the tmpfs driver into `plugin_dir`, exactly as an operator does it; returns
/// the driver executable kubelet would exec.
fn install_flex(flex: &Path, node: &Node, plugin_dir: &Path) -> PathBuf {
    install_driver(
        flex,
        node,
        plugin_dir,
        "flex~tmpfs",
        &guest("flex_tmpfs"),
        "tmpfs",
    )
}

/// `flex install` of `component` as `name` with the shipped policy of `plugins/<plugin>`.
fn install_driver(
    flex: &Path,
    node: &Node,
    plugin_dir: &Path,
    name: &str,
    component: &Path,
    plugin: &str,
) -> PathBuf {
    node.flex_install(flex, plugin_dir, name, component, &shipped_policy(plugin))
}

/// 64 simultaneous `init` calls (kubelet runs operations on different volumes in parallel).
fn concurrent_init(subject: &Subject, node: &Node) -> Stats {
    let mut all = Vec::new();
    for _ in 0..CONCURRENT_ROUNDS {
        let barrier = std::sync::Barrier::new(CONCURRENCY);
        let round: Vec<Sample> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..CONCURRENCY)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        exec(&subject.program, &["init".to_string()], node, &[])
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        all.extend(round);
    }
    stats(&all)
}

const PHASE_ORDER: [&str; 7] = [
    "before_run",
    "engine",
    "artifact_load",
    "store",
    "link",
    "instantiate",
    "call",
];

/// Median of each phase flex reports with `FLEX_TIMINGS=1`, per verb, plus what the process
/// spends outside them (exec, dynamic loading, reply and exit): wall − sum of phases.
fn phase_breakdown(
    flex: &Path,
    subject: &Subject,
    node: &Node,
    runs: usize,
    verbs: &[&'static str],
) -> Vec<(&'static str, BTreeMap<String, u64>)> {
    let log = node.path("log/flex.log");
    let mut per_verb: BTreeMap<&str, BTreeMap<String, Vec<u64>>> = BTreeMap::new();
    // Verbs in lifecycle order, so every mount and unmount does real work.
    for _ in 0..runs {
        for &verb in verbs {
            let _ = std::fs::remove_file(&log);
            let sample = exec(
                flex,
                &args_for(verb, subject),
                node,
                &[("FLEX_TIMINGS", "1")],
            );
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let timings = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|l| l["source"] == "timings")
                .filter_map(|l| serde_json::from_str::<Value>(l["message"].as_str()?).ok())
                .next_back();
            let Some(phases) = timings.as_ref().and_then(|t| t["timings_us"].as_object()) else {
                continue;
            };
            let per_phase = per_verb.entry(verb).or_default();
            let mut inside = 0;
            for (name, us) in phases {
                let us = us.as_u64().unwrap_or(0);
                inside += us;
                per_phase.entry(name.clone()).or_default().push(us);
            }
            let wall = sample.wall.as_micros() as u64;
            per_phase
                .entry("exec + exit (wall − in-process)".into())
                .or_default()
                .push(wall.saturating_sub(inside));
            per_phase.entry("wall".into()).or_default().push(wall);
        }
    }
    verbs
        .iter()
        .map(|verb| {
            let medians = per_verb
                .remove(verb)
                .unwrap_or_default()
                .into_iter()
                .map(|(name, mut values)| {
                    values.sort();
                    (name, values[values.len() / 2])
                })
                .collect();
            (*verb, medians)
        })
        .collect()
}

fn format_count(count: u64) -> String {
    if count >= 1_000_000 {
        format!("{:.2} M", count as f64 / 1e6)
    } else {
        format!("{:.0} K", count as f64 / 1e3)
    }
}

type Counts = BTreeMap<(usize, &'static str), u64>;

/// Instructions per call and verb: `perf stat -e instructions` where the CPU counters are
/// available, else callgrind (median of `runs`), else none.
fn instruction_counts(
    node: &Node,
    subjects: &mut [Subject],
    runs: usize,
) -> Option<(&'static str, Counts)> {
    let perf_works = Command::new("perf")
        .args(["stat", "-x,", "-e", "instructions", "true"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .and_then(|text| parse_perf(&text))
        .is_some();
    if perf_works {
        let counts = count_each(subjects, runs.max(5), |subject, args| {
            let output = Command::new("perf")
                .args(["stat", "-x,", "-e", "instructions", "--"])
                .arg(&subject.program)
                .args(args)
                .env("FLEX_POLICY_DIR", node.path("policy"))
                .env("FLEX_LOG_DIR", node.path("log"))
                .env("FLEX_CACHE_DIR", node.cache_dir())
                .stdin(Stdio::null())
                .output()
                .ok()?;
            parse_perf(&String::from_utf8_lossy(&output.stderr))
        });
        return Some(("perf stat -e instructions (all child processes)", counts));
    }
    if runs == 0 || Command::new("valgrind").arg("--version").output().is_err() {
        return None;
    }
    // valgrind's virtual CPU lacks some host CPU features, so native artifacts do not load
    // under it: install a copy of its own (another component file, so another artifact),
    // whose natively precompiled artifact is rejected under valgrind and rebuilt there.
    let flex = install_flex(&flex_binary(), node, &node.path("plugins-valgrind"));
    let warm = Command::new("valgrind")
        .args(["--tool=none", "--trace-children=yes", "-q"])
        .arg(&flex)
        .arg("init")
        .env(
            "FLEX_COMPILER",
            flex_binary().with_file_name("flex-compile"),
        )
        .env("FLEX_POLICY_DIR", node.path("policy"))
        .env("FLEX_LOG_DIR", node.path("log"))
        .env("FLEX_CACHE_DIR", node.cache_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(warm.is_ok_and(|s| s.success()), "flex under valgrind");
    let installed = std::mem::replace(&mut subjects[2].program, flex);
    let counts = count_each(subjects, runs, |subject, args| {
        let output = Command::new("valgrind")
            .args([
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                "--trace-children=yes",
            ])
            .arg(&subject.program)
            .args(args)
            .env("FLEX_POLICY_DIR", node.path("policy"))
            .env("FLEX_LOG_DIR", node.path("log"))
            .env("FLEX_CACHE_DIR", node.cache_dir())
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stderr);
        let total: u64 = text
            .lines()
            .filter_map(|l| l.split("Collected :").nth(1))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .sum();
        (total > 0).then_some(total)
    });
    subjects[2].program = installed;
    Some((
        "valgrind --tool=callgrind, median of a few runs, child processes included (no hardware counters here)",
        counts,
    ))
}

fn count_each(
    subjects: &[Subject],
    runs: usize,
    count: impl Fn(&Subject, &[String]) -> Option<u64>,
) -> Counts {
    let mut values: BTreeMap<(usize, &'static str), Vec<u64>> = BTreeMap::new();
    // The four subjects (not an A/B baseline, whose artifact was compiled outside valgrind).
    for (i, subject) in subjects.iter().enumerate().take(4) {
        // Verbs in lifecycle order, so every mount and unmount does real work.
        for _ in 0..runs {
            for verb in VERBS {
                if let Some(n) = count(subject, &args_for(verb, subject)) {
                    values.entry((i, verb)).or_default().push(n);
                }
            }
        }
    }
    values
        .into_iter()
        .map(|(key, mut v)| {
            v.sort();
            (key, v[v.len() / 2])
        })
        .collect()
}

fn parse_perf(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find(|l| l.contains("instructions"))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.trim().parse().ok())
}
