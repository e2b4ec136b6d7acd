//! `secmx-load`: an SMTP load generator for the secmx benchmarks.
//!
//! N concurrent sessions send M messages of S bytes to one server, optionally after STARTTLS
//! (RFC 3207) and with MAIL/RCPT/DATA pipelined (RFC 2920). A session either keeps its
//! connection for many messages, as a relaying MTA does, or opens one per message, as
//! `smtp-source` does. Each message's accept latency (end of data to the 250 reply, RFC 5321
//! section 4.1.1.4) is recorded. The run ends with one line of JSON that includes the
//! generator's own CPU use, so a report can show it was not the bottleneck.
//!
//! Two further modes measure the server rather than throughput: STARTTLS handshakes per
//! second, and many idle sessions held open at once.

mod args;
mod client;
mod modes;
mod report;

use std::process::ExitCode;
use std::time::Instant;

use glommio::{LocalExecutorBuilder, Placement};

use args::{Mode, Options};
use modes::{IdleSync, Share};
use report::Tally;

/// Splits `total` into `parts` nearly equal shares, the larger ones first.
fn split(total: usize, parts: usize) -> impl Iterator<Item = usize> {
    (0..parts).map(move |i| total / parts + usize::from(i < total % parts))
}

fn run(options: &Options) -> Result<Tally, String> {
    let sync = IdleSync::new(options.executors);
    let mut first_session = 0;
    let mut handles = Vec::new();
    let shares =
        split(options.sessions, options.executors).zip(split(options.messages, options.executors));

    for (index, (sessions, messages)) in shares.enumerate() {
        let share = Share {
            first_session,
            sessions,
            messages,
        };
        first_session += sessions;
        let (options, sync) = (options.clone(), sync.clone());
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("secmx-load-{index}"))
            .spawn(move || async move {
                match options.mode {
                    Mode::Load => modes::load(options, share).await,
                    Mode::Handshake => modes::handshake(options, share).await,
                    Mode::Idle => modes::idle(options, share, sync).await,
                }
            })
            .map_err(|e| format!("cannot start an executor: {e}"))?;
        handles.push(handle);
    }

    let mut merged: Option<Tally> = None;
    for handle in handles {
        let tally = handle
            .join()
            .map_err(|e| format!("an executor failed: {e}"))??;
        merged = Some(match merged {
            Some(so_far) => so_far.merge(tally),
            None => tally,
        });
    }
    merged.ok_or_else(|| "no executor ran".into())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match args::parse(&args) {
        Ok(options) => options,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("secmx-load: {problem}\n");
            }
            eprint!("{}", args::USAGE);
            return ExitCode::from(2);
        }
    };

    let started = Instant::now();
    match run(&options) {
        Ok(tally) => {
            let failed = tally.failed > 0;
            println!("{}", report::summary(&options, tally, started.elapsed()));
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(problem) => {
            eprintln!("secmx-load: {problem}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn split_shares_add_up_and_differ_by_at_most_one() {
        let shares: Vec<usize> = split(10, 3).collect();
        assert_eq!(shares, vec![4, 3, 3]);
        assert_eq!(split(2, 4).sum::<usize>(), 2);
    }
}
