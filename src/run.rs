//! `weir run`: a whole job in this process.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::crd::RestartStatus;
use crate::restart_strategy::{record_failure, RestartDecision};
use weir_runtime::faults::Faults;
use weir_runtime::job::coordinate::wall_ms;
use weir_runtime::job::{run_job, JobConfig};
use weir_runtime::manifest::StreamJob;
use weir_runtime::metrics::JobMetrics;
use weir_runtime::task::error::FailureKind;

pub async fn run(file: &Path, progress_line: bool) -> anyhow::Result<()> {
    let job = StreamJob::from_file(file)?;
    let mut config = JobConfig::for_job(&job);
    config.faults = Faults::from_env();
    let strategy = job.spec.restart_strategy.kind().map_err(|e| anyhow::anyhow!("spec.restartStrategy: {e}"))?;
    let seed = weir_runtime::keygroup::key_hash(&job.metadata.name);
    let metrics = Arc::new(JobMetrics::default());
    let progress = tokio::spawn(report_progress(metrics.clone(), progress_line && std::io::stderr().is_terminal()));
    let started = Instant::now();
    // The same budget the operator keeps in a StreamJob's status.
    let mut budget = RestartStatus::default();
    // As a Flink mini cluster does: a failed attempt restarts from the newest
    // completed checkpoint, paced and bounded by spec.restartStrategy.
    let result = loop {
        let graph = weir_runtime::pipeline::build(&job.spec).context("cannot build the job")?;
        let attempt = tokio::select! {
            r = run_job(graph, &config, metrics.clone()) => r,
            _ = tokio::signal::ctrl_c() => break None,
        };
        let error = match attempt {
            Ok(outcome) => break Some(outcome),
            Err(e) => e,
        };
        if weir_runtime::job::failure::kind(&error) == FailureKind::Superseded {
            // Another run of this job took over its checkpoints; restarting
            // would take them back from it.
            progress.abort();
            return Err(anyhow::Error::new(error).context("another run of this job took over; this one stops"));
        }
        let now = wall_ms();
        match record_failure(&mut budget, &strategy, now, seed) {
            RestartDecision::RestartAt(at) => {
                let wait = Duration::from_millis(at.saturating_sub(now));
                eprintln!("\njob failed: {error}\nrestart {} in {wait:?} (spec.restartStrategy)", budget.failures);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = tokio::signal::ctrl_c() => break None,
                }
            }
            RestartDecision::GiveUp { reason } => {
                progress.abort();
                return Err(anyhow::Error::new(error)
                    .context(format!("giving up after {} failure(s): {reason}", budget.failures)));
            }
        }
    };
    let Some(outcome) = result else {
        progress.abort();
        let last = metrics.last_checkpoint().map_or("no checkpoint yet".into(), |c| format!("checkpoint {}", c.id));
        eprintln!("\ninterrupted; run again to resume from the newest completed checkpoint ({last})");
        return Ok(());
    };
    progress.abort();
    let secs = started.elapsed().as_secs_f64();
    let records = JobMetrics::get(&metrics.records_in);
    eprintln!(
        "\njob {} finished: {} records read, {} written in {:.1}s ({}/s){}{}",
        job.metadata.name,
        records,
        JobMetrics::get(&metrics.records_out),
        secs,
        human(records as f64 / secs.max(1e-9)),
        outcome.restored_from.map_or(String::new(), |id| format!(", resumed from checkpoint {id}")),
        outcome.last_checkpoint.map_or(String::new(), |c| format!(", last checkpoint {} at {}", c.id, c.path)),
    );
    for (id, why) in outcome.skipped {
        eprintln!("note: skipped damaged checkpoint {id}: {why}");
    }
    Ok(())
}

fn human(x: f64) -> String {
    match x {
        x if x >= 1e6 => format!("{:.2}M", x / 1e6),
        x if x >= 1e3 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// Records/s and the last checkpoint: one updating line on a terminal,
/// a log line every few seconds otherwise.
async fn report_progress(metrics: Arc<JobMetrics>, tty: bool) {
    let every = if tty { Duration::from_millis(500) } else { Duration::from_secs(5) };
    let mut last_count = 0;
    let mut last_time = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let count = JobMetrics::get(&metrics.records_in);
        let now = Instant::now();
        let rate = (count - last_count) as f64 / now.duration_since(last_time).as_secs_f64();
        (last_count, last_time) = (count, now);
        let checkpoint = metrics.last_checkpoint().map_or("no checkpoint yet".to_string(), |c| {
            format!("checkpoint {} ({} ms, {} B)", c.id, c.duration_ms, c.size_bytes)
        });
        let line = format!(
            "{} records in, {} out, {}/s, {}",
            count,
            JobMetrics::get(&metrics.records_out),
            human(rate),
            checkpoint
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else {
            tracing::info!("progress: {line}");
        }
    }
}
