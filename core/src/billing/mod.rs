//! The billing engine: facility + patients + a month's entries + a [`RuleSet`] → one
//! [`Encounter`] per patient. A pure function; `docs/billing-rules.md` is its contract
//! (the numbered comments below refer to it).

mod apcm;
mod concurrency;
pub mod encounter;
mod rtm;
pub mod rules;
pub mod summary;
pub mod time;
pub mod worklist;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{Duration, NaiveDate};
use chrono_tz::Tz;
use uuid::Uuid;

pub use apcm::{APCM_CODES, apcm_level};
pub use encounter::*;
pub use rules::{Revocation, RuleSet};

use crate::model::{
    CcmLane, Consent, DataFile, Interaction, Patient, Program, Reading, ReadingProgram,
    ReadingSource, StayKind, Tenure,
};
use crate::month::Month;
use time::{Segment, count_once_per_person, human_duration, split_by_local_day, whole_minutes};

/// Billing could not run at all (the input itself is unusable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingError {
    #[error("facility: field `timezone`: {0:?} is not an IANA time zone")]
    BadZone(String),
}

/// Bill every patient of the data file for `month`.
pub fn bill(data: &DataFile, month: Month, rules: &RuleSet) -> Result<BillingRun, BillingError> {
    let input = Input::new(data)?;
    let encounters = data
        .patients
        .iter()
        .map(|p| bill_patient(&input, p, month, rules))
        .collect();
    Ok(BillingRun {
        month,
        rule_set: rules.name.clone(),
        encounters,
    })
}

/// The data file indexed for billing: entries deduplicated by id, superseded ones removed.
pub(crate) struct Input<'a> {
    pub data: &'a DataFile,
    pub tz: Tz,
    pub interactions: BTreeMap<&'a str, Vec<&'a Interaction>>,
    pub readings: BTreeMap<&'a str, Vec<&'a Reading>>,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a DataFile) -> Result<Input<'a>, BillingError> {
        let tz: Tz = data
            .facility
            .timezone
            .parse()
            .map_err(|_| BillingError::BadZone(data.facility.timezone.clone()))?;
        let superseded = data.superseded_ids();
        let mut seen = BTreeSet::new();
        let mut interactions: BTreeMap<&str, Vec<&Interaction>> = BTreeMap::new();
        let mut unique: Vec<&Interaction> = data.interactions.iter().collect();
        unique.sort_by_key(|i| i.id);
        for i in unique {
            if seen.insert(i.id) && !superseded.contains(&i.id) {
                interactions.entry(i.patient.as_str()).or_default().push(i);
            }
        }
        let mut readings: BTreeMap<&str, Vec<&Reading>> = BTreeMap::new();
        let mut unique: Vec<&Reading> = data.readings.iter().collect();
        unique.sort_by_key(|r| r.id);
        for r in unique {
            if seen.insert(r.id) && !superseded.contains(&r.id) {
                readings.entry(r.patient.as_str()).or_default().push(r);
            }
        }
        Ok(Input {
            data,
            tz,
            interactions,
            readings,
        })
    }

    fn is_practitioner(&self, id: &str) -> bool {
        self.data.practitioners.iter().any(|p| p.id == id)
    }

    /// The practice of a practitioner, when the file names practices.
    fn practice_of(&self, id: &str) -> Option<String> {
        self.data.practice_of(id).map(|p| p.id.clone())
    }

    /// Whether the practitioner's practice confirms transition months (rule P1).
    fn confirms_transition(&self, id: &str) -> bool {
        self.data
            .practice_of(id)
            .is_some_and(|p| p.confirms_transition_months)
    }

    /// The practitioner's APCM attestation date (rule 26b).
    fn attested_on(&self, id: &str) -> Option<NaiveDate> {
        self.data
            .practitioners
            .iter()
            .find(|p| p.id == id)
            .and_then(|p| p.apcm_attested_on)
    }

    fn npi_of(&self, id: &str) -> String {
        self.data
            .practitioners
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.npi.clone())
            .unwrap_or_default()
    }

    /// Rule 3: a practitioner, or staff with `counts_for_billing`.
    fn person_counts(&self, id: &str) -> Result<(), String> {
        if self.is_practitioner(id) {
            return Ok(());
        }
        match self.data.staff.iter().find(|s| s.id == id) {
            Some(s) if s.counts_for_billing => Ok(()),
            Some(_) => Err(format!("{id} is not counted for billing")),
            None => Err(format!("{id} is not on the staff roster")),
        }
    }
}

/// Whether a consent covers `month` (CCM/PCM style: revocation effective at the end of its
/// month, or on its date, per the rule set).
fn consent_covers_month(c: &Consent, month: Month, revocation: Revocation) -> bool {
    if c.given_on > month.last_day() {
        return false;
    }
    match (c.revoked_on, revocation) {
        (None, _) => true,
        (Some(r), Revocation::EndOfMonth) => Month::of(r) >= month,
        (Some(r), Revocation::OnDate) => r > month.first_day(),
    }
}

fn consent_for(p: &Patient, program: Program, month: Month, rev: Revocation) -> Option<&Consent> {
    p.consents
        .iter()
        .filter(|c| c.program == program)
        .find(|c| consent_covers_month(c, month, rev))
}

/// The patient's chronic conditions in file order (all conditions if none is marked chronic).
fn chronic_diagnoses(p: &Patient) -> Vec<String> {
    let chronic: Vec<String> = p
        .conditions
        .iter()
        .filter(|c| c.chronic)
        .map(|c| c.icd10.clone())
        .collect();
    if chronic.is_empty() {
        p.conditions.iter().map(|c| c.icd10.clone()).collect()
    } else {
        chronic
    }
}

