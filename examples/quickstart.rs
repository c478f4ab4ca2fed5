//! The walking skeleton: `cargo run --release --example quickstart`.
//!
//! Starts a control plane and a gateway in this process over real TLS on loopback, enrolls the
//! gateway, creates a data task through the control plane's API and copies every table of a
//! generated SQLite database (1,000,000 rows by default) to Parquet under `./quickstart-out`.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tidegate::quickstart::{self, Options};
use tidegate::replicate::sample::SampleSize;

#[derive(Parser, Debug)]
#[command(
    about = "Copy a generated SQLite database to Parquet through a control plane and a gateway"
)]
struct Args {
    /// Rows in the generated sample database, over all tables.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Where the Parquet files go.
    #[arg(long, default_value = "quickstart-out")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let work = tempfile::tempdir().context("scratch directory")?;
    println!(
        "Tidegate quickstart: control plane + gateway on loopback TLS, {} sample rows -> {}",
        args.rows,
        args.out.display()
    );

    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>16} [{bar:32.cyan/blue}] {pos:>9}/{len:9} rows {per_sec:>14} {msg}",
    )
    .context("progress style")?
    .progress_chars("=> ");
    let mut by_table: HashMap<String, ProgressBar> = HashMap::new();

    let options = Options {
        out_dir: args.out.clone(),
        work_dir: work.path().to_path_buf(),
        sample: SampleSize::rows(args.rows),
    };
    let summary = quickstart::run(options, |progress| {
        for (table, (rows, total, done)) in &progress.tables {
            let bar = by_table.entry(table.clone()).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(*total));
                bar.set_style(style.clone());
                bar.set_prefix(table.clone());
                bar
            });
            bar.set_position(*rows);
            if *done && !bar.is_finished() {
                bar.finish_with_message("done");
            }
        }
    })
    .await?;
    for bar in by_table.values() {
        if !bar.is_finished() {
            bar.finish();
        }
    }

    println!();
    println!("{:<18} {:>12} {:>14}", "table", "rows", "parquet bytes");
    for t in &summary.tables {
        println!("{:<18} {:>12} {:>14}", t.table, t.rows, t.bytes);
    }
    let secs = summary.elapsed.as_secs_f64();
    println!(
        "\n{} tables, {} rows, {} bytes in {:.2} s: {:.0} rows/s",
        summary.tables.len(),
        summary.rows,
        summary.bytes,
        secs,
        summary.rows as f64 / secs.max(f64::EPSILON)
    );
    println!(
        "Parquet files: {}/main/<table>/{}/part-*.parquet (each table's _manifest.json is written last)",
        args.out.display(),
        summary.run_id
    );
    Ok(())
}
