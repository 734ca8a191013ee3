//! Advanced Primary Care Management (rules 26–29) and its behavioral-health add-on G0570, with
//! general BHI 99484 (rules 30–37).

use std::collections::BTreeSet;

use super::rules::{ApcmBhi, QmbOn};
use super::{
    Exception, ExceptionKind, LineMaker, MonthTime, ProgramResult, RuleSet, Tenures,
    chronic_diagnoses, consent_for, minutes_of, needs,
};
use crate::model::{Patient, Program};
use crate::month::Month;

/// The APCM codes, by level.
pub const APCM_CODES: [&str; 3] = ["G0556", "G0557", "G0558"];

/// Rule 22: whether the patient is a QMB for a line dated `dos` in `month`.
fn is_qmb(p: &Patient, month: Month, dos: chrono::NaiveDate, rules: &RuleSet) -> bool {
    match rules.qmb_on {
        QmbOn::DateOfService => p.qmb_periods.iter().any(|q| q.contains(dos)),
        QmbOn::AnyDay => p
            .qmb_periods
            .iter()
            .any(|q| q.from <= month.last_day() && q.to.is_none_or(|t| t >= month.first_day())),
    }
}

/// Rule 28: the level's code.
pub fn apcm_level(
    p: &Patient,
    month: Month,
    dos: chrono::NaiveDate,
    rules: &RuleSet,
) -> &'static str {
    let chronic = p.conditions.iter().filter(|c| c.chronic).count();
    if chronic <= 1 {
        "G0556"
    } else if is_qmb(p, month, dos, rules) {
        "G0558"
    } else {
        "G0557"
    }
}

/// Rules 25–29: the APCM line of the month, or why there is none.
pub(super) fn bill_apcm(
    p: &Patient,
    month: Month,
    t: &MonthTime,
    rules: &RuleSet,
    lm: &LineMaker<'_>,
    ten: &Tenures,
    attested_on: Option<chrono::NaiveDate>,
) -> ProgramResult {
    let mut r = ProgramResult::default();
    let has_consent = p.consents.iter().any(|c| c.program == Program::Apcm);
    if !has_consent && !t.any.contains(&Program::Apcm) {
        return r;
    }
    let last = month.last_day();
    let who = ten.practitioner(p, Program::Apcm);
    let mut missing = Vec::new();
    if consent_for(p, Program::Apcm, month, rules.apcm_revocation).is_none() {
        missing.push(if has_consent {
            "no APCM consent in effect this month (revoked or given later)".to_string()
        } else {
            "no APCM consent on file".to_string()
        });
    }
    if attested_on.is_none_or(|d| d > last) {
        missing.push(format!(
            "APCM not billable: {who}'s practice has not attested (apcm_attested_on) that it delivers the APCM service elements by {last}"
        ));
    }
    if p.initiating_visit_on.is_none_or(|d| d > last) {
        missing.push("APCM needs an initiating visit: none on file".to_string());
    }
    if p.care_plan
        .as_ref()
        .and_then(|c| c.established_on)
        .is_none_or(|d| d > last)
    {
        missing.push("APCM needs an established care plan: none on file".to_string());
    }
    if p.conditions.is_empty() {
        missing.push("APCM needs a diagnosis: no condition on file".to_string());
    }
    if !missing.is_empty() {
        r.exceptions.extend(
            missing
                .into_iter()
                .map(|m| Exception::new(Program::Apcm, ExceptionKind::Requirement, m)),
        );
        return r;
    }
    let empty = BTreeSet::new();
    let activity = t.qualifying_entries.get(&Program::Apcm).unwrap_or(&empty);
    if rules.apcm_requires_activity && activity.is_empty() {
        r.exceptions.push(Exception::new(
            Program::Apcm,
            ExceptionKind::Requirement,
            format!("no APCM activity this month: APCM needs at least one qualifying APCM interaction in {month}"),
        ));
        return r;
    }
    let code = apcm_level(p, month, lm.dos, rules);
    r.lines
        .push(lm.line(code, 1, &chronic_diagnoses(p), activity));
    r
}

/// The behavioral conditions in file order (rule 21).
fn behavioral_diagnoses(p: &Patient) -> Vec<String> {
    p.conditions
        .iter()
        .filter(|c| c.is_behavioral())
        .map(|c| c.icd10.clone())
        .collect()
}

/// Rules 30–37: G0570 when an APCM line stands and BHI is billed as its add-on, else 99484.
/// `apcm` is the APCM line maker when an APCM line survived the conflicts (rules 43–44).
pub(super) fn bill_bhi(
    p: &Patient,
    month: Month,
    t: &MonthTime,
    rules: &RuleSet,
    lm: &LineMaker<'_>,
    apcm: Option<&LineMaker<'_>>,
) -> ProgramResult {
    let mut r = ProgramResult::default();
    let has_consent = p.consents.iter().any(|c| c.program == Program::Bhi);
    if !has_consent && !t.any.contains(&Program::Bhi) {
        return r;
    }
    let dx = behavioral_diagnoses(p);
    let consent = consent_for(p, Program::Bhi, month, rules.bhi_revocation).is_some();
    let empty = BTreeSet::new();
    let req = |m: String| Exception::new(Program::Bhi, ExceptionKind::Requirement, m);
    if let (Some(alm), ApcmBhi::Addon) = (apcm, rules.apcm_bhi) {
        // Rule 33: with APCM, BHI is the add-on G0570 and never 99484; no minimum time.
        let entries = t.qualifying_entries.get(&Program::Bhi).unwrap_or(&empty);
        let mut missing = Vec::new();
        if !consent {
            missing.push("G0570 not billed: no BHI consent in effect this month".to_string());
        }
        if dx.is_empty() {
            missing.push("G0570 not billed: no behavioral condition on file (an F code, or a condition marked behavioral)".to_string());
        }
        if entries.is_empty() {
            missing.push(format!(
                "G0570 not billed: no qualifying BHI interaction in {month}"
            ));
        }
        if missing.is_empty() {
            let ev = t.evidence.get(&Program::Bhi).unwrap_or(entries);
            r.lines.push(alm.line("G0570", 1, &dx, ev));
        } else {
            r.exceptions.extend(missing.into_iter().map(req));
        }
        return r;
    }
    let mut missing = Vec::new();
    if !consent {
        missing.push(if has_consent {
            "no BHI consent in effect this month (revoked or given later)".to_string()
        } else {
            "no BHI consent on file".to_string()
        });
    }
    if dx.is_empty() {
        missing.push("BHI needs a behavioral condition: none on file (an F code, or a condition marked behavioral)".to_string());
    }
    if p.initiating_visit_on.is_none_or(|d| d > month.last_day()) {
        missing.push("BHI needs an initiating visit: none on file".to_string());
    }
    if !missing.is_empty() {
        r.exceptions.extend(missing.into_iter().map(req));
        return r;
    }
    let b = minutes_of(t, Program::Bhi);
    if b >= rules.bhi_threshold {
        let ev = t.evidence.get(&Program::Bhi).unwrap_or(&empty);
        r.lines.push(lm.line("99484", 1, &dx, ev));
    } else {
        r.exceptions
            .push(needs(Program::Bhi, rules.bhi_threshold - b, "99484", "BHI"));
    }
    r
}