/// The qualifying time of one patient's month, per bucket, with evidence.
#[derive(Debug, Default)]
pub(crate) struct MonthTime {
    /// Seconds per program of everyone who counts.
    pub seconds: BTreeMap<Program, i64>,
    /// Seconds per program of the billing practitioner personally.
    pub practitioner_seconds: BTreeMap<Program, i64>,
    /// Entries contributing time, per program, and per program for the billing practitioner.
    pub evidence: BTreeMap<Program, BTreeSet<Uuid>>,
    pub practitioner_evidence: BTreeMap<Program, BTreeSet<Uuid>>,
    /// Whether a qualifying, interactive entry exists, per program.
    pub interactive: BTreeMap<Program, bool>,
    /// Any time at all in the program this month (qualifying or not).
    pub any: BTreeSet<Program>,
    /// Entries with qualifying time, of any duration (APCM activity, G0570), per program.
    pub qualifying_entries: BTreeMap<Program, BTreeSet<Uuid>>,
    pub exceptions: Vec<Exception>,
}

/// Count a patient's time in `month`, up to and including `until` (the month's last day for
/// billing, the as-of date for the worklist).
pub(crate) fn month_time(
    input: &Input<'_>,
    p: &Patient,
    month: Month,
    until: NaiveDate,
    rules: &RuleSet,
    ten: &Tenures,
) -> MonthTime {
    let mut t = MonthTime::default();
    let mut qualifying: Vec<Segment> = Vec::new();
    let mut not_counted: BTreeMap<(Program, String), i64> = BTreeMap::new();
    let revoked = |program: Program| {
        p.consents
            .iter()
            .filter(|c| c.program == program)
            .filter_map(|c| c.revoked_on)
            .max()
    };
    // Rules 27 and 36: whether a program's time inside a stay still counts.
    let stay_counts = |program: Program| match program {
        Program::Bhi => rules.bhi_count_stay_time,
        Program::Apcm => !rules.apcm_exclude_stay_activity,
        _ => false,
    };
    for i in input.interactions.get(p.id.as_str()).into_iter().flatten() {
        for s in split_by_local_day(i, input.tz) {
            if !month.contains(s.date) || s.date > until {
                continue;
            }
            t.any.insert(s.program);
            let secs = (s.end - s.start).num_seconds();
            let reason = input.person_counts(&s.person).err().or_else(|| {
                if let Some(stay) = p.stays.iter().find(|st| st.contains(s.date))
                    && !stay_counts(s.program)
                {
                    let kind = match stay.kind {
                        StayKind::PartA => "Part A",
                        StayKind::Inpatient => "inpatient",
                    };
                    return Some(format!(
                        "inside the {kind} stay {} to {}",
                        stay.from,
                        stay.to_text()
                    ));
                }
                if let Some(d) = p.died_on
                    && s.date > d
                {
                    return Some(format!("after the date of death {d}"));
                }
                if let Some(d) = p.discharged_on
                    && s.date > d
                {
                    return Some(format!("after the discharge from the facility on {d}"));
                }
                if let Some(a) = p.absences.iter().find(|a| a.contains(s.date)) {
                    return Some(format!(
                        "while away from the facility ({} to {}, between a discharge and the readmission)",
                        a.from, a.to
                    ));
                }
                if let Some(t) = ten.of.get(&s.program)
                    && let (Some(since), Some(before)) = (t.since, &t.predecessor)
                    && s.date < since
                {
                    return Some(format!(
                        "before the change of billing practitioner on {since} (furnished under {before})"
                    ));
                }
                // Rule 20: with a revocation effective on its date, nothing from that date
                // counts (RPM and RTM by default; APCM and BHI when the rule set says so).
                let on_date = match s.program {
                    Program::Rpm => rules.rpm_revocation,
                    Program::Rtm => rules.rtm_revocation,
                    Program::Apcm => rules.apcm_revocation,
                    Program::Bhi => rules.bhi_revocation,
                    Program::Ccm | Program::Pcm => Revocation::EndOfMonth,
                } == Revocation::OnDate;
                if on_date
                    && let Some(r) = revoked(s.program)
                    && s.date >= r
                {
                    return Some(format!(
                        "on or after the {} consent revocation {r}",
                        s.program.label()
                    ));
                }
                None
            });
            match reason {
                Some(r) => *not_counted.entry((s.program, r)).or_default() += secs,
                None => {
                    t.qualifying_entries
                        .entry(s.program)
                        .or_default()
                        .insert(s.entry);
                    qualifying.push(s)
                }
            }
        }
    }
    let counted = count_once_per_person(&qualifying);
    for (s, secs) in qualifying.iter().zip(&counted.seconds) {
        if *secs <= 0 {
            continue;
        }
        *t.seconds.entry(s.program).or_default() += secs;
        t.evidence.entry(s.program).or_default().insert(s.entry);
        if s.interactive {
            t.interactive.insert(s.program, true);
        }
        if s.person == ten.practitioner(p, s.program) {
            *t.practitioner_seconds.entry(s.program).or_default() += secs;
            t.practitioner_evidence
                .entry(s.program)
                .or_default()
                .insert(s.entry);
        }
    }
    for (person, secs) in counted.overlap {
        t.exceptions.push(Exception::new(
            ExceptionProgram::General,
            ExceptionKind::Warning,
            format!(
                "{} of {person}'s time overlapped between entries and was counted once",
                human_duration(secs)
            ),
        ));
    }
    for ((program, reason), secs) in not_counted {
        t.exceptions.push(Exception::new(
            program,
            ExceptionKind::NotCounted,
            format!(
                "{} of {} time not counted: {reason}",
                human_duration(secs),
                program.as_str().to_uppercase()
            ),
        ));
    }
    t
}

