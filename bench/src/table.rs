//! The Markdown page of a report: the goals with their verdicts first, then one table per group
//! (every target's median and spread, and the ratio of afreg, tuned and with its defaults, to
//! the faster peer), the physical references with afreg's ratio to each, each side's
//! configuration, and the machine.

use std::fmt::Write as _;

use crate::report::{fmt, size_label, Figure, Report};
use crate::targets::label;

fn cell(f: Option<&Figure>) -> String {
    match f {
        None => "–".into(),
        Some(f) if f.samples.len() > 1 => {
            format!("{} ({}–{})", fmt(Some(f.median)), fmt(Some(f.min)), fmt(Some(f.max)))
        }
        Some(f) => fmt(Some(f.median)),
    }
}

/// The workloads of a group, in the order they were first recorded.
fn workloads(r: &Report, group: &str) -> Vec<String> {
    let mut w: Vec<String> = vec![];
    for f in r.figures.iter().filter(|f| f.group == group) {
        if !w.contains(&f.workload) {
            w.push(f.workload.clone());
        }
    }
    w
}

/// The afreg targets whose ratio to the faster peer a table shows, each in a column of its own.
const RATIO_OF: [&str; 2] = ["afreg", "afreg-defaults"];

/// A group's table: a column per target in `targets`, then a ratio column per target in
/// `ratio_of`.
fn group_table(out: &mut String, r: &Report, group: &str, targets: &[&str], ratio_of: &[&str]) {
    let ws = workloads(r, group);
    if ws.is_empty() {
        return;
    }
    let unit = r.figures.iter().find(|f| f.group == group).map(|f| f.unit.clone()).unwrap_or_default();
    let better = if r.figures.iter().find(|f| f.group == group).is_some_and(|f| f.higher_is_better) {
        "higher"
    } else {
        "lower"
    };
    let _ = writeln!(out, "\n{unit}, {better} is better; median (min–max) over the rounds.\n");
    let mut head = "| workload |".to_owned();
    let mut rule = "|---|".to_owned();
    for t in targets {
        let _ = write!(head, " {} |", label(t));
        rule += "---|";
    }
    for t in ratio_of.iter().filter(|t| targets.contains(t)) {
        let _ = write!(head, " {} ÷ faster peer |", label(t));
        rule += "---|";
    }
    let _ = writeln!(out, "{head}\n{rule}");
    for w in ws {
        let mut row = format!("| {w} |");
        for t in targets {
            let _ = write!(row, " {} |", cell(r.figure(&w, t)));
        }
        for t in ratio_of.iter().filter(|t| targets.contains(t)) {
            let ratio = r
                .vs_best_peer(&w, t)
                .map(|(x, p)| format!("**{x:.2}×** ({})", label(&p.target)))
                .unwrap_or_else(|| "–".into());
            let _ = write!(row, " {ratio} |");
        }
        let _ = writeln!(out, "{row}");
    }
}

pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# afreg benchmark{}\n", if r.quick { " (quick)" } else { "" });
    let _ = writeln!(
        out,
        "Run by `afreg bench{}` on {} ({} rounds, interleaved; {:.0} s). Machine: {} cores ({}), {:.0} GiB, kernel {}. \
         Every registry ran on loopback on this one machine, beside the benchmark's client.\n",
        if r.quick { " --quick" } else { "" },
        r.started,
        r.rounds,
        r.seconds,
        r.machine.cores,
        r.machine.cpu,
        r.machine.memory_gib,
        r.machine.kernel
    );
    let _ = writeln!(out, "Charts: [ratios](ratios.svg) · [ratios, afreg with its defaults](ratios-defaults.svg) · {} · [crane](crane.svg) · [manifest GET](manifest-get.svg) · [manifest HEAD](manifest-head.svg) · [replication lag](replication-lag.svg) · [cross-region pin](cross-region-pin.svg)\n",
        r.blob_sizes.iter().map(|s| { let s = size_label(*s); format!("[blobs {s}](blobs-{s}.svg)") }).collect::<Vec<_>>().join(" · "));
    let _ = writeln!(out, "![afreg ÷ the faster peer](ratios.svg)\n");
    let _ = writeln!(out, "![afreg with its defaults ÷ the faster peer](ratios-defaults.svg)\n");

    let _ = writeln!(out, "## Goals\n");
    let _ = writeln!(out, "| goal | measured | ratio | met |\n|---|---|---|---|");
    for g in &r.goals {
        let verdict = match g.met {
            Some(true) => "**met**",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(out, "| {} | {} | {} | {verdict} |", g.goal, g.measured, fmt(g.ratio));
    }

    let registries: Vec<&str> = [
        "afreg",
        "afreg-notify",
        "afreg-no-usage",
        "afreg-defaults",
        "afreg-token",
        "afreg-cluster",
        "distribution-v3",
        "distribution-2.8",
        "zot",
    ]
    .into_iter()
    .filter(|t| r.target(t).is_some_and(|i| i.available))
    .collect();
    let no_token: Vec<&str> = registries.iter().copied().filter(|t| *t != "afreg-token").collect();
    let _ = writeln!(out, "\n## Blobs\n\nOne client, one blob at a time; every push is of fresh pseudo-random bytes. Each round, a workload of a small blob repeats until 64 MiB have moved (at most 32 times: 32 transfers at 1 MiB, one at 100 MiB and 1 GiB), and its figure is all those bytes over the sum of their times, so that one transfer's jitter does not decide it. `push-mono` is `POST` then one `PUT ?digest=` with the body; `push-single-post` is afreg's one `POST ?digest=` with the body; `push-streamed` is `POST`, one `PATCH`, `PUT` (what docker does); `push-chunked` is `PATCH`es of an eighth of the blob (at least 256 KiB) with `Content-Range`; `pull` is `GET` of the monolithic push's blob; `pull-32x10` is 32 clients at once, each a connection of its own, client i pulling blob i mod 10 of ten pushed before the rounds (so each blob is read by three or four clients at the same time), total bytes over the time to the last byte. `afreg with its defaults` takes a token from its `/token` before each workload and sends it with every request. The cluster keeps each blob in three regions, so its blob workloads stop below 1 GiB (its 1 GiB transfers are the cross-region pin figure) and a full run fits the disk; every blob pushed is removed once measured (a peer's files deleted on disk; afreg sent `DELETE`, which unpins it and removes its blob file), so a run of several rounds fits the disk. `afreg with notifications` and `afreg counting no pulls` are the tuned one-region afreg with one setting changed each (an endpoint taking every event, pulls too, on a real receiver; `usage.count_pulls = false`): they run only the blob and crane workloads, beside `afreg` in every round, and the goals' A/B rows are their ratios to it.");
    group_table(&mut out, r, "blobs", &no_token, &RATIO_OF);
    let _ = writeln!(out, "\n## Images\n\n`crane push` of an OCI image layout the bench wrote (20 layers of fresh bytes, 256 KiB to 4 MiB in a geometric spread, a config and a manifest), then `crane pull --format oci` of the same reference into a fresh directory, each round to a repository of its own; the image's bytes over the crane process's run, start-up included. `afreg with its defaults` is logged in through a `DOCKER_CONFIG` with the bench user; the others are anonymous.");
    group_table(&mut out, r, "images", &no_token, &RATIO_OF);
    let _ = writeln!(out, "\n## Pull-through cache\n\n`afreg as a mirror of distribution v3` is the tuned one-region afreg with distribution v3 as the upstream of `mirror/`. Each round, at each size, a fresh blob is pushed to distribution v3, pulled from it directly (`mirror-direct`), then through the mirror: `mirror-cold` fetches it upstream while it streams to the client and into the store; `mirror-warm` pulls each of that size again once all are in and two seconds have passed (the blob file is written off the request's path, as after a push), served by the cluster's own copy. Repetitions as for the blobs above.\n");
    let _ = writeln!(out, "| size | from the upstream directly | cold through afreg | cold ÷ direct | warm through afreg | afreg's pull of a pushed blob | warm ÷ that |\n|---|---|---|---|---|---|---|");
    for &size in &r.blob_sizes {
        let sz = size_label(size);
        let direct = r.figure(&format!("mirror-direct/{sz}"), "distribution-v3");
        let cold = r.figure(&format!("mirror-cold/{sz}"), "afreg-mirror");
        let warm = r.figure(&format!("mirror-warm/{sz}"), "afreg-mirror");
        let local = r.figure(&format!("pull/{sz}"), "afreg");
        let ratio = |a: Option<&Figure>, b: Option<&Figure>| match (a, b) {
            (Some(a), Some(b)) if b.median > 0.0 => format!("**{:.2}×**", a.median / b.median),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {sz} | {} | {} | {} | {} | {} | {} |",
            cell(direct),
            cell(cold),
            ratio(cold, direct),
            cell(warm),
            cell(local),
            ratio(warm, local)
        );
    }
    let _ = writeln!(out, "\n## Memory\n\nPeak RSS (VmHWM, reset before each size) of the registry process over that size's pushes and pull; `node-rss/pull-32x10/…` over the 32 pulls at once.");
    group_table(&mut out, r, "memory", &no_token, &RATIO_OF);
    let _ = writeln!(out, "\n## Manifests\n\nHEAD and GET of one manifest by tag, from N connections each sending its next request when the last answer is read. `afreg (token)` sends a bearer token with every request, and so does `afreg with its defaults`, whose request-rate limits also apply (all connections come from one address and carry one token), so its figure counts only the answers served; the peers are anonymous (none is set up with a token service), so those ratios are token against anonymous.");
    group_table(&mut out, r, "manifests", &registries, &RATIO_OF);
    let _ = writeln!(out, "\n## Request-rate limits\n\nThe share of `afreg with its defaults`' answers in each manifest workload that were 429 `TOOMANYREQUESTS` (its default limits; a refusal is answered after about a second, and the connection then sends its next request).");
    group_table(&mut out, r, "limits", &["afreg-defaults"], &[]);
    let _ = writeln!(out, "\n## Listing\n\nTime to list every tag of one repository, and the whole catalog, following `Link` (each registry's own page size for tags, `n=1000` for the catalog).");
    group_table(&mut out, r, "listing", &no_token, &RATIO_OF);

    let _ = writeln!(out, "\n## Cluster\n\nReplication lag: a manifest `PUT` acknowledged by us, then `GET` by tag polled in eu and asia from the acknowledgement on (1 ms between polls); each round's p50 and p99. Cross-region pin: a fresh blob pushed to us while asia's node is stopped, timed from the 201 until eu's pins row says `pinned`; raw: `add` on one fresh Kubo, `pin/add` of that CID on another connected to it.\n");
    let _ = writeln!(out, "| figure | unit | afreg cluster | raw Kubo → Kubo | ratio |\n|---|---|---|---|---|");
    for w in workloads(r, "cluster") {
        let (ours, raw) = (r.figure(&w, "afreg-cluster"), r.figure(&w, "reference"));
        let unit = ours.or(raw).map(|f| f.unit.clone()).unwrap_or_default();
        let ratio = match (ours, raw) {
            (Some(a), Some(b)) => format!("{:.2}", a.median / b.median),
            _ => "–".into(),
        };
        let _ = writeln!(out, "| {w} | {unit} | {} | {} | {ratio} |", cell(ours), cell(raw));
    }

    let big = size_label(*r.blob_sizes.last().unwrap_or(&0));
    let _ = writeln!(out, "\n## Physical references\n\nOn the same machine in the same run: raw Kubo `add` with the node's parameters (pinned), the same file read back through Kubo's gateway and its RPC `cat`, SHA-256 on one core, one loopback TCP stream, `cat` of a file in the page cache piped into the bench; each next to the afreg figure it bounds.\n");
    let _ = writeln!(
        out,
        "| reference | MiB/s | afreg figure | afreg MiB/s | afreg ÷ reference | afreg with its defaults MiB/s | defaults ÷ reference |\n|---|---|---|---|---|---|---|"
    );
    let pairs = [
        (format!("kubo-add/{big}"), format!("push-streamed/{big}")),
        (format!("kubo-add/{big}"), format!("push-mono/{big}")),
        (format!("kubo-gateway-read/{big}"), format!("pull/{big}")),
        (format!("kubo-rpc-cat/{big}"), format!("pull/{big}")),
        ("sha256-one-core".to_owned(), format!("push-streamed/{big}")),
        ("loopback-tcp".to_owned(), format!("pull/{big}")),
        (format!("page-cache-read/{big}"), format!("pull/{big}")),
    ];
    for (reference, ours) in pairs {
        let bound = r.figure(&reference, "reference");
        let mut row = format!("| {reference} | {} | {ours} |", cell(bound));
        for t in RATIO_OF {
            let a = r.figure(&ours, t);
            let ratio = match (a, bound) {
                (Some(a), Some(b)) => format!("{:.2}", a.median / b.median),
                _ => "–".into(),
            };
            let _ = write!(row, " {} | {ratio} |", cell(a));
        }
        let _ = writeln!(out, "{row}");
    }

    let _ = writeln!(out, "\n## Configuration\n\n| target | configuration |\n|---|---|");
    for t in &r.targets {
        let status = if t.available { String::new() } else { "**unavailable**: ".into() };
        let _ = writeln!(out, "| {} | {status}{} |", t.label, t.configuration);
    }
    out
}
