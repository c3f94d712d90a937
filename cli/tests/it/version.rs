//! `afreg --version`: the package version and the git revision the binary was built from.

use std::process::Command;

#[test]
fn version_names_the_package_version_and_a_commit_of_this_repository() {
    let out = Command::new(env!("CARGO_BIN_EXE_afreg")).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let rest =
        text.trim().strip_prefix(&format!("afreg {} (", env!("CARGO_PKG_VERSION"))).unwrap_or_else(|| panic!("{text}"));
    let revision = rest.strip_suffix(')').unwrap_or_else(|| panic!("{text}"));
    assert_eq!(revision.len(), 12, "{text}");
    let known = Command::new("git").args(["cat-file", "-e", &format!("{revision}^{{commit}}")]).status().unwrap();
    assert!(known.success(), "{revision} is not a commit here");
}
