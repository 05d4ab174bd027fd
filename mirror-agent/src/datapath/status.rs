//! What `mirror-agent status` prints: the hooks on this node as a table
//! for people, or the whole [`PinnedState`] as JSON or YAML for tools.

use std::fmt::Write as _;

use clap::ValueEnum;

use crate::kernel::inspect::{InterfaceState, PinnedState};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("writing YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
}

pub fn render(state: &PinnedState, format: Format) -> Result<String, RenderError> {
    Ok(match format {
        Format::Table => table(state),
        Format::Json => serde_json::to_string_pretty(state)? + "\n",
        Format::Yaml => serde_norway::to_string(state)?,
    })
}

const HEADERS: [&str; 12] = [
    "POLICY",
    "POD/INTERFACE",
    "NETNS:IFINDEX",
    "HOOKS",
    "SEEN",
    "MIRRORED",
    "TRUNCATED",
    "SAMPLED_OUT",
    "FILTERED",
    "RATE_LIMITED",
    "RING_FULL",
    "LOAD_FAILED",
];

fn table(state: &PinnedState) -> String {
    let mut out = String::new();
    let agent = if state.agent_running {
        "an agent holds it"
    } else {
        "no agent holds it: pinned hooks go on copying into the ring until it is full"
    };
    let _ = writeln!(
        out,
        "pin directory {} (ABI {}): {agent}",
        state.pin_dir, state.abi_version
    );
    match state.ring {
        Some(r) => {
            let percent = (r.used_bytes as f64 * 100.0 / r.size_bytes.max(1) as f64).min(100.0);
            let _ = writeln!(
                out,
                "ring: {} of {} bytes in use ({percent:.1}%)",
                r.used_bytes, r.size_bytes
            );
        }
        None => {
            let _ = writeln!(out, "ring: none pinned for this ABI version");
        }
    }
    if state.interfaces.is_empty() {
        let _ = writeln!(out, "no hooks");
        return out;
    }
    let mut rows: Vec<Vec<String>> = vec![HEADERS.iter().map(|h| (*h).to_owned()).collect()];
    rows.extend(state.interfaces.iter().map(row));
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

fn row(i: &InterfaceState) -> Vec<String> {
    let unknown = || "?".to_owned();
    let policy = match (&i.policy, i.policy_id) {
        (Some(name), _) => name.clone(),
        (None, Some(id)) => format!("#{id}"),
        (None, None) => "(none: not configured)".to_owned(),
    };
    let name = match (&i.pod, &i.name) {
        (Some(pod), Some(name)) => format!("{pod}/{name}"),
        (None, Some(name)) => name.clone(),
        _ => unknown(),
    };
    let hooks = if i.hooks.is_empty() {
        "none".to_owned()
    } else {
        i.hooks
            .iter()
            .map(|h| match (h.program_id, &h.error) {
                (Some(id), _) => format!("{} {} prog {id}", h.direction, h.mode),
                (None, Some(e)) => format!("{} ({e})", h.direction),
                (None, None) => format!("{} ?", h.direction),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let c = i.counters;
    let n = |f: fn(&crate::kernel::inspect::CounterState) -> u64| {
        c.as_ref().map_or_else(unknown, |c| f(c).to_string())
    };
    vec![
        policy,
        name,
        format!("{}:{}", i.netns_cookie, i.ifindex),
        hooks,
        n(|c| c.seen_packets),
        n(|c| c.mirrored_packets),
        n(|c| c.truncated),
        n(|c| c.sampled_out),
        n(|c| c.filtered),
        n(|c| c.rate_limited),
        n(|c| c.ring_full),
        n(|c| c.load_failed),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::inspect::{CounterState, HookState, RingFill};

    fn state() -> PinnedState {
        let hook = |direction: &str, id| HookState {
            direction: direction.into(),
            mode: "tcx".into(),
            link_id: Some(id + 100),
            program_id: Some(id),
            program: Some("mirror_ingress".into()),
            error: None,
        };
        PinnedState {
            pin_dir: "/sys/fs/bpf/mirror".into(),
            abi_version: 5,
            agent_running: true,
            ring: Some(RingFill {
                used_bytes: 1024,
                size_bytes: 4096,
            }),
            interfaces: vec![
                InterfaceState {
                    netns_cookie: 4096,
                    ifindex: 7,
                    name: Some("veth1a".into()),
                    pod: Some("shop/web-0".into()),
                    policy: Some("web".into()),
                    policy_id: Some(0),
                    directions: vec!["ingress".into(), "egress".into()],
                    snaplen: Some(262_144),
                    sample_every: Some(1),
                    hooks: vec![hook("egress", 41), hook("ingress", 40)],
                    counters: Some(CounterState {
                        seen_packets: 12,
                        mirrored_packets: 10,
                        sampled_out: 2,
                        ..CounterState::default()
                    }),
                },
                InterfaceState {
                    netns_cookie: 4096,
                    ifindex: 9,
                    name: None,
                    pod: None,
                    policy: None,
                    policy_id: None,
                    directions: vec![],
                    snaplen: None,
                    sample_every: None,
                    hooks: vec![HookState {
                        direction: "ingress".into(),
                        mode: "unknown".into(),
                        link_id: None,
                        program_id: None,
                        program: None,
                        error: Some("gone".into()),
                    }],
                    counters: None,
                },
            ],
        }
    }

    #[test]
    fn table_has_a_row_per_interface_under_aligned_headers() {
        let text = render(&state(), Format::Table).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "pin directory /sys/fs/bpf/mirror (ABI 5): an agent holds it"
        );
        assert_eq!(lines[1], "ring: 1024 of 4096 bytes in use (25.0%)");
        assert!(lines[2].starts_with("POLICY"), "{text}");
        assert_eq!(lines.len(), 5, "{text}");
        let web: Vec<&str> = lines[3]
            .split("  ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(
            web,
            [
                "web",
                "shop/web-0/veth1a",
                "4096:7",
                "egress tcx prog 41, ingress tcx prog 40",
                "12",
                "10",
                "0",
                "2",
                "0",
                "0",
                "0",
                "0"
            ]
        );
        assert!(lines[4].starts_with("(none: not configured)"), "{text}");
        assert!(lines[4].contains("ingress (gone)"), "{text}");
        // Columns line up: MIRRORED starts at one offset in every row.
        let at = lines[2].find("MIRRORED").unwrap();
        assert_eq!(&lines[3][at..at + 2], "10");
        assert_eq!(&lines[4][at..at + 1], "?");
    }

    #[test]
    fn json_and_yaml_read_back_as_the_same_state() {
        let s = state();
        let json = render(&s, Format::Json).unwrap();
        assert_eq!(serde_json::from_str::<PinnedState>(&json).unwrap(), s);
        assert!(json.contains("\"agentRunning\": true"), "{json}");
        let yaml = render(&s, Format::Yaml).unwrap();
        assert_eq!(serde_norway::from_str::<PinnedState>(&yaml).unwrap(), s);
    }

    #[test]
    fn an_empty_directory_says_so() {
        let mut s = state();
        s.interfaces.clear();
        s.ring = None;
        s.agent_running = false;
        let text = render(&s, Format::Table).unwrap();
        assert!(text.contains("no agent holds it"), "{text}");
        assert!(text.contains("ring: none pinned"), "{text}");
        assert!(text.ends_with("no hooks\n"), "{text}");
    }
}
