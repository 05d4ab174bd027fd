//! `cargo xtask layers`: the agent's modules depend one way. Each top-level
//! module of `mirror-agent/src` has a rank, and code may name (`crate::…`,
//! in `use` trees or inline) only modules of a lower rank, or its own. Doc
//! comments may cite anything. The map of the layers is in
//! `mirror-agent/src/lib.rs` and `docs/ARCHITECTURE.md`.
//!
//! Hand-written because what it checks is this project's own rule: tools
//! such as cargo-modules draw the graph but hold no notion of our ranks.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::paths;

/// Bottom first. Modules of one rank may not use each other.
pub const RANKS: &[(&str, u8)] = &[
    ("model", 0),
    ("metrics", 1),
    ("kernel", 2),
    ("policy", 3),
    ("export", 4),
    ("discovery", 5),
    ("datapath", 6),
    ("collect", 6),
    ("k8s", 7),
    ("controller", 8),
    ("cli", 9),
    ("cmd", 10),
];

/// One import that goes up or sideways.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub file: PathBuf,
    pub line: usize,
    pub from: String,
    pub to: String,
}

pub fn run() -> Result<()> {
    let src = paths::workspace_root().join("mirror-agent/src");
    let violations = check_tree(&src)?;
    if violations.is_empty() {
        println!("layers: every module of mirror-agent/src uses only layers below its own");
        return Ok(());
    }
    let mut text = String::new();
    for v in &violations {
        let _ = writeln!(
            text,
            "  {}:{}: {} (rank {}) uses {} (rank {})",
            v.file.display(),
            v.line,
            v.from,
            rank(&v.from).unwrap_or(u8::MAX),
            v.to,
            rank(&v.to).unwrap_or(u8::MAX),
        );
    }
    bail!(
        "{} imports against the layers (xtask/src/layers.rs lists the ranks):\n{text}",
        violations.len()
    )
}

fn rank(module: &str) -> Option<u8> {
    RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// Every violation under `src`, in file order.
pub fn check_tree(src: &Path) -> Result<Vec<Violation>> {
    let mut files = Vec::new();
    collect_rs(src, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap_or(&file);
        let Some(from) = top_module(rel) else {
            continue;
        };
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        for (line, to) in crate_refs(&strip_comments_and_strings(&text)) {
            if to == from {
                continue;
            }
            let allowed = matches!((rank(&from), rank(&to)), (Some(f), Some(t)) if t < f);
            if !allowed {
                out.push(Violation {
                    file: rel.to_path_buf(),
                    line,
                    from: from.clone(),
                    to,
                });
            }
        }
    }
    Ok(out)
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The layer a file belongs to; `None` for the crate root, the binaries
/// (`main.rs`, `bin/`), which sit above every layer.
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "lib" | "main" | "bin" => None,
        other => Some(other.to_owned()),
    }
}

/// The source with comments and string and char literals blanked (newlines
/// kept), so that what is left is code and line numbers still hold.
fn strip_comments_and_strings(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&b, i) {
            // Raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            while j < b.len() {
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &ch in &b[i..j.min(b.len())] {
                out.push(blank(ch));
            }
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && next == Some('\\') {
            // An escaped char literal: '\n', '\'', '\u{..}'.
            out.push_str("  ");
            i += 2;
            while i < b.len() && b[i] != '\'' {
                out.push(' ');
                i += 1;
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && b.get(i + 2) == Some(&'\'') {
            out.push_str("   ");
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// (line, top-level module) for every `crate::` path in code, the branches
/// of `use crate::{…}` trees included.
fn crate_refs(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        // `mirror_crate::` and the like are other names.
        if code[..start]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        let rest = &code[from..];
        let rest = rest.trim_start();
        if let Some(tree) = rest.strip_prefix('{') {
            for name in tree_heads(tree) {
                out.push((line, name));
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((line, name));
            }
        }
    }
    out
}

/// The first segment of each branch of a use tree whose `{` was just
/// passed: in `a::{b, c}, d::e}` the heads are `a` and `d`.
fn tree_heads(tree: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut expecting = true;
    let mut chars = tree.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => expecting = true,
            c if expecting && depth == 0 && (c.is_alphanumeric() || c == '_') => {
                let mut name = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_alphanumeric() || n == '_' {
                        name.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                heads.push(name);
                expecting = false;
            }
            _ => {}
        }
    }
    heads
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(src: &str) -> Vec<(usize, String)> {
        crate_refs(&strip_comments_and_strings(src))
    }

    #[test]
    fn use_trees_inline_paths_and_lines() {
        let src = "use crate::{\n    kernel::{netns, pin::PinDir},\n    model::record::IfIndex,\n};\n\
                   fn f() { crate::export::tls::x(); }\n";
        assert_eq!(
            refs(src),
            vec![
                (1, "kernel".to_owned()),
                (1, "model".to_owned()),
                (5, "export".to_owned())
            ]
        );
    }

    #[test]
    fn comments_strings_and_other_names_do_not_count() {
        let src = "//! see [`crate::k8s`]\n/* crate::cli */ let u = \"tcp://x crate::cmd\";\n\
                   let r = r#\"crate::cli\"#; let c = '\"'; let q = mirror_crate::x; // crate::cmd\n\
                   use crate::model::values::End;\n";
        assert_eq!(refs(src), vec![(4, "model".to_owned())]);
    }

    #[test]
    fn a_tree_upwards_is_found_and_downwards_passes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path();
        fs::create_dir_all(src.join("kernel")).unwrap();
        fs::create_dir_all(src.join("datapath")).unwrap();
        fs::write(
            src.join("kernel/hooks.rs"),
            "use crate::{model::record::IfIndex, datapath::plan::Planned};\n",
        )
        .unwrap();
        fs::write(
            src.join("datapath/plan.rs"),
            "use crate::kernel::hooks::Interface;\nuse crate::collect::x;\n",
        )
        .unwrap();
        fs::write(src.join("lib.rs"), "pub mod cmd; use crate::cmd::x;\n").unwrap();
        let found = check_tree(src).unwrap();
        assert_eq!(
            found,
            vec![
                Violation {
                    file: "datapath/plan.rs".into(),
                    line: 2,
                    from: "datapath".into(),
                    to: "collect".into(),
                },
                Violation {
                    file: "kernel/hooks.rs".into(),
                    line: 1,
                    from: "kernel".into(),
                    to: "datapath".into(),
                },
            ]
        );
    }

    #[test]
    fn every_layer_of_the_agent_is_ranked() {
        let src = paths::workspace_root().join("mirror-agent/src");
        let mut files = Vec::new();
        collect_rs(&src, &mut files).unwrap();
        for f in files {
            let rel = f.strip_prefix(&src).unwrap();
            if let Some(m) = top_module(rel) {
                assert!(rank(&m).is_some(), "{} has no rank", rel.display());
            }
        }
    }
}
