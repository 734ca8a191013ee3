//! The concurrency matrix (rules 43–49), applied to the lines each program found on its own:
//! external services first, then the pairs of [`RuleSet::pairs`] in order, then the warnings.
//! Whenever a rule removes lines, the program that lost them gets an exception naming both
//! services.

use std::collections::BTreeMap;

use chrono::Duration;

use super::rules::{ByWhom, Settle, TcmBlocksApcm};
use super::{Exception, ExceptionKind, ProgramResult, RuleSet, Tenures};
use crate::model::{ExternalService, Patient, Program};
use crate::month::Month;

/// Each program's lines and exceptions for one patient-month.
pub(super) type Results = BTreeMap<Program, ProgramResult>;

/// Whether an external service falls in the month for a rule removing `program`'s lines.
fn in_month(svc: &ExternalService, month: Month, program: Program, rules: &RuleSet) -> bool {
    if month.contains(svc.date_of_service) {
        return true;
    }
    // Rule 67: a TCM occupies its 30-day service period when the practice says so.
    rules.tcm_blocks_apcm == TcmBlocksApcm::ServicePeriod
        && program == Program::Apcm
        && matches!(svc.code.as_str(), "99495" | "99496")
        && svc.date_of_service <= month.last_day()
        && svc.date_of_service + Duration::days(29) >= month.first_day()
}

fn by_matches(by: ByWhom, svc: &ExternalService, ours: &str) -> bool {
    match by {
        ByWhom::SamePractitioner => svc.practitioner == ours,
        ByWhom::Anyone => true,
        ByWhom::Other => svc.practitioner != ours,
    }
}

fn who(svc: &ExternalService, ours: &str) -> String {
    if svc.practitioner == ours {
        svc.practitioner.clone()
    } else {
        format!("another practitioner ({})", svc.practitioner)
    }
}

fn codes(r: &ProgramResult) -> String {
    let mut c: Vec<&str> = r.lines.iter().map(|l| l.code.as_str()).collect();
    c.sort_unstable();
    c.dedup();
    c.join(", ")
}

/// Rule 43: external services remove the lines of `programs` that may not be billed with them.
pub(super) fn apply_external(
    p: &Patient,
    month: Month,
    rules: &RuleSet,
    ten: &Tenures,
    results: &mut Results,
    programs: &[Program],
) {
    for svc in &p.external_services {
        for rule in rules
            .concurrency
            .external
            .iter()
            .filter(|r| r.matches(&svc.code))
        {
            for &program in rule.removes.iter().filter(|x| programs.contains(x)) {
                let ours = ten.practitioner(p, program);
                let Some(part) = results.get_mut(&program) else {
                    continue;
                };
                if part.lines.is_empty()
                    || !in_month(svc, month, program, rules)
                    || !by_matches(rule.by, svc, ours)
                {
                    continue;
                }
                part.lines.clear();
                let id = svc
                    .id
                    .as_deref()
                    .map(|i| format!(" (external service {i})"))
                    .unwrap_or_default();
                part.exceptions.push(Exception::new(
                    program,
                    ExceptionKind::Conflict,
                    format!(
                        "{} not billed: {} {} billed by {} on {} in the same month{id}",
                        program.label(),
                        rule.family,
                        svc.code,
                        who(svc, ours),
                        svc.date_of_service
                    ),
                ));
            }
        }
    }
}

/// Rules 44–46 and 49: pairs that may not both be billed, settled by `program_choice` first.
pub(super) fn apply_pairs(
    p: &Patient,
    month: Month,
    rules: &RuleSet,
    ten: &Tenures,
    results: &mut Results,
) {
    let choice = p.program_choice.get(&month).copied();
    for pair in rules.pairs() {
        let (a, b) = (pair.first, pair.second);
        let billed =
            |x: Program, results: &Results| results.get(&x).is_some_and(|r| !r.lines.is_empty());
        if !billed(a, results) || !billed(b, results) {
            continue;
        }
        let chosen = choice.filter(|c| *c == a || *c == b);
        match (chosen, pair.settle) {
            (Some(winner), _) => {
                let loser = if winner == a { b } else { a };
                if let Some(r) = results.get_mut(&loser) {
                    r.lines.clear();
                    r.exceptions.push(Exception::new(
                        loser,
                        ExceptionKind::Conflict,
                        format!(
                            "{} not billed: {} was chosen for {month} (program_choice), and {} and {} may not both be billed",
                            loser.label(),
                            winner.label(),
                            a.label(),
                            b.label()
                        ),
                    ));
                }
            }
            (None, Settle::FirstWins) => {
                let winner_codes = results.get(&a).map(codes).unwrap_or_default();
                let by = ten.practitioner(p, a).to_string();
                if let Some(r) = results.get_mut(&b) {
                    r.lines.clear();
                    r.exceptions.push(Exception::new(
                        b,
                        ExceptionKind::Conflict,
                        format!(
                            "{} not billed: {} {winner_codes} is billed by {by} this month (set program_choice to {} to bill {} instead)",
                            b.label(),
                            a.label(),
                            b.as_str(),
                            b.label()
                        ),
                    ));
                }
            }
            (None, Settle::Neither) => {
                let by = ten.practitioner(p, a).to_string();
                let reason = format!(
                    "{} and {} by the same billing practitioner ({by}) in one month: neither is billed until one is chosen",
                    a.label(),
                    b.label()
                );
                for x in [a, b] {
                    let report = pair.exceptions_on.is_empty() || pair.exceptions_on.contains(&x);
                    if let Some(r) = results.get_mut(&x) {
                        r.lines.clear();
                        if report {
                            r.exceptions.push(Exception::new(
                                x,
                                ExceptionKind::Conflict,
                                reason.clone(),
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// Rule 48: external services billed alongside lines that stand, for billing staff to check.
pub(super) fn apply_warnings(
    p: &Patient,
    month: Month,
    rules: &RuleSet,
    ten: &Tenures,
    results: &mut Results,
) {
    for svc in &p.external_services {
        if !month.contains(svc.date_of_service) {
            continue;
        }
        for rule in rules
            .concurrency
            .external
            .iter()
            .filter(|r| r.matches(&svc.code))
        {
            for &program in &rule.warns {
                let ours = ten.practitioner(p, program);
                let Some(part) = results.get_mut(&program) else {
                    continue;
                };
                if part.lines.is_empty() || !by_matches(rule.by, svc, ours) {
                    continue;
                }
                part.exceptions.push(Exception::new(
                    program,
                    ExceptionKind::Warning,
                    format!(
                        "{} billed in the month of {} {} by {} on {}: allowed, but no minute may count for both",
                        program.label(),
                        rule.family,
                        svc.code,
                        svc.practitioner,
                        svc.date_of_service
                    ),
                ));
            }
        }
    }
}