/// Lines and exceptions of one program.
#[derive(Debug, Default)]
struct ProgramResult {
    lines: Vec<Line>,
    exceptions: Vec<Exception>,
}

struct LineMaker<'a> {
    dos: NaiveDate,
    pos: &'a str,
    npi: String,
    practice: Option<String>,
}

impl LineMaker<'_> {
    fn line(
        &self,
        code: &str,
        units: u32,
        diagnoses: &[String],
        evidence: &BTreeSet<Uuid>,
    ) -> Line {
        Line {
            code: code.to_string(),
            units,
            date_of_service: self.dos,
            diagnoses: diagnoses.to_vec(),
            place_of_service: self.pos.to_string(),
            rendering_npi: self.npi.clone(),
            practice: self.practice.clone(),
            evidence: evidence.iter().copied().collect(),
        }
    }

    /// A base code and, when earned, its add-on.
    fn with_addon(
        &self,
        base: &str,
        addon: &str,
        units: u32,
        dx: &[String],
        ev: &BTreeSet<Uuid>,
    ) -> Vec<Line> {
        let mut v = vec![self.line(base, 1, dx, ev)];
        if units > 0 {
            v.push(self.line(addon, units, dx, ev));
        }
        v
    }
}

/// Whole qualifying minutes of a program's bucket.
fn minutes_of(t: &MonthTime, program: Program) -> u32 {
    whole_minutes(t.seconds.get(&program).copied().unwrap_or(0))
}

fn needs(program: Program, more: u32, code: &str, what: &str) -> Exception {
    let unit = if more == 1 { "minute" } else { "minutes" };
    Exception::new(
        program,
        ExceptionKind::Threshold,
        format!("{what} needs {more} more {unit} for {code}"),
    )
}

/// Rule 4: the override when given; complex when the month is a complex month, the care plan was
/// established or revised in it and CCM minutes reach the complex threshold; else standard.
pub fn ccm_lane(p: &Patient, month: Month, ccm_minutes: u32, rules: &RuleSet) -> CcmLane {
    if let Some(l) = p.ccm_lane.get(&month) {
        return *l;
    }
    let plan_touched = p.care_plan.as_ref().is_some_and(|c| {
        c.established_on.is_some_and(|d| month.contains(d))
            || c.revised_on.iter().any(|d| month.contains(*d))
    });
    if p.complex_ccm_months.contains(&month)
        && plan_touched
        && ccm_minutes >= rules.ccm_complex_threshold
    {
        CcmLane::Complex
    } else {
        CcmLane::Standard
    }
}

/// CCM: requirements, lane (rule 4), and the lane's codes (rules 5–8).
fn bill_ccm(
    p: &Patient,
    month: Month,
    t: &MonthTime,
    rules: &RuleSet,
    lm: &LineMaker<'_>,
) -> ProgramResult {
    let mut r = ProgramResult::default();
    let s = whole_minutes(t.seconds.get(&Program::Ccm).copied().unwrap_or(0));
    let pm = whole_minutes(
        t.practitioner_seconds
            .get(&Program::Ccm)
            .copied()
            .unwrap_or(0),
    );
    let enrolled = p.consents.iter().any(|c| c.program == Program::Ccm)
        || t.any.contains(&Program::Ccm)
        || p.ccm_lane.contains_key(&month)
        || p.complex_ccm_months.contains(&month);
    if !enrolled {
        return r;
    }
    let last = month.last_day();
    let mut missing = Vec::new();
    if consent_for(p, Program::Ccm, month, rules.ccm_revocation).is_none() {
        missing.push(if p.consents.iter().any(|c| c.program == Program::Ccm) {
            "no CCM consent in effect this month (revoked or given later)".to_string()
        } else {
            "no CCM consent on file".to_string()
        });
    }
    let chronic = p.conditions.iter().filter(|c| c.chronic).count();
    if chronic < rules.ccm_min_chronic_conditions {
        missing.push(format!(
            "CCM needs {} chronic conditions, {chronic} on file",
            rules.ccm_min_chronic_conditions
        ));
    }
    if p.initiating_visit_on.is_none_or(|d| d > last) {
        missing.push("no initiating visit on file".to_string());
    }
    let plan = p.care_plan.as_ref();
    if plan.and_then(|c| c.established_on).is_none_or(|d| d > last) {
        missing.push("no care plan established".to_string());
    }
    if !missing.is_empty() {
        r.exceptions.extend(
            missing
                .into_iter()
                .map(|m| Exception::new(Program::Ccm, ExceptionKind::Requirement, m)),
        );
        return r;
    }
    let lane = ccm_lane(p, month, s, rules);
    let dx = chronic_diagnoses(p);
    let empty = BTreeSet::new();
    let ev = t.evidence.get(&Program::Ccm).unwrap_or(&empty);
    match lane {
        CcmLane::Standard => {
            if s >= rules.ccm_standard_threshold {
                let units = rules::addon_units(
                    s,
                    rules.ccm_standard_threshold,
                    rules.ccm_standard_addon_block,
                    rules.ccm_standard_addon_cap,
                );
                r.lines
                    .extend(lm.with_addon("99490", "99439", units, &dx, ev));
            } else {
                r.exceptions.push(needs(
                    Program::Ccm,
                    rules.ccm_standard_threshold - s,
                    "99490",
                    "CCM",
                ));
            }
        }
        CcmLane::Complex => {
            if s >= rules.ccm_complex_threshold {
                let units = rules::addon_units(
                    s,
                    rules.ccm_complex_threshold,
                    rules.ccm_complex_addon_block,
                    rules.ccm_complex_addon_cap,
                );
                r.lines
                    .extend(lm.with_addon("99487", "99489", units, &dx, ev));
            } else {
                r.exceptions.push(needs(
                    Program::Ccm,
                    rules.ccm_complex_threshold - s,
                    "99487",
                    "complex CCM",
                ));
            }
        }
        CcmLane::Practitioner => {
            let pev = t.practitioner_evidence.get(&Program::Ccm).unwrap_or(&empty);
            if pm >= rules.ccm_practitioner_threshold {
                let units = rules::addon_units(
                    pm,
                    rules.ccm_practitioner_threshold,
                    rules.ccm_practitioner_addon_block,
                    rules.ccm_practitioner_addon_cap,
                );
                r.lines
                    .extend(lm.with_addon("99491", "99437", units, &dx, pev));
            } else {
                r.exceptions.push(needs(
                    Program::Ccm,
                    rules.ccm_practitioner_threshold - pm,
                    "99491",
                    "CCM (billing practitioner's own time)",
                ));
            }
        }
    }
    r
}

