//! Every data file that existed before the 2026 code families (APCM, BHI, RTM) bills exactly as it
//! did: the bills in `tests/golden/` were written by `rounds bill` before those families were added,
//! and the engine must still produce them byte for byte, in JSON and in the CSV summary.
//!
//! `golden/mixed.json` is written by `golden/generate.py` (deterministic) and covers CCM, PCM and
//! RPM with stays, deaths, revocations, lanes, practitioners of record and several practices.

use rounds_core::billing::{RuleSet, bill, summary};
use rounds_core::{Month, parse_data_file};

fn json_bill(data: &str, month: &str) -> String {
    let d = parse_data_file(data).expect("data file parses");
    let month: Month = month.parse().expect("month");
    let run = bill(&d, month, &RuleSet::default()).expect("bills");
    let mut out = serde_json::to_string_pretty(&run).expect("serializes");
    out.push('\n');
    out
}

fn csv_bill(data: &str, month: &str) -> String {
    let d = parse_data_file(data).expect("data file parses");
    let month: Month = month.parse().expect("month");
    let run = bill(&d, month, &RuleSet::default()).expect("bills");
    let mut buf = Vec::new();
    summary::write_csv(&d, &run, &mut buf).expect("csv");
    String::from_utf8(buf).expect("utf-8")
}

/// Compares line by line so that a failure names the first line that differs, not 200 kB of text.
fn same(got: &str, want: &str, what: &str) {
    for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
        assert_eq!(g, w, "{what}: line {} differs", i + 1);
    }
    assert_eq!(
        got.lines().count(),
        want.lines().count(),
        "{what}: line count"
    );
    assert_eq!(got, want, "{what}: bytes");
}

const SUNNYVALE: &str = include_str!("../../examples/sunnyvale.json");
const MIXED: &str = include_str!("golden/mixed.json");

#[test]
fn the_example_bills_as_before() {
    for (month, want) in [
        ("2026-10", include_str!("golden/sunnyvale-2026-10.json")),
        ("2026-11", include_str!("golden/sunnyvale-2026-11.json")),
        ("2026-12", include_str!("golden/sunnyvale-2026-12.json")),
    ] {
        same(
            &json_bill(SUNNYVALE, month),
            want,
            &format!("sunnyvale {month}"),
        );
    }
}

#[test]
fn the_mixed_file_bills_as_before() {
    for (month, want) in [
        ("2026-10", include_str!("golden/mixed-2026-10.json")),
        ("2026-11", include_str!("golden/mixed-2026-11.json")),
        ("2026-12", include_str!("golden/mixed-2026-12.json")),
    ] {
        same(&json_bill(MIXED, month), want, &format!("mixed {month}"));
    }
}

#[test]
fn the_mixed_file_summarises_as_before() {
    for (month, want) in [
        ("2026-10", include_str!("golden/mixed-2026-10.csv")),
        ("2026-11", include_str!("golden/mixed-2026-11.csv")),
        ("2026-12", include_str!("golden/mixed-2026-12.csv")),
    ] {
        same(&csv_bill(MIXED, month), want, &format!("mixed {month} csv"));
    }
    same(
        &csv_bill(SUNNYVALE, "2026-11"),
        include_str!("golden/sunnyvale-2026-11.csv"),
        "sunnyvale 2026-11 csv",
    );
}
