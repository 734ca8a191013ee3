//! Semantic checks of a data file: references, dates, codes, plausible readings.
//! One [`Problem`] per problem, naming the entry by id and the field.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Duration, NaiveDate};

use crate::model::{
    DATA_FORMAT, DataFile, Interaction, OTHER_PRACTITIONER, Patient, Reading, ReadingKind,
    ReadingProgram, ReadingSource,
};
use crate::problem::Problem;

/// The longest single time entry accepted.
pub const MAX_INTERACTION: Duration = Duration::hours(24);

/// Whether `code` has the shape of an ICD-10-CM code: letter, digit, alphanumeric, then an
/// optional dot and 1–4 alphanumerics (`I10`, `E11.9`, `Z79.4`, `S72.001A`).
pub fn is_icd10(code: &str) -> bool {
    let b = code.as_bytes();
    if b.len() < 3 {
        return false;
    }
    let alnum = |c: u8| c.is_ascii_digit() || c.is_ascii_uppercase();
    if !(b[0].is_ascii_uppercase() && b[0] != b'U' && b[1].is_ascii_digit() && alnum(b[2])) {
        return false;
    }
    match &b[3..] {
        [] => true,
        [b'.', rest @ ..] => (1..=4).contains(&rest.len()) && rest.iter().all(|&c| alnum(c)),
        _ => false,
    }
}

/// Whether `code` has the shape of a CPT or HCPCS Level II code: four digits and a digit or a
/// letter (`99496`, `0591T`), or a letter and four digits (`G0556`).
pub fn is_hcpcs(code: &str) -> bool {
    let b = code.as_bytes();
    if b.len() != 5 {
        return false;
    }
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    (digits(&b[..4]) && (b[4].is_ascii_digit() || b[4].is_ascii_uppercase()))
        || (b[0].is_ascii_uppercase() && digits(&b[1..]))
}

/// Whether `npi` is a 10-digit NPI with a valid check digit (Luhn over the `80840` prefix).
pub fn is_npi(npi: &str) -> bool {
    if npi.len() != 10 || !npi.bytes().all(|c| c.is_ascii_digit()) {
        return false;
    }
    let digits: Vec<u32> = format!("80840{npi}")
        .bytes()
        .map(|c| u32::from(c - b'0'))
        .collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Check an IANA zone name.
pub fn parse_zone(name: &str) -> Option<chrono_tz::Tz> {
    name.parse::<chrono_tz::Tz>().ok()
}

/// The physiologically possible range of a reading's value in a unit, if the unit fits the kind.
fn value_range(kind: ReadingKind, unit: &str) -> Option<(f64, f64)> {
    use ReadingKind::*;
    Some(match (kind, unit) {
        (HeartRate, "/min") => (20.0, 300.0),
        (RespiratoryRate, "/min") => (4.0, 80.0),
        (Weight, "kg") => (1.0, 500.0),
        (Weight, "[lb_av]") => (2.0, 1100.0),
        (Glucose, "mg/dL") => (10.0, 1500.0),
        (Glucose, "mmol/L") => (0.5, 85.0),
        (Spo2, "%") => (50.0, 100.0),
        (Temperature, "Cel") => (25.0, 45.0),
        (Temperature, "[degF]") => (77.0, 113.0),
        (k, u) => match k.therapeutic() {
            Some((unit, lo, hi)) if unit == u => (lo, hi),
            _ => return None,
        },
    })
}

/// The UCUM units accepted for each kind, for error messages.
fn units_of(kind: ReadingKind) -> &'static str {
    use ReadingKind::*;
    match kind {
        BloodPressure => "mm[Hg]",
        HeartRate | RespiratoryRate => "/min",
        Weight => "kg or [lb_av]",
        Glucose => "mg/dL or mmol/L",
        Spo2 => "%",
        Temperature => "Cel or [degF]",
        MedicationAdherence => "{dose}",
        TherapyAdherence => "{session}",
        TherapyResponse | PainScore => "{score}",
        RangeOfMotion => "deg",
    }
}

