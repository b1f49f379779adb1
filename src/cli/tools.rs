//! `l2d demo`, `l2d bench`, `l2d simulate`: demonstrations and measurements.

use crate::defaults::{default_data_path, default_pool_path};
use crate::pool_file::PoolFile;
use crate::squad::Dataset;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Pool file (default: pools/squad-v1.1.toml).
    #[arg(long)]
    pub pool: Option<PathBuf>,
    /// Policy file (default: policies/squad-v1.1.json).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// The data set whose test articles are asked (default: data/squad-v1.1/dev.json).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Ask only the first N test questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Calls in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// ε-greedy exploration in the scheduler (see `l2d scheduler --explore`).
    #[arg(long, default_value_t = 0.0)]
    pub explore: f64,
    /// Write the scheduler's decision log here.
    #[arg(long)]
    pub decision_log: Option<PathBuf>,
    /// Live cost target (see `l2d scheduler --target-cost`).
    #[arg(long)]
    pub target_cost: Option<f64>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seconds of each measured phase.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Calls in flight for the saturated phase.
    #[arg(long, default_value_t = 32)]
    pub saturate: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Rewrite the benchmark section of this Markdown file (e.g. BENCHMARKS.md).
    #[arg(long)]
    pub write: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Labels to draw accuracies and questions from (default: label the default pool on SQuAD
    /// v1.1 dev first, about 1 s).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Pool sizes (experts), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "5,50,500")]
    pub experts: Vec<usize>,
    /// Replicas per expert.
    #[arg(long, default_value_t = 20)]
    pub replicas: usize,
    /// Queries per pool size.
    #[arg(long, default_value_t = 20_000)]
    pub queries: usize,
    /// Price of compute of the prior policy used.
    #[arg(long, default_value_t = 0.1)]
    pub lambda: f64,
}

pub(super) async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    use crate::load::simulate::{simulate, table};
    let labels = match &args.labels {
        Some(path) => crate::train::labels::Labels::read(path)?,
        None => {
            let pool = PoolFile::load(&default_pool_path())?;
            let data = default_data_path();
            let dataset = Dataset::load(&data)?;
            let options = crate::train::labels::LabelOptions {
                concurrency: 8,
                limit: None,
                progress: false,
                articles: None,
            };
            crate::train::labels::label(&pool, &dataset, "dev", &options).await?
        }
    };
    let unit = Duration::from_micros(10);
    let interval = Duration::from_micros(20);
    let mut rows = Vec::new();
    for &experts in &args.experts {
        rows.push(simulate(
            &labels,
            experts,
            args.replicas,
            args.queries,
            unit,
            interval,
            args.lambda,
        )?);
    }
    print!("{}", table(&rows, unit, interval));
    Ok(())
}
