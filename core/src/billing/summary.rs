//! The monthly "patients served" summary (`docs/ehr-integration.md`): one row per patient ×
//! program, with provider and facility totals, as CSV.

use std::collections::BTreeMap;

use super::encounter::{BillingRun, Encounter, ExceptionProgram};
use crate::model::{DataFile, Patient, Program};

/// The CSV columns, in order.
pub const COLUMNS: &[&str] = &[
    "month",
    "facility",
    "billing_provider",
    "billing_npi",
    "patient_id",
    "patient_name",
    "mrn",
    "birth_date",
    "program",
    "consent_date",
    "consent_method",
    "consent_by",
    "initiating_visit_on",
    "conditions",
    "qualifying_minutes",
    "practitioner_minutes",
    "interactive_communications",
    "care_plan_updated_on",
    "rpm_devices",
    "rpm_setup_on",
    "rpm_reading_days",
    "codes",
    "date_of_service",
    "place_of_service",
    "status",
    "exceptions",
];

fn codes_of(enc: &Encounter, program: Program) -> Vec<(String, u32)> {
    enc.lines
        .iter()
        .filter(|l| program_of_code(&l.code) == Some(program))
        .map(|l| (l.code.clone(), l.units))
        .collect()
}

/// The program a CPT code belongs to.
pub fn program_of_code(code: &str) -> Option<Program> {
    match code {
        "99490" | "99439" | "99487" | "99489" | "99491" | "99437" => Some(Program::Ccm),
        "99424" | "99425" | "99426" | "99427" => Some(Program::Pcm),
        "99453" | "99454" | "99445" | "99457" | "99458" | "99470" => Some(Program::Rpm),
        "G0556" | "G0557" | "G0558" => Some(Program::Apcm),
        // G0570 is BHI furnished as APCM's add-on; it is reported with the BHI time it rests on.
        "99484" | "G0570" => Some(Program::Bhi),
        "98975" | "98976" | "98977" | "98978" | "98984" | "98985" | "98986" | "98979" | "98980"
        | "98981" => Some(Program::Rtm),
        _ => None,
    }
}

fn programs_of(p: &Patient, enc: &Encounter) -> Vec<Program> {
    Program::ALL
        .into_iter()
        .filter(|prog| {
            p.consents.iter().any(|c| c.program == *prog)
                || enc
                    .exceptions
                    .iter()
                    .any(|e| e.program == ExceptionProgram::from(*prog))
                || !codes_of(enc, *prog).is_empty()
        })
        .collect()
}