/// PCM: 99426/99427 on clinical-staff minutes, 99424/99425 on the billing practitioner's own.
fn bill_pcm(
    p: &Patient,
    month: Month,
    t: &MonthTime,
    rules: &RuleSet,
    lm: &LineMaker<'_>,
) -> ProgramResult {
    let mut r = ProgramResult::default();
    let enrolled = p.pcm_condition.is_some()
        || p.consents.iter().any(|c| c.program == Program::Pcm)
        || t.any.contains(&Program::Pcm);
    if !enrolled {
        return r;
    }
    let Some(condition) = &p.pcm_condition else {
        r.exceptions.push(Exception::new(
            Program::Pcm,
            ExceptionKind::Requirement,
            "PCM time logged but no PCM condition on file",
        ));
        return r;
    };
    if consent_for(p, Program::Pcm, month, rules.ccm_revocation).is_none() {
        r.exceptions.push(Exception::new(
            Program::Pcm,
            ExceptionKind::Requirement,
            "no PCM consent in effect this month",
        ));
        return r;
    }
    let total = t.seconds.get(&Program::Pcm).copied().unwrap_or(0);
    let own = t
        .practitioner_seconds
        .get(&Program::Pcm)
        .copied()
        .unwrap_or(0);
    let (staff_m, own_m) = (whole_minutes(total - own), whole_minutes(own));
    let dx = vec![condition.clone()];
    let empty = BTreeSet::new();
    if own_m >= rules.pcm_threshold {
        let ev = t.practitioner_evidence.get(&Program::Pcm).unwrap_or(&empty);
        let units = rules::addon_units(
            own_m,
            rules.pcm_threshold,
            rules.pcm_addon_block,
            rules.pcm_practitioner_addon_cap,
        );
        r.lines
            .extend(lm.with_addon("99424", "99425", units, &dx, ev));
        if staff_m >= rules.pcm_threshold {
            r.exceptions.push(Exception::new(
                Program::Pcm,
                ExceptionKind::Conflict,
                format!("{staff_m} min of clinical-staff PCM time not billed: 99426 may not be billed with 99424"),
            ));
        }
    } else if staff_m >= rules.pcm_threshold {
        let all = t.evidence.get(&Program::Pcm).unwrap_or(&empty);
        let own_ev = t.practitioner_evidence.get(&Program::Pcm).unwrap_or(&empty);
        let ev: BTreeSet<Uuid> = all.difference(own_ev).copied().collect();
        let units = rules::addon_units(
            staff_m,
            rules.pcm_threshold,
            rules.pcm_addon_block,
            rules.pcm_staff_addon_cap,
        );
        r.lines
            .extend(lm.with_addon("99426", "99427", units, &dx, &ev));
    } else {
        r.exceptions.push(needs(
            Program::Pcm,
            rules.pcm_threshold - staff_m,
            "99426",
            "PCM (clinical staff)",
        ));
    }
    r
}

/// An RPM device period with its counted days.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PeriodDays {
    pub start: NaiveDate,
    /// Day 30 of the period.
    pub end: NaiveDate,
    /// The last day that counts (cut short by death or revocation).
    pub last: NaiveDate,
    pub days: BTreeSet<NaiveDate>,
    pub evidence: BTreeSet<Uuid>,
}

/// What distinguishes RPM and RTM device periods (rules 9–10 and 39–40).
struct Monitoring {
    program: Program,
    readings: ReadingProgram,
    setup: NaiveDate,
    period_days: u32,
    revocation: Revocation,
    exclude_stay_days: bool,
}

impl Monitoring {
    fn rpm(p: &Patient, rules: &RuleSet) -> Option<Monitoring> {
        Some(Monitoring {
            program: Program::Rpm,
            readings: ReadingProgram::Rpm,
            setup: p.rpm.as_ref()?.device_setup_on,
            period_days: rules.rpm_period_days,
            revocation: rules.rpm_revocation,
            exclude_stay_days: rules.rpm_exclude_stay_days,
        })
    }

    fn rtm(p: &Patient, rules: &RuleSet) -> Option<Monitoring> {
        Some(Monitoring {
            program: Program::Rtm,
            readings: ReadingProgram::Rtm,
            setup: p.rtm.as_ref()?.device_setup_on?,
            period_days: rules.rtm_period_days,
            revocation: rules.rtm_revocation,
            exclude_stay_days: rules.rtm_exclude_stay_days,
        })
    }

