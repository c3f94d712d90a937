//! The token request: `GET /token`'s query string (`http::handlers::Query`, repeated `scope`),
//! its `Authorization: Basic` header (`auth::basic_credentials`), the `POST /token` form
//! (`http::token::TokenForm`, decoded as axum's `Form` does), the scope grammar
//! (`auth::parse_scope`), user grant specs (`auth::Grants::parse`) and what a token is granted
//! for the requested scopes (`auth::grant_scopes`), everything `Auth::issue` does short of the
//! password check and the signature.
//!
//! Input: line 1 the query string, line 2 the `Authorization` value, line 3 the user's grant
//! specs separated by spaces (`team/*:pull,push public:pull`), the rest the `POST` form body.
//!
//! Checks:
//! - `Query::get`/`all` give the first/every value of a key, in order;
//! - a parsed scope is written back as the scope it came from; a parsed grant spec too, and it
//!   parses again to the same;
//! - decoded Basic credentials have a user name without `:`, come from a `Basic` header, and
//!   encoding them again decodes to the same; a malformed one is refused with 401;
//! - the form decodes only with a `grant_type`;
//! - granting never exceeds the grants: every repository action in the token is one the user
//!   has on that repository, and only on a valid repository name; `registry:catalog:*` only
//!   with pull on `*`; nothing for other resource types; an anonymous user with pull gets
//!   nothing but pull. Every action asked for and allowed on a valid name is granted; each
//!   resource has one entry, each of its actions listed once, and only requested resources
//!   appear.
#![no_main]

use afreg_node::auth::{basic_credentials, grant_scopes, parse_scope, Access, Grants};
use afreg_node::fuzzing::{Query, TokenForm};
use afreg_node::oci::{Action, ErrorCode};
use axum::http::{header::AUTHORIZATION, HeaderMap, HeaderValue, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;

fn check_query(q: &str) -> Query {
    let query = Query::parse(Some(q));
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    for (k, _) in &pairs {
        let values: Vec<String> = pairs.iter().filter(|(key, _)| key == k).map(|(_, v)| v.clone()).collect();
        assert_eq!(query.get(k), values.first().map(String::as_str));
        assert_eq!(query.all(k), values);
    }
    query
}

fn check_basic(value: &[u8]) {
    let Ok(v) = HeaderValue::from_bytes(value) else { return };
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, v);
    match basic_credentials(&h) {
        Ok(Some((user, password))) => {
            assert!(!user.contains(':'), "user {user:?}");
            let text = std::str::from_utf8(value).expect("decoded credentials come from a text header");
            let scheme = text.trim_start().split(' ').next().unwrap_or("");
            assert!(scheme.eq_ignore_ascii_case("basic"), "credentials from scheme {scheme:?}");
            let again = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
            let mut h2 = HeaderMap::new();
            h2.insert(AUTHORIZATION, HeaderValue::from_str(&again).unwrap());
            assert_eq!(basic_credentials(&h2).ok().flatten(), Some((user, password)));
        }
        Ok(None) => {}
        Err(e) => {
            assert_eq!(e.code, ErrorCode::Unauthorized);
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        }
    }
}

fn check_grants(line: &str) -> Grants {
    let mut grants = vec![];
    for spec in line.split(' ').filter(|s| !s.is_empty()) {
        if let Ok((pattern, actions)) = Grants::parse(spec) {
            assert!(!actions.is_empty());
            assert!(spec.starts_with(&format!("{pattern}:")), "{spec:?} gave pattern {pattern:?}");
            let written = format!("{pattern}:{}", actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(","));
            assert_eq!(Grants::parse(&written), Ok((pattern.clone(), actions.clone())), "{written:?}");
            grants.push((pattern, actions));
        }
    }
    Grants(grants)
}

