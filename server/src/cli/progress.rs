//! Progress on long work (import, close-month, export, backup, restore, `push --wait`): a bar
//! (or a spinner, when the total is unknown) on a terminal, through `indicatif`; otherwise —
//! a log file, a pipe, a timer's journal — a plain line on stderr every few seconds once the
//! work has taken that long, so short runs stay quiet and long ones show they are alive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a plain progress line is written.
pub const EVERY: Duration = Duration::from_secs(3);

#[derive(Default)]
struct State {
    pos: Option<u64>,
    message: String,
    lines: u32,
}

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    ticker: Option<std::thread::JoinHandle<()>>,
    label: &'static str,
    started: Instant,
    total: Option<u64>,
}

fn line(label: &str, total: Option<u64>, started: Instant, s: &State) -> String {
    let at = match (s.pos, total) {
        (Some(p), Some(t)) => format!("{p}/{t} "),
        (Some(p), None) => format!("{p} "),
        _ => String::new(),
    };
    format!(
        "rounds {label}: {at}{} ({} s)",
        s.message,
        started.elapsed().as_secs()
    )
}

impl Progress {
    /// Progress of `label` (the command), out of `total` when known.
    pub fn new(label: &'static str, total: Option<u64>) -> Progress {
        let started = Instant::now();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut ticker = None;
        let bar = if terminal {
            let bar = match total {
                Some(n) => indicatif::ProgressBar::new(n).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                ),
                None => indicatif::ProgressBar::new_spinner().with_style(
                    indicatif::ProgressStyle::with_template("{prefix} {spinner} {msg} ({elapsed})")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                ),
            };
            bar.set_prefix(format!("rounds {label}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        } else {
            let (state, stop) = (state.clone(), stop.clone());
            ticker = Some(std::thread::spawn(move || {
                let mut next = started + EVERY;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    if Instant::now() < next {
                        continue;
                    }
                    next += EVERY;
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    s.lines += 1;
                    eprintln!("{}", line(label, total, started, &s));
                }
            }));
            None
        };
        Progress {
            bar,
            state,
            stop,
            ticker,
            label,
            started,
            total,
        }
    }

    /// Where the work is: `pos` done (of the total), and what it is doing.
    pub fn update(&self, pos: Option<u64>, message: &str) {
        if let Some(bar) = &self.bar {
            if let Some(p) = pos {
                bar.set_position(p);
            }
            bar.set_message(message.to_string());
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if pos.is_some() {
            s.pos = pos;
        }
        s.message = message.to_string();
    }

    /// Done: the bar is cleared (the command prints its result); a plain run that wrote
    /// progress lines ends them with one more.
    pub fn finish(mut self, message: &str) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.lines > 0 {
            s.message = message.to_string();
            eprintln!("{}", line(self.label, self.total, self.started, &s));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
