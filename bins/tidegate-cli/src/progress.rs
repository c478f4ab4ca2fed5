//! The live view of a run: one progress bar per table (rows, bytes, rate, ETA), from the run's
//! progress as the control plane holds it.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;
use tidegate_client::Client;

const POLL: Duration = Duration::from_millis(500);

fn ended(state: &str) -> bool {
    !matches!(state, "Starting" | "Running")
}

/// Follows run `id` until it ends, drawing bars on stderr, and returns its final JSON.
pub(crate) async fn follow(client: &Client, id: &str) -> Result<Value, tidegate_client::Error> {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let known = ProgressStyle::with_template(
        "{prefix:30!} {bar:30} {pos:>12}/{len:12} rows {msg} [{elapsed_precise}, ETA {eta}]",
    )
    .expect("static template");
    let unknown = ProgressStyle::with_template(
        "{prefix:30!} {spinner} {pos:>12} rows {msg} [{elapsed_precise}]",
    )
    .expect("static template");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    loop {
        let run = client.get(&format!("/api/v1/runs/{id}")).await?;
        if let Some(tables) = run["tables"].as_object() {
            for (name, table) in tables {
                let bar = bars.entry(name.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::no_length());
                    bar.set_prefix(name.clone());
                    bar.set_style(unknown.clone());
                    bar
                });
                let rows = table["rows"].as_u64().unwrap_or(0);
                if let Some(expected) = table["rows_expected"].as_u64()
                    && bar.length() != Some(expected)
                {
                    bar.set_length(expected);
                    bar.set_style(known.clone());
                }
                bar.set_position(rows);
                let bytes = table["bytes"].as_u64().unwrap_or(0);
                let state = table["state"].as_str().unwrap_or("?");
                bar.set_message(format!("{} {state}", human_bytes(bytes)));
                if matches!(state, "Done" | "Failed") && !bar.is_finished() {
                    bar.finish();
                }
            }
        }
        let state = run["state"].as_str().unwrap_or("?").to_owned();
        if ended(&state) {
            for bar in bars.values() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
            return Ok(run);
        }
        tokio::time::sleep(POLL).await;
    }
}

pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
