use std::path::Path;

use super::*;
use crate::regions::load_dir;

fn regions() -> Vec<RegionFile> {
    load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../regions")).unwrap()
}

/// Every `(service, expose entry, to entry)` of a rendered SDL.
fn exposes(doc: &Yaml) -> Vec<(String, &Yaml, &Yaml)> {
    let mut out = vec![];
    let Some(Yaml::Map(services)) = doc.get("services") else { panic!("no services") };
    for (name, svc) in services {
        for e in svc.get("expose").map(Yaml::as_seq).unwrap_or_default() {
            for to in e.get("to").map(Yaml::as_seq).unwrap_or_default() {
                out.push((name.clone(), e, to));
            }
        }
    }
    out
}

fn int(v: Option<&Yaml>) -> u64 {
    match v {
        Some(Yaml::Int(n)) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

fn is_global(to: &Yaml) -> bool {
    to.get("global") == Some(&Yaml::Bool(true))
}

#[test]
fn rendering_is_deterministic_and_has_the_three_services() {
    for r in regions() {
        let a = render(&r, None).unwrap();
        assert_eq!(a, render(&r, None).unwrap(), "region {}", r.name);
        let doc = sdl(&r, None).unwrap();
        assert_eq!(doc.keys(), ["version", "services", "profiles", "deployment", "endpoints"]);
        assert_eq!(doc.at("version").and_then(Yaml::as_str), Some("2.0"));
        assert_eq!(doc.at("services").unwrap().keys(), ["postgres", "kubo", "registry"]);
        assert_eq!(doc.at("deployment").unwrap().keys(), ["postgres", "kubo", "registry"]);
    }
}

#[test]
fn kubo_rpc_its_gateway_and_postgres_are_never_global() {
    for r in regions() {
        let doc = sdl(&r, None).unwrap();
        for (svc, e, to) in exposes(&doc) {
            let port = int(e.get("port"));
            if (svc == "kubo" && (port == KUBO_API_PORT || port == KUBO_GATEWAY_PORT))
                || (svc == "postgres" && port == POSTGRES_PORT)
            {
                assert!(!is_global(to), "{}: {svc}:{port} is global", r.name);
                assert_eq!(to, &to_registry(), "{}: {svc}:{port} must be reachable by registry only", r.name);
            }
        }
        // Each of them is exposed at all (registry needs it), and only in that one way.
        let n =
            |s: &str, p: u64| exposes(&doc).iter().filter(|(svc, e, _)| svc == s && int(e.get("port")) == p).count();
        assert_eq!(n("kubo", KUBO_API_PORT), 1);
        assert_eq!(n("kubo", KUBO_GATEWAY_PORT), 1);
        assert_eq!(n("postgres", POSTGRES_PORT), 1);
    }
}

#[test]
fn every_public_port_is_on_the_leased_ip_and_none_goes_through_the_http_ingress() {
    for r in regions() {
        let doc = sdl(&r, None).unwrap();
        let mut public = vec![];
        for (svc, e, to) in exposes(&doc) {
            if !is_global(to) {
                continue;
            }
            assert_eq!(
                to.get("ip").and_then(Yaml::as_str),
                Some(IP_ENDPOINT),
                "{}: {svc} global without the leased IP",
                r.name
            );
            // Akash may route a global port 80 through its HTTP ingress (100 MiB body cap), so
            // no registry API is there: only the ACME HTTP-01 responder, whose answers are tiny.
            if int(e.get("as")) == 80 {
                assert_eq!(
                    (svc.as_str(), int(e.get("port"))),
                    ("registry", ACME_HTTP_PORT),
                    "{}: {svc} on port 80",
                    r.name
                );
            }
            public.push((
                svc,
                int(e.get("port")),
                int(e.get("as")),
                e.get("proto").and_then(Yaml::as_str).unwrap_or("tcp").to_owned(),
            ));
        }
        let internal = u64::from(r.local.internal);
        let mut want = vec![
            ("kubo".to_owned(), KUBO_SWARM_PORT, KUBO_SWARM_PORT, "tcp".to_owned()),
            ("registry".to_owned(), REGISTRY_PORT, REGISTRY_PUBLIC_PORT, "tcp".to_owned()),
            ("registry".to_owned(), internal, internal, "tcp".to_owned()),
        ];
        if r.acme.is_some() {
            want.push(("registry".to_owned(), ACME_HTTP_PORT, ACME_HTTP_PUBLIC_PORT, "tcp".to_owned()));
        }
        assert_eq!(public, want, "region {}", r.name);
        assert_eq!(doc.at(&format!("endpoints.{IP_ENDPOINT}.kind")).and_then(Yaml::as_str), Some("ip"));
    }
}

/// The registry's environment in a rendered SDL.
fn registry_env_of(doc: &Yaml) -> Vec<&str> {
    doc.at("services.registry.env").unwrap().as_seq().iter().filter_map(Yaml::as_str).collect()
}

#[test]
fn committed_regions_get_their_certificates_through_acme_for_both_names() {
    for r in regions() {
        let acme = r.acme.as_ref().unwrap_or_else(|| panic!("{}: the committed region files use ACME", r.name));
        let doc = sdl(&r, None).unwrap();
        let env = registry_env_of(&doc);
        for want in [
            format!("AFREG_SERVER__ACME__DOMAINS=[\"{}\",\"{}\"]", r.hostnames.regional, r.hostnames.global),
            "AFREG_SERVER__ACME__CHALLENGE=http-01".to_owned(),
            format!("AFREG_SERVER__ACME__HTTP_LISTEN=0.0.0.0:{ACME_HTTP_PORT}"),
            format!("AFREG_SERVER__ACME__CACHE_DIR={ACME_CACHE}"),
        ] {
            assert!(env.contains(&want.as_str()), "{}: registry env lacks {want}: {env:?}", r.name);
        }
        assert!(
            !env.iter().any(|kv| kv.starts_with("AFREG_SERVER__TLS_")),
            "{}: ACME and files both set: {env:?}",
            r.name
        );
        let got = registry_config(&r, None).server.acme.unwrap();
        assert_eq!(got.contact, acme.contact);
        // Peers are found through the discovery zone (the SRV records of every region).
        assert!(registry_config(&r, None).cluster.discovery_zone.is_some());
    }
}

#[test]
fn a_region_without_acme_reads_its_certificate_files() {
    let mut r = regions().remove(0);
    r.acme = None;
    let doc = sdl(&r, None).unwrap();
    let env = registry_env_of(&doc);
    for want in [format!("AFREG_SERVER__TLS_CERT={TLS_CERT}"), format!("AFREG_SERVER__TLS_KEY={TLS_KEY}")] {
        assert!(env.contains(&want.as_str()), "registry env lacks {want}: {env:?}");
    }
    assert!(!env.iter().any(|kv| kv.starts_with("AFREG_SERVER__ACME")), "{env:?}");
    assert!(
        !exposes(&doc).iter().any(|(_, e, _)| int(e.get("as")) == ACME_HTTP_PUBLIC_PORT),
        "port 80 published without ACME"
    );
}

#[test]
fn registry_serves_tls_and_reaches_its_backends_by_service_name() {
    for r in regions() {
        let doc = sdl(&r, None).unwrap();
        let env = registry_env_of(&doc);
        assert!(registry_config(&r, None).server.https(), "{}: no TLS", r.name);
        for want in [
            format!("AFREG_SERVER__LISTEN=0.0.0.0:{REGISTRY_PORT}"),
            format!("AFREG_SERVER__PUBLIC_URL=https://{}", r.hostnames.regional),
            "AFREG_DATABASE__URL=postgres://postgres@postgres:5432/afreg".to_owned(),
            "AFREG_KUBO__API_URL=http://kubo:5001".to_owned(),
            "AFREG_KUBO__GATEWAY_URL=http://kubo:8080".to_owned(),
        ] {
            assert!(env.contains(&want.as_str()), "{}: registry env lacks {want}: {env:?}", r.name);
        }
        // The environment reads back, through the node's own loader, as the region's config.
        let vars = env.iter().map(|kv| kv.split_once('=').unwrap()).map(|(k, v)| (k.to_owned(), v.to_owned()));
        let parsed = afreg_config::Config::load_from(None, vars).unwrap_or_else(|e| panic!("{}: {e}", r.name));
        assert_eq!(parsed, registry_config(&r, None), "{}: the SDL's environment is not the registry's config", r.name);
        assert_eq!((parsed.cluster.id, parsed.cluster.region.as_str()), (r.raft_id, r.name.as_str()));
        assert_eq!(doc.at("services.registry.image").and_then(Yaml::as_str), Some(r.image.as_str()));
        // What scripts/image.sh builds: the afreg image at this crate's version.
        assert!(r.image.ends_with(&format!("/afreg:{}", env!("CARGO_PKG_VERSION"))), "{}: image {}", r.name, r.image);
    }
}

#[test]
fn data_lives_on_persistent_volumes_sized_from_the_region_file() {
    for r in regions() {
        let doc = sdl(&r, None).unwrap();
        for (svc, res) in
            [("postgres", &r.resources.postgres), ("kubo", &r.resources.kubo), ("registry", &r.resources.registry)]
        {
            let profile = doc.at(&format!("profiles.compute.{svc}.resources")).unwrap();
            assert_eq!(profile.at("memory.size").and_then(Yaml::as_str), Some(res.memory.as_str()));
            assert_eq!(profile.at("cpu.units"), Some(&Yaml::Num(res.cpu.to_string())));
            let volume = format!("{svc}-data");
            let persistent: Vec<&Yaml> = profile
                .get("storage")
                .unwrap()
                .as_seq()
                .iter()
                .filter(|s| s.get("name").and_then(Yaml::as_str) == Some(volume.as_str()))
                .collect();
            assert_eq!(persistent.len(), 1, "{}: {svc} has no volume {volume}", r.name);
            assert_eq!(persistent[0].get("size").and_then(Yaml::as_str), Some(res.storage.as_str()));
            assert_eq!(persistent[0].at("attributes.persistent"), Some(&Yaml::Bool(true)));
            assert_eq!(persistent[0].at("attributes.class").and_then(Yaml::as_str), Some("beta3"));
            let mount = doc.at(&format!("services.{svc}.params.storage.{volume}.mount")).and_then(Yaml::as_str);
            assert!(mount.is_some_and(|m| m.starts_with('/')), "{}: {svc}'s volume is not mounted", r.name);
        }
    }
}

#[test]
fn the_registry_keeps_its_blob_files_on_its_volume_within_three_quarters_of_it() {
    for r in regions() {
        let doc = sdl(&r, None).unwrap();
        let env = registry_env_of(&doc);
        assert!(env.contains(&"AFREG_STORAGE__BLOB_CACHE_DIR=/data/blob-files"), "{}: {env:?}", r.name);
        let volume = quantity_bytes(&r.resources.registry.storage).unwrap();
        let want = format!("AFREG_STORAGE__BLOB_CACHE_BYTES={}", volume / 4 * 3);
        assert!(env.contains(&want.as_str()), "{}: {env:?}", r.name);
    }
    assert_eq!(quantity_bytes("10Gi"), Some(10 << 30));
    assert_eq!(quantity_bytes("500M"), Some(500_000_000));
    assert_eq!(quantity_bytes("Gi"), None);
}

#[test]
fn placement_and_pricing_come_from_the_region_file() {
    for r in regions() {
        let doc = sdl(&r, None).unwrap();
        let placement = doc.at(&format!("profiles.placement.{}", r.name)).unwrap();
        for (k, v) in &r.placement.attributes {
            assert_eq!(placement.at(&format!("attributes.{k}")).and_then(Yaml::as_str), Some(v.as_str()));
        }
        for (svc, amount) in &r.placement.price {
            assert_eq!(int(placement.at(&format!("pricing.{svc}.amount"))), *amount);
            assert_eq!(
                placement.at(&format!("pricing.{svc}.denom")).and_then(Yaml::as_str),
                Some(r.placement.denom.as_str())
            );
            assert_eq!(
                doc.at(&format!("deployment.{svc}.{}.profile", r.name)).and_then(Yaml::as_str),
                Some(svc.as_str())
            );
        }
    }
}

#[test]
fn bad_resources_are_refused_with_the_field_named() {
    let mut r = regions().remove(0);
    r.resources.kubo.storage = "100 GB".into();
    assert!(sdl(&r, None).unwrap_err().to_string().contains("resources.kubo.storage"));
    let mut r = regions().remove(0);
    r.resources.postgres.cpu = 0.0;
    assert!(sdl(&r, None).unwrap_err().to_string().contains("resources.postgres.cpu"));
    let mut r = regions().remove(0);
    r.local.internal = REGISTRY_PORT as u16;
    assert!(sdl(&r, None).unwrap_err().to_string().contains("local.internal"));
    assert!(
        is_quantity("512Mi") && is_quantity("20Gi") && is_quantity("1000") && !is_quantity("0Gi") && !is_quantity("Gi")
    );
}

#[test]
fn render_dir_writes_one_file_per_region_and_removes_only_generated_strays() {
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("mars.yaml"), format!("{HEADER} from regions/mars.toml\n")).unwrap();
    std::fs::write(out.path().join("notes.yaml"), "hand-written\n").unwrap();
    let written = render_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../regions"), out.path(), None).unwrap();
    let names: Vec<String> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["us.yaml", "eu.yaml", "asia.yaml"]);
    assert!(!out.path().join("mars.yaml").exists(), "a stale generated file stays");
    assert!(out.path().join("notes.yaml").exists(), "a hand-written file was removed");
}

