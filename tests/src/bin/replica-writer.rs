//! Test helper: performs replica actions and prints one line per action *after* it returned,
//! so a test can kill the process with SIGKILL right after an action and check it survived.
//!
//! Usage: replica-writer DIR ACTION...   where ACTION is one of
//!   log PATIENT STAFF MINUTES    log a CCM interaction ending now
//!   reading PATIENT SYSTOLIC     record a device blood-pressure reading
//!   start PATIENT STAFF          start a CCM timer
//!   wait                         block forever (the test kills us)
//! Prints `ok <kind> <id>` per action.
#![forbid(unsafe_code)]

use std::io::Write;

use chrono::{Duration, Utc};
use rounds_core::replica::{NewInteraction, NewReading};
use rounds_core::{Program, ReadingKind, ReadingSource, Replica};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, actions) = args
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("usage: replica-writer DIR ACTION..."))?;
    let mut replica = Replica::open(dir)?;
    let mut out = std::io::stdout().lock();
    let mut it = actions.iter();
    while let Some(action) = it.next() {
        let mut arg = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("missing argument for {action}"))
        };
        let now = Utc::now();
        match action.as_str() {
            "log" => {
                let (patient, staff, minutes) = (arg()?, arg()?, arg()?.parse::<i64>()?);
                let i = replica.log_interaction(
                    NewInteraction {
                        patient,
                        staff,
                        program: Program::Ccm,
                        started_at: now - Duration::minutes(minutes),
                        ended_at: now,
                        interactive: true,
                        activity: Some("phone_call".into()),
                        note: None,
                    },
                    now,
                )?;
                writeln!(out, "ok interaction {}", i.id)?;
            }
            "reading" => {
                let (patient, systolic) = (arg()?, arg()?.parse::<f64>()?);
                let r = replica.record_reading(
                    NewReading {
                        patient,
                        kind: ReadingKind::BloodPressure,
                        systolic: Some(systolic),
                        diastolic: Some(80.0),
                        value: None,
                        unit: "mm[Hg]".into(),
                        measured_at: now,
                        device: Some("cuff-07".into()),
                        source: ReadingSource::Device,
                        program: None,
                    },
                    now,
                )?;
                writeln!(out, "ok reading {}", r.id)?;
            }
            "start" => {
                let (patient, staff) = (arg()?, arg()?);
                let t = replica.start_timer(&patient, &staff, Program::Ccm, None, now)?;
                writeln!(out, "ok timer {}", t.id)?;
            }
            "wait" => {
                out.flush()?;
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(60));
                }
            }
            other => anyhow::bail!("unknown action {other}"),
        }
        out.flush()?;
    }
    Ok(())
}
