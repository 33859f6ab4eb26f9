//! What a section measured, the process figures of the mqdb it ran, and the table that
//! puts every rate beside its ceiling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Peak resident memory and CPU seconds of one mqdb process, and its RSS over time.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub peak_rss_kb: u64,
    pub cpu_s: f64,
    /// (seconds since sampling started, RSS in kB)
    pub rss: Vec<(f64, u64)>,
}

impl Usage {
    /// User + system CPU time per message moved, in µs.
    pub fn cpu_us_per_message(&self, n: usize) -> f64 {
        self.cpu_s * 1e6 / n.max(1) as f64
    }

    /// The highest RSS sampled between `from` and `to` seconds.
    pub fn rss_between(&self, from: f64, to: f64) -> u64 {
        self.rss
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, kb)| *kb)
            .max()
            .unwrap_or(0)
    }
}

/// Reads `/proc/PID` every 100 ms, so a process that exits still leaves its last figures.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    usage: Arc<Mutex<Usage>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let usage = Arc::new(Mutex::new(Usage::default()));
        let (s, u) = (stop.clone(), usage.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let Some((rss, peak, cpu)) = read_proc(pid) else {
                    return;
                };
                let mut usage = u.lock().unwrap();
                usage.peak_rss_kb = usage.peak_rss_kb.max(peak);
                usage.cpu_s = cpu;
                usage.rss.push((start.elapsed().as_secs_f64(), rss));
                drop(usage);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            stop,
            usage,
            thread: Some(thread),
        }
    }

    /// The figures so far, sampling once more first.
    pub fn usage(&self) -> Usage {
        self.usage.lock().unwrap().clone()
    }

    pub fn finish(mut self) -> Usage {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.usage()
    }
}

/// (RSS kB, peak RSS kB, CPU seconds) of a live process.
pub fn read_proc(pid: u32) -> Option<(u64, u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let (rss, peak) = (field("VmRSS:")?, field("VmHWM:")?);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((rss, peak, ticks / 100.0))
}

/// Runs `f` and says how busy the whole machine's CPUs were meanwhile (0 to 1): a ceiling
/// taken on a saturated machine leaves no room for anything added to it.
pub fn machine_busy<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let before = cpu_ticks();
    let result = f();
    let after = cpu_ticks();
    let (busy, total) = (after.0 - before.0, after.1 - before.1);
    (result, busy as f64 / total.max(1) as f64)
}

/// (busy, total) jiffies of all CPUs, from `/proc/stat`.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// What one mqdb run measured: its rate over `n` messages, its process figures, and how
/// busy the machine was.
pub struct Run {
    pub rate: f64,
    pub usage: Usage,
    pub n: usize,
    pub busy: Option<f64>,
}

/// One memory-per-byte case: the bytes mqdb may hold in flight, and its RSS idle, at the
/// peak, and after the load has settled.
pub struct MemoryCase {
    pub label: String,
    pub in_flight_bytes: u64,
    pub idle_kb: u64,
    pub peak_kb: u64,
    pub settled_kb: u64,
    pub rows: i64,
}

impl MemoryCase {
    pub fn ratio(&self) -> f64 {
        (self.peak_kb.saturating_sub(self.idle_kb) * 1024) as f64 / self.in_flight_bytes as f64
    }

    /// Peak under idle + 3 × the bytes in flight, and back within 50 MB of idle.
    pub fn met(&self) -> bool {
        self.ratio() < 3.0 && self.settled_kb.saturating_sub(self.idle_kb) < 50 * 1024
    }
}

/// One line of the table.
pub struct Line {
    pub path: String,
    pub rate: f64,
    /// What the rate is compared with, and its rate.
    pub ceiling: Option<(String, f64)>,
    /// The lowest ratio the bridge aims for.
    pub target: Option<f64>,
    pub usage: Option<(Usage, usize)>,
    /// How busy the machine was during the run.
    pub busy: Option<f64>,
}

#[derive(Default)]
pub struct Report {
    pub lines: Vec<Line>,
    pub notes: Vec<String>,
    /// Memory per byte: each case, and how long after its load the RSS was read again.
    pub memory: Vec<(MemoryCase, Duration)>,
    /// Latencies: the path, how many rows, p50, p99 and the maximum, and the p99 aimed for.
    pub latency: Vec<(String, usize, [Duration; 3], Option<Duration>)>,
}

impl Report {
    pub fn ceiling(&mut self, path: &str, rate: f64) {
        println!("  {path}: {rate:.0}/s");
        self.lines.push(Line {
            path: path.to_string(),
            rate,
            ceiling: None,
            target: None,
            usage: None,
            busy: None,
        });
    }

