//! `rounds worklist` says which RPM periods are heading for too few reading days at the rate so
//! far (examples/sunnyvale.json as of 2026-11-10: the periods Oct 20 – Nov 18 and Oct 15 – Nov 13).

use rounds_tests::{repo_root, rounds_cli};

#[test]
fn the_worklist_names_rpm_periods_at_risk_with_days_needed_and_left() {
    let data = repo_root().join("examples/sunnyvale.json");
    let out = rounds_cli(&[
        "worklist",
        "--data",
        data.to_str().unwrap(),
        "--as-of",
        "2026-11-10",
    ]);
    let line = |p: &str| {
        out.lines()
            .find(|l| l.starts_with(p) && l.contains(" rpm "))
            .unwrap_or_else(|| panic!("no rpm row for {p}:\n{out}"))
            .to_string()
    };
    // 15 days so far, 8 left: on track, nothing said.
    assert!(!line("p-007").contains("days"), "{}", line("p-007"));
    assert!(line("p-007").contains("15d/8d"));
    // 6 days, 8 left: 16 is out of reach.
    assert!(
        line("p-008").contains("16 days out of reach (6 so far, 8 left)"),
        "{}",
        line("p-008")
    );
    // 14 days, 3 left: possible, but not at the rate so far.
    assert!(
        line("p-017").contains("behind: 2 more days needed in 3 left"),
        "{}",
        line("p-017")
    );
    // On the period's last day with one reading day: 2 is still reachable, with a reading today.
    let last = rounds_cli(&[
        "worklist",
        "--data",
        data.to_str().unwrap(),
        "--as-of",
        "2026-11-18",
    ]);
    let p009 = last
        .lines()
        .find(|l| l.starts_with("p-009") && l.contains(" rpm "))
        .expect("p-009 row");
    assert!(
        p009.contains("16 days out of reach (1 so far, 0 left): 99445 at most"),
        "{p009}"
    );
}