    /// Whether a reading makes a day: its program's, from a device (or, for RTM, reported by the
    /// patient), never typed in by staff.
    fn counts(&self, r: &Reading) -> bool {
        r.program() == self.readings
            && match r.source {
                ReadingSource::Device => true,
                ReadingSource::PatientReported => self.readings == ReadingProgram::Rtm,
                ReadingSource::Manual => false,
            }
    }
}

/// Rules 9–10: the RPM periods from set-up whose start is on or before `until`, with their days.
pub(crate) fn rpm_periods(
    input: &Input<'_>,
    p: &Patient,
    until: NaiveDate,
    rules: &RuleSet,
) -> Vec<PeriodDays> {
    Monitoring::rpm(p, rules).map_or_else(Vec::new, |m| device_periods(input, p, &m, until))
}

/// Rules 39–40: the RTM periods, as [`rpm_periods`].
pub(crate) fn rtm_periods(
    input: &Input<'_>,
    p: &Patient,
    until: NaiveDate,
    rules: &RuleSet,
) -> Vec<PeriodDays> {
    Monitoring::rtm(p, rules).map_or_else(Vec::new, |m| device_periods(input, p, &m, until))
}

fn device_periods(
    input: &Input<'_>,
    p: &Patient,
    m: &Monitoring,
    until: NaiveDate,
) -> Vec<PeriodDays> {
    let revoked = p
        .consents
        .iter()
        .filter(|c| c.program == m.program)
        .filter_map(|c| c.revoked_on)
        .max();
    let mut cutoff: Option<NaiveDate> = match (p.died_on, p.discharged_on) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(r) = revoked
        && m.revocation == Revocation::OnDate
        && let Some(day_before) = r.pred_opt()
    {
        cutoff = Some(cutoff.map_or(day_before, |c| c.min(day_before)));
    }
    let len = i64::from(m.period_days);
    let readings = input
        .readings
        .get(p.id.as_str())
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut out = Vec::new();
    let mut start = m.setup;
    while start <= until {
        let end = start + Duration::days(len - 1);
        let last = cutoff.map_or(end, |c| c.min(end));
        if last < start {
            break;
        }
        let mut days = BTreeSet::new();
        let mut evidence = BTreeSet::new();
        for r in readings {
            if !m.counts(r) {
                continue;
            }
            let day = r.measured_at.with_timezone(&input.tz).date_naive();
            if day < start || day > last {
                continue;
            }
            if m.exclude_stay_days && p.stays.iter().any(|s| s.contains(day)) {
                continue;
            }
            // Away between a discharge and a readmission: like after a discharge.
            if p.absences.iter().any(|a| a.contains(day)) {
                continue;
            }
            days.insert(day);
            evidence.insert(r.id);
        }
        out.push(PeriodDays {
            start,
            end,
            last,
            days,
            evidence,
        });
        if last < end {
            break;
        }
        start = end + Duration::days(1);
    }
    out
}

/// One program's device codes (rules 9–11 for RPM, 39–41 for RTM).
struct DeviceCodes<'a> {
    program: Program,
    /// Below `min_long` days.
    short: &'a str,
    long: &'a str,
    /// Once per patient, on the first period that earns a device code.
    setup: &'a str,
    min_short: u32,
    min_long: u32,
    /// What the readings are, in the short-period exception ("device", "respiratory").
    readings: &'a str,
    setup_on: NaiveDate,
}

/// The device lines of the periods ending (or cut short) in `month`, one per period by the
/// practitioner of record on its last day (rule P1), the set-up on the first earning period;
/// returns the periods evaluated.
#[allow(clippy::too_many_arguments)]
fn bill_device_periods(
    input: &Input<'_>,
    p: &Patient,
    month: Month,
    lm: &LineMaker<'_>,
    dx: &[String],
    periods: &[PeriodDays],
    codes: &DeviceCodes<'_>,
    r: &mut ProgramResult,
) -> Vec<RpmPeriod> {
    let mut out = Vec::new();
    let label = codes.program.label();
    let first_earning = periods
        .iter()
        .position(|pd| pd.days.len() as u32 >= codes.min_short);
    for (k, pd) in periods.iter().enumerate() {
        if !month.contains(pd.last) {
            continue;
        }
        let days = pd.days.len() as u32;
        out.push(RpmPeriod {
            start: pd.start,
            end: pd.last,
            days,
        });
        // Rule P1: the practitioner of record on the period's last day; one per period.
        let tenure = p.tenure(codes.program, pd.last);
        let dlm = LineMaker {
            dos: pd.last,
            pos: lm.pos,
            npi: input.npi_of(&tenure.practitioner),
            practice: input.practice_of(&tenure.practitioner),
        };
        if let (Some(since), Some(before)) = (tenure.since, &tenure.predecessor)
            && since > pd.start
        {
            let confirmed = input.confirms_transition(&tenure.practitioner);
            r.exceptions.push(transition_exception(
                codes.program,
                &format!("the {label} device period {} to {}", pd.start, pd.last),
                since,
                before,
                &tenure.practitioner,
                input,
                confirmed,
            ));
            if !confirmed {
                continue;
            }
        }
        if days >= codes.min_long {
            r.lines.push(dlm.line(codes.long, 1, dx, &pd.evidence));
        } else if days >= codes.min_short {
            r.lines.push(dlm.line(codes.short, 1, dx, &pd.evidence));
        } else {
            r.exceptions.push(Exception::new(
                codes.program,
                ExceptionKind::Threshold,
                format!(
                    "{label} period {} to {} has {days} day(s) of {} readings; {} needs {}",
                    pd.start, pd.last, codes.readings, codes.short, codes.min_short
                ),
            ));
        }
        if first_earning == Some(k) {
            let setup = LineMaker {
                dos: codes.setup_on,
                pos: lm.pos,
                npi: dlm.npi.clone(),
                practice: dlm.practice.clone(),
            };
            r.lines.push(setup.line(codes.setup, 1, dx, &pd.evidence));
        }
    }
    out
}