/// Problems with one reading's kind, unit and values.
pub fn check_reading(r: &Reading, entry: &str, out: &mut Vec<Problem>) {
    // Rules 54–55: the kind and the source must fit the reading's program.
    let therapeutic = r.kind.therapeutic().is_some();
    match r.program() {
        ReadingProgram::Rtm if !therapeutic => out.push(Problem::new(
            entry,
            "kind",
            format!(
                "{} is not a therapeutic kind: an RTM reading is one of medication_adherence, therapy_adherence, therapy_response, pain_score, range_of_motion",
                r.kind.as_str()
            ),
        )),
        ReadingProgram::Rpm if therapeutic => out.push(Problem::new(
            entry,
            "kind",
            format!(
                "{} is a therapeutic kind: it needs \"program\": \"rtm\"",
                r.kind.as_str()
            ),
        )),
        ReadingProgram::Rpm if r.source == ReadingSource::PatientReported => {
            out.push(Problem::new(
                entry,
                "source",
                "patient_reported is for RTM readings only: an RPM reading comes from a device or is typed in by staff (manual)",
            ))
        }
        _ => {}
    }
    if r.kind == ReadingKind::BloodPressure {
        if r.unit != "mm[Hg]" {
            out.push(Problem::new(
                entry,
                "unit",
                format!("blood_pressure must be in mm[Hg], got {:?}", r.unit),
            ));
        }
        let sys = r.systolic;
        let dia = r.diastolic;
        match sys {
            None => out.push(Problem::new(
                entry,
                "systolic",
                "missing for blood_pressure",
            )),
            Some(s) if !(40.0..=300.0).contains(&s) => out.push(Problem::new(
                entry,
                "systolic",
                format!("{s} mm[Hg] is not physiologically possible (40–300)"),
            )),
            _ => {}
        }
        match dia {
            None => out.push(Problem::new(
                entry,
                "diastolic",
                "missing for blood_pressure",
            )),
            Some(d) if !(20.0..=200.0).contains(&d) => out.push(Problem::new(
                entry,
                "diastolic",
                format!("{d} mm[Hg] is not physiologically possible (20–200)"),
            )),
            _ => {}
        }
        if let (Some(s), Some(d)) = (sys, dia)
            && d >= s
        {
            out.push(Problem::new(
                entry,
                "diastolic",
                format!("{d} is not below systolic {s}"),
            ));
        }
        return;
    }
    let Some((lo, hi)) = value_range(r.kind, &r.unit) else {
        out.push(Problem::new(
            entry,
            "unit",
            format!(
                "{:?} is not a unit for {} (expected {})",
                r.unit,
                r.kind.as_str(),
                units_of(r.kind)
            ),
        ));
        return;
    };
    match r.value {
        None => out.push(Problem::new(
            entry,
            "value",
            format!("missing for {}", r.kind.as_str()),
        )),
        Some(v) if !v.is_finite() || v < lo || v > hi => out.push(Problem::new(
            entry,
            "value",
            format!(
                "{v} {} is not physiologically possible for {} ({lo}–{hi})",
                r.unit,
                r.kind.as_str()
            ),
        )),
        _ => {}
    }
}

/// Problems with one interaction that need no other entry.
pub fn check_interaction_times(i: &Interaction, entry: &str, out: &mut Vec<Problem>) {
    if i.ended_at < i.started_at {
        out.push(Problem::new(
            entry,
            "ended_at",
            format!(
                "{} is before started_at {}",
                i.ended_at.to_rfc3339(),
                i.started_at.to_rfc3339()
            ),
        ));
    } else if i.ended_at - i.started_at > MAX_INTERACTION {
        out.push(Problem::new(
            entry,
            "ended_at",
            "the entry is longer than 24 hours",
        ));
    }
}

