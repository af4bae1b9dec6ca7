//! The command line's own help: completion scripts a shell accepts, manual pages that man
//! renders (from the same clap definitions), and examples in `--help` for the common jobs.
use std::process::Command;

use tests::observer::binary;

fn run(args: &[&str]) -> String {
    let output = Command::new(binary())
        .args(args)
        .output()
        .expect("running access-log");
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    let bash = run(&["completions", "bash"]);
    let checked = Command::new("bash")
        .args(["-n", "-c", &bash])
        .output()
        .expect("running bash");
    assert!(checked.status.success(), "{checked:?}");
    for subcommand in ["attach", "record", "replay", "report", "top", "keys"] {
        assert!(
            bash.contains(subcommand),
            "bash completion lacks {subcommand}"
        );
    }
    assert!(bash.contains("--api-key-header") && bash.contains("--metrics"));
    assert!(run(&["completions", "zsh"]).contains("#compdef access-log"));
    assert!(run(&["completions", "fish"]).contains("complete -c access-log"));
}

#[test]
fn manual_pages_render_with_man() {
    let dir = std::env::temp_dir().join(format!("access-log-man-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    run(&["man", "--dir", dir.to_str().unwrap()]);
    for (page, wanted) in [
        ("access-log.1", "eBPF-based access log for API gateways"),
        ("access-log-attach.1", "--save-records"),
        ("access-log-report.1", "--exclude-api"),
        ("access-log-top.1", "--replay"),
    ] {
        let rendered = Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(dir.join(page))
            .env("MANWIDTH", "100")
            .output()
            .expect("running man");
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(rendered.status.success(), "{page}: {rendered:?}");
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{page}: {text}"
        );
        assert!(text.contains(wanted), "{page} lacks {wanted}: {text}");
    }
    assert_eq!(
        run(&["man"]),
        std::fs::read_to_string(dir.join("access-log.1")).unwrap()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_shows_examples_for_the_common_jobs() {
    for subcommand in [
        &["attach"][..],
        &["record"],
        &["replay"],
        &["report"],
        &["top"],
        &["completions"],
        &["man"],
        &["keys", "fingerprint"],
    ] {
        let help = run(&[subcommand, &["--help"]].concat());
        assert!(help.contains("Example"), "{subcommand:?} --help: {help}");
    }
    assert!(run(&["attach", "--help"]).contains("--color <COLOR>"));
}
