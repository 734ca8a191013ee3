//! A device killed with SIGKILL right after an action returns keeps that action.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use rounds_core::Replica;
use rounds_tests::sunnyvale;

fn spawn(dir: &std::path::Path, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_replica-writer"))
        .arg(dir)
        .args(args)
        .arg("wait")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn replica-writer")
}

/// Run one action in a child, read its `ok` line, SIGKILL it at once, return the id it printed.
fn act_then_kill(dir: &std::path::Path, args: &[&str]) -> String {
    let mut child = spawn(dir, args);
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.first(), Some(&"ok"), "child said {line:?}");
    parts[2].to_string()
}

#[test]
fn every_returned_action_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut r = Replica::open(dir.path()).unwrap();
        r.import(&sunnyvale().unwrap(), chrono::Utc::now()).unwrap();
    }
    let mut interactions = Vec::new();
    let mut readings = Vec::new();
    for k in 0..6 {
        interactions.push(act_then_kill(
            dir.path(),
            &["log", "p-001", "rn-lee", &(5 + k).to_string()],
        ));
        readings.push(act_then_kill(
            dir.path(),
            &["reading", "p-007", &(120 + k).to_string()],
        ));
    }
    let timer = act_then_kill(dir.path(), &["start", "p-002", "rn-okafor"]);

    let r = Replica::open(dir.path()).unwrap();
    let (data, problems) = r.export().unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    for id in &interactions {
        assert!(
            data.interactions.iter().any(|i| i.id.to_string() == *id),
            "interaction {id} lost"
        );
    }
    for id in &readings {
        assert!(
            data.readings.iter().any(|x| x.id.to_string() == *id),
            "reading {id} lost"
        );
    }
    let running = r.running_timers();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].id.to_string(), timer);
    assert_eq!(running[0].patient, "p-002");
}