/// Whether a monitoring program (RPM, RTM) is evaluated for the patient this month: an
/// enrolment, a consent, time in the month, or a reading of the program.
fn monitored(
    input: &Input<'_>,
    p: &Patient,
    t: &MonthTime,
    program: Program,
    enrolment: bool,
) -> bool {
    let reading_program = match program {
        Program::Rtm => ReadingProgram::Rtm,
        _ => ReadingProgram::Rpm,
    };
    enrolment
        || p.consents.iter().any(|c| c.program == program)
        || t.any.contains(&program)
        || input
            .readings
            .get(p.id.as_str())
            .is_some_and(|v| v.iter().any(|x| x.program() == reading_program))
}

/// One monitoring program's treatment-management codes (rule 12 for RPM, 42 for RTM).
struct ManagementCodes<'a> {
    program: Program,
    /// The 10-minute code, never billed with `base`.
    short: &'a str,
    base: &'a str,
    addon: &'a str,
    short_threshold: u32,
    threshold: u32,
    block: u32,
    cap: Option<u32>,
    requires_interactive: bool,
}

/// Treatment management per calendar month: the short code, or the base with its add-ons, when
/// the month has the minutes and (when required) an interactive communication.
fn bill_management(
    t: &MonthTime,
    lm: &LineMaker<'_>,
    dx: &[String],
    codes: &ManagementCodes<'_>,
    r: &mut ProgramResult,
) {
    let program = codes.program;
    let label = program.label();
    let minutes = minutes_of(t, program);
    let empty = BTreeSet::new();
    let ev = t.evidence.get(&program).unwrap_or(&empty);
    let interactive = t.interactive.get(&program).copied().unwrap_or(false);
    if minutes >= codes.short_threshold && codes.requires_interactive && !interactive {
        r.exceptions.push(Exception::new(
            program,
            ExceptionKind::Requirement,
            format!("{minutes} min of {label} management not billable: no interactive communication with the patient this month"),
        ));
    } else if minutes >= codes.threshold {
        let units = rules::addon_units(minutes, codes.threshold, codes.block, codes.cap);
        r.lines
            .extend(lm.with_addon(codes.base, codes.addon, units, dx, ev));
    } else if minutes >= codes.short_threshold {
        r.lines.push(lm.line(codes.short, 1, dx, ev));
    } else {
        r.exceptions.push(needs(
            program,
            codes.short_threshold - minutes,
            codes.short,
            &format!("{label} management"),
        ));
    }
}

fn bill_rpm(
    input: &Input<'_>,
    p: &Patient,
    month: Month,
    t: &MonthTime,
    rules: &RuleSet,
    lm: &LineMaker<'_>,
) -> (ProgramResult, Vec<RpmPeriod>) {
    let mut r = ProgramResult::default();
    if !monitored(input, p, t, Program::Rpm, p.rpm.is_some()) {
        return (r, Vec::new());
    }
    let Some(rpm) = &p.rpm else {
        r.exceptions.push(Exception::new(
            Program::Rpm,
            ExceptionKind::Requirement,
            "RPM time or readings logged but no RPM device set-up on file",
        ));
        return (r, Vec::new());
    };
    let consent = p
        .consents
        .iter()
        .filter(|c| c.program == Program::Rpm)
        .find(|c| {
            c.given_on <= month.last_day() && c.revoked_on.is_none_or(|rv| rv > month.first_day())
        });
    if consent.is_none() {
        r.exceptions.push(Exception::new(
            Program::Rpm,
            ExceptionKind::Requirement,
            "no RPM consent in effect this month",
        ));
        return (r, Vec::new());
    }
    let dx = chronic_diagnoses(p);
    // Rules 9–11: device periods ending (or cut short) in this month.
    let periods = rpm_periods(input, p, month.last_day(), rules);
    let periods_out = bill_device_periods(
        input,
        p,
        month,
        lm,
        &dx,
        &periods,
        &DeviceCodes {
            program: Program::Rpm,
            short: "99445",
            long: "99454",
            setup: "99453",
            min_short: rules.rpm_min_days_99445,
            min_long: rules.rpm_min_days_99454,
            readings: "device",
            setup_on: rpm.device_setup_on,
        },
        &mut r,
    );
    // Rule 12: treatment management per calendar month.
    bill_management(
        t,
        lm,
        &dx,
        &ManagementCodes {
            program: Program::Rpm,
            short: "99470",
            base: "99457",
            addon: "99458",
            short_threshold: rules.rpm_mgmt_99470_threshold,
            threshold: rules.rpm_mgmt_99457_threshold,
            block: rules.rpm_mgmt_addon_block,
            cap: rules.rpm_mgmt_addon_cap,
            requires_interactive: rules.rpm_mgmt_requires_interactive,
        },
        &mut r,
    );
    (r, periods_out)
}

/// One patient's encounter for `month`.
pub fn bill_patient_in(
    data: &DataFile,
    p: &Patient,
    month: Month,
    rules: &RuleSet,
) -> Result<Encounter, BillingError> {
    Ok(bill_patient(&Input::new(data)?, p, month, rules))
}

/// Who is of record for each program in a month (rule P1): the practitioner on the month's
/// date of service, and since when when they followed someone else.
pub(crate) struct Tenures {
    pub of: BTreeMap<Program, Tenure>,
}

