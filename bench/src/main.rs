//! `afreg-bench`: the benchmark as a binary of its own, so that the `afreg` binary, and so the
//! image, links no test code (the benchmark starts its registries through testkit). `afreg bench`
//! runs this binary, found beside itself, with itself as the node; run directly, it takes the
//! node from `--afreg` or finds `afreg` beside itself.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(name = "afreg-bench", about = "afreg against distribution v3, distribution 2.8 and zot, on loopback")]
struct Args {
    /// Small blobs and short durations, a few seconds a workload (what CI runs).
    #[arg(long)]
    quick: bool,
    /// Directory for bench.json, README.md and the SVG charts.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Interleaved rounds; each figure is their median (default 3, or 2 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// The afreg binary to measure (default: `afreg` beside this binary).
    #[arg(long, env = "AFREG_BIN")]
    afreg: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("afreg-bench: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let afreg = match args.afreg {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("afreg"),
    };
    anyhow::ensure!(afreg.is_file(), "no afreg binary at {} (pass --afreg PATH)", afreg.display());
    let opts = afreg_bench::Options { quick: args.quick, out: args.out.clone(), rounds: args.rounds };
    let report = afreg_bench::run(opts, &afreg).await?;
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
