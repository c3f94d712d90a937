//! A small, deterministic YAML writer for the SDL files: block style, keys in the order they
//! were inserted, every string double-quoted (a JSON string is a valid YAML double-quoted
//! scalar), so no value can be read back as another type (`yes`, `1.0`, `null`).

/// A YAML value whose maps keep their insertion order.
#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    Str(String),
    Int(u64),
    /// A number written as given (already formatted, e.g. `0.5`).
    Num(String),
    Bool(bool),
    Map(Vec<(String, Yaml)>),
    Seq(Vec<Yaml>),
}

impl Yaml {
    pub fn str(s: impl Into<String>) -> Yaml {
        Yaml::Str(s.into())
    }

    /// A map from `(key, value)` pairs, in this order.
    pub fn map<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Yaml)>) -> Yaml {
        Yaml::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn seq(items: impl IntoIterator<Item = Yaml>) -> Yaml {
        Yaml::Seq(items.into_iter().collect())
    }

    /// The value under `key` of a map (None for other values or a missing key).
    pub fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows a dotted path of map keys, e.g. `services.kubo.image`.
    pub fn at(&self, path: &str) -> Option<&Yaml> {
        path.split('.').try_fold(self, |v, k| v.get(k))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> &[Yaml] {
        match self {
            Yaml::Seq(s) => s,
            _ => &[],
        }
    }

    pub fn keys(&self) -> Vec<&str> {
        match self {
            Yaml::Map(m) => m.iter().map(|(k, _)| k.as_str()).collect(),
            _ => vec![],
        }
    }

    /// The document text (ends with a newline).
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        match self {
            Yaml::Map(m) if !m.is_empty() => write_map(&mut out, m, 0),
            Yaml::Seq(s) if !s.is_empty() => write_seq(&mut out, s, 0),
            v => {
                out.push_str(&scalar(v));
                out.push('\n');
            }
        }
        out
    }
}

fn is_block(v: &Yaml) -> bool {
    matches!(v, Yaml::Map(m) if !m.is_empty()) || matches!(v, Yaml::Seq(s) if !s.is_empty())
}

fn scalar(v: &Yaml) -> String {
    match v {
        Yaml::Str(s) => serde_json::to_string(s).expect("a string serialises"),
        Yaml::Int(n) => n.to_string(),
        Yaml::Num(n) => n.clone(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Map(_) => "{}".into(),
        Yaml::Seq(_) => "[]".into(),
    }
}

/// Keys are written plain when they are safe as plain scalars, else quoted.
fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        && k.as_bytes()[0].is_ascii_alphabetic();
    if plain {
        k.to_owned()
    } else {
        serde_json::to_string(k).expect("a string serialises")
    }
}

fn write_map(out: &mut String, m: &[(String, Yaml)], indent: usize) {
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        write_entry(out, k, v, indent);
    }
}

/// `key: value` (the indentation is already written).
fn write_entry(out: &mut String, k: &str, v: &Yaml, indent: usize) {
    out.push_str(&key(k));
    out.push(':');
    match v {
        Yaml::Map(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, indent + 2);
        }
        Yaml::Seq(s) if !s.is_empty() => {
            out.push('\n');
            write_seq(out, s, indent + 2);
        }
        v => {
            out.push(' ');
            out.push_str(&scalar(v));
            out.push('\n');
        }
    }
}

fn write_seq(out: &mut String, s: &[Yaml], indent: usize) {
    for item in s {
        out.push_str(&" ".repeat(indent));
        out.push_str("- ");
        match item {
            // The first key shares the dash's line; the others align under it.
            Yaml::Map(m) if !m.is_empty() => {
                write_entry(out, &m[0].0, &m[0].1, indent + 2);
                write_map(out, &m[1..], indent + 2);
            }
            v if is_block(v) => {
                out.push('\n');
                write_seq(out, v.as_seq(), indent + 2);
            }
            v => {
                out.push_str(&scalar(v));
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_style_in_insertion_order_with_quoted_strings() {
        let doc = Yaml::map([
            ("version", Yaml::str("2.0")),
            (
                "services",
                Yaml::map([(
                    "web",
                    Yaml::map([
                        ("image", Yaml::str("nginx:1")),
                        (
                            "expose",
                            Yaml::seq([Yaml::map([
                                ("port", Yaml::Int(80)),
                                ("to", Yaml::seq([Yaml::map([("global", Yaml::Bool(true))])])),
                            ])]),
                        ),
                        ("env", Yaml::seq([Yaml::str("A=\"b\"")])),
                        ("args", Yaml::Seq(vec![])),
                    ]),
                )]),
            ),
            ("cpu", Yaml::Num("0.5".into())),
        ]);
        let want = r#"version: "2.0"
services:
  web:
    image: "nginx:1"
    expose:
      - port: 80
        to:
          - global: true
    env:
      - "A=\"b\""
    args: []
cpu: 0.5
"#;
        assert_eq!(doc.to_yaml(), want);
        assert_eq!(doc.at("services.web.image").and_then(Yaml::as_str), Some("nginx:1"));
    }

    #[test]
    fn unsafe_keys_are_quoted() {
        assert_eq!(key("region-ip"), "region-ip");
        assert_eq!(key("yes please"), "\"yes please\"");
        assert_eq!(key("1abc"), "\"1abc\"");
    }
}
