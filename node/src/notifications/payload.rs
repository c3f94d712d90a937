//! What a receiver is sent: distribution's envelope, or a CloudEvent in HTTP binary mode.

use afreg_replication::store::events::EventRow;
use serde_json::{json, Value};

/// distribution v3's media type for its envelope.
pub const ENVELOPE_TYPE: &str = "application/vnd.docker.distribution.events.v2+json";

/// The event's id: its entry's log index, the same in every region; a pull event, which only
/// the region that served it has, is named with that region (`us-pull-42`).
pub fn id(e: &EventRow) -> String {
    if e.action == "pull" {
        format!("{}-pull-{}", e.origin.region, e.id)
    } else {
        e.id.to_string()
    }
}

fn target_url(e: &EventRow) -> String {
    let base = &e.origin.url_base;
    match (e.digest.as_str(), e.media_type.as_str()) {
        ("", _) => format!("{base}/v2/{}/manifests/{}", e.repository, e.tag),
        (d, "application/octet-stream") => format!("{base}/v2/{}/blobs/{d}", e.repository),
        (d, _) => format!("{base}/v2/{}/manifests/{d}", e.repository),
    }
}

/// One event of distribution's envelope (`notifications.Event`).
fn distribution_event(e: &EventRow) -> Value {
    let o = &e.origin;
    let mut target = json!({
        "repository": e.repository,
        "url": target_url(e),
    });
    let t = target.as_object_mut().expect("an object");
    if !e.media_type.is_empty() {
        t.insert("mediaType".into(), json!(e.media_type));
    }
    if !e.digest.is_empty() {
        t.insert("digest".into(), json!(e.digest));
    }
    if e.size > 0 {
        t.insert("size".into(), json!(e.size));
        t.insert("length".into(), json!(e.size));
    }
    if !e.tag.is_empty() {
        t.insert("tag".into(), json!(e.tag));
    }
    let source_addr = url::Url::parse(&o.url_base)
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
        .unwrap_or_default();
    json!({
        "id": id(e),
        "timestamp": e.at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        "action": e.action,
        "target": target,
        "request": {"id": o.request_id, "addr": o.addr, "host": o.host, "method": o.method, "useragent": o.user_agent},
        "actor": {"name": o.actor},
        "source": {"addr": source_addr, "instanceID": o.instance, "region": o.region},
    })
}

/// distribution's envelope of `events`.
pub fn envelope(events: &[&EventRow]) -> Vec<u8> {
    let v = json!({ "events": events.iter().map(|e| distribution_event(e)).collect::<Vec<_>>() });
    serde_json::to_vec(&v).expect("JSON")
}

/// A CloudEvent type, in the reverse-DNS form the spec recommends.
fn cloudevent_type(e: &EventRow) -> &'static str {
    match (e.action.as_str(), e.digest.is_empty(), e.media_type == "application/octet-stream") {
        ("push", _, true) => "io.afreg.blob.pushed",
        ("push", _, _) => "io.afreg.manifest.pushed",
        ("mount", _, _) => "io.afreg.blob.mounted",
        ("pull", _, true) => "io.afreg.blob.pulled",
        ("pull", _, _) => "io.afreg.manifest.pulled",
        ("delete", true, _) => "io.afreg.tag.deleted",
        ("delete", _, true) => "io.afreg.blob.deleted",
        _ => "io.afreg.manifest.deleted",
    }
}

/// A CloudEvent in HTTP binary mode: the `ce-*` headers and the data (JSON).
pub fn cloudevent(e: &EventRow) -> (Vec<(&'static str, String)>, Vec<u8>) {
    let o = &e.origin;
    let headers = vec![
        ("ce-specversion", "1.0".to_owned()),
        ("ce-id", id(e)),
        ("ce-source", if o.url_base.is_empty() { "/afreg".to_owned() } else { o.url_base.clone() }),
        ("ce-type", cloudevent_type(e).to_owned()),
        ("ce-time", e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        ("ce-subject", e.repository.clone()),
        ("ce-region", o.region.clone()),
        ("content-type", "application/json".to_owned()),
    ];
    let data = json!({
        "repository": e.repository,
        "digest": e.digest,
        "mediaType": e.media_type,
        "size": e.size,
        "tag": e.tag,
        "url": target_url(e),
        "actor": o.actor,
        "request": {"id": o.request_id, "addr": o.addr, "method": o.method, "useragent": o.user_agent},
    });
    (headers, serde_json::to_vec(&data).expect("JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use afreg_replication::EventOrigin;

    fn event() -> EventRow {
        EventRow {
            id: 42,
            at: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
            action: "push".into(),
            repository: "team/app".into(),
            digest: "sha256:aa".into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 512,
            tag: "v1".into(),
            origin: sqlx::types::Json(EventOrigin {
                request_id: "r1".into(),
                addr: "10.0.0.9".into(),
                host: "us.registry.example".into(),
                method: "PUT".into(),
                user_agent: "crane".into(),
                actor: "ci".into(),
                region: "us".into(),
                instance: "i-1".into(),
                url_base: "https://us.registry.example".into(),
            }),
        }
    }

    #[test]
    fn the_envelope_carries_distributions_fields() {
        let e = event();
        let v: Value = serde_json::from_slice(&envelope(&[&e])).unwrap();
        let ev = &v["events"][0];
        assert_eq!(ev["id"], "42");
        assert_eq!(ev["action"], "push");
        assert_eq!(ev["target"]["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(ev["target"]["size"], 512);
        assert_eq!(ev["target"]["length"], 512);
        assert_eq!(ev["target"]["tag"], "v1");
        assert_eq!(ev["target"]["url"], "https://us.registry.example/v2/team/app/manifests/sha256:aa");
        assert_eq!(ev["request"]["useragent"], "crane");
        assert_eq!(ev["actor"]["name"], "ci");
        assert_eq!(ev["source"]["addr"], "us.registry.example:443");
        assert_eq!(ev["source"]["instanceID"], "i-1");
        assert_eq!(ev["source"]["region"], "us");
    }

    #[test]
    fn a_cloudevent_is_in_binary_mode() {
        let (headers, body) = cloudevent(&event());
        let h = |k: &str| headers.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(h("ce-specversion"), Some("1.0"));
        assert_eq!(h("ce-id"), Some("42"));
        assert_eq!(h("ce-type"), Some("io.afreg.manifest.pushed"));
        assert_eq!(h("ce-region"), Some("us"));
        assert_eq!(h("content-type"), Some("application/json"));
        let data: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(data["repository"], "team/app");
    }
}
