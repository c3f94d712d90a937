//! `[notifications]`: where events about pushes and deletes are sent. The endpoint fields
//! carry distribution's names (`notifications.endpoints` in its `config.yml`: `name`,
//! `disabled`, `url`, `headers`, `timeout`, `threshold`, `backoff`, `ignoredmediatypes`,
//! `ignore`), durations written as distribution writes them (`"500ms"`, `"1s"`), so that its
//! users can carry theirs over; afreg adds `format` and the bounds after which an event goes
//! to the dead letters, and `pulls`: pull events are opt-in per endpoint, because of their
//! volume (distribution sends them unless `ignore.actions` names `pull`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    pub endpoints: Vec<Endpoint>,
}

/// What the receiver is sent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// distribution's envelope, `{"events": [...]}`, as
    /// `application/vnd.docker.distribution.events.v2+json`, several events a request.
    #[default]
    Distribution,
    /// CloudEvents 1.0 over HTTP in binary mode (`ce-*` headers, the event's data as JSON),
    /// one event a request, as zot sends.
    Cloudevents,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Endpoint {
    /// Names the endpoint in metrics, status and the dead letters; unique.
    pub name: String,
    pub disabled: bool,
    /// Where events are `POST`ed (`http` or `https`).
    pub url: String,
    /// Sent with every request; each header may have several values.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The longest one delivery may take.
    pub timeout: String,
    /// Failures in a row after which the endpoint waits `backoff` before the next attempt.
    pub threshold: u32,
    pub backoff: String,
    /// Events whose target has one of these media types are not sent (distribution's older
    /// field; `ignore.mediatypes` says the same).
    pub ignoredmediatypes: Vec<String>,
    pub ignore: Ignore,
    pub format: Format,
    /// An event still failing after this many attempts goes to the dead letters
    /// (`afreg notifications list|retry`), and the next one is sent.
    pub max_attempts: u32,
    /// Or once it has waited this long since it happened.
    pub max_age: String,
    /// Whether this endpoint is also sent pull events (manifest and blob `GET`s). Each region
    /// sends those of its own pulls; they are off by default because of their volume.
    pub pulls: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Ignore {
    pub mediatypes: Vec<String>,
    /// Actions not sent: `push`, `pull`, `delete`.
    pub actions: Vec<String>,
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint {
            name: String::new(),
            disabled: false,
            url: String::new(),
            headers: BTreeMap::new(),
            timeout: "1s".into(),
            threshold: 10,
            backoff: "1s".into(),
            ignoredmediatypes: vec![],
            ignore: Ignore::default(),
            format: Format::Distribution,
            max_attempts: 20,
            max_age: "24h".into(),
            pulls: false,
        }
    }
}

/// The actions an event may have.
pub const ACTIONS: &[&str] = &["push", "pull", "mount", "delete"];

impl Endpoint {
    pub fn timeout(&self) -> Duration {
        duration(&self.timeout).unwrap_or(Duration::from_secs(1))
    }

    pub fn backoff(&self) -> Duration {
        duration(&self.backoff).unwrap_or(Duration::from_secs(1))
    }

    pub fn max_age(&self) -> Duration {
        duration(&self.max_age).unwrap_or(Duration::from_secs(86_400))
    }

    /// Whether an event of `action` about `media_type` is sent here.
    pub fn wants(&self, action: &str, media_type: &str) -> bool {
        if action == "pull" && !self.pulls {
            return false;
        }
        let ignored = |v: &[String]| !media_type.is_empty() && v.iter().any(|m| m == media_type);
        !(ignored(&self.ignoredmediatypes)
            || ignored(&self.ignore.mediatypes)
            || self.ignore.actions.iter().any(|a| a == action))
    }
}

/// A duration as distribution writes one (`"250ms"`, `"1s"`, `"1m30s"`), through humantime.
fn duration(s: &str) -> Option<Duration> {
    humantime::parse_duration(s.trim()).ok()
}

