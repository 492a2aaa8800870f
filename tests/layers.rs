//! The layering of `src/`, checked: imports only go down, no cycle between modules, and the
//! clocks are read in one place (docs/architecture.md, "Layers").
//!
//! ```text
//!   8  lib.rs, main.rs
//!   7  runtime        wiring (every from_config), the engine task, the executor
//!   6  config         the file, its keys and checks
//!   5  control        API, page, metrics, notifications
//!   4  feed broker store indicator   (the edges; may use one another without a cycle)
//!   3  net            DNS fallback, TLS, HTTP, WebSocket
//!   2  bus            engine handle, requests, orders, journal trait, tick queue, clock, status
//!   1  core           sans-IO engine
//!   0  limits
//! ```
//!
//! A module may name a module of a lower layer, or one of its own layer as long as no cycle
//! forms between modules. The scan reads every `crate::X` (and, in `main.rs`, `tickguard::X`)
//! outside comments, unit tests included. The self-tests plant an upward import, a cycle and
//! a clock read in a temporary copy of `src/` and check that each is caught.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of each top-level module.
const LAYERS: [(&str, u8); 14] = [
    ("limits", 0),
    ("core", 1),
    ("bus", 2),
    ("net", 3),
    ("feed", 4),
    ("broker", 4),
    ("store", 4),
    ("indicator", 4),
    ("control", 5),
    ("config", 6),
    ("runtime", 7),
    ("lib", 8),
    ("main", 8),
    ("relay", 5),
];

/// The one file that may read the clocks (`Instant::now()`, `SystemTime::now()`).
const CLOCK_FILE: &str = "bus/clock.rs";

fn layer(m: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == m).map(|(_, l)| *l)
}

/// `src/feed/session.rs` → `feed`; `src/config.rs` → `config`.
fn module_of(rel: &Path) -> String {
    let first =
        rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    first.strip_suffix(".rs").map(str::to_string).unwrap_or(first)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The code of a line without its `//` comment (string literals holding `//` are rare here
/// and would only hide a reference, never invent one).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Every `prefix` + identifier in `code`.
fn names_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        let after = &rest[i + prefix.len()..];
        let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && end > 0 {
            out.push(&after[..end]);
        }
        rest = after;
    }
    out
}

/// One reference from a file to a module.
#[derive(Debug, Clone)]
struct Ref {
    from: String,
    to: String,
    file: String,
    line: usize,
}

#[derive(Debug, Default)]
struct Findings {
    upward: Vec<String>,
    cycles: Vec<String>,
    clock: Vec<String>,
    unknown: Vec<String>,
}

impl Findings {
    fn is_clean(&self) -> bool {
        self.upward.is_empty() && self.cycles.is_empty() && self.clock.is_empty() && self.unknown.is_empty()
    }
    fn report(&self) -> String {
        let mut s = String::new();
        for (what, list) in [
            ("upward import", &self.upward),
            ("cycle", &self.cycles),
            ("clock read outside bus/clock.rs", &self.clock),
            ("module without a layer", &self.unknown),
        ] {
            for l in list {
                s.push_str(&format!("{what}: {l}\n"));
            }
        }
        s
    }
}