#[test]
fn a_region_of_several_processes_runs_that_many_registries_that_reach_each_other_and_no_one_else() {
    let mut all = regions();
    all[0].acme = None;
    all[0].processes = 3;
    crate::regions::validate(&all).unwrap_or_else(|e| panic!("{e}"));
    let r = all[0].clone();
    let doc = sdl(&r, None).unwrap();
    let count = |svc: &str| int(doc.at("deployment").unwrap().get(svc).unwrap().get(&r.name).unwrap().get("count"));
    assert_eq!((count("registry"), count("postgres"), count("kubo")), (3, 1, 1));
    let own = u64::from(r.local.internal) + 1;
    let to: Vec<&Yaml> = exposes(&doc)
        .into_iter()
        .filter(|(s, e, _)| s == "registry" && int(e.get("port")) == own)
        .map(|(_, _, t)| t)
        .collect();
    assert_eq!(to, [&to_registry()], "each replica's own internal port is exposed to the replicas only");
    let c = registry_config(&r, None);
    assert_eq!(c.cluster.process_listen, Some(([0, 0, 0, 0], own as u16).into()));

    // ACME and several processes are refused, saying why.
    all[0].acme =
        Some(crate::regions::RegionAcme { contact: vec!["mailto:ops@example.org".into()], directory_url: None });
    let e = crate::regions::validate(&all).unwrap_err().to_string();
    assert!(e.contains("certificate files"), "{e}");
}