    /// An mqdb run: its rate against `ceiling` (what, and its rate), and the lowest ratio
    /// it aims for.
    pub fn bridge(
        &mut self,
        path: &str,
        run: Run,
        ceiling: Option<(&str, f64)>,
        target: Option<f64>,
    ) {
        println!(
            "  {path}: {:.0}/s, peak RSS {:.1} MB, {:.1} µs CPU per message",
            run.rate,
            run.usage.peak_rss_kb as f64 / 1024.0,
            run.usage.cpu_us_per_message(run.n)
        );
        self.lines.push(Line {
            path: path.to_string(),
            rate: run.rate,
            ceiling: ceiling.map(|(p, r)| (p.to_string(), r)),
            target,
            usage: Some((run.usage, run.n)),
            busy: run.busy,
        });
    }

    pub fn memory(&mut self, case: MemoryCase, settle: Duration) {
        println!(
            "  {}: idle {:.1} MB, peak {:.1} MB for {:.0} MB in flight ({:.2}×), {:.1} MB after {} s",
            case.label,
            case.idle_kb as f64 / 1024.0,
            case.peak_kb as f64 / 1024.0,
            case.in_flight_bytes as f64 / 1048576.0,
            case.ratio(),
            case.settled_kb as f64 / 1024.0,
            settle.as_secs()
        );
        self.memory.push((case, settle));
    }

    pub fn latency(
        &mut self,
        path: &str,
        rows: usize,
        p50: Duration,
        p99: Duration,
        max: Duration,
        p99_target: Option<Duration>,
    ) {
        println!("  {path}: p50 {p50:.1?}, p99 {p99:.1?}, max {max:.1?} over {rows} rows");
        self.latency
            .push((path.to_string(), rows, [p50, p99, max], p99_target));
    }

    pub fn note(&mut self, note: String) {
        println!("  {note}");
        self.notes.push(note);
    }

    /// The table, in Markdown, as the README shows it.
    pub fn print(&self) {
        println!();
        println!(
            "| path | rate /s | against | ratio | target | mqdb peak RSS | mqdb CPU µs per message | machine busy |"
        );
        println!("|---|---:|---|---:|---:|---:|---:|---:|");
        for l in &self.lines {
            let (against, ratio) = match &l.ceiling {
                Some((p, r)) => (p.clone(), format!("{:.2}", l.rate / r)),
                None if l.usage.is_some() => ("(ceiling not measured)".into(), "".into()),
                None => ("ceiling".into(), "".into()),
            };
            let target = match (l.target, &l.ceiling) {
                (Some(t), Some((_, r))) => {
                    let verdict = if l.rate / r >= t { "met" } else { "not met" };
                    format!("≥ {t:.1} ({verdict})")
                }
                (Some(t), None) => format!("≥ {t:.1}"),
                (None, _) => String::new(),
            };
            let (rss, cpu) = match &l.usage {
                // In-process runs have no RSS of their own.
                Some((u, n)) if u.peak_rss_kb == 0 => {
                    ("—".into(), format!("{:.1}", u.cpu_us_per_message(*n)))
                }
                Some((u, n)) => (
                    format!("{:.1} MB", u.peak_rss_kb as f64 / 1024.0),
                    format!("{:.1}", u.cpu_us_per_message(*n)),
                ),
                None => (String::new(), String::new()),
            };
            let busy = l
                .busy
                .map(|b| format!("{:.0}%", b * 100.0))
                .unwrap_or_default();
            println!(
                "| {} | {:.0} | {against} | {ratio} | {target} | {rss} | {cpu} | {busy} |",
                l.path, l.rate
            );
        }
        if !self.memory.is_empty() {
            println!();
            println!(
                "| load (MQTT → PostgreSQL unless named) | rows | MiB in flight | idle RSS | peak RSS | (peak − idle) / in flight | RSS after settling | target: < 3×, within 50 MB of idle |"
            );
            println!("|---|---:|---:|---:|---:|---:|---:|---|");
            for (c, settle) in &self.memory {
                println!(
                    "| {} | {} | {:.0} | {:.1} MB | {:.1} MB | {:.2} | {:.1} MB after {} s | {} |",
                    c.label,
                    c.rows,
                    c.in_flight_bytes as f64 / 1048576.0,
                    c.idle_kb as f64 / 1024.0,
                    c.peak_kb as f64 / 1024.0,
                    c.ratio(),
                    c.settled_kb as f64 / 1024.0,
                    settle.as_secs(),
                    if c.met() { "met" } else { "not met" }
                );
            }
        }
        if !self.latency.is_empty() {
            println!();
            println!("| latency | rows | p50 | p99 | max | target |");
            println!("|---|---:|---:|---:|---:|---|");
            let ms = |d: &Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
            for (path, rows, [p50, p99, max], target) in &self.latency {
                let target = target
                    .map(|t| {
                        let verdict = if *p99 <= t { "met" } else { "not met" };
                        format!("p99 ≤ {} ({verdict})", ms(&t))
                    })
                    .unwrap_or_default();
                println!(
                    "| {path} | {rows} | {} | {} | {} | {target} |",
                    ms(p50),
                    ms(p99),
                    ms(max)
                );
            }
        }
        if !self.notes.is_empty() {
            println!();
            for n in &self.notes {
                println!("- {n}");
            }
        }
    }
}
