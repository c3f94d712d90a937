//! `afreg bench`: runs the benchmark package (afreg-bench) with this binary as the node, and
//! prints where its report went.

use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct BenchArgs {
    /// Small blobs and short durations, a few seconds a workload (what CI runs).
    #[arg(long)]
    quick: bool,
    /// Directory for bench.json, README.md and the SVG charts.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Interleaved rounds; each figure is their median (default 3, or 2 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let me = std::env::current_exe()?;
    let opts = afreg_bench::Options { quick: args.quick, out: args.out.clone(), rounds: args.rounds };
    let report = afreg_bench::run(opts, &me).await?;
    for g in &report.goals {
        let verdict = match g.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        println!("{verdict:>12}  {}  ({}; ratio {})", g.goal, g.measured, afreg_bench::report::fmt(g.ratio));
    }
    println!("report: {}", args.out.join("README.md").display());
    Ok(())
}