impl Tenures {
    pub fn new(p: &Patient, on: NaiveDate) -> Tenures {
        let of = if p.practitioners_of_record.is_empty() {
            BTreeMap::new()
        } else {
            Program::ALL
                .into_iter()
                .map(|prog| (prog, p.tenure(prog, on)))
                .collect()
        };
        Tenures { of }
    }

    /// The practitioner of record for `program`.
    pub fn practitioner<'a>(&'a self, p: &'a Patient, program: Program) -> &'a str {
        self.of
            .get(&program)
            .map_or(p.billing_practitioner.as_str(), |t| t.practitioner.as_str())
    }

    /// The patient as the program's practitioner of record sees it: when that practitioner
    /// followed another, only consents given since their tenure began (rule P1: a new consent).
    fn patient<'a>(&self, p: &'a Patient, program: Program) -> std::borrow::Cow<'a, Patient> {
        match self.of.get(&program).and_then(|t| t.since) {
            Some(since) => {
                let mut q = p.clone();
                q.consents
                    .retain(|c| c.program != program || c.given_on >= since);
                std::borrow::Cow::Owned(q)
            }
            None => std::borrow::Cow::Borrowed(p),
        }
    }

    /// The change of practitioner inside the month, if any: (since, predecessor, practitioner).
    fn transition(&self, program: Program, month: Month) -> Option<(NaiveDate, &str, &str)> {
        let t = self.of.get(&program)?;
        match (t.since, &t.predecessor) {
            (Some(since), Some(before)) if since > month.first_day() && month.contains(since) => {
                Some((since, before.as_str(), t.practitioner.as_str()))
            }
            _ => None,
        }
    }
}

/// Rule P1's exception for a month (or RPM period) whose billing practitioner changed.
fn transition_exception(
    program: Program,
    what: &str,
    since: NaiveDate,
    before: &str,
    now: &str,
    input: &Input<'_>,
    confirmed: bool,
) -> Exception {
    let practice = input
        .practice_of(now)
        .unwrap_or_else(|| input.data.facility.id.clone());
    let name = program.as_str().to_uppercase();
    if confirmed {
        Exception::new(
            program,
            ExceptionKind::Warning,
            format!(
                "billing practitioner changed on {since} ({before} → {now}): {what} is billed by {now}; practice {practice} confirms {before} has not billed {name} for it"
            ),
        )
    } else {
        Exception::new(
            program,
            ExceptionKind::Conflict,
            format!(
                "billing practitioner changed on {since} ({before} → {now}): only one practitioner may be paid for {what}; not billed until practice {practice} confirms {before} has not billed {name} for it (practice setting confirms_transition_months)"
            ),
        )
    }
}

/// Codes billed per calendar month (rule P1's transition hold applies to them).
fn is_month_code(program: Program, code: &str) -> bool {
    match program {
        Program::Rpm => matches!(code, "99457" | "99458" | "99470"),
        Program::Rtm => matches!(code, "98979" | "98980" | "98981"),
        _ => true,
    }
}

