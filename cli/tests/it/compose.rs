//! The committed `compose.yaml` is what `afreg compose render` writes for the us region, and
//! a real Compose implementation (Debian's docker-compose, which checks the file against the
//! Compose schema) reads it, with the secrets filled from the environment: the three services,
//! Kubo in the private network, the registry from the afreg image with its configuration and
//! the cluster secret.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use testkit::run_stdout;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn compose_yaml_is_rendered_from_the_region_and_docker_compose_reads_it() {
    let out = tempfile::tempdir().unwrap();
    let rendered = out.path().join("compose.yaml");
    run_stdout(
        Command::new(testkit::afreg_bin())
            .args(["compose", "render", "--region"])
            .arg(repo().join("regions/us.toml"))
            .arg("--out")
            .arg(&rendered),
    );
    let committed = std::fs::read_to_string(repo().join("compose.yaml")).unwrap();
    assert_eq!(
        committed,
        std::fs::read_to_string(&rendered).unwrap(),
        "compose.yaml differs from `afreg compose render`: re-run it at the repository root and commit"
    );
    // The secrets are references to the operator's environment, never values.
    assert!(committed.contains("\"AFREG_SWARM_KEY=${AFREG_SWARM_KEY}\""), "{committed}");
    assert!(committed.contains("\"AFREG_CLUSTER__SECRET=${AFREG_CLUSTER_SECRET}\""), "{committed}");

    let key = afreg_deploy::swarm_key::SwarmKey::generate();
    let secret = "compose-test-cluster-secret-0123456789";
    let yaml = run_stdout(
        Command::new("docker-compose")
            .arg("-f")
            .arg(repo().join("compose.yaml"))
            .arg("config")
            .env("AFREG_SWARM_KEY", key.hex())
            .env("AFREG_CLUSTER_SECRET", secret),
    );
    // docker-compose prints YAML; PyYAML (its own dependency) turns it into JSON for the checks.
    let mut py = Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut py.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
    let parsed: Value = serde_json::from_slice(&py.wait_with_output().unwrap().stdout).unwrap();
    let services = &parsed["services"];
    let names: Vec<&str> = services.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    let env = |svc: &str| -> Vec<String> {
        match &services[svc]["environment"] {
            Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
            Value::Object(m) => {
                m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(&v.to_string()))).collect()
            }
            other => panic!("{svc}: environment {other}"),
        }
    };
    assert!(env("kubo").contains(&format!("AFREG_SWARM_KEY={}", key.hex())), "{:?}", env("kubo"));
    assert!(env("kubo").contains(&"LIBP2P_FORCE_PNET=1".to_owned()));
    let script = services["kubo"]["command"][0].as_str().unwrap();
    assert!(script.contains("$IPFS_PATH/swarm.key") && script.contains("Routing.Type"), "{script}");
    let us = afreg_deploy::regions::load_file(&repo().join("regions/us.toml")).unwrap();
    assert_eq!(services["registry"]["image"], us.image.as_str());
    let registry_env = env("registry");
    assert!(registry_env.contains(&format!("AFREG_CLUSTER__SECRET={secret}")), "{registry_env:?}");
    assert!(registry_env.contains(&"AFREG_DATABASE__URL=postgres://postgres@postgres:5432/afreg".to_owned()));
    assert!(registry_env.contains(&"AFREG_KUBO__API_URL=http://kubo:5001".to_owned()));
}