/// The scopes as `Auth::issue` splits them, each checked against the grammar.
fn requested(scopes: &[String]) -> Vec<(String, String, Vec<String>)> {
    let mut out = vec![];
    for s in scopes.iter().flat_map(|s| s.split(' ')).filter(|s| !s.is_empty()) {
        match parse_scope(s) {
            Some((kind, name, actions)) => {
                assert!(!kind.contains(':') && actions.iter().all(|a| !a.contains(':') && !a.contains(',')));
                assert_eq!(format!("{kind}:{name}:{}", actions.join(",")), s, "scope {s:?} written back");
                out.push((kind, name, actions));
            }
            None => assert!(s.matches(':').count() < 2, "scope {s:?} refused"),
        }
    }
    out
}

fn check_granted(grants: &Grants, scopes: &[String], access: &[Access]) {
    let asked = requested(scopes);
    for (i, a) in access.iter().enumerate() {
        assert!(
            !access[..i].iter().any(|b| b.kind == a.kind && b.name == a.name),
            "two entries for {}:{}",
            a.kind,
            a.name
        );
        for (j, x) in a.actions.iter().enumerate() {
            assert!(!a.actions[..j].contains(x), "{}:{} lists {x:?} twice: {:?}", a.kind, a.name, a.actions);
        }
        assert!(asked.iter().any(|(k, n, _)| *k == a.kind && *n == a.name), "{}:{} was not asked for", a.kind, a.name);
        match a.kind.as_str() {
            "repository" => {
                assert!(
                    a.actions.is_empty() || a.name.parse::<afreg_node::oci::RepoName>().is_ok(),
                    "granted {:?} on {:?}, not a valid repository name",
                    a.actions,
                    a.name
                );
                let allowed = grants.allowed(&a.name);
                for x in &a.actions {
                    let act = Action::parse(x).unwrap_or_else(|| panic!("granted {x:?}, not an action"));
                    assert!(allowed.contains(&act), "granted {x} on {}, allowed only {allowed:?}", a.name);
                }
            }
            "registry" => {
                assert!(a.actions.iter().all(|x| x == "*"));
                assert!(
                    a.actions.is_empty() || (a.name == "catalog" && grants.catalog()),
                    "catalog granted without pull on *"
                );
            }
            _ => assert!(a.actions.is_empty(), "granted {:?} on a {:?}", a.actions, a.kind),
        }
    }
    // Nothing allowed and asked for is left out.
    for (kind, name, wanted) in &asked {
        if kind != "repository" {
            continue;
        }
        let entry = access.iter().find(|a| a.kind == *kind && a.name == *name).expect("every scope has an entry");
        if name.parse::<afreg_node::oci::RepoName>().is_err() {
            // Nothing is granted on a name that is not a repository's.
            continue;
        }
        let allowed = grants.allowed(name);
        for w in wanted {
            if Action::parse(w).is_some_and(|a| allowed.contains(&a)) {
                assert!(entry.actions.contains(w), "{w} on {name} asked for and allowed, not granted");
            }
            if w == "*" {
                for a in &allowed {
                    assert!(entry.actions.iter().any(|x| x == a.as_str()), "* on {name}: {a:?} missing");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(4, |&b| b == b'\n');
    let query = lines.next().unwrap_or_default();
    let authorization = lines.next().unwrap_or_default();
    let grant_line = lines.next().unwrap_or_default();
    let form = lines.next().unwrap_or_default();

    check_basic(authorization);

    let has_grant_type = url::form_urlencoded::parse(form).any(|(k, _)| k == "grant_type");
    if serde_urlencoded::from_bytes::<TokenForm>(form).is_ok() {
        assert!(has_grant_type, "a form without grant_type decoded");
    }

    let Ok(query) = std::str::from_utf8(query) else { return };
    let scopes = check_query(query).all("scope");
    let grants = check_grants(&String::from_utf8_lossy(grant_line));
    let access = grant_scopes(&grants, &scopes);
    check_granted(&grants, &scopes, &access);

    let anonymous = Grants(vec![("*".into(), vec![Action::Pull])]);
    let access = grant_scopes(&anonymous, &scopes);
    check_granted(&anonymous, &scopes, &access);
    for a in &access {
        assert!(a.actions.iter().all(|x| x == "pull" || (a.kind == "registry" && x == "*")), "anonymous got {a:?}");
    }
});
