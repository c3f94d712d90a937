//! The OCI distribution-spec conformance suite, run against a registry, and the JUnit report
//! it writes.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::tool;

/// One `<testcase>` of a JUnit report.
#[derive(Debug, Clone)]
pub struct JunitCase {
    pub name: String,
    /// Ginkgo's `status` attribute: `passed`, `failed`, `skipped`, `pending`, `panicked`, ...
    pub status: String,
    /// `<failure message>` + body, if any.
    pub failure: Option<String>,
    /// `<error message>` + body, if any.
    pub error: Option<String>,
    /// `<skipped message>`, if skipped.
    pub skipped: Option<String>,
}

/// A JUnit report (as Ginkgo writes it): the `<testsuites>` totals and every test case.
#[derive(Debug, Clone)]
pub struct Junit {
    pub tests: u64,
    pub failures: u64,
    pub errors: u64,
    pub disabled: u64,
    pub cases: Vec<JunitCase>,
}

impl Junit {
    pub fn parse_file(path: &Path) -> Result<Junit, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        Self::parse(&text)
    }

    pub fn parse(xml: &str) -> Result<Junit, String> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| format!("junit XML: {e}"))?;
        let root = doc.root_element();
        let attr = |n: roxmltree::Node, a: &str| -> Result<u64, String> {
            match n.attribute(a) {
                None | Some("") => Ok(0),
                Some(v) => v.parse().map_err(|e| format!("junit attribute {a}={v:?}: {e}")),
            }
        };
        let (tests, failures, errors, disabled);
        if root.has_tag_name("testsuites") {
            let has = |a| root.attribute(a).is_some();
            if !(has("tests") && has("failures") && has("errors")) {
                return Err("junit <testsuites> lacks tests/failures/errors attributes".into());
            }
            tests = attr(root, "tests")?;
            failures = attr(root, "failures")?;
            errors = attr(root, "errors")?;
            disabled = attr(root, "disabled")?;
        } else if root.has_tag_name("testsuite") {
            tests = attr(root, "tests")?;
            failures = attr(root, "failures")?;
            errors = attr(root, "errors")?;
            disabled = attr(root, "disabled")?;
        } else {
            return Err(format!("junit root is <{}>", root.tag_name().name()));
        }
        let text_of = |n: roxmltree::Node| -> String {
            let msg = n.attribute("message").unwrap_or("");
            let body: String = n.descendants().filter_map(|d| d.text()).collect();
            format!("{msg}\n{}", body.trim())
        };
        let mut cases = Vec::new();
        for tc in root.descendants().filter(|n| n.has_tag_name("testcase")) {
            let child = |tag: &str| tc.children().find(|c| c.has_tag_name(tag));
            let failure = child("failure").map(text_of);
            let error = child("error").map(text_of);
            let skipped = child("skipped").map(|n| n.attribute("message").unwrap_or("").to_string());
            let status = tc.attribute("status").map(String::from).unwrap_or_else(|| {
                if failure.is_some() {
                    "failed".into()
                } else if error.is_some() {
                    "error".into()
                } else if skipped.is_some() {
                    "skipped".into()
                } else {
                    "passed".into()
                }
            });
            cases.push(JunitCase {
                name: tc.attribute("name").unwrap_or("").to_string(),
                status,
                failure,
                error,
                skipped,
            });
        }
        Ok(Junit { tests, failures, errors, disabled, cases })
    }

    /// Cases whose status is `passed`.
    pub fn passed(&self) -> Vec<&JunitCase> {
        self.cases.iter().filter(|c| c.status == "passed").collect()
    }

    /// Cases whose status is `skipped` (or that carry `<skipped>`).
    pub fn skipped(&self) -> Vec<&JunitCase> {
        self.cases.iter().filter(|c| c.status == "skipped" || (c.skipped.is_some() && c.status != "passed")).collect()
    }

    /// Cases that failed, errored or panicked (anything neither passed nor skipped).
    pub fn bad(&self) -> Vec<&JunitCase> {
        self.cases
            .iter()
            .filter(|c| c.failure.is_some() || c.error.is_some() || !matches!(c.status.as_str(), "passed" | "skipped"))
            .collect()
    }

    /// A readable list of the bad cases with their messages.
    pub fn describe_bad(&self) -> String {
        let mut s = String::new();
        for c in self.bad() {
            s.push_str(&format!("  [{}] {}\n", c.status, c.name));
            for m in [&c.failure, &c.error].into_iter().flatten() {
                for line in m.lines() {
                    s.push_str(&format!("      {line}\n"));
                }
            }
        }
        s
    }
}

/// The result of one run of the OCI conformance suite.
pub struct ConformanceRun {
    pub status: std::process::ExitStatus,
    /// stdout+stderr of the suite.
    pub output: String,
    /// The parsed `junit.xml` (Err if it is missing or unreadable).
    pub junit: Result<Junit, String>,
    /// `OCI_REPORT_DIR` (junit.xml, report.html); removed when this is dropped.
    pub report_dir: TempDir,
}

/// Runs `$AFREG_TOOLS/oci-conformance` (the classic Ginkgo distribution-spec suite) against
/// `root_url` with all four workflows enabled, namespaces `a/b` and `c/d`, and
/// `OCI_AUTOMATIC_CROSSMOUNT=0`. `creds` sets `OCI_USERNAME`/`OCI_PASSWORD`; `extra_env` is
/// applied last (it may override any of the above).
pub fn run_conformance(root_url: &str, creds: Option<(&str, &str)>, extra_env: &[(&str, &str)]) -> ConformanceRun {
    let report_dir = tempfile::Builder::new().prefix("afreg-conformance-").tempdir().expect("report dir");
    let mut cmd = Command::new(tool("oci-conformance"));
    cmd.current_dir(report_dir.path())
        .env("OCI_ROOT_URL", root_url)
        .env("OCI_NAMESPACE", "a/b")
        .env("OCI_CROSSMOUNT_NAMESPACE", "c/d")
        .env("OCI_TEST_PULL", "1")
        .env("OCI_TEST_PUSH", "1")
        .env("OCI_TEST_CONTENT_DISCOVERY", "1")
        .env("OCI_TEST_CONTENT_MANAGEMENT", "1")
        .env("OCI_AUTOMATIC_CROSSMOUNT", "0")
        .env("OCI_HIDE_SKIPPED_WORKFLOWS", "0")
        .env("OCI_DEBUG", "0")
        .env("OCI_REPORT_DIR", report_dir.path())
        .env_remove("OCI_USERNAME")
        .env_remove("OCI_PASSWORD")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .stdin(Stdio::null());
    if let Some((u, p)) = creds {
        cmd.env("OCI_USERNAME", u).env("OCI_PASSWORD", p);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn oci-conformance: {e}"));
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let junit = Junit::parse_file(&report_dir.path().join("junit.xml"));
    ConformanceRun { status: out.status, output, junit, report_dir }
}