fn bill_patient(input: &Input<'_>, p: &Patient, month: Month, rules: &RuleSet) -> Encounter {
    let last = month.last_day();
    let mut enc = Encounter {
        patient: p.id.clone(),
        lines: Vec::new(),
        minutes: Minutes::default(),
        rpm_periods: Vec::new(),
        rtm_periods: Vec::new(),
        exceptions: Vec::new(),
        evidence: Vec::new(),
        practices: Vec::new(),
    };
    let dos = p.died_on.map_or(last, |d| d.min(last));
    if !input.data.practices.is_empty() {
        // Died before the month: the practices of record on the date of death.
        let from = month.first_day().min(dos);
        let mut practices: Vec<String> = Program::ALL
            .into_iter()
            .flat_map(|prog| p.practitioners_between(prog, from, dos))
            .map(|x| input.data.practice_id_of(&x))
            .collect();
        practices.sort();
        practices.dedup();
        enc.practices = practices;
    }
    if let Some(d) = p.died_on
        && d < month.first_day()
    {
        enc.exceptions.push(Exception::new(
            ExceptionProgram::General,
            ExceptionKind::Requirement,
            format!("patient died on {d}, before this month"),
        ));
        return enc;
    }
    if let Some(into) = &p.merged_into {
        enc.exceptions.push(Exception::new(
            ExceptionProgram::General,
            ExceptionKind::Requirement,
            format!(
                "this record was merged into resident {into} (ADT A40): it is not billed; move its time and readings to {into}"
            ),
        ));
        return enc;
    }
    if let Some(d) = p.discharged_on
        && d < month.first_day()
    {
        enc.exceptions.push(Exception::new(
            ExceptionProgram::General,
            ExceptionKind::Requirement,
            format!("patient was discharged from the facility on {d}, before this month"),
        ));
        return enc;
    }
    let ten = Tenures::new(p, dos);
    let t = month_time(input, p, month, last, rules, &ten);
    enc.minutes = Minutes {
        ccm: whole_minutes(t.seconds.get(&Program::Ccm).copied().unwrap_or(0)),
        ccm_practitioner: whole_minutes(
            t.practitioner_seconds
                .get(&Program::Ccm)
                .copied()
                .unwrap_or(0),
        ),
        pcm: minutes_of(&t, Program::Pcm),
        rpm: minutes_of(&t, Program::Rpm),
        apcm: minutes_of(&t, Program::Apcm),
        bhi: minutes_of(&t, Program::Bhi),
        rtm: minutes_of(&t, Program::Rtm),
    };
    // Rules 14–15, and 19: each program's lines carry its practitioner of record.
    let lm = |program: Program| {
        let who = ten.practitioner(p, program);
        LineMaker {
            dos,
            pos: &input.data.facility.place_of_service,
            npi: input.npi_of(who),
            practice: input.practice_of(who),
        }
    };
    let mut results = concurrency::Results::new();
    results.insert(
        Program::Ccm,
        bill_ccm(
            &ten.patient(p, Program::Ccm),
            month,
            &t,
            rules,
            &lm(Program::Ccm),
        ),
    );
    results.insert(
        Program::Pcm,
        bill_pcm(
            &ten.patient(p, Program::Pcm),
            month,
            &t,
            rules,
            &lm(Program::Pcm),
        ),
    );
    let (rpm, periods) = bill_rpm(
        input,
        &ten.patient(p, Program::Rpm),
        month,
        &t,
        rules,
        &lm(Program::Rpm),
    );
    enc.rpm_periods = periods;
    results.insert(Program::Rpm, rpm);
    let (rtm, periods) = rtm::bill_rtm(
        input,
        &ten.patient(p, Program::Rtm),
        month,
        &t,
        rules,
        &lm(Program::Rtm),
    );
    enc.rtm_periods = periods;
    results.insert(Program::Rtm, rtm);
    let apcm_by = ten.practitioner(p, Program::Apcm);
    results.insert(
        Program::Apcm,
        apcm::bill_apcm(
            &ten.patient(p, Program::Apcm),
            month,
            &t,
            rules,
            &lm(Program::Apcm),
            &ten,
            input.attested_on(apcm_by),
        ),
    );
    // Rules 43–46: external services, then the pairs; BHI follows, as it depends on whether an
    // APCM line stands (rule 33), and is then checked against the external services too.
    let before_bhi = [
        Program::Ccm,
        Program::Pcm,
        Program::Rpm,
        Program::Rtm,
        Program::Apcm,
    ];
    concurrency::apply_external(p, month, rules, &ten, &mut results, &before_bhi);
    concurrency::apply_pairs(p, month, rules, &ten, &mut results);
    let apcm_lm = lm(Program::Apcm);
    let apcm_stands = results
        .get(&Program::Apcm)
        .is_some_and(|r| !r.lines.is_empty());
    results.insert(
        Program::Bhi,
        apcm::bill_bhi(
            &ten.patient(p, Program::Bhi),
            month,
            &t,
            rules,
            &lm(Program::Bhi),
            apcm_stands.then_some(&apcm_lm),
        ),
    );
    concurrency::apply_external(p, month, rules, &ten, &mut results, &[Program::Bhi]);
    concurrency::apply_warnings(p, month, rules, &ten, &mut results);
    for program in Program::ALL {
        let Some(mut part) = results.remove(&program) else {
            continue;
        };
        // Rule P1: a new practitioner needs a new consent; a month whose practitioner changed
        // is billed only when the new practice confirms the other has not billed it.
        if let Some(t) = ten.of.get(&program)
            && let (Some(since), Some(before)) = (t.since, &t.predecessor)
            && !p
                .consents
                .iter()
                .any(|c| c.program == program && c.given_on >= since)
        {
            let name = program.label();
            let explicit = format!(
                "no {name} consent given to the new billing practitioner {} (of record since {since}, after {before}): a change of practitioner needs a new consent",
                t.practitioner
            );
            let mut replaced = false;
            for e in part.exceptions.iter_mut() {
                if e.kind == ExceptionKind::Requirement && e.reason.contains("consent") {
                    e.reason = explicit.clone();
                    replaced = true;
                }
            }
            if !replaced && !part.lines.is_empty() {
                part.exceptions.push(Exception::new(
                    program,
                    ExceptionKind::Requirement,
                    explicit,
                ));
                part.lines.retain(|l| !is_month_code(program, &l.code));
            }
        }
        if let Some((since, before, now)) = ten.transition(program, month)
            && part.lines.iter().any(|l| is_month_code(program, &l.code))
        {
            let confirmed = input.confirms_transition(now);
            part.exceptions.push(transition_exception(
                program,
                &format!("{} {month}", program.as_str().to_uppercase()),
                since,
                before,
                now,
                input,
                confirmed,
            ));
            if !confirmed {
                part.lines.retain(|l| !is_month_code(program, &l.code));
            }
        }
        enc.lines.extend(part.lines);
        enc.exceptions.extend(part.exceptions);
    }
    // Rule 51: an add-on never without its base (a hold above may have removed the base).
    if enc.lines.iter().any(|l| l.code == "G0570")
        && !enc
            .lines
            .iter()
            .any(|l| apcm::APCM_CODES.contains(&l.code.as_str()))
    {
        enc.lines.retain(|l| l.code != "G0570");
        enc.exceptions.push(Exception::new(
            Program::Bhi,
            ExceptionKind::Requirement,
            "G0570 not billed: the APCM line of the month is not billed",
        ));
    }
    enc.exceptions.extend(t.exceptions);
    if enc.lines.is_empty() && enc.exceptions.is_empty() {
        enc.exceptions.push(Exception::new(
            ExceptionProgram::General,
            ExceptionKind::Requirement,
            "not enrolled in CCM, PCM or RPM, and no time or readings this month",
        ));
    }
    enc.lines
        .sort_by(|a, b| (&a.code, a.date_of_service).cmp(&(&b.code, b.date_of_service)));
    enc.exceptions.sort();
    enc.exceptions.dedup();
    let evidence: BTreeSet<Uuid> = enc
        .lines
        .iter()
        .flat_map(|l| l.evidence.iter().copied())
        .collect();
    enc.evidence = evidence.into_iter().collect();
    enc
}
