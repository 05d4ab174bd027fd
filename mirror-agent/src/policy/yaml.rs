//! YAML in, serde shapes out, with errors split into policy, field path,
//! message and location.
//!
//! serde_norway (the maintained fork of serde_yaml) parses; serde_path_to_error
//! gives the field path as data, so the error can name the policy instead of
//! `policies[3]`. serde_norway's own message embeds the path and location as
//! text; they are taken out so each appears once, in our format.

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::error::{PolicyError, Where};

/// The largest policy file read, in bytes: room for tens of thousands of
/// rules and CIDRs (more than the kernel's maps hold), far from what could
/// exhaust memory.
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// The deepest nesting accepted, in brackets or indentation columns. Real
/// policies nest about 5 levels; deep nesting costs the parser quadratic time.
pub const MAX_DEPTH: usize = 64;

/// Refuses what YAML could turn against the agent before the parser sees
/// it: more than [`MAX_FILE_BYTES`], nesting past [`MAX_DEPTH`], and aliases
/// (`*name`), whose expansion is exponential in the text (a "billion
/// laughs"). Policies never need aliases. A lexical scan, not a parser: it
/// skips comments and quoted strings, and it may refuse a `*` that starts a
/// line of a block scalar, with a message saying where.
pub(super) fn guard(text: &str) -> Result<(), PolicyError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(PolicyError::Refused(format!(
            "{} bytes, more than the {MAX_FILE_BYTES} a policy file may have",
            text.len()
        )));
    }
    let mut flow = 0usize;
    let mut quote: Option<char> = None;
    for (n, line) in text.lines().enumerate() {
        let at = n + 1;
        let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
        if quote.is_none() && flow == 0 && indent > MAX_DEPTH * 2 {
            return Err(PolicyError::Refused(format!(
                "line {at} is indented {indent} columns, nesting deeper than {MAX_DEPTH} levels"
            )));
        }
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match quote {
                Some('\'') if c == '\'' => {
                    if chars.peek() == Some(&'\'') {
                        chars.next();
                    } else {
                        quote = None;
                    }
                }
                Some('"') if c == '\\' => {
                    chars.next();
                }
                Some('"') if c == '"' => quote = None,
                Some(_) => {}
                None => match c {
                    '#' if prev.is_whitespace() => break,
                    '\'' | '"' if starts_node(prev) => quote = Some(c),
                    '[' | '{' if starts_node(prev) => {
                        flow += 1;
                        if flow > MAX_DEPTH {
                            return Err(PolicyError::Refused(format!(
                                "line {at} nests brackets deeper than {MAX_DEPTH} levels"
                            )));
                        }
                    }
                    ']' | '}' => flow = flow.saturating_sub(1),
                    '*' if starts_node(prev) => {
                        return Err(PolicyError::Refused(format!(
                            "line {at} has a YAML alias (*name); policy files may not use \
                             aliases (write the value out, or quote a leading *)"
                        )));
                    }
                    _ => {}
                },
            }
            prev = c;
        }
    }
    Ok(())
}

/// Whether a node may start after `prev`: at the start of a line, after
/// blanks, or after a flow or block indicator.
fn starts_node(prev: char) -> bool {
    prev.is_whitespace() || matches!(prev, '[' | '{' | ',' | ':' | '-' | '?')
}

/// Parses a policy file's text (`policies: [...]`): errors under
/// `policies[i]` name policy i when its name can be read.
pub(super) fn parse_file<T: DeserializeOwned>(text: &str) -> Result<T, PolicyError> {
    guard(text)?;
    parse(text).map_err(|(segments, message, location)| {
        let (at, rest) = match segments.as_slice() {
            [Segment::Map { key }, Segment::Seq { index }, rest @ ..] if key == "policies" => {
                let name_is_bad =
                    matches!(rest.first(), Some(Segment::Map { key }) if key == "name");
                let at = match policy_name(text, *index) {
                    Some(name) if !name_is_bad => Where::Policy(name),
                    _ => Where::Index(*index),
                };
                (at, rest)
            }
            all => (Where::File, all),
        };
        PolicyError::Yaml {
            at,
            field: path_text(rest),
            message,
            location,
        }
    })
}

/// Parses one policy body (the `MirrorPolicy` spec form) for policy `name`.
pub(super) fn parse_body<T: DeserializeOwned>(name: &str, text: &str) -> Result<T, PolicyError> {
    guard(text)?;
    parse(text).map_err(|(segments, message, location)| PolicyError::Yaml {
        at: Where::Policy(name.to_owned()),
        field: path_text(&segments),
        message,
        location,
    })
}

type Failure = (Vec<Segment>, String, Option<(usize, usize)>);

fn parse<T: DeserializeOwned>(text: &str) -> Result<T, Failure> {
    serde_path_to_error::deserialize(serde_norway::Deserializer::from_str(text)).map_err(|e| {
        let segments: Vec<Segment> = e.path().iter().cloned().collect();
        let inner = e.into_inner();
        let location = inner.location().map(|l| (l.line(), l.column()));
        let message = bare_message(&inner.to_string(), &segments, location);
        (segments, message, location)
    })
}

