//! The man pages the Debian packages install (`deploy/man/*.1`) are generated
//! from the command lines themselves (clap_mangen): one page per command and
//! subcommand, with the same text as `--help`. This test regenerates them and
//! fails when a committed page differs, so they cannot drift;
//! `PORTWATCH_UPDATE_MAN=1 cargo test -p portwatch-e2e --test manpages`
//! rewrites them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/man")
}

/// Every page of `cmd` and its subcommands, by file name.
fn generate(cmd: clap::Command) -> BTreeMap<String, Vec<u8>> {
    let out = tempfile::tempdir().unwrap();
    clap_mangen::generate_to(cmd, out.path()).unwrap();
    std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// The committed pages of one program (`<program>.1`, `<program>-*.1`).
fn committed(program: &str) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(man_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let ours = name == format!("{program}.1")
                || (name.starts_with(&format!("{program}-")) && name.ends_with(".1"));
            ours.then(|| {
                let body = std::fs::read(man_dir().join(&name)).unwrap();
                (name, body)
            })
        })
        .collect()
}

fn check(program: &str, cmd: clap::Command) {
    let want = generate(cmd);
    assert!(
        want.contains_key(&format!("{program}.1")) && want.len() > 3,
        "{:?}",
        want.keys()
    );
    if std::env::var_os("PORTWATCH_UPDATE_MAN").is_some() {
        std::fs::create_dir_all(man_dir()).unwrap();
        for name in committed(program).keys() {
            std::fs::remove_file(man_dir().join(name)).unwrap();
        }
        for (name, body) in &want {
            std::fs::write(man_dir().join(name), body).unwrap();
        }
        return;
    }
    let have = committed(program);
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&have),
        names(&want),
        "deploy/man is out of date: PORTWATCH_UPDATE_MAN=1 cargo test -p portwatch-e2e --test manpages"
    );
    for (name, body) in &want {
        assert!(
            have[name] == *body,
            "deploy/man/{name} is out of date: PORTWATCH_UPDATE_MAN=1 cargo test -p portwatch-e2e --test manpages"
        );
    }
}

#[test]
fn agent_man_pages_match_its_command_line() {
    check("portwatch-agent", portwatch_agent::cli::Cli::command());
}

#[test]
fn collector_man_pages_match_its_command_line() {
    check(
        "portwatch-collector",
        portwatch_collector::cli::Cli::command(),
    );
}

/// What the pages are for: the files, environment, exit codes and signals a
/// sysadmin looks up are in them, not only the flags.
#[test]
fn the_main_pages_say_files_environment_exit_status_and_signals() {
    for (program, cmd) in [
        ("portwatch-agent", portwatch_agent::cli::Cli::command()),
        (
            "portwatch-collector",
            portwatch_collector::cli::Cli::command(),
        ),
    ] {
        let pages = generate(cmd);
        let main = String::from_utf8_lossy(&pages[&format!("{program}.1")]).into_owned();
        for needle in [
            "/etc/portwatch/",
            "/var/lib/",
            "PORTWATCH_LOG",
            "Exit status",
            "64",
        ] {
            assert!(main.contains(needle), "{program}.1 lacks {needle:?}");
        }
    }
    let agent = generate(portwatch_agent::cli::Cli::command());
    let run = String::from_utf8_lossy(&agent["portwatch-agent-run.1"]).into_owned();
    assert!(
        run.contains("CAP_NET_RAW") && run.contains("\\-\\-config"),
        "{run}"
    );
    let enroll = String::from_utf8_lossy(&agent["portwatch-agent-enroll.1"]).into_owned();
    assert!(enroll.contains("PORTWATCH_JOIN") && enroll.contains("agent.key"));
}
