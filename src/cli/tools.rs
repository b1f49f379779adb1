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
    /// Accuracy points one second of expected waiting is worth (see `l2d scheduler
    /// --wait-price`); the offline row prices waiting the same way. 0 compares the decisions
    /// alone: the live row then equals the offline one.
    #[arg(long, allow_negative_numbers = true)]
    pub wait_price: Option<f64>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Length of each measured phase (after a 1 s warm-up of its own).
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Calls in flight for the saturated phase.
    #[arg(long, default_value_t = 32)]
    pub saturate: usize,
    /// Requests per second of the fixed-rate phase, where each server's CPU time per request
    /// is also measured (open loop; both the proxy and the scheduler must sustain it).
    #[arg(long, default_value_t = 2000.0)]
    pub cpu_rate: f64,
    /// Interleaved rounds of the bare proxy against the scheduler (order alternated).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
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

/// One server of `l2d bench`, in its own process (started by `l2d bench`, not by hand).
#[derive(Debug, Args)]
pub struct BenchNodeArgs {
    /// experts, proxy or scheduler.
    #[arg(value_parser = ["experts", "proxy", "scheduler"])]
    pub role: String,
    /// The proxy's upstream expert, host:port.
    #[arg(long)]
    pub upstream: Option<std::net::SocketAddr>,
    /// The scheduler's experts: ID=HOST:PORT, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub experts: Vec<String>,
    /// The scheduler's policy file (default: the prior policy).
    #[arg(long)]
    pub policy: Option<PathBuf>,
}

impl BenchNodeArgs {
    pub fn role(self) -> anyhow::Result<crate::load::bench::NodeRole> {
        use crate::load::bench::NodeRole;
        Ok(match self.role.as_str() {
            "experts" => NodeRole::Experts,
            "proxy" => NodeRole::Proxy {
                upstream: self
                    .upstream
                    .ok_or_else(|| anyhow::anyhow!("a proxy needs --upstream"))?,
            },
            _ => NodeRole::Scheduler {
                experts: self
                    .experts
                    .iter()
                    .map(|e| {
                        let (id, address) = e.split_once('=').ok_or_else(|| {
                            anyhow::anyhow!("--experts takes ID=HOST:PORT, got {e:?}")
                        })?;
                        Ok((id.to_owned(), address.parse()?))
                    })
                    .collect::<anyhow::Result<_>>()?,
                policy: self.policy,
            },
        })
    }
}
