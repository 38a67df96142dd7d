//! `convagent replay`: signs golden webhook payloads (see `src/golden.rs`
//! for the format) with the configured secrets and posts them to a daemon;
//! prints status, latency and correlation id of each. `--rate` turns it
//! into a load test with a progress bar and latency percentiles.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use convagent::config::Config;
use convagent::golden::{Golden, SignedRequest};
use indicatif::{ProgressBar, ProgressStyle};

use crate::context::{Context, UserError};
use crate::output::now_ms;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Golden payload files, or folders of them
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,

    /// The daemon's base URL
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    to: String,

    /// The public base URL the daemon knows itself by (Twilio signs it)
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,

    /// Check each answer: against STATUS, or the file's own expectation
    #[arg(long, value_name = "STATUS", num_args = 0..=1, default_missing_value = "file")]
    expect: Option<String>,

    /// Load mode: requests per second, for --duration seconds
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<u32>,

    /// Load mode: how long to send, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    duration: u64,

    /// Load mode: requests in flight at most
    #[arg(long, value_name = "N", default_value_t = 64)]
    concurrency: usize,
}

struct Outcome {
    status: u16,
    latency: Duration,
    correlation: String,
    body: String,
}

/// Signs a payload for the daemon at `--to`, as its provider would now.
fn sign(golden: &Golden, args: &Args, secrets: &Config) -> Result<SignedRequest> {
    golden
        .sign(
            &args.to,
            args.public_url.as_deref(),
            secrets,
            now_ms() / 1000,
        )
        .map_err(|e| {
            UserError::new(e.to_string(), "replay signs with the same secrets as serve").into()
        })
}

async fn post(client: &reqwest::Client, request: SignedRequest) -> Result<Outcome, String> {
    let mut builder = client.post(&request.url).body(request.body);
    for (k, v) in &request.headers {
        builder = builder.header(k, v);
    }
    let started = Instant::now();
    let response = builder
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let status = response.status().as_u16();
    let correlation = response
        .headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let body = response.text().await.unwrap_or_default();
    Ok(Outcome {
        status,
        latency: started.elapsed(),
        correlation,
        body,
    })
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    let mut files = Vec::new();
    for p in &args.paths {
        files.extend(
            Golden::load_all(p).map_err(|e| {
                UserError::new(e.to_string(), "see src/golden.rs for the file format")
            })?,
        );
    }
    if files.is_empty() {
        anyhow::bail!(UserError::new(
            "no golden payload files found",
            "pass .json files or folders holding them"
        ));
    }
    let secrets = ctx.settings()?.config.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        match args.rate {
            Some(rate) => load(&client, &args, &files, &secrets, rate).await,
            None => each(&client, &args, &files, &secrets).await,
        }
    })
}

async fn each(
    client: &reqwest::Client,
    args: &Args,
    files: &[(PathBuf, Golden)],
    secrets: &Config,
) -> Result<ExitCode> {
    let mut failed = 0;
    for (path, golden) in files {
        let request = sign(golden, args, secrets)?;
        let outcome = post(client, request).await.map_err(|e| {
            UserError::new(
                format!("cannot reach {}: {e}", args.to),
                "is `convagent serve` running there?",
            )
        })?;
        let mismatch = args
            .expect
            .as_deref()
            .and_then(|expect| check(expect, golden, &outcome));
        outln!(
            "{} {:>4} {:>8.1} ms  {:<32}  {} ({})",
            if mismatch.is_some() { "✗" } else { "✓" },
            outcome.status,
            outcome.latency.as_secs_f64() * 1000.0,
            outcome.correlation,
            path.display(),
            golden.name,
        );
        if let Some(m) = mismatch {
            outln!("       expected {m}; got: {}", outcome.body.trim());
            failed += 1;
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} did not answer as expected", files.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What was expected, when the answer differs.
fn check(expect: &str, golden: &Golden, outcome: &Outcome) -> Option<String> {
    let status = if expect == "file" {
        golden.expect_status
    } else {
        expect.parse().unwrap_or(200)
    };
    if outcome.status != status {
        return Some(format!("status {status}"));
    }
    let body = golden.expect.as_deref().filter(|_| expect == "file")?;
    let matches = match body {
        "accepted" => outcome.body.starts_with("ok"),
        other => outcome.body.starts_with(other),
    };
    (!matches).then(|| format!("a body starting `{body}`"))
}

async fn load(
    client: &reqwest::Client,
    args: &Args,
    files: &[(PathBuf, Golden)],
    secrets: &Config,
    rate: u32,
) -> Result<ExitCode> {
    let total = u64::from(rate) * args.duration;
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<Outcome, String>>();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    // Ids unique to this run, so no request is a duplicate of an earlier run.
    let run = (now_ms() / 1000) as u64 * 1_000;
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        ticker.tick().await;
        let golden = files[(i as usize) % files.len()].1.numbered(run + i);
        let request = sign(&golden, args, secrets)?;
        let permit = permits.clone().acquire_owned().await.context("semaphore")?;
        let (client, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(post(&client, request).await);
            drop(permit);
        });
        bar.inc(1);
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(total as usize);
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    while let Some(r) = rx.recv().await {
        match r {
            Ok(o) if (200..300).contains(&o.status) => {
                ok += 1;
                latencies.push(o.latency);
            }
            Ok(o) => {
                errors += 1;
                *statuses.entry(o.status.to_string()).or_default() += 1;
            }
            Err(e) => {
                errors += 1;
                *statuses.entry(e).or_default() += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    outln!(
        "sent {total} requests in {:.1} s at a target of {rate}/s ({} in flight at most)",
        elapsed.as_secs_f64(),
        args.concurrency
    );
    outln!(
        "  2xx: {ok}   other: {errors}   throughput: {:.0} acknowledged/s",
        ok as f64 / elapsed.as_secs_f64()
    );
    outln!(
        "  ack latency: p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    for (what, n) in &statuses {
        outln!("  {n} × {what}");
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
