//! Counting what happened, and the one-line JSON summary.

use std::fmt::Write;
use std::time::{Duration, Instant};

use crate::args::{Mode, Options};

/// What one executor saw. Merged across executors at the end.
#[derive(Debug)]
pub struct Tally {
    pub started: Instant,
    /// When the last accepted message (or completed handshake) was answered.
    pub last_success: Option<Instant>,
    /// Messages (or handshakes, or sessions) tried.
    pub attempted: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub connections: usize,
    /// Accept latency (end of data to 250), or handshake time, in microseconds.
    pub latencies_us: Vec<u32>,
    /// Idle mode: sessions that still answered NOOP after the hold.
    pub held: usize,
    pub first_error: Option<String>,
}

impl Tally {
    pub fn new(started: Instant) -> Tally {
        Tally {
            started,
            last_success: None,
            attempted: 0,
            succeeded: 0,
            failed: 0,
            connections: 0,
            latencies_us: Vec::new(),
            held: 0,
            first_error: None,
        }
    }

    pub fn success(&mut self, latency: Option<Duration>) {
        self.succeeded += 1;
        self.last_success = Some(Instant::now());
        if let Some(latency) = latency {
            self.latencies_us
                .push(latency.as_micros().min(u32::MAX as u128) as u32);
        }
    }

    pub fn failure(&mut self, error: impl std::fmt::Display) {
        self.failed += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    pub fn merge(mut self, other: Tally) -> Tally {
        self.started = self.started.min(other.started);
        self.last_success = match (self.last_success, other.last_success) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.attempted += other.attempted;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.connections += other.connections;
        self.latencies_us.extend(other.latencies_us);
        self.held += other.held;
        self.first_error = self.first_error.or(other.first_error);
        self
    }
}

/// The value at quantile `q` (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// User and system CPU time of this process so far.
pub fn cpu_times() -> (Duration, Duration) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (time(usage.ru_utime), time(usage.ru_stime))
}

fn ms(us: Option<u32>) -> String {
    us.map_or("null".into(), |us| format!("{:.3}", f64::from(us) / 1000.0))
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The summary line. `elapsed` runs from the first connection to the last success; `wall` is
/// the whole run, against which the generator's own CPU share is given.
pub fn summary(options: &Options, mut tally: Tally, wall: Duration) -> String {
    tally.latencies_us.sort_unstable();
    let elapsed = tally
        .last_success
        .map_or(Duration::ZERO, |t| t - tally.started)
        .as_secs_f64();
    let rate = if elapsed > 0.0 {
        tally.succeeded as f64 / elapsed
    } else {
        0.0
    };
    let (user, system) = cpu_times();
    let cpu = (user + system).as_secs_f64();
    let (attempted, succeeded, rate_name) = match options.mode {
        Mode::Load => ("sent", "accepted", "msgs_per_s"),
        Mode::Handshake => ("attempted", "handshakes", "handshakes_per_s"),
        Mode::Idle => ("attempted", "established", "established_per_s"),
    };

    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"mode\":\"{}\",\"server\":\"{}\",\"sessions\":{},\"size\":{},\"starttls\":{},\
         \"pipelining\":{},\"connection_per_message\":{},\"executors\":{},\
         \"{attempted}\":{},\"{succeeded}\":{},\"failed\":{},\"connections\":{},",
        options.mode.name(),
        options.server,
        options.sessions,
        options.size,
        options.starttls,
        options.pipelining,
        options.connection_per_message,
        options.executors,
        tally.attempted,
        tally.succeeded,
        tally.failed,
        tally.connections,
    );
    if options.mode == Mode::Idle {
        let _ = write!(out, "\"held\":{},", tally.held);
    }
    let _ = write!(
        out,
        "\"elapsed_s\":{elapsed:.4},\"{rate_name}\":{rate:.1},\"p50_ms\":{},\"p99_ms\":{},\
         \"max_ms\":{},\"wall_s\":{:.4},\"cpu_user_s\":{:.3},\"cpu_sys_s\":{:.3},\
         \"cpu_percent\":{:.1},\"first_error\":{}}}",
        ms(quantile(&tally.latencies_us, 0.50)),
        ms(quantile(&tally.latencies_us, 0.99)),
        ms(tally.latencies_us.last().copied()),
        wall.as_secs_f64(),
        user.as_secs_f64(),
        system.as_secs_f64(),
        100.0 * cpu / wall.as_secs_f64().max(1e-9),
        tally
            .first_error
            .as_deref()
            .map_or("null".into(), json_string),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&samples, 0.50), Some(50));
        assert_eq!(quantile(&samples, 0.99), Some(99));
        assert_eq!(quantile(&samples, 1.0), Some(100));
        assert_eq!(quantile(&[7], 0.99), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn merge_keeps_the_earliest_start_and_latest_success() {
        let t0 = Instant::now();
        let mut a = Tally::new(t0 + Duration::from_millis(5));
        a.success(Some(Duration::from_millis(1)));
        let mut b = Tally::new(t0);
        b.failure("421 from server");
        let merged = a.merge(b);
        assert_eq!(merged.started, t0);
        assert_eq!((merged.succeeded, merged.failed), (1, 1));
        assert_eq!(merged.first_error.as_deref(), Some("421 from server"));
    }

    #[test]
    fn error_text_is_escaped_for_json() {
        assert_eq!(json_string("a \"b\"\r\n"), "\"a \\\"b\\\"\\u000d\\u000a\"");
    }
}