/// Rules 57–59: the RTM enrolment, external services and QMB periods of a patient.
fn check_breadth(p: &Patient, entry: &str, practitioners: &BTreeSet<&str>, out: &mut Vec<Problem>) {
    if let Some(rtm) = &p.rtm
        && rtm.device_setup_on.is_none()
    {
        out.push(Problem::new(
            entry,
            "rtm.device_setup_on",
            "missing: RTM periods start on the device set-up date",
        ));
    }
    for (i, q) in p.qmb_periods.iter().enumerate() {
        if let Some(to) = q.to
            && to < q.from
        {
            out.push(Problem::new(
                entry,
                format!("qmb_periods[{i}].to"),
                format!("{to} is before from {}", q.from),
            ));
        }
    }
    for (i, x) in p.external_services.iter().enumerate() {
        let name = match x.id.as_deref() {
            Some(id) if !id.is_empty() => format!("{entry} external service {id}"),
            _ => entry.to_string(),
        };
        let field = |f: &str| format!("external_services[{i}].{f}");
        if !is_hcpcs(&x.code) {
            out.push(Problem::new(
                &name,
                field("code"),
                format!(
                    "{:?} is not a CPT/HCPCS code (five characters: four digits and a digit or letter, or a letter and four digits)",
                    x.code
                ),
            ));
        }
        if x.practitioner != OTHER_PRACTITIONER && !practitioners.contains(x.practitioner.as_str())
        {
            out.push(Problem::new(
                &name,
                field("practitioner"),
                format!(
                    "unknown practitioner {:?} (a practitioner id of this file, or \"other\")",
                    x.practitioner
                ),
            ));
        }
        if let Some(npi) = &x.npi
            && !is_npi(npi)
        {
            out.push(Problem::new(
                &name,
                field("npi"),
                format!("{npi:?} is not a valid NPI (10 digits with a check digit)"),
            ));
        }
    }
}

fn check_patient(
    p: &Patient,
    people: &BTreeSet<&str>,
    practitioners: &BTreeSet<&str>,
    out: &mut Vec<Problem>,
) {
    let entry = format!("patient {}", p.id);
    if !practitioners.contains(p.billing_practitioner.as_str()) {
        out.push(Problem::new(
            &entry,
            "billing_practitioner",
            format!("unknown practitioner {:?}", p.billing_practitioner),
        ));
    }
    for (i, c) in p.conditions.iter().enumerate() {
        if !is_icd10(&c.icd10) {
            out.push(Problem::new(
                &entry,
                format!("conditions[{i}].icd10"),
                format!("{:?} is not an ICD-10-CM code", c.icd10),
            ));
        }
    }
    if let Some(code) = &p.pcm_condition
        && !is_icd10(code)
    {
        out.push(Problem::new(
            &entry,
            "pcm_condition",
            format!("{code:?} is not an ICD-10-CM code"),
        ));
    }
    for (i, c) in p.consents.iter().enumerate() {
        if let Some(by) = &c.by
            && !people.contains(by.as_str())
        {
            out.push(Problem::new(
                &entry,
                format!("consents[{i}].by"),
                format!("unknown staff or practitioner {by:?}"),
            ));
        }
        if let Some(r) = c.revoked_on
            && r < c.given_on
        {
            out.push(Problem::new(
                &entry,
                format!("consents[{i}].revoked_on"),
                "is before given_on",
            ));
        }
    }
    check_breadth(p, &entry, practitioners, out);
    for (i, s) in p.stays.iter().enumerate() {
        if s.to < s.from {
            out.push(Problem::new(
                &entry,
                format!("stays[{i}].to"),
                "is before from",
            ));
        }
    }
    for (i, a) in p.absences.iter().enumerate() {
        if a.to < a.from {
            out.push(Problem::new(
                &entry,
                format!("absences[{i}].to"),
                "is before from",
            ));
        }
    }
    if let (Some(b), Some(d)) = (p.birth_date, p.died_on)
        && d < b
    {
        out.push(Problem::new(&entry, "died_on", "is before birth_date"));
    }
    for (i, r) in p.practitioners_of_record.iter().enumerate() {
        if !practitioners.contains(r.practitioner.as_str()) {
            out.push(Problem::new(
                &entry,
                format!("practitioners_of_record[{i}].practitioner"),
                format!("unknown practitioner {:?}", r.practitioner),
            ));
        }
        if let Some(to) = r.to
            && to < r.from
        {
            out.push(Problem::new(
                &entry,
                format!("practitioners_of_record[{i}].to"),
                "is before from",
            ));
        }
        for (j, o) in p.practitioners_of_record.iter().enumerate().take(i) {
            let overlap = r.from <= o.to.unwrap_or(NaiveDate::MAX)
                && o.from <= r.to.unwrap_or(NaiveDate::MAX);
            if o.program == r.program && overlap {
                out.push(Problem::new(
                    &entry,
                    format!("practitioners_of_record[{i}]"),
                    format!(
                        "overlaps practitioners_of_record[{j}] for {}: one practitioner of record per program and day",
                        r.program.map_or("every program", |p| p.as_str())
                    ),
                ));
            }
        }
    }
}

