//! README's troubleshooting tables and `src/conditions.rs` list the same condition reasons.
//!
//! Reasons are an API: users alert and automate on them, and README tells them what each one
//! means and what to do about it. This test reads both files (no servers) and names every reason
//! that `pub mod reasons` defines and the tables lack, every table row whose reason is not
//! defined there, and every reason listed twice.

use std::collections::BTreeMap;
use std::path::Path;

/// The heading of README's section that holds the reason tables.
const SECTION: &str = "## Troubleshooting";

/// The first header cell of a table of reasons.
const REASON_HEADER: &str = "Reason";

/// The `(NAME, "Value")` of each `pub const NAME: &str = "Value";` in `pub mod reasons` of
/// `source` (comments left out; a declaration may be wrapped over lines).
fn defined_reasons(source: &str) -> Vec<(String, String)> {
    let code: String = source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .map(|line| format!("{line}\n"))
        .collect();
    let start = code
        .find("pub mod reasons {")
        .expect("src/conditions.rs has no `pub mod reasons {`");
    let body = &code[start + "pub mod reasons {".len()..];
    let mut depth = 1;
    let end = body
        .char_indices()
        .find_map(|(i, c)| {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            (depth == 0).then_some(i)
        })
        .expect("`pub mod reasons` is not closed");
    body[..end]
        .split(';')
        .filter_map(|item| {
            let item = &item[item.find("pub const ")? + "pub const ".len()..];
            let (name, rest) = item.split_once(':').expect("a const without a type");
            let value = rest
                .split_once('=')
                .map(|(_, value)| value.trim())
                .filter(|value| value.len() >= 2 && value.starts_with('"') && value.ends_with('"'))
                .unwrap_or_else(|| panic!("reasons::{} is not a string literal", name.trim()));
            Some((name.trim().to_owned(), value[1..value.len() - 1].to_owned()))
        })
        .collect()
}

/// What the reason tables of README's troubleshooting section hold: each row's reason (the
/// first cell, in backticks), and the rows that are not of that form.
#[derive(Debug, Default, PartialEq)]
struct Listed {
    /// Reason, and the README line numbers of its rows.
    reasons: BTreeMap<String, Vec<usize>>,
    /// Rows of a reason table whose first cell is not one reason in backticks.
    malformed: Vec<String>,
}

/// Reads the tables whose header starts with [`REASON_HEADER`] in the [`SECTION`] of `readme`
/// (up to the next `## ` heading outside a code block).
fn listed_reasons(readme: &str) -> Listed {
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines
        .iter()
        .position(|line| line.trim_end() == SECTION)
        .unwrap_or_else(|| panic!("README.md has no `{SECTION}` section"));
    let mut listed = Listed::default();
    let mut in_code = false;
    // Some(true) inside a table of reasons, Some(false) inside another table.
    let mut table: Option<bool> = None;
    let mut separator_next = false;
    for (index, line) in lines.iter().enumerate().skip(start + 1) {
        let line = line.trim();
        if line.starts_with("```") {
            in_code = !in_code;
            table = None;
            continue;
        }
        if in_code {
            continue;
        }
        if line.starts_with("## ") {
            break;
        }
        if !line.starts_with('|') {
            table = None;
            continue;
        }
        let first = line
            .trim_start_matches('|')
            .split('|')
            .next()
            .unwrap_or_default()
            .trim();
        match table {
            None => {
                table = Some(first == REASON_HEADER);
                separator_next = true;
            }
            Some(_) if separator_next => separator_next = false,
            Some(false) => {}
            Some(true) => {
                let name = first
                    .strip_prefix('`')
                    .and_then(|rest| rest.strip_suffix('`'))
                    .filter(|name| {
                        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric())
                    });
                match name {
                    Some(name) => listed
                        .reasons
                        .entry(name.to_owned())
                        .or_default()
                        .push(index + 1),
                    None => listed
                        .malformed
                        .push(format!("README.md line {}: {line}", index + 1)),
                }
            }
        }
    }
    listed
}

#[test]
fn the_troubleshooting_tables_list_every_condition_reason_and_no_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| {
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let defined = defined_reasons(&read("src/conditions.rs"));
    assert!(
        defined.len() >= 20,
        "only {} reasons found in src/conditions.rs: has the file's form changed?",
        defined.len()
    );
    let listed = listed_reasons(&read("README.md"));

    let mut problems = Vec::new();
    for (name, value) in &defined {
        if !listed.reasons.contains_key(value) {
            problems.push(format!(
                "reasons::{name} ({value:?}) has no row in README's troubleshooting tables"
            ));
        }
    }
    for (reason, rows) in &listed.reasons {
        if !defined.iter().any(|(_, value)| value == reason) {
            problems.push(format!(
                "README.md line {}: `{reason}` is not a reason src/conditions.rs defines",
                rows[0]
            ));
        }
        if rows.len() > 1 {
            problems.push(format!(
                "`{reason}` has more than one row: README.md lines {rows:?}"
            ));
        }
    }
    for row in &listed.malformed {
        problems.push(format!(
            "{row}: the first cell is not one reason in backticks"
        ));
    }
    assert!(
        problems.is_empty(),
        "README's troubleshooting tables and src/conditions.rs disagree:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_readers_take_wrapped_declarations_and_only_the_sections_reason_tables() {
    let source = concat!(
        "pub mod types {\n",
        "    pub const READY: &str = \"Ready\";\n",
        "}\n",
        "pub mod reasons {\n",
        "    // Progress; and success {\n",
        "    /// Holds; really.\n",
        "    pub const SUCCEEDED: &str = \"Succeeded\";\n",
        "    pub const A_VERY_LONG_NAME: &str =\n",
        "        \"VeryLong\";\n",
        "}\n",
        "const OUTSIDE: &str = \"Outside\";\n",
    );
    assert_eq!(
        defined_reasons(source),
        [
            ("SUCCEEDED".to_owned(), "Succeeded".to_owned()),
            ("A_VERY_LONG_NAME".to_owned(), "VeryLong".to_owned())
        ]
    );
    let readme = concat!(
        "## Use it\n\n",
        "| Reason | x |\n|---|---|\n| `Before` | x |\n\n",
        "## Troubleshooting\n\n",
        "| Reason | x |\n|---|---|\n| `Succeeded` | x |\n| Bare | x |\n\n",
        "| What | Reason |\n|---|---|\n| `Other` | x |\n\n",
        "```sh\n## not a heading\n```\n",
        "| Reason | x |\n|---|---|\n| `VeryLong` | x |\n\n",
        "## Operations\n\n",
        "| Reason | x |\n|---|---|\n| `After` | x |\n",
    );
    let listed = listed_reasons(readme);
    assert_eq!(
        listed.reasons.keys().collect::<Vec<_>>(),
        ["Succeeded", "VeryLong"]
    );
    assert_eq!(listed.malformed, ["README.md line 12: | Bare | x |"]);
}