fn check(src: &Path) -> Findings {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut refs: Vec<Ref> = Vec::new();
    let mut f = Findings::default();
    for path in &files {
        let rel = path.strip_prefix(src).unwrap_or(path);
        let rel_s = rel.to_string_lossy().into_owned();
        let from = module_of(rel);
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let prefix = if from == "main" { "tickguard::" } else { "crate::" };
        for (n, line) in text.lines().enumerate() {
            let c = code(line);
            for to in names_after(c, prefix) {
                if to != from {
                    refs.push(Ref {
                        from: from.clone(),
                        to: to.to_string(),
                        file: rel_s.clone(),
                        line: n + 1,
                    });
                }
            }
            if rel_s != CLOCK_FILE && (c.contains("Instant::now()") || c.contains("SystemTime::now()")) {
                f.clock.push(format!("{rel_s}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &refs {
        match (layer(&r.from), layer(&r.to)) {
            (Some(a), Some(b)) => {
                if b > a {
                    f.upward.push(format!(
                        "{}:{}: {} (layer {a}) imports {} (layer {b})",
                        r.file,
                        r.line,
                        r.from,
                        r.to,
                        a = a,
                        b = b
                    ));
                }
                graph.entry(r.from.clone()).or_default().insert(r.to.clone());
            }
            (None, _) => f.unknown.push(format!("{} ({})", r.from, r.file)),
            // A name after `crate::` that is no module of ours (a macro path, a type at the
            // root): not an import between modules.
            (_, None) => {}
        }
    }
    f.unknown.sort();
    f.unknown.dedup();
    // Cycles between modules: a depth-first search reporting each back edge with its path.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    let mut stack: Vec<&str> = Vec::new();
    fn dfs<'g>(
        n: &'g str,
        g: &'g BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'g str, u8>,
        stack: &mut Vec<&'g str>,
        out: &mut Vec<String>,
    ) {
        state.insert(n, 1);
        stack.push(n);
        if let Some(next) = g.get(n) {
            for m in next {
                match state.get(m.as_str()) {
                    Some(1) => {
                        let i = stack.iter().position(|s| *s == m.as_str()).unwrap_or(0);
                        let mut c: Vec<&str> = stack[i..].to_vec();
                        c.push(m);
                        out.push(c.join(" → "));
                    }
                    Some(_) => {}
                    None => dfs(m, g, state, stack, out),
                }
            }
        }
        stack.pop();
        state.insert(n, 2);
    }
    for n in graph.keys() {
        if !state.contains_key(n.as_str()) {
            dfs(n, &graph, &mut state, &mut stack, &mut f.cycles);
        }
    }
    // Name the files that make each cycle's edges.
    for c in f.cycles.iter_mut() {
        let mods: Vec<&str> = c.split(" → ").collect();
        let mut why = Vec::new();
        for w in mods.windows(2) {
            if let Some(r) = refs.iter().find(|r| r.from == w[0] && r.to == w[1]) {
                why.push(format!("{}:{}", r.file, r.line));
            }
        }
        c.push_str(&format!(" (at {})", why.join(", ")));
    }
    f
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn imports_only_go_down_and_form_no_cycle() {
    let f = check(&src_dir());
    assert!(f.is_clean(), "layering broken:\n{}", f.report());
}

/// A copy of `src/` in a fresh temporary directory.
fn copy_of_src(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tickguard-layers-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    for p in files {
        let rel = p.strip_prefix(src_dir()).expect("under src");
        let to = dir.join(rel);
        std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&p, &to).expect("copy");
    }
    dir
}

fn plant(dir: &Path, file: &str, line: &str) {
    let p = dir.join(file);
    let text = std::fs::read_to_string(&p).expect("planted file");
    std::fs::write(&p, format!("{line}\n{text}")).expect("plant");
}

#[test]
fn the_check_catches_a_planted_upward_import() {
    let dir = copy_of_src("upward");
    assert!(check(&dir).is_clean(), "the copy starts clean");
    plant(&dir, "feed/json.rs", "#[allow(unused_imports)] use crate::runtime::EngineHandle;");
    let f = check(&dir);
    assert!(
        f.upward.iter().any(|u| u.starts_with("feed/json.rs:1: feed (layer 4) imports runtime (layer 7)")),
        "{}",
        f.report()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_check_catches_a_planted_cycle_between_edges() {
    let dir = copy_of_src("cycle");
    plant(&dir, "feed/json.rs", "#[allow(unused_imports)] use crate::store::Journal;");
    plant(&dir, "store.rs", "#[allow(unused_imports)] use crate::feed::json;");
    let f = check(&dir);
    assert!(f.upward.is_empty(), "same layer: not upward\n{}", f.report());
    assert!(
        f.cycles.iter().any(|c| c.contains("feed → store → feed") || c.contains("store → feed → store")),
        "{}",
        f.report()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_check_catches_a_clock_read_outside_the_clock() {
    let dir = copy_of_src("clock");
    plant(&dir, "control/views.rs", "fn planted() -> std::time::Instant { std::time::Instant::now() }");
    let f = check(&dir);
    assert!(f.clock.iter().any(|c| c.starts_with("control/views.rs:1:")), "{}", f.report());
    let _ = std::fs::remove_dir_all(&dir);
}