impl NotificationsConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |i: usize, field: &str, why: String| {
            Err(ConfigError::Invalid(format!("notifications.endpoints[{i}].{field}: {why}")))
        };
        let mut names = std::collections::BTreeSet::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            if e.name.trim().is_empty() {
                return bad(i, "name", "every endpoint needs a name".into());
            }
            if !names.insert(e.name.as_str()) {
                return bad(i, "name", format!("{:?} names two endpoints", e.name));
            }
            if e.url.is_empty() {
                return bad(i, "url", "missing: where should the events go?".into());
            }
            match url::Url::parse(&e.url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                Ok(u) => {
                    return bad(i, "url", format!("{:?}: the scheme must be http or https, not {}", e.url, u.scheme()))
                }
                Err(err) => return bad(i, "url", format!("{:?}: {err}", e.url)),
            }
            for (field, value) in [("timeout", &e.timeout), ("backoff", &e.backoff), ("max_age", &e.max_age)] {
                match duration(value) {
                    Some(d) if d > Duration::ZERO => {}
                    _ => {
                        return bad(
                            i,
                            field,
                            format!("{value:?} is not a positive duration such as \"500ms\" or \"1s\""),
                        )
                    }
                }
            }
            if e.threshold == 0 {
                return bad(i, "threshold", "must be at least 1".into());
            }
            if e.max_attempts == 0 {
                return bad(i, "max_attempts", "must be at least 1".into());
            }
            if let Some(a) = e.ignore.actions.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
                return bad(i, "ignore.actions", format!("{a:?} is not one of {ACTIONS:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(e: Endpoint) -> Result<(), ConfigError> {
        NotificationsConfig { endpoints: vec![e] }.validate()
    }

    fn named(url: &str) -> Endpoint {
        Endpoint { name: "ci".into(), url: url.into(), ..Default::default() }
    }

    #[test]
    fn bad_endpoints_are_refused_with_the_field_named() {
        let msg = |r: Result<(), ConfigError>| r.unwrap_err().to_string();
        assert!(one(named("http://hooks.example/afreg")).is_ok());
        assert!(msg(one(named(""))).contains("notifications.endpoints[0].url: missing"));
        assert!(msg(one(named("ftp://x/"))).contains("endpoints[0].url"));
        let negative = Endpoint { timeout: "-1s".into(), ..named("http://h/") };
        assert!(msg(one(negative)).contains("notifications.endpoints[0].timeout"));
        let zero = Endpoint { backoff: "0s".into(), ..named("http://h/") };
        assert!(msg(one(zero)).contains("endpoints[0].backoff"));
        let nameless = Endpoint { name: " ".into(), ..named("http://h/") };
        assert!(msg(one(nameless)).contains("endpoints[0].name"));
        let twice = NotificationsConfig { endpoints: vec![named("http://a/"), named("http://b/")] };
        assert!(twice.validate().unwrap_err().to_string().contains("endpoints[1].name"));
        let action =
            Endpoint { ignore: Ignore { actions: vec!["pish".into()], ..Default::default() }, ..named("http://h/") };
        assert!(msg(one(action)).contains("ignore.actions"));
    }

    #[test]
    fn a_bad_format_and_a_missing_url_stop_the_load_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let load = |toml: &str| {
            let p = dir.path().join("afreg.toml");
            std::fs::write(&p, toml).unwrap();
            crate::Config::load_from(Some(&p), std::iter::empty()).map(|_| ()).unwrap_err().to_string()
        };
        let e = load("[[notifications.endpoints]]\nname = \"a\"\nurl = \"http://h/\"\nformat = \"xml\"\n");
        assert!(e.contains("format") && e.contains("xml"), "{e}");
        let e = load("[[notifications.endpoints]]\nname = \"a\"\n");
        assert!(e.contains("notifications.endpoints[0].url"), "{e}");
        let e = load("[[notifications.endpoints]]\nname = \"a\"\nurl = \"http://h/\"\ntimeout = \"-1s\"\n");
        assert!(e.contains("notifications.endpoints[0].timeout"), "{e}");
    }

    #[test]
    fn endpoints_travel_in_one_environment_variable_as_json() {
        let mut c = crate::Config::default();
        c.notifications.endpoints =
            vec![Endpoint { headers: [("X-Token".to_owned(), vec!["t".to_owned()])].into(), ..named("http://hooks/") }];
        let vars = c.env_overrides().unwrap();
        let (k, v) = vars.iter().find(|(k, _)| k.starts_with("AFREG_NOTIFICATIONS")).expect("a variable");
        assert_eq!(k, "AFREG_NOTIFICATIONS__ENDPOINTS");
        let back = crate::Config::load_from(None, vec![(k.clone(), v.clone())]).unwrap();
        assert_eq!(back.notifications, c.notifications);
    }

    #[test]
    fn durations_are_read_as_distribution_writes_them() {
        let e = Endpoint { timeout: "250ms".into(), backoff: "1m30s".into(), ..named("http://h/") };
        assert_eq!(e.timeout(), Duration::from_millis(250));
        assert_eq!(e.backoff(), Duration::from_secs(90));
    }

    #[test]
    fn ignored_media_types_and_actions() {
        let mut e = named("http://h/");
        e.ignoredmediatypes = vec!["application/octet-stream".into()];
        e.ignore.actions = vec!["delete".into()];
        assert!(e.wants("push", "application/vnd.oci.image.manifest.v1+json"));
        assert!(!e.wants("push", "application/octet-stream"));
        assert!(!e.wants("delete", ""));
        assert!(!e.wants("delete", "application/vnd.oci.image.manifest.v1+json"));
    }

    #[test]
    fn pull_events_are_sent_only_where_asked_for() {
        let mut e = named("http://h/");
        let manifest = "application/vnd.oci.image.manifest.v1+json";
        assert!(!e.wants("pull", manifest));
        e.pulls = true;
        assert!(e.wants("pull", manifest));
        e.ignore.actions = vec!["pull".into()];
        assert!(!e.wants("pull", manifest));
    }
}
