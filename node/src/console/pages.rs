//! The console's pages, as maud templates: one function a page, over figures the handlers in
//! [`super`] gathered. Every value is escaped by maud; links carry their query values
//! percent-encoded ([`encode`]).

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

use super::charts::{self, Group};
use super::{Referrer, TagView, Viewer};
use crate::oci::{Reference, RepoName};
use crate::replica::RegionStatus;
use crate::usage::{RepositoryTotal, Usage};

/// `s` as a URL query value.
pub fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_else(|| "never".into())
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

fn layout(v: Option<&Viewer>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · afreg" }
                link rel="icon" href="/ui/favicon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/ui/console.css";
                script src="/ui/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/ui/repositories" { "afreg" }
                    @if let Some(v) = v {
                        nav {
                            a href="/ui/repositories" { "Repositories" }
                            a href="/ui/cluster" { "Cluster" }
                            a href="/ui/usage" { "Usage" }
                        }
                        div.who {
                            @match &v.user {
                                Some(u) => {
                                    span #user { (u) }
                                    form method="post" action="/ui/logout" { button type="submit" { "Log out" } }
                                }
                                None => { a href="/ui/login" { "Log in" } }
                            }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

pub fn error(status: StatusCode, message: &str) -> Markup {
    layout(
        None,
        status.canonical_reason().unwrap_or("Error"),
        html! {
            p.error { (message) }
            p { a href="/ui/repositories" { "Back to the repositories" } }
        },
    )
}

pub fn login(region: &str, failed: Option<&str>) -> Markup {
    layout(
        None,
        "Log in",
        html! {
            p { "Region " (region) ". Sign in with your registry user." }
            @if let Some(why) = failed { p.error #login-error { (why) } }
            form.login method="post" action="/ui/login" {
                label { "User" input name="username" autocomplete="username" required; }
                label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        },
    )
}

pub fn repositories(v: &Viewer, filter: &str, rows: &[RepositoryTotal], unanswered: &[String]) -> Markup {
    layout(
        Some(v),
        "Repositories",
        html! {
            form.filter method="get" action="/ui/repositories" {
                input name="filter" value=(filter) placeholder="Filter by name" aria-label="Filter by name";
                button type="submit" { "Filter" }
            }
            (unanswered_note(unanswered))
            div.scroll {
            table #repositories {
                thead { tr { th { "Repository" } th { "Size" } th { "Tags" } th { "Last push" } th { "Pulls, 7 days" } } }
                tbody {
                    @for r in rows {
                        tr {
                            td { a href=(format!("/ui/repository?name={}", encode(&r.repository))) { (r.repository) } }
                            td { (charts::bytes(r.bytes_stored as f64)) }
                            td { (r.tags) }
                            td { (when(r.last_push)) }
                            td.pulls { (r.pulls) }
                        }
                    }
                }
            } }
            @if rows.is_empty() { p.empty { "No repositories to show." } }
        },
    )
}

fn unanswered_note(unanswered: &[String]) -> Markup {
    html! {
        @if !unanswered.is_empty() {
            p.warning { "Pull figures are missing from regions that did not answer: " (unanswered.join(", ")) }
        }
    }
}

fn referrer_list(repo: &RepoName, referrers: &[Referrer]) -> Markup {
    html! {
        @if referrers.is_empty() { span.muted { "none" } }
        ul.referrers {
            @for r in referrers {
                li {
                    a href=(format!("/ui/manifest?name={}&digest={}", encode(repo.as_str()), encode(&r.digest))) {
                        (if r.artifact_type.is_empty() { "artifact" } else { &r.artifact_type })
                    }
                    " " code { (short(&r.digest)) }
                }
            }
        }
    }
}

pub fn repository(
    v: &Viewer,
    repo: &RepoName,
    host: &str,
    tags: &[TagView],
    delete: bool,
    deleted: Option<&str>,
) -> Markup {
    layout(
        Some(v),
        repo.as_str(),
        html! {
            @if let Some(d) = deleted { p.notice #deleted { "Deleted " code { (d) } "." } }
            div.scroll {
            table #tags {
                thead { tr {
                    th { "Tag" } th { "Digest" } th { "Size" } th { "Platforms" } th { "Pushed" }
                    th { "Last pull" } th { "Pulls, 30 days" } th { "By region" } th { "Referrers" } th { "Pull" }
                    @if delete { th {} }
                } }
                tbody {
                    @for t in tags {
                        @let d = &t.detail;
                        @let pull = format!("docker pull {host}/{repo}:{}", d.tag);
                        tr data-tag=(d.tag) {
                            td.tag { (d.tag) }
                            td { a href=(format!("/ui/manifest?name={}&digest={}", encode(repo.as_str()), encode(&d.digest))) {
                                code { (short(&d.digest)) } } }
                            td { (charts::bytes(d.size as f64)) }
                            td.platforms { @if t.platforms.is_empty() { span.muted { "single" } } (t.platforms.join(", ")) }
                            td { (when(Some(d.pushed_at))) }
                            td { (when(t.last_pull)) }
                            td.pulls { (t.pulls) }
                            td.regions { (t.by_region.iter().map(|(r, n)| format!("{r} {n}")).collect::<Vec<_>>().join(", ")) }
                            td { (referrer_list(repo, &t.referrers)) }
                            td { code.pull { (pull) } button.copy type="button" data-copy=(pull) { "Copy" } }
                            @if delete {
                                td { a.danger.delete-tag href=(format!("/ui/delete?name={}&tag={}", encode(repo.as_str()), encode(&d.tag))) { "Delete tag…" } }
                            }
                        }
                    }
                }
            } }
            @if tags.is_empty() { p.empty { "No tags." } }
            @if delete { p.muted { "A tag's delete removes the tag; a manifest's page deletes the image and all its tags." } }
        },
    )
}

#[allow(clippy::too_many_arguments)]
pub fn manifest(
    v: &Viewer,
    repo: &RepoName,
    digest: &str,
    media_type: &str,
    size: i64,
    m: &serde_json::Value,
    referrers: &[Referrer],
    delete: bool,
) -> Markup {
    let descriptors = |key: &str| m[key].as_array().cloned().unwrap_or_default();
    layout(
        Some(v),
        &format!("{repo}@{}", short(digest)),
        html! {
            dl.facts {
                dt { "Repository" } dd { a href=(format!("/ui/repository?name={}", encode(repo.as_str()))) { (repo) } }
                dt { "Digest" } dd { code #digest { (digest) } }
                dt { "Media type" } dd { (media_type) }
                dt { "Size" } dd { (charts::bytes(size as f64)) }
                @if let Some(t) = m["artifactType"].as_str() { dt { "Artifact type" } dd { (t) } }
                @if let Some(s) = m["subject"]["digest"].as_str() {
                    dt { "Subject" } dd { a href=(format!("/ui/manifest?name={}&digest={}", encode(repo.as_str()), encode(s))) { code { (s) } } }
                }
            }
            @if m["config"].is_object() {
                h2 { "Config" }
                p { code #config { (m["config"]["digest"].as_str().unwrap_or("")) } " "
                    (m["config"]["mediaType"].as_str().unwrap_or("")) ", "
                    (charts::bytes(m["config"]["size"].as_f64().unwrap_or(0.0))) }
            }
            @let layers = descriptors("layers");
            @if !layers.is_empty() {
                h2 { "Layers" }
                div.scroll {
                table #layers {
                    thead { tr { th { "#" } th { "Digest" } th { "Media type" } th { "Size" } } }
                    tbody { @for (i, l) in layers.iter().enumerate() { tr {
                        td { (i + 1) } td { code { (l["digest"].as_str().unwrap_or("")) } }
                        td { (l["mediaType"].as_str().unwrap_or("")) } td { (charts::bytes(l["size"].as_f64().unwrap_or(0.0))) }
                    } } }
                } }
            }
            @let platforms = descriptors("manifests");
            @if !platforms.is_empty() {
                h2 { "Platforms" }
                div.scroll {
                table #platforms {
                    thead { tr { th { "Platform" } th { "Manifest" } th { "Size" } } }
                    tbody { @for p in &platforms { tr {
                        td { (p["platform"]["os"].as_str().unwrap_or("?")) "/" (p["platform"]["architecture"].as_str().unwrap_or("?"))
                             @if let Some(var) = p["platform"]["variant"].as_str() { "/" (var) } }
                        td { a href=(format!("/ui/manifest?name={}&digest={}", encode(repo.as_str()), encode(p["digest"].as_str().unwrap_or("")))) {
                            code { (short(p["digest"].as_str().unwrap_or(""))) } } }
                        td { (charts::bytes(p["size"].as_f64().unwrap_or(0.0))) }
                    } } }
                } }
            }
            @if let Some(a) = m["annotations"].as_object().filter(|a| !a.is_empty()) {
                h2 { "Annotations" }
                dl #annotations { @for (k, val) in a { dt { (k) } dd { (val.as_str().map(str::to_owned).unwrap_or_else(|| val.to_string())) } } }
            }
            h2 { "Referrers" }
            (referrer_list(repo, referrers))
            @if delete {
                p { a.danger #delete href=(format!("/ui/delete?name={}&digest={}", encode(repo.as_str()), encode(digest))) { "Delete this manifest…" } }
            }
        },
    )
}

pub fn confirm_delete(v: &Viewer, repo: &RepoName, reference: &Reference) -> Markup {
    let back = format!("/ui/repository?name={}", encode(repo.as_str()));
    let (title, what, field) = match reference {
        Reference::Digest(d) => ("Delete a manifest", format!("{repo}@{d} and every tag that names it"), "digest"),
        Reference::Tag(t) => ("Delete a tag", format!("the tag {repo}:{t} (the manifest stays)"), "tag"),
    };
    layout(
        Some(v),
        title,
        html! {
            p { "Delete " code { (what) } "? This cannot be undone, in any region." }
            form method="post" action="/ui/delete" {
                input type="hidden" name="name" value=(repo);
                input type="hidden" name=(field) value=(reference.to_string());
                button.danger #confirm type="submit" { "Delete" }
                " " a href=(back) { "Cancel" }
            }
        },
    )
}

pub fn cluster_table(regions: &[RegionStatus]) -> Markup {
    html! {
        div.scroll {
        table #regions {
            thead { tr {
                th { "Region" } th { "Reachable" } th { "Role" } th { "Term" } th { "Lag" } th { "Pin backlog" }
                th { "Seat holder" } th { "Processes" }
            } }
            tbody {
                @for r in regions {
                    tr data-region=(r.name) class=(if r.reachable { "up" } else { "down" }) {
                        td { (r.name) }
                        td.reachable { (if r.reachable { "yes" } else { "no" }) @if let Some(e) = &r.error { " " span.muted { (e) } } }
                        td.role { (r.role.map(|x| x.as_str()).unwrap_or("–")) }
                        td { (r.term.map(|t| t.to_string()).unwrap_or_else(|| "–".into())) }
                        td { (r.replication_lag.map(|t| t.to_string()).unwrap_or_else(|| "–".into())) }
                        td { (r.pin_backlog.map(|t| t.to_string()).unwrap_or_else(|| "–".into())) }
                        td { (r.seat_holder.as_deref().unwrap_or("–")) }
                        td { (r.processes.len()) }
                    }
                }
            }
        } }
    }
}

pub fn cluster(v: &Viewer, table: Markup) -> Markup {
    layout(
        Some(v),
        "Cluster",
        html! {
            p.muted { "Refreshed every two seconds." }
            div #cluster data-refresh="/ui/cluster?fragment=true" { (table) }
        },
    )
}

pub fn usage(v: &Viewer, days: u32, u: &Usage) -> Markup {
    let series: Vec<String> = u.regions.iter().filter(|r| r.answered).map(|r| r.region.clone()).collect();
    let dates: Vec<chrono::NaiveDate> = (0..days).map(|i| u.since + chrono::Days::new(u64::from(i))).collect();
    let per_day = |bytes: bool| -> Vec<Group> {
        dates
            .iter()
            .map(|day| Group {
                label: day.format("%m-%d").to_string(),
                values: u
                    .regions
                    .iter()
                    .filter(|r| r.answered)
                    .map(|r| {
                        r.figures
                            .days
                            .iter()
                            .filter(|d| d.day == *day)
                            .map(|d| if bytes { d.bytes as f64 } else { d.pulls as f64 })
                            .sum()
                    })
                    .collect(),
            })
            .collect()
    };
    let mut top: Vec<&RepositoryTotal> = u.repositories.iter().filter(|r| r.pulls > 0 || r.bytes_served > 0).collect();
    top.sort_by(|a, b| b.pulls.cmp(&a.pulls).then(a.repository.cmp(&b.repository)));
    top.truncate(10);
    layout(
        Some(v),
        "Usage",
        html! {
            p { "The last " (days) " days, since " (u.since) ", per region." }
            (unanswered_note(&u.unanswered))
            (charts::bars("Pulls per day", &series, &per_day(false), charts::count))
            (charts::bars("Bytes served per day", &series, &per_day(true), charts::bytes))
            h2 { "Top repositories" }
            div.scroll {
            table #top {
                thead { tr { th { "Repository" } th { "Pulls" } th { "Blob pulls" } th { "Bytes served" } th { "Last pull" } } }
                tbody { @for r in &top { tr {
                    td { a href=(format!("/ui/repository?name={}", encode(&r.repository))) { (r.repository) } }
                    td.pulls { (r.pulls) } td { (r.blob_pulls) } td { (charts::bytes(r.bytes_served as f64)) } td { (when(r.last_pull)) }
                } } }
            } }
        },
    )
}
