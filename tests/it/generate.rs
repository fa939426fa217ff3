//! `mmp generate`: man pages and shell completions from the clap definition.
//!
//! The subcommands are taken from `mmp --help` (what a user sees), the exit codes from
//! README.md's "Exit codes" table, so a new subcommand or exit code that the pages miss fails
//! here.

use std::fs;
use std::path::Path;

use super::cli::{T_SHORT, mmp_run, tmpdir};

/// The subcommands `mmp --help` lists, without clap's `help`.
fn subcommands() -> Vec<String> {
    let out = mmp_run(&["--help"], T_SHORT);
    out.expect(0, "--help");
    let mut in_commands = false;
    let mut names = Vec::new();
    for line in out.stdout.lines() {
        if line == "Commands:" {
            in_commands = true;
            continue;
        }
        if in_commands {
            if line.is_empty() {
                break;
            }
            // "  name  description"; wrapped descriptions are indented further.
            if let Some(rest) = line.strip_prefix("  ")
                && !rest.starts_with(' ')
            {
                let name = rest.split_whitespace().next().unwrap_or_default();
                if name != "help" {
                    names.push(name.to_owned());
                }
            }
        }
    }
    assert!(
        names.len() >= 10,
        "found only {names:?} in --help:\n{}",
        out.stdout
    );
    names
}

/// README.md's "Exit codes" rows: (commands, the codes 0..=3 that have an entry).
fn readme_exit_codes() -> Vec<(Vec<String>, Vec<u8>)> {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
        .expect("README.md");
    let table = readme
        .split("### Exit codes")
        .nth(1)
        .expect("README has an Exit codes section");
    let mut rows = Vec::new();
    for line in table.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells
            .first()
            .is_none_or(|c| !c.starts_with('`') && *c != "others")
        {
            continue; // header and separator
        }
        let cmds = cells[0]
            .split(',')
            .map(|c| c.trim().trim_matches('`').to_owned())
            .collect();
        let codes = (0u8..=3)
            .filter(|&i| cells.get(usize::from(i) + 1).is_some_and(|c| !c.is_empty()))
            .collect();
        rows.push((cmds, codes));
    }
    assert!(rows.len() >= 5, "README Exit codes table: {rows:?}");
    rows
}

/// The EXIT STATUS section of a page (up to the next `.SH`).
fn exit_status(page: &str) -> Option<&str> {
    let start = page.find(".SH \"EXIT STATUS\"")?;
    let rest = &page[start + 1..];
    Some(rest.find("\n.SH").map_or(rest, |end| &rest[..end]))
}

#[test]
fn man_pages_cover_every_subcommand_with_exit_status() {
    let tmp = tmpdir();
    let dir = tmp.path().join("man8");
    let out = mmp_run(&["generate", "man", dir.to_str().expect("utf-8")], T_SHORT);
    out.expect(0, "generate man");
    let subs = subcommands();
    let top = fs::read_to_string(dir.join("mmp.8")).expect("mmp.8 written");
    assert!(
        top.contains(".TH mmp 8"),
        "mmp.8 is not a section 8 page:\n{top}"
    );
    let top_status = exit_status(&top).expect("mmp.8 has EXIT STATUS");
    let readme = readme_exit_codes();
    for sub in &subs {
        let file = dir.join(format!("mmp-{sub}.8"));
        let page = fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (files: {})", file.display(), out.stdout));
        assert!(page.contains(&format!(".TH mmp-{sub} 8")), "{page}");
        let status =
            exit_status(&page).unwrap_or_else(|| panic!("mmp-{sub}.8 has no EXIT STATUS:\n{page}"));
        assert!(
            top_status.contains(&format!("mmp {}", sub.replace('-', "\\-"))),
            "mmp.8's EXIT STATUS misses {sub}:\n{top_status}"
        );
        // roff escapes the hyphens of text (not of the .TH line).
        let see = format!("mmp-{sub}(8)").replace('-', "\\-");
        assert!(top.contains(&see), "mmp.8 does not refer to {see}");
        // The codes README gives this subcommand (its own row, else "others").
        let codes = readme
            .iter()
            .find(|(cmds, _)| cmds.iter().any(|c| c == sub))
            .or_else(|| readme.iter().find(|(cmds, _)| cmds == &["others"]))
            .map(|(_, codes)| codes.clone())
            .expect("README has an `others` row");
        for code in codes {
            // `run` exits with its command's status, which the page gives as N.
            if sub == "run" && code == 0 {
                assert!(status.contains("\\fBN\\fR"), "mmp-run.8:\n{status}");
                continue;
            }
            assert!(
                status.contains(&format!("\\fB{code}\\fR")),
                "mmp-{sub}.8's EXIT STATUS lacks code {code}, which README's Exit codes table \
                 gives:\n{status}"
            );
        }
    }
    // One page per subcommand and mmp.8, nothing for `help` or `generate`.
    let mut files: Vec<String> = fs::read_dir(&dir)
        .expect("read man dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), subs.len() + 1, "{files:?}");
    assert!(
        !files
            .iter()
            .any(|f| f.contains("generate") || f == "mmp-help.8"),
        "{files:?}"
    );
    if let Some(man) = mmp_tests::find_tool("man") {
        // Renders without roff warnings where man(1) is installed.
        let r = std::process::Command::new(man)
            .args(["--warnings", "-l"])
            .arg(dir.join("mmp-hold.8"))
            .env("MANWIDTH", "80")
            .output()
            .expect("run man");
        let text = String::from_utf8_lossy(&r.stdout);
        assert!(r.status.success() && text.contains("EXIT STATUS"), "{text}");
        assert!(
            r.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
}

#[test]
fn completions_name_every_subcommand() {
    let subs = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let out = mmp_run(&["generate", "completions", shell], T_SHORT);
        out.expect(0, shell);
        for sub in &subs {
            assert!(
                out.stdout.contains(sub.as_str()),
                "{shell} completions lack {sub}"
            );
        }
        // The generator itself is not offered (`hostid --generate` is): how each shell's
        // script names a subcommand.
        let marker = match shell {
            "bash" => "subcmd__generate",
            "zsh" => "(generate)",
            _ => "-a \"generate\"",
        };
        assert!(
            !out.stdout.contains(marker),
            "{shell} completions offer `generate`"
        );
    }
}

#[test]
fn generate_is_hidden_and_rejects_bad_input() {
    let help = mmp_run(&["--help"], T_SHORT);
    assert!(
        !help
            .stdout
            .lines()
            .any(|l| l.trim_start().starts_with("generate")),
        "{}",
        help.stdout
    );
    let out = mmp_run(&["generate", "completions", "nosh"], T_SHORT);
    out.expect(2, "an unknown shell");
    assert!(out.stderr.contains("possible values"), "{}", out.show());
    let tmp = tmpdir();
    let file = tmp.path().join("file");
    fs::write(&file, b"x").expect("write");
    let out = mmp_run(&["generate", "man", file.to_str().expect("utf-8")], T_SHORT);
    out.expect(2, "a file as the man directory");
    assert!(out.stderr.starts_with("mmp: "), "{}", out.show());
}