fn join_codes(codes: &[(String, u32)]) -> String {
    codes
        .iter()
        .map(|(c, u)| format!("{c}x{u}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// Write the summary of a billing run as CSV.
pub fn write_csv<W: std::io::Write>(
    data: &DataFile,
    run: &BillingRun,
    out: W,
) -> Result<(), csv::Error> {
    write_csv_many(&[(data, run)], None, out)
}

type Total = (u32, u32, BTreeMap<String, u32>);

/// Write the summary of several facilities' runs as one CSV: each facility's rows and totals,
/// then, with `practice`, a `TOTAL practice <name>` row summing the facilities.
pub fn write_csv_many<W: std::io::Write>(
    runs: &[(&DataFile, &BillingRun)],
    practice: Option<&str>,
    out: W,
) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(COLUMNS)?;
    let mut practice_total: Total = Default::default();
    let mut last_month = String::new();
    for (data, run) in runs {
        let facility_total = write_facility(&mut w, data, run)?;
        practice_total.0 += facility_total.0;
        practice_total.1 += facility_total.1;
        for (c, u) in facility_total.2 {
            *practice_total.2.entry(c).or_default() += u;
        }
        last_month = run.month.to_string();
    }
    if let Some(name) = practice {
        let mut row = vec![String::new(); COLUMNS.len()];
        row[0] = last_month;
        row[4] = format!("TOTAL practice {name}");
        row[8] = format!("{} patient-programs", practice_total.0);
        row[14] = practice_total.1.to_string();
        row[21] = join_codes(
            &practice_total
                .2
                .iter()
                .map(|(c, u)| (c.clone(), *u))
                .collect::<Vec<_>>(),
        );
        w.write_record(&row)?;
    }
    w.flush()?;
    Ok(())
}

fn write_facility<W: std::io::Write>(
    w: &mut csv::Writer<W>,
    data: &DataFile,
    run: &BillingRun,
) -> Result<Total, csv::Error> {
    let month = run.month.to_string();
    let mut totals: BTreeMap<String, Total> = BTreeMap::new();
    let mut facility_total: Total = Default::default();
    // Indexed once: a facility's summary is one pass, not one scan of every entry per patient.
    let patients: std::collections::HashMap<&str, &Patient> =
        data.patients.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut interactions: std::collections::HashMap<&str, Vec<&crate::model::Interaction>> =
        std::collections::HashMap::new();
    for i in &data.interactions {
        interactions.entry(i.patient.as_str()).or_default().push(i);
    }
    for enc in &run.encounters {
        let Some(p) = patients.get(enc.patient.as_str()).copied() else {
            continue;
        };
        let mut programs = programs_of(p, enc);
        if programs.is_empty() {
            programs.push(Program::Ccm);
        }
        let month_entries: Vec<_> = interactions
            .get(p.id.as_str())
            .into_iter()
            .flatten()
            .filter(|i| enc.evidence.contains(&i.id))
            .collect();
        for prog in programs {
            // The provider: the one on the program's lines, else its practitioner of record.
            let provider = enc
                .lines
                .iter()
                .find(|l| program_of_code(&l.code) == Some(prog))
                .and_then(|l| data.practitioners.iter().find(|x| x.npi == l.rendering_npi))
                .or_else(|| {
                    let id = p.practitioner_on(prog, run.month.last_day());
                    data.practitioners.iter().find(|x| x.id == id)
                });
            let provider_name = provider.map(|x| x.name.clone()).unwrap_or_default();
            let npi = provider.map(|x| x.npi.clone()).unwrap_or_default();
            let consent = p
                .consents
                .iter()
                .filter(|c| c.program == prog)
                .max_by_key(|c| c.given_on);
            let codes = codes_of(enc, prog);
            let minutes = match prog {
                Program::Apcm | Program::Bhi | Program::Rtm => enc.minutes.of(prog),
                Program::Ccm => enc.minutes.ccm,
                Program::Pcm => enc.minutes.pcm,
                Program::Rpm => enc.minutes.rpm,
            };
            let interactive = month_entries
                .iter()
                .filter(|i| i.program == prog && i.interactive)
                .count();
            let dos = enc
                .lines
                .iter()
                .filter(|l| program_of_code(&l.code) == Some(prog))
                .map(|l| l.date_of_service)
                .max();
            let exceptions: Vec<&str> = enc
                .exceptions
                .iter()
                .filter(|e| {
                    e.program == ExceptionProgram::from(prog)
                        || e.program == ExceptionProgram::General
                })
                .map(|e| e.reason.as_str())
                .collect();
            let plan_updated = p
                .care_plan
                .as_ref()
                .and_then(|c| c.revised_on.iter().max().copied().or(c.established_on));
            let (devices, setup, days) = match (&p.rpm, prog) {
                (Some(r), Program::Rpm) => (
                    r.devices.join(";"),
                    r.device_setup_on.to_string(),
                    enc.rpm_periods
                        .iter()
                        .map(|x| x.days.to_string())
                        .collect::<Vec<_>>()
                        .join(";"),
                ),
                (_, Program::Rtm) => match &p.rtm {
                    Some(r) => (
                        r.devices.join(";"),
                        r.device_setup_on.map(|d| d.to_string()).unwrap_or_default(),
                        enc.rtm_periods
                            .iter()
                            .map(|x| x.days.to_string())
                            .collect::<Vec<_>>()
                            .join(";"),
                    ),
                    None => Default::default(),
                },
                _ => Default::default(),
            };
            let row = vec![
                month.clone(),
                data.facility.name.clone(),
                provider_name.clone(),
                npi.clone(),
                p.id.clone(),
                p.name.clone(),
                p.mrn.clone().unwrap_or_default(),
                p.birth_date.map(|d| d.to_string()).unwrap_or_default(),
                prog.as_str().to_string(),
                consent.map(|c| c.given_on.to_string()).unwrap_or_default(),
                consent.and_then(|c| c.method.clone()).unwrap_or_default(),
                consent.and_then(|c| c.by.clone()).unwrap_or_default(),
                p.initiating_visit_on
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                p.conditions
                    .iter()
                    .map(|c| c.icd10.as_str())
                    .collect::<Vec<_>>()
                    .join(";"),
                minutes.to_string(),
                if prog == Program::Ccm {
                    enc.minutes.ccm_practitioner.to_string()
                } else {
                    String::new()
                },
                interactive.to_string(),
                plan_updated.map(|d| d.to_string()).unwrap_or_default(),
                devices,
                setup,
                days,
                join_codes(&codes),
                dos.map(|d| d.to_string()).unwrap_or_default(),
                if codes.is_empty() {
                    String::new()
                } else {
                    data.facility.place_of_service.clone()
                },
                if codes.is_empty() {
                    "not billable".into()
                } else {
                    "ready".into()
                },
                exceptions.join(" | "),
            ];
            w.write_record(&row)?;
            for t in [
                totals.entry(provider_name.clone()).or_default(),
                &mut facility_total,
            ] {
                t.0 += 1;
                t.1 += minutes;
                for (c, u) in &codes {
                    *t.2.entry(c.clone()).or_default() += u;
                }
            }
        }
    }
    let total_row =
        |label: String, rows: u32, minutes: u32, codes: &BTreeMap<String, u32>| -> Vec<String> {
            let mut row = vec![String::new(); COLUMNS.len()];
            row[0] = month.clone();
            row[1] = data.facility.name.clone();
            row[4] = label;
            row[8] = format!("{rows} patient-programs");
            row[14] = minutes.to_string();
            row[21] = join_codes(
                &codes
                    .iter()
                    .map(|(c, u)| (c.clone(), *u))
                    .collect::<Vec<_>>(),
            );
            row
        };
    for (provider, (rows, minutes, codes)) in &totals {
        let mut row = total_row(format!("TOTAL provider {provider}"), *rows, *minutes, codes);
        row[2] = provider.clone();
        w.write_record(&row)?;
    }
    let (rows, minutes, codes) = &facility_total;
    w.write_record(total_row("TOTAL facility".into(), *rows, *minutes, codes))?;
    Ok(facility_total)
}

/// One practice's month at one facility, as the company's view shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PracticeFacilityMonth {
    pub practice: String,
    pub facility: String,
    /// Patients of the practice (a practitioner of record of it in the month) with care in the
    /// month: care-management minutes, an RPM device period, or a line of the practice.
    pub patients_served: u32,
    /// Of those, patients with at least one of the practice's lines.
    pub patients_billed: u32,
    /// Units per code.
    pub units: BTreeMap<String, u32>,
    /// Estimated payment per code in cents (units × the fee schedule's amount); codes without
    /// an amount are absent.
    pub estimated_cents: BTreeMap<String, u64>,
}

impl PracticeFacilityMonth {
    /// The practice's share of a facility's encounters. `default_practice` is the practice of
    /// lines without one (the facility's own, in a file without practices).
    pub fn of(
        practice: &str,
        facility: &str,
        default_practice: &str,
        encounters: &[Encounter],
        fees: &super::rules::FeeSchedule,
        locality: Option<&str>,
    ) -> PracticeFacilityMonth {
        let mut out = PracticeFacilityMonth {
            practice: practice.to_string(),
            facility: facility.to_string(),
            ..Default::default()
        };
        for enc in encounters {
            if !enc.concerns(practice, default_practice) {
                continue;
            }
            let mine: Vec<_> = enc
                .lines
                .iter()
                .filter(|l| Encounter::line_practice(l, default_practice) == practice)
                .collect();
            let m = &enc.minutes;
            let cared = m.ccm + m.pcm + m.rpm > 0 || !enc.rpm_periods.is_empty();
            if cared || !mine.is_empty() {
                out.patients_served += 1;
            }
            if !mine.is_empty() {
                out.patients_billed += 1;
            }
            for l in mine {
                *out.units.entry(l.code.clone()).or_default() += l.units;
                if let Some(a) = fees.amount(&l.code, locality) {
                    *out.estimated_cents.entry(l.code.clone()).or_default() +=
                        u64::from(a) * u64::from(l.units);
                }
            }
        }
        out
    }

    /// Add another facility's figures (for the practice's total).
    pub fn add(&mut self, other: &PracticeFacilityMonth) {
        self.patients_served += other.patients_served;
        self.patients_billed += other.patients_billed;
        for (c, u) in &other.units {
            *self.units.entry(c.clone()).or_default() += u;
        }
        for (c, a) in &other.estimated_cents {
            *self.estimated_cents.entry(c.clone()).or_default() += a;
        }
    }

    pub fn total_cents(&self) -> u64 {
        self.estimated_cents.values().sum()
    }
}

/// Dollars and cents.
pub fn dollars(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// The company's view as CSV: per practice and facility, one row per code (units and estimated
/// payment), then the practice's total over its facilities.
pub fn write_company_csv<W: std::io::Write>(
    month: crate::month::Month,
    rows: &[PracticeFacilityMonth],
    out: W,
) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "month",
        "practice",
        "facility",
        "patients_served",
        "patients_billed",
        "code",
        "units",
        "estimated_payment",
    ])?;
    let month = month.to_string();
    let mut totals: BTreeMap<&str, PracticeFacilityMonth> = BTreeMap::new();
    let write = |w: &mut csv::Writer<W>, r: &PracticeFacilityMonth, facility: &str| {
        let mut lines: Vec<(String, String, String)> = r
            .units
            .iter()
            .map(|(c, u)| {
                let amount = r
                    .estimated_cents
                    .get(c)
                    .map_or_else(String::new, |a| dollars(*a));
                (c.clone(), u.to_string(), amount)
            })
            .collect();
        lines.push(("ALL".into(), String::new(), dollars(r.total_cents())));
        for (code, units, amount) in lines {
            w.write_record([
                month.as_str(),
                r.practice.as_str(),
                facility,
                &r.patients_served.to_string(),
                &r.patients_billed.to_string(),
                &code,
                &units,
                &amount,
            ])?;
        }
        Ok::<(), csv::Error>(())
    };
    for r in rows {
        write(&mut w, r, &r.facility)?;
        totals
            .entry(r.practice.as_str())
            .or_insert_with(|| PracticeFacilityMonth {
                practice: r.practice.clone(),
                ..Default::default()
            })
            .add(r);
    }
    for t in totals.values() {
        write(&mut w, t, "TOTAL")?;
    }
    w.flush()?;
    Ok(())
}
