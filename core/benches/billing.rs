//! Bills 10,000 patient-months of realistic data and reports the time (release build).
//!
//! Run: `cargo bench -p rounds-core --bench billing` (or `-- --patients N`, `-- --legacy` for
//! the CCM/RPM-only mix measured before APCM, BHI and RTM). The default mix has six kinds of
//! resident in turn: CCM + RPM, CCM, APCM + BHI (G0570), CCM + BHI (99484), CCM + RTM, and
//! APCM + RTM with a same-practitioner TCM on every fifth such resident (the conflict rules run).
//! Prints the median of 5 runs; no assertion — the numbers go into BENCHMARKS.md.

use std::time::Instant;

use chrono::{DateTime, Duration, FixedOffset, NaiveDate};
use rounds_core::billing::{RuleSet, bill};
use rounds_core::*;
use uuid::Uuid;

/// A tiny deterministic generator (xorshift), so every run bills the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn data(patients: usize, legacy: bool) -> DataFile {
    let mut rng = Rng(0x5eed_2026);
    let mut d = DataFile::new(Facility {
        id: "bench".into(),
        name: "Bench".into(),
        timezone: "America/New_York".into(),
        place_of_service: "32".into(),
    });
    d.practitioners.push(Practitioner {
        apcm_attested_on: NaiveDate::from_ymd_opt(2026, 1, 1),
        id: "dr".into(),
        name: "Dr".into(),
        npi: "1234567893".into(),
    });
    for s in ["rn1", "rn2", "rn3", "aide"] {
        d.staff.push(Staff {
            id: s.into(),
            name: s.into(),
            role: StaffRole::Clinical,
            counts_for_billing: s != "aide",
        });
    }
    let month_start: DateTime<FixedOffset> =
        DateTime::parse_from_rfc3339("2026-11-01T08:00:00-05:00").unwrap();
    let mut n: u128 = 0;
    let mut next_id = || {
        n += 1;
        Uuid::from_u128(n)
    };
    for i in 0..patients {
        let id = format!("p-{i:05}");
        let kind = if legacy {
            if i % 3 == 0 { 0 } else { 1 }
        } else {
            i % 6
        };
        let programs: &[Program] = match kind {
            0 => &[Program::Ccm, Program::Rpm],
            1 => &[Program::Ccm],
            2 => &[Program::Apcm, Program::Bhi],
            3 => &[Program::Ccm, Program::Bhi],
            4 => &[Program::Ccm, Program::Rtm],
            _ => &[Program::Apcm, Program::Rtm],
        };
        let rpm = programs.contains(&Program::Rpm);
        let rtm = programs.contains(&Program::Rtm);
        let consents: Vec<Consent> = programs
            .iter()
            .map(|&program| Consent {
                id: None,
                program,
                given_on: NaiveDate::from_ymd_opt(2026, 1, 10).unwrap(),
                method: None,
                by: None,
                revoked_on: None,
                document: None,
            })
            .collect();
        let external_services = if kind == 5 && i % 30 == 5 {
            vec![ExternalService {
                id: None,
                code: "99496".into(),
                date_of_service: NaiveDate::from_ymd_opt(2026, 11, 9).unwrap(),
                practitioner: "dr".into(),
                npi: None,
                note: None,
            }]
        } else {
            Vec::new()
        };
        d.patients.push(Patient {
            rtm: rtm.then(|| RtmEnrolment {
                device_setup_on: NaiveDate::from_ymd_opt(2026, 10, 20),
                kind: RtmKind::Respiratory,
                devices: vec!["app".into()],
            }),
            external_services,
            program_choice: Default::default(),
            discharged_on: None,
            absences: Vec::new(),
            merged_into: None,
            qmb_periods: Vec::new(),
            id: id.clone(),
            name: format!("Resident {i}"),
            birth_date: None,
            mrn: None,
            billing_practitioner: "dr".into(),
            practitioners_of_record: Vec::new(),
            conditions: vec![
                Condition {
                    behavioral: None,
                    icd10: "I10".into(),
                    chronic: true,
                },
                Condition {
                    behavioral: None,
                    icd10: "E11.9".into(),
                    chronic: true,
                },
                Condition {
                    behavioral: None,
                    icd10: "F32.9".into(),
                    chronic: false,
                },
            ],
            consents,
            initiating_visit_on: NaiveDate::from_ymd_opt(2026, 1, 10),
            care_plan: Some(CarePlan {
                established_on: NaiveDate::from_ymd_opt(2026, 1, 12),
                revised_on: vec![],
                text: None,
            }),
            complex_ccm_months: vec![],
            ccm_lane: Default::default(),
            pcm_condition: None,
            rpm: rpm.then(|| RpmEnrolment {
                device_setup_on: NaiveDate::from_ymd_opt(2026, 10, 20).unwrap(),
                devices: vec!["cuff".into()],
            }),
            stays: vec![],
            died_on: None,
        });
        // 3–8 interactions of 3–15 minutes over the month.
        for _ in 0..(3 + rng.below(6)) {
            let start = month_start
                + Duration::days(rng.below(29) as i64)
                + Duration::minutes(rng.below(600) as i64);
            let staff = ["rn1", "rn2", "rn3", "aide", "dr"][rng.below(5) as usize];
            d.interactions.push(Interaction {
                id: next_id(),
                patient: id.clone(),
                staff: staff.into(),
                program: if legacy {
                    if rpm && rng.below(3) == 0 {
                        Program::Rpm
                    } else {
                        Program::Ccm
                    }
                } else {
                    programs[rng.below(programs.len() as u64) as usize]
                },
                started_at: start,
                ended_at: start + Duration::seconds(180 + rng.below(720) as i64),
                interactive: rng.below(2) == 0,
                activity: None,
                note: None,
                amends: None,
            });
        }
        // RPM residents: one or two readings on most days since set-up.
        if rpm {
            for day in 0..41 {
                if rng.below(10) < 7 {
                    let at = DateTime::parse_from_rfc3339("2026-10-20T07:30:00-04:00").unwrap()
                        + Duration::days(day);
                    d.readings.push(Reading {
                        program: None,
                        id: next_id(),
                        patient: id.clone(),
                        kind: ReadingKind::BloodPressure,
                        systolic: Some(120.0 + rng.below(40) as f64),
                        diastolic: Some(80.0),
                        value: None,
                        unit: "mm[Hg]".into(),
                        measured_at: at,
                        device: Some("cuff".into()),
                        source: ReadingSource::Device,
                    });
                }
            }
        }
        // RTM residents: an inhaler count on most days since set-up.
        if rtm {
            for day in 0..41 {
                if rng.below(10) < 6 {
                    let at = DateTime::parse_from_rfc3339("2026-10-20T19:00:00-04:00").unwrap()
                        + Duration::days(day);
                    d.readings.push(Reading {
                        program: Some(ReadingProgram::Rtm),
                        id: next_id(),
                        patient: id.clone(),
                        kind: ReadingKind::MedicationAdherence,
                        systolic: None,
                        diastolic: None,
                        value: Some(rng.below(4) as f64),
                        unit: "{dose}".into(),
                        measured_at: at,
                        device: Some("app".into()),
                        source: ReadingSource::Device,
                    });
                }
            }
        }
    }
    d
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let patients = args
        .iter()
        .position(|a| a == "--patients")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let legacy = args.iter().any(|a| a == "--legacy");
    let d = data(patients, legacy);
    assert!(
        validate::validate(&d).is_empty(),
        "the generated data is valid"
    );
    let rules = RuleSet::default();
    let month: Month = "2026-11".parse().unwrap();
    let mut times = Vec::new();
    let mut lines = 0;
    let mut by_code = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..5 {
        let t = Instant::now();
        let run = bill(&d, month, &rules).unwrap();
        times.push(t.elapsed());
        lines = run.encounters.iter().map(|e| e.lines.len()).sum::<usize>();
        by_code.clear();
        for l in run.encounters.iter().flat_map(|e| &e.lines) {
            *by_code.entry(l.code.clone()).or_default() += 1;
        }
    }
    times.sort();
    println!(
        "billing ({}): {patients} patient-months ({} interactions, {} readings) -> {lines} lines; median {:.1} ms (min {:.1} ms, max {:.1} ms)",
        if legacy {
            "CCM/RPM only"
        } else {
            "all six programs"
        },
        d.interactions.len(),
        d.readings.len(),
        times[2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[4].as_secs_f64() * 1e3,
    );
    println!(
        "lines by code: {}",
        by_code
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