/// One practice on its own (the data file's entry, or the admin API's body): a safe id, a name,
/// a valid group NPI and TIN when given, e-mail contacts.
pub fn check_practice(p: &crate::model::Practice) -> Vec<Problem> {
    let mut out = Vec::new();
    let entry = format!("practice {}", p.id);
    if let Err(e) = crate::ids::check_id("id", &p.id) {
        out.push(Problem::new(
            "practice",
            "id",
            format!("{:?} is not a valid id ({})", e.shown, e.reason),
        ));
        return out;
    }
    if p.name.trim().is_empty() {
        out.push(Problem::new(&entry, "name", "is empty"));
    }
    if let Some(npi) = &p.group_npi
        && !is_npi(npi)
    {
        out.push(Problem::new(
            &entry,
            "group_npi",
            format!("{npi:?} is not a valid 10-digit NPI"),
        ));
    }
    if let Some(tin) = &p.tin
        && !(tin.len() == 9 && tin.bytes().all(|c| c.is_ascii_digit()))
    {
        out.push(Problem::new(
            &entry,
            "tin",
            "is not a 9-digit taxpayer identification number",
        ));
    }
    for (i, x) in p.practitioners.iter().enumerate() {
        if let Err(e) = crate::ids::check_id("practitioner", x) {
            out.push(Problem::new(
                &entry,
                format!("practitioners[{i}]"),
                format!("{:?} is not a valid id ({})", e.shown, e.reason),
            ));
        }
    }
    for (i, c) in p.contacts.iter().enumerate() {
        let ok = c.len() <= 254
            && c.split_once('@').is_some_and(|(a, b)| {
                !a.is_empty() && b.contains('.') && !c.chars().any(char::is_whitespace)
            });
        if !ok {
            out.push(Problem::new(
                &entry,
                format!("contacts[{i}]"),
                "is not an e-mail address",
            ));
        }
    }
    out
}

/// Practices: valid group NPI and TIN, known practitioners each in at most one practice, and
/// every practitioner of record in a practice when the file has practices.
fn check_practices(d: &DataFile, practitioners: &BTreeSet<&str>, out: &mut Vec<Problem>) {
    dup_check(
        d.practices
            .iter()
            .map(|p| (p.id.clone(), format!("practice {}", p.id))),
        out,
        &mut BTreeMap::new(),
    );
    let mut member_of: BTreeMap<&str, &str> = BTreeMap::new();
    for p in &d.practices {
        let entry = format!("practice {}", p.id);
        out.extend(check_practice(p));
        for (i, x) in p.practitioners.iter().enumerate() {
            if !practitioners.contains(x.as_str()) {
                out.push(Problem::new(
                    &entry,
                    format!("practitioners[{i}]"),
                    format!("unknown practitioner {x:?}"),
                ));
            } else if let Some(other) = member_of.insert(x.as_str(), p.id.as_str())
                && other != p.id
            {
                out.push(Problem::new(
                    &entry,
                    format!("practitioners[{i}]"),
                    format!("practitioner {x:?} is already in practice {other:?}: a practitioner belongs to one practice"),
                ));
            }
        }
    }
    if d.practices.is_empty() {
        return;
    }
    for p in &d.patients {
        let entry = format!("patient {}", p.id);
        if practitioners.contains(p.billing_practitioner.as_str())
            && !member_of.contains_key(p.billing_practitioner.as_str())
        {
            out.push(Problem::new(
                &entry,
                "billing_practitioner",
                format!(
                    "practitioner {:?} belongs to no practice",
                    p.billing_practitioner
                ),
            ));
        }
        for (i, r) in p.practitioners_of_record.iter().enumerate() {
            if practitioners.contains(r.practitioner.as_str())
                && !member_of.contains_key(r.practitioner.as_str())
            {
                out.push(Problem::new(
                    &entry,
                    format!("practitioners_of_record[{i}].practitioner"),
                    format!("practitioner {:?} belongs to no practice", r.practitioner),
                ));
            }
        }
    }
}

