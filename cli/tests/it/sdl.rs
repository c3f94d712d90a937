//! The committed Akash SDL files (`sdl/*.yaml`): they are exactly what `afreg sdl render`
//! produces from `regions/`, Akash's own parser (`@akashnetwork/akashjs`, installed by
//! `scripts/setup.sh`) accepts them and reads them as intended, and it rejects them when a
//! required piece is removed, so a pass means something.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use afreg_deploy::sdl;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn afreg() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_afreg"));
    // AFREG_SECTION__FIELD variables configure the binary; the developer's shell must not.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AFREG_") {
            c.env_remove(k);
        }
    }
    c
}

/// `*.yaml` file names in `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    v.sort();
    v
}

/// Where setup.sh installs the npm packages: `$AFREG_NPM`, else `~/.cache/afreg/npm`.
fn npm_dir() -> PathBuf {
    match std::env::var_os("AFREG_NPM") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/afreg/npm"),
    }
}

/// Runs `node sdl/validate.js ARGS...` with akashjs on NODE_PATH.
fn validate(args: &[&Path], manifest: bool) -> Output {
    let modules = npm_dir().join("node_modules");
    assert!(
        modules.join("@akashnetwork/akashjs/package.json").is_file(),
        "@akashnetwork/akashjs is not installed in {}: run scripts/setup.sh",
        modules.display()
    );
    let mut c = Command::new("node");
    c.arg(repo().join("sdl/validate.js")).env("NODE_PATH", &modules);
    if manifest {
        c.arg("--manifest");
    }
    c.args(args).output().expect("run node (scripts/setup.sh installs Node.js)")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `afreg sdl render` of the committed region files into `out`, with `secrets` if given.
fn render(out: &Path, secrets: Option<&Path>) -> Output {
    let mut c = afreg();
    c.args(["sdl", "render", "--regions"]).arg(repo().join("regions")).arg("--out").arg(out);
    if let Some(s) = secrets {
        c.arg("--secrets").arg(s);
    }
    c.output().unwrap()
}

#[test]
fn committed_sdl_files_are_what_render_produces() {
    let out = tempfile::tempdir().unwrap();
    let o = render(out.path(), None);
    assert!(o.status.success(), "afreg sdl render failed: {}", text(&o.stderr));
    let fix = "re-run `cargo run -p afreg -- sdl render` at the repository root and commit sdl/";
    let committed = repo().join("sdl");
    assert_eq!(yaml_files(&committed), yaml_files(out.path()), "sdl/ does not hold one file per region: {fix}");
    for name in yaml_files(out.path()) {
        let want = std::fs::read_to_string(out.path().join(&name)).unwrap();
        let got = std::fs::read_to_string(committed.join(&name)).unwrap();
        if got != want {
            let line = got
                .lines()
                .zip(want.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(got.lines().count().min(want.lines().count()));
            panic!(
                "sdl/{name} differs from what `afreg sdl render` produces (first at line {}):\n  committed: {:?}\n  rendered:  {:?}\n{fix}",
                line + 1,
                got.lines().nth(line).unwrap_or("<end of file>"),
                want.lines().nth(line).unwrap_or("<end of file>")
            );
        }
    }
    // Rendering again gives the same bytes.
    let again = tempfile::tempdir().unwrap();
    let o = render(again.path(), None);
    assert!(o.status.success());
    for name in yaml_files(out.path()) {
        assert_eq!(
            std::fs::read(out.path().join(&name)).unwrap(),
            std::fs::read(again.path().join(&name)).unwrap(),
            "{name}"
        );
    }
}

/// The registry's environment in each committed SDL, as Akash's own parser reads it, is the
/// region's configuration: read back through the node's loader, it equals the `Config` the
/// SDL was rendered from (so a renamed or mistyped variable fails here, not in a lease).
#[test]
fn committed_sdl_environments_parse_back_into_the_registry_config() {
    let regions = afreg_deploy::regions::load_dir(&repo().join("regions")).unwrap();
    for r in &regions {
        let path = repo().join("sdl").join(format!("{}.yaml", r.name));
        let o = validate(&[&path], true);
        assert!(o.status.success(), "{}: {}", r.name, text(&o.stderr));
        let v: Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
        let registry =
            v["manifest"][0]["services"].as_array().unwrap().iter().find(|s| s["name"] == "registry").unwrap();
        let vars: Vec<(String, String)> = registry["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().split_once('=').unwrap())
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert!(vars.iter().all(|(k, _)| k.starts_with("AFREG_")), "{}: {vars:?}", r.name);
        let parsed = afreg_config::Config::load_from(None, vars).unwrap_or_else(|e| panic!("{}: {e}", r.name));
        assert_eq!(parsed, afreg_deploy::sdl::registry_config(r, None), "{}", r.name);
        assert_eq!((parsed.cluster.id, parsed.cluster.region.as_str()), (r.raft_id, r.name.as_str()));
        assert_eq!(parsed.server.public_url, format!("https://{}", r.hostnames.regional));
    }
}

/// The services of one SDL file as Akash's parser reads them, by name.
fn services_of(path: &Path) -> std::collections::BTreeMap<String, Value> {
    let o = validate(&[path], true);
    assert!(o.status.success(), "{}: {}", path.display(), text(&o.stderr));
    let v: Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    v["manifest"][0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

fn env_of(service: &Value) -> Vec<String> {
    service["env"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_owned()).collect()
}

/// Rendered with an operator's secrets, every region's Kubo is in the private network (its
/// key, `LIBP2P_FORCE_PNET=1`, and every private-network setting applied before the daemon
/// starts) and its registry has the cluster secret; the committed files carry neither secret.
#[test]
fn rendered_sdl_puts_kubo_in_the_private_network_and_carries_secrets_only_when_asked() {
    let secrets = tempfile::tempdir().unwrap();
    let o = afreg().args(["sdl", "secrets", "--out"]).arg(secrets.path()).output().unwrap();
    assert!(o.status.success(), "afreg sdl secrets: {}", text(&o.stderr));
    let key = afreg_deploy::swarm_key::SwarmKey::read(&secrets.path().join("swarm.key")).unwrap();
    let cluster_secret = std::fs::read_to_string(secrets.path().join("cluster-secret")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = render(out.path(), Some(secrets.path()));
    assert!(o.status.success(), "afreg sdl render --secrets: {}", text(&o.stderr));
    for name in yaml_files(out.path()) {
        let deployable = services_of(&out.path().join(&name));
        let kubo = &deployable["kubo"];
        let env = env_of(kubo);
        assert!(env.contains(&format!("AFREG_SWARM_KEY={}", key.hex())), "{name}: kubo env {env:?}");
        assert!(env.contains(&"LIBP2P_FORCE_PNET=1".to_owned()), "{name}: kubo env {env:?}");
        assert_eq!(kubo["command"], serde_json::json!(["/bin/sh", "-c"]), "{name}");
        let script = kubo["args"][0].as_str().unwrap();
        for (k, v) in afreg_deploy::local::kubo::private_network_settings() {
            assert!(
                script.contains(&format!("ipfs config --json {k} '{v}'")),
                "{name}: the start script does not set {k} = {v}:\n{script}"
            );
        }
        let swarm_key_written = script.find("swarm.key").expect("the script writes swarm.key");
        assert!(
            swarm_key_written < script.find("exec ipfs daemon").unwrap(),
            "{name}: the key is written before the daemon starts"
        );
        let registry = env_of(&deployable["registry"]);
        assert!(
            registry.contains(&format!("AFREG_CLUSTER__SECRET={}", cluster_secret.trim())),
            "{name}: no cluster secret"
        );

        let committed = services_of(&repo().join("sdl").join(&name));
        assert!(
            env_of(&committed["kubo"]).contains(&"AFREG_SWARM_KEY=".to_owned()),
            "{name}: a committed SDL carries a swarm key"
        );
        assert!(
            env_of(&committed["registry"]).contains(&"AFREG_CLUSTER__SECRET=".to_owned()),
            "{name}: a committed SDL carries a secret"
        );
        let text = std::fs::read_to_string(repo().join("sdl").join(&name)).unwrap();
        assert!(!text.contains(&key.hex()) && !text.contains(cluster_secret.trim()));
    }
    // Secrets are never written into the repository's sdl/.
    let o = afreg()
        .args(["sdl", "render", "--regions"])
        .arg(repo().join("regions"))
        .arg("--secrets")
        .arg(secrets.path())
        .output()
        .unwrap();
    assert!(!o.status.success(), "render --secrets into sdl/ must be refused");
}

#[test]
fn akashjs_accepts_every_committed_sdl() {
    let files: Vec<PathBuf> = yaml_files(&repo().join("sdl")).iter().map(|n| repo().join("sdl").join(n)).collect();
    assert_eq!(files.len(), 3, "one SDL per region (us, eu, asia)");
    let args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let o = validate(&args, false);
    assert!(o.status.success(), "akashjs rejected a committed SDL:\n{}", text(&o.stderr));
    for f in &files {
        assert!(text(&o.stdout).contains(&format!("ok {}", f.display())), "{}", text(&o.stdout));
    }
}

/// Akash's reading of the files: what a provider would be asked to run.
#[test]
fn akashjs_reads_the_intended_network_layout() {
    const SHARED_HTTP: u64 = 0;
    const LEASED_IP: u64 = 2;
    for name in yaml_files(&repo().join("sdl")) {
        let region = name.trim_end_matches(".yaml");
        let path = repo().join("sdl").join(&name);
        let o = validate(&[&path], true);
        assert!(o.status.success(), "{name}: {}", text(&o.stderr));
        let v: Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
        let groups = v["manifest"].as_array().unwrap();
        assert_eq!(groups.len(), 1, "{name}: one placement group");
        assert_eq!(groups[0]["name"], region);
        let services = groups[0]["services"].as_array().unwrap();
        let names: Vec<&str> = services.iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["kubo", "postgres", "registry"], "{name}");
        for s in services {
            let svc = s["name"].as_str().unwrap();
            for e in s["expose"].as_array().unwrap() {
                let (port, global) = (e["port"].as_u64().unwrap(), e["global"].as_bool().unwrap());
                if (svc == "kubo" && port == 5001) || svc == "postgres" {
                    assert!(!global, "{name}: {svc}:{port} is global");
                    assert_eq!(e["service"], "registry", "{name}: {svc}:{port}");
                }
                if global {
                    assert_eq!(e["ip"], "region-ip", "{name}: {svc}:{port} is global but not on the leased IP");
                    // Port 80 carries only the ACME HTTP-01 responder's tiny answers, never the
                    // registry API (the endpoint kinds below show it stays on the leased IP).
                    if e["externalPort"] == 80 {
                        assert_eq!((svc, port), ("registry", sdl::ACME_HTTP_PORT), "{name}: {svc}:{port} on port 80");
                    }
                }
            }
            // Persistent storage is mounted.
            let storage = s["params"]["storage"].as_array().unwrap();
            assert_eq!(storage.len(), 1, "{name}: {svc}");
            assert!(storage[0]["mount"].as_str().unwrap().starts_with('/'));
        }
        let registry = &services[2];
        let public: Vec<u64> = registry["expose"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["global"] == true)
            .map(|e| e["externalPort"].as_u64().unwrap())
            .collect();
        assert!(public.contains(&443), "{name}: registry not on 443: {public:?}");
        // The on-chain resource groups: leased IPs; the shared HTTP ingress only where Akash
        // adds it for a global port 80, the registry's ACME port (which is on the leased IP
        // as well, where the CA dials it); prices set.
        let resources = v["groups"][0]["resources"].as_array().unwrap();
        assert_eq!(resources.len(), 3);
        for (i, r) in resources.iter().enumerate() {
            let shared = r["resource"]["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|ep| ep["kind"].as_u64().unwrap_or(SHARED_HTTP) == SHARED_HTTP)
                .count();
            let want = if names[i] == "registry" && public.contains(&80) { 1 } else { 0 };
            assert_eq!(shared, want, "{name}: {} has {shared} endpoints on the HTTP ingress", names[i]);
            assert_eq!(r["price"]["denom"], "uakt");
            assert!(r["price"]["amount"].as_str().unwrap().parse::<u64>().unwrap() > 0);
        }
        let leased = resources
            .iter()
            .flat_map(|r| r["resource"]["endpoints"].as_array().unwrap())
            .filter(|e| e["kind"] == LEASED_IP)
            .count();
        assert_eq!(
            leased, 4,
            "{name}: kubo 4001 (tcp), registry 443, the internal port and ACME's 80 on the leased IP"
        );
    }
}

/// Removes the block at `path` (a key and everything indented under it) from YAML written by
/// `afreg sdl render` (two spaces per level, one key per line).
fn remove_block(yaml: &str, path: &[&str]) -> String {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let (mut from, mut to) = (0, lines.len());
    for (depth, key) in path.iter().enumerate() {
        let head = format!("{}{key}:", " ".repeat(depth * 2));
        let at = (from..to)
            .find(|&i| lines[i] == head || lines[i].starts_with(&format!("{head} ")))
            .unwrap_or_else(|| panic!("no {path:?} in the SDL"));
        let end = (at + 1..to).find(|&i| indent(lines[i]) <= depth * 2).unwrap_or(to);
        (from, to) = (at, end);
    }
    let mut out: Vec<&str> = lines[..from].to_vec();
    out.extend_from_slice(&lines[to..]);
    out.join("\n") + "\n"
}

#[test]
fn akashjs_rejects_an_sdl_missing_a_required_piece() {
    let committed = std::fs::read_to_string(repo().join("sdl/eu.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let check = |label: &str, yaml: String| -> Output {
        let p = dir.path().join(format!("{label}.yaml"));
        std::fs::write(&p, yaml).unwrap();
        validate(&[&p], false)
    };
    // The unchanged file passes through the same path, so a rejection below is the mutation's.
    let o = check("unchanged", committed.clone());
    assert!(o.status.success(), "{}", text(&o.stderr));

    let cases: [(&str, &[&str], &str); 3] = [
        ("no-pricing", &["profiles", "placement", "eu", "pricing"], "pricing"),
        (
            "no-registry-profile",
            &["profiles", "compute", "registry"],
            r#"compute requirements for the "registry" profile"#,
        ),
        ("no-leased-ip", &["endpoints"], r#"Unknown endpoint "region-ip""#),
    ];
    for (label, path, message) in cases {
        let mutated = remove_block(&committed, path);
        assert!(mutated.len() < committed.len(), "{label}: nothing removed");
        let o = check(label, mutated);
        let err = text(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(1),
            "{label}: akashjs accepted it (stdout {:?}, stderr {err:?})",
            text(&o.stdout)
        );
        assert!(err.contains("SdlValidationError") && err.contains(message), "{label}: unexpected message {err:?}");
        assert!(err.contains(&format!("{label}.yaml")), "{label}: the message names no file: {err:?}");
    }
}