/// serde_norway writes `<path>: <message> at line L column C`; keep the
/// message. Its path is ours or one segment shorter (for an unknown field it
/// names the map, we name the key), so every prefix is tried.
fn bare_message(full: &str, segments: &[Segment], location: Option<(usize, usize)>) -> String {
    let mut message = full.to_owned();
    if let Some((line, column)) = location {
        message = message.replacen(&format!(" at line {line} column {column}"), "", 1);
    }
    for n in (1..=segments.len()).rev() {
        if let Some(rest) = message.strip_prefix(&format!("{}: ", path_text(&segments[..n]))) {
            return rest.to_owned();
        }
    }
    message
}

/// `rules[1].destinationPorts[0]`, as serde_path_to_error writes paths.
fn path_text(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => out.push_str(if out.is_empty() { "?" } else { ".?" }),
        }
    }
    out
}

/// The name of policies[index], read leniently for error messages only.
fn policy_name(text: &str, index: usize) -> Option<String> {
    let value: serde_norway::Value = serde_norway::from_str(text).ok()?;
    let name = value.get("policies")?.get(index)?.get("name")?.as_str()?;
    Some(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::spec::FileSpec;

    fn refused(text: &str) -> String {
        match guard(text) {
            Err(PolicyError::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn bombs_are_refused_before_parsing() {
        let laughs = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n";
        assert!(refused(laughs).contains("line 2 has a YAML alias"));
        let deep = format!("policies: {}{}", "[".repeat(100), "]".repeat(100));
        assert!(refused(&deep).contains("deeper than 64"));
        let mut indented = String::new();
        for i in 0..80 {
            indented.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
        }
        assert!(refused(&indented).contains("indented"));
        let big = "#".repeat(MAX_FILE_BYTES as usize + 1);
        assert!(refused(&big).contains("more than"));
        // Globs, quoted stars, comments and pcap filters pass.
        guard(
            "policies:\n- name: \"*web\" # *not an alias\n  interfaces: [veth*, '*']\n  \
             filter: tcp[13] & 2 != 0\n  rules: [{action: Accept, sourceCIDRs: [\"198.18.0.0/24\"]}]\n",
        )
        .unwrap();
    }

    fn err(text: &str) -> String {
        match parse_file::<FileSpec>(text) {
            Ok(v) => panic!("parsed: {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unknown_field_names_policy_field_and_location() {
        let e = err(
            "policies:\n  - name: web\n    interfaces: [a]\n    collectors: [x]\n    rules:\n      - action: Accept\n        bogus: 1\n",
        );
        assert_eq!(
            e,
            "policy \"web\": rules[0].bogus: unknown field `bogus`, expected one of `action`, \
             `protocol`, `sourceCIDRs`, `destinationCIDRs`, `sourcePorts`, `destinationPorts`, \
             `tcpFlags` (line 7, column 9)"
        );
    }

    #[test]
    fn wrong_type_names_field_and_location() {
        let e = err(
            "policies:\n  - name: web\n    interfaces: [a]\n    collectors: [x]\n    rules:\n      - action: Accept\n        destinationPorts: [{from: x}]\n",
        );
        assert_eq!(
            e,
            "policy \"web\": rules[0].destinationPorts[0].from: invalid type: string \"x\", \
             expected u64 (line 7, column 35)"
        );
    }

    #[test]
    fn bad_enum_value_names_field() {
        let e = err(
            "policies:\n  - name: web\n    interfaces: [a]\n    collectors: [x]\n    direction: Inbound\n",
        );
        assert!(
            e.starts_with("policy \"web\": direction: unknown variant `Inbound`, expected one of `Ingress`, `Egress`, `Both` (line 5"),
            "{e}"
        );
        let e = err(
            "policies:\n  - name: web\n    interfaces: [a]\n    collectors: [x]\n    rules: [{action: Accept, protocol: TPC}]\n",
        );
        assert!(
            e.starts_with("policy \"web\": rules[0].protocol: unknown protocol \"TPC\""),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_has_location() {
        let e = err("policies:\n  - name: web\n    rules: [\n");
        assert!(e.contains("(line 4, column 1)"), "{e}");
    }

    #[test]
    fn unnamed_policy_is_named_by_index() {
        let e = err("policies:\n  - interfaces: [a]\n    collectors: [x]\n");
        assert_eq!(e, "policies[0]: missing field `name` (line 2, column 5)");
        let e = err("policies:\n  - name: [1]\n");
        assert!(
            e.starts_with("policies[0]: name: invalid type: sequence"),
            "{e}"
        );
    }

    #[test]
    fn top_level_errors() {
        assert_eq!(
            err("policy: []\n"),
            "policy: unknown field `policy`, expected `policies` (line 1, column 1)"
        );
        assert!(err("policies: 3\n").starts_with("policies: invalid type: integer `3`"));
    }
}