fn dup_check(
    ids: impl Iterator<Item = (String, String)>,
    out: &mut Vec<Problem>,
    seen: &mut BTreeMap<String, String>,
) {
    for (id, entry) in ids {
        if let Some(first) = seen.get(&id) {
            out.push(Problem::new(
                entry,
                "id",
                format!("duplicate id, also used by {first}"),
            ));
        } else {
            seen.insert(id, entry);
        }
    }
}

/// Every problem in a data file; empty when it is valid.
pub fn validate(d: &DataFile) -> Vec<Problem> {
    let mut out = Vec::new();
    if d.format != DATA_FORMAT {
        out.push(Problem::new(
            "file",
            "format",
            format!("{:?} is not {DATA_FORMAT:?}", d.format),
        ));
    }
    // Ids first: they become document names and file names. A bad one stops the check here,
    // so no later message repeats it.
    let mut bad_ids = Vec::new();
    let ids = std::iter::once(("facility".to_string(), "id", &d.facility.id))
        .chain(
            d.practitioners
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("practitioners[{i}]"), "id", &p.id)),
        )
        .chain(
            d.practices
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("practices[{i}]"), "id", &p.id)),
        )
        .chain(
            d.staff
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("staff[{i}]"), "id", &s.id)),
        )
        .chain(
            d.patients
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("patients[{i}]"), "id", &p.id)),
        )
        .chain(d.interactions.iter().enumerate().flat_map(|(i, x)| {
            [
                (format!("interactions[{i}]"), "patient", &x.patient),
                (format!("interactions[{i}]"), "staff", &x.staff),
            ]
        }))
        .chain(
            d.readings
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("readings[{i}]"), "patient", &r.patient)),
        );
    for (entry, field, id) in ids {
        if let Err(e) = crate::ids::check_id(field, id) {
            bad_ids.push(Problem::new(
                entry,
                field,
                format!("{:?} is not a valid id ({})", e.shown, e.reason),
            ));
        }
    }
    if !bad_ids.is_empty() {
        out.extend(bad_ids);
        return out;
    }
    if parse_zone(&d.facility.timezone).is_none() {
        out.push(Problem::new(
            "facility",
            "timezone",
            format!("{:?} is not an IANA time zone", d.facility.timezone),
        ));
    }
    if d.facility.id.is_empty() {
        out.push(Problem::new("facility", "id", "is empty"));
    }
    let pos = &d.facility.place_of_service;
    if pos.len() != 2 || !pos.bytes().all(|c| c.is_ascii_digit()) {
        out.push(Problem::new(
            "facility",
            "place_of_service",
            format!("{pos:?} is not a two-digit place-of-service code"),
        ));
    }
    for p in &d.practitioners {
        if !is_npi(&p.npi) {
            out.push(Problem::new(
                format!("practitioner {}", p.id),
                "npi",
                format!("{:?} is not a valid 10-digit NPI", p.npi),
            ));
        }
    }
    let mut people_seen = BTreeMap::new();
    dup_check(
        d.practitioners
            .iter()
            .map(|p| (p.id.clone(), format!("practitioner {}", p.id))),
        &mut out,
        &mut people_seen,
    );
    dup_check(
        d.staff
            .iter()
            .map(|s| (s.id.clone(), format!("staff {}", s.id))),
        &mut out,
        &mut people_seen,
    );
    dup_check(
        d.patients
            .iter()
            .map(|p| (p.id.clone(), format!("patient {}", p.id))),
        &mut out,
        &mut BTreeMap::new(),
    );
    let mut entry_seen = BTreeMap::new();
    dup_check(
        d.interactions
            .iter()
            .map(|i| (i.id.to_string(), format!("interaction {}", i.id))),
        &mut out,
        &mut entry_seen,
    );
    dup_check(
        d.readings
            .iter()
            .map(|r| (r.id.to_string(), format!("reading {}", r.id))),
        &mut out,
        &mut entry_seen,
    );
    dup_check(
        d.timers
            .iter()
            .map(|t| (t.id.to_string(), format!("timer {}", t.id))),
        &mut out,
        &mut entry_seen,
    );
    dup_check(
        d.corrections
            .iter()
            .map(|c| (c.id.to_string(), format!("correction {}", c.id))),
        &mut out,
        &mut entry_seen,
    );

    let practitioners: BTreeSet<&str> = d.practitioners.iter().map(|p| p.id.as_str()).collect();
    let mut people = practitioners.clone();
    people.extend(d.staff.iter().map(|s| s.id.as_str()));
    let patients: BTreeSet<&str> = d.patients.iter().map(|p| p.id.as_str()).collect();
    for p in &d.patients {
        check_patient(p, &people, &practitioners, &mut out);
    }
    check_practices(d, &practitioners, &mut out);
    let ref_check = |entry: &str, patient: &str, staff: Option<&str>, out: &mut Vec<Problem>| {
        if !patients.contains(patient) {
            out.push(Problem::new(
                entry,
                "patient",
                format!("unknown patient {patient:?}"),
            ));
        }
        if let Some(s) = staff
            && !people.contains(s)
        {
            out.push(Problem::new(
                entry,
                "staff",
                format!("unknown staff or practitioner {s:?}"),
            ));
        }
    };
    for i in &d.interactions {
        let entry = format!("interaction {}", i.id);
        ref_check(&entry, &i.patient, Some(&i.staff), &mut out);
        check_interaction_times(i, &entry, &mut out);
        if let Some(a) = i.amends
            && !d.interactions.iter().any(|o| o.id == a)
        {
            out.push(Problem::new(
                &entry,
                "amends",
                format!("unknown interaction {a}"),
            ));
        }
    }
    for r in &d.readings {
        let entry = format!("reading {}", r.id);
        ref_check(&entry, &r.patient, None, &mut out);
        check_reading(r, &entry, &mut out);
        if r.source == ReadingSource::Device && r.device.is_none() {
            out.push(Problem::new(
                &entry,
                "device",
                "missing for a reading with source \"device\"",
            ));
        }
    }
    for t in &d.timers {
        ref_check(
            &format!("timer {}", t.id),
            &t.patient,
            Some(&t.staff),
            &mut out,
        );
    }
    for c in &d.corrections {
        let entry = format!("correction {}", c.id);
        let known = d.interactions.iter().any(|i| i.id == c.target)
            || d.readings.iter().any(|r| r.id == c.target);
        if !known {
            out.push(Problem::new(
                &entry,
                "target",
                format!("unknown entry {}", c.target),
            ));
        }
        if !people.contains(c.by.as_str()) {
            out.push(Problem::new(
                &entry,
                "by",
                format!("unknown staff or practitioner {:?}", c.by),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icd10_shapes() {
        for ok in ["I10", "E11.9", "Z79.4", "S72.001A", "J44.1", "N18.30"] {
            assert!(is_icd10(ok), "{ok}");
        }
        for bad in [
            "",
            "I1",
            "i10",
            "110",
            "E11.",
            "E11.12345",
            "E11-9",
            "U07.1",
        ] {
            assert!(!is_icd10(bad), "{bad}");
        }
    }

    #[test]
    fn npi_check_digit() {
        assert!(is_npi("1234567893"));
        assert!(!is_npi("1234567890"));
        assert!(!is_npi("123456789"));
    }
}
