//! `afreg status`: every region's role, term, leader, applied index, lag, pin backlog and bytes
//! replicated, and which of its processes holds its Raft seat at which epoch, from a region's
//! public `/status`.

use std::time::Duration;

use afreg_node::config::Config;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// A region's public URL; defaults to `server.public_url` of the configuration.
    #[arg(long)]
    url: Option<String>,
    /// Print the JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `load` reads the configuration, needed only when no `--url` is given.
pub async fn run(args: StatusArgs, load: impl FnOnce() -> anyhow::Result<Config>) -> anyhow::Result<()> {
    let url = match args.url {
        Some(u) => u,
        None => load()?.server.public_url,
    };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let v: serde_json::Value =
        http.get(format!("{}/status", url.trim_end_matches('/'))).send().await?.error_for_status()?.json().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<4} {:<10} {:<10} {:>5} {:>7} {:>9} {:>5} {:>8} {:>14}  {:<16} {:>5}  {:<24} URL",
        "ID",
        "REGION",
        "ROLE",
        "TERM",
        "LEADER",
        "APPLIED",
        "LAG",
        "PIN-Q",
        "REPLICATED-B",
        "SEAT-HOLDER",
        "EPOCH",
        "OTHER-PROCESSES",
    );
    let opt =
        |x: &serde_json::Value| if x.is_null() { "-".to_owned() } else { x.to_string().trim_matches('"').to_owned() };
    for r in v["regions"].as_array().into_iter().flatten() {
        let role = if r["reachable"] == true { opt(&r["role"]) } else { "unreachable".into() };
        let holder = opt(&r["seat_holder"]);
        let others: Vec<&str> = r["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str())
            .filter(|p| *p != holder)
            .collect();
        println!(
            "{:<4} {:<10} {:<10} {:>5} {:>7} {:>9} {:>5} {:>8} {:>14}  {:<16} {:>5}  {:<24} {}",
            opt(&r["id"]),
            opt(&r["name"]),
            role,
            opt(&r["term"]),
            opt(&r["leader"]),
            opt(&r["last_applied"]),
            opt(&r["replication_lag"]),
            opt(&r["pin_backlog"]),
            opt(&r["replicated_bytes"]),
            holder,
            opt(&r["seat_epoch"]),
            if others.is_empty() { "-".to_owned() } else { others.join(",") },
            opt(&r["url"]),
        );
    }
    for n in v["notifications"].as_array().into_iter().flatten() {
        println!(
            "notifications {}: {} pending, {} dead letters, delivered up to event {}{}",
            opt(&n["endpoint"]),
            opt(&n["pending"]),
            opt(&n["dead_letters"]),
            opt(&n["delivered_up_to"]),
            if n["disabled"] == true { " (disabled)" } else { "" },
        );
    }
    let f = &v["blob_files"];
    if f.is_object() {
        println!(
            "blob files (the answering process): {} bytes in {} files of {} allowed; {} hits, {} misses, {} fills, {} evictions, {} corrupt removed",
            opt(&f["bytes"]),
            opt(&f["files"]),
            opt(&f["capacity_bytes"]),
            opt(&f["hits"]),
            opt(&f["misses"]),
            opt(&f["fills"]),
            opt(&f["evictions"]),
            opt(&f["corrupt"]),
        );
    }
    Ok(())
}
