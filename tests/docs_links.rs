//! Every relative link in README.md, BENCHMARKS.md, ARCHITECTURE.md and docs/*.md points at a file
//! that exists, and a `#fragment` at a heading or `<a id>` of that page. Sections move between
//! pages; a link left behind fails here instead of in a reader's browser.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The text outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The fragments a page answers to: GitHub's heading slugs and explicit `<a id="…">`.
fn anchors(text: &str) -> BTreeSet<String> {
    let text = prose(text);
    let mut set = BTreeSet::new();
    for line in text.lines() {
        let heading = line.trim_start_matches('#');
        if heading.len() < line.len() && heading.starts_with(' ') {
            let slug: String = heading
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '_' || *c == '-' || *c == ' ')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            set.insert(slug);
        }
    }
    for part in text.split("<a id=\"").skip(1) {
        if let Some(end) = part.find('"') {
            set.insert(part[..end].to_string());
        }
    }
    set
}

/// The targets of `[text](target)` links.
fn links(text: &str) -> Vec<String> {
    let text = prose(text);
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.find(')').map(|end| rest[..end].to_string()))
        .filter(|t| !t.contains(' '))
        .collect()
}

fn pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = ["README.md", "BENCHMARKS.md", "ARCHITECTURE.md"]
        .iter()
        .map(|p| root().join(p))
        .collect();
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages
}

fn check(page: &Path, problems: &mut Vec<String>) {
    let text = std::fs::read_to_string(page).unwrap();
    let name = page.strip_prefix(root()).unwrap_or(page).display();
    for link in links(&text) {
        if link.contains("://") || link.starts_with("mailto:") {
            continue;
        }
        let (path, fragment) = link.split_once('#').unwrap_or((&link, ""));
        let target = if path.is_empty() {
            page.to_path_buf()
        } else {
            page.parent().unwrap().join(path)
        };
        if !target.exists() {
            problems.push(format!("{name}: `{link}`: no such file"));
            continue;
        }
        if fragment.is_empty() || target.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let target_text = std::fs::read_to_string(&target).unwrap();
        if !anchors(&target_text).contains(fragment) {
            problems.push(format!("{name}: `{link}`: no such anchor"));
        }
    }
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut problems = Vec::new();
    for page in pages() {
        check(&page, &mut problems);
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_broken_link_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page.md");
    std::fs::write(
        &page,
        "# Title\n\n## A section\n\n[ok](#a-section) [ok](page.md#title) [bad](#nowhere) \
         [bad](missing.md)\n```\n[in code](#ignored)\n```\n",
    )
    .unwrap();
    let mut problems = Vec::new();
    check(&page, &mut problems);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].ends_with("`#nowhere`: no such anchor"),
        "{problems:?}"
    );
    assert!(
        problems[1].ends_with("`missing.md`: no such file"),
        "{problems:?}"
    );
}
