//! Remote Therapeutic Monitoring (rules 38–42): 30-day device periods from set-up, and
//! treatment management per calendar month.

use std::collections::BTreeSet;

use super::{
    DeviceCodes, Exception, ExceptionKind, Input, LineMaker, MonthTime, ProgramResult, RpmPeriod,
    RuleSet, bill_device_periods, chronic_diagnoses, consent_for, minutes_of, needs, rtm_periods,
    rules,
};
use crate::model::{Patient, Program, ReadingProgram};
use crate::month::Month;

pub(super) fn bill_rtm(
    input: &Input<'_>,
    p: &Patient,
    month: Month,
    t: &MonthTime,
    rules: &RuleSet,
    lm: &LineMaker<'_>,
) -> (ProgramResult, Vec<RpmPeriod>) {
    let mut r = ProgramResult::default();
    let has_readings = input
        .readings
        .get(p.id.as_str())
        .is_some_and(|v| v.iter().any(|x| x.program() == ReadingProgram::Rtm));
    let enrolled = p.rtm.is_some()
        || p.consents.iter().any(|c| c.program == Program::Rtm)
        || t.any.contains(&Program::Rtm)
        || has_readings;
    if !enrolled {
        return (r, Vec::new());
    }
    let Some((rtm, setup)) = p
        .rtm
        .as_ref()
        .and_then(|x| x.device_setup_on.map(|d| (x, d)))
    else {
        r.exceptions.push(Exception::new(
            Program::Rtm,
            ExceptionKind::Requirement,
            "RTM time or readings logged but no RTM device set-up on file",
        ));
        return (r, Vec::new());
    };
    if consent_for(p, Program::Rtm, month, rules.rtm_revocation).is_none() {
        r.exceptions.push(Exception::new(
            Program::Rtm,
            ExceptionKind::Requirement,
            "no RTM consent in effect this month",
        ));
        return (r, Vec::new());
    }
    let dx = chronic_diagnoses(p);
    let (short, long) = rtm.kind.device_codes();
    // Rules 39–41: device periods ending (or cut short) in this month.
    let periods = rtm_periods(input, p, month.last_day(), rules);
    let periods_out = bill_device_periods(
        input,
        p,
        month,
        lm,
        &dx,
        &periods,
        &DeviceCodes {
            program: Program::Rtm,
            short,
            long,
            setup: "98975",
            min_short: rules.rtm_min_days_short,
            min_long: rules.rtm_min_days_long,
            readings: rtm.kind.as_str(),
            setup_on: setup,
        },
        &mut r,
    );
    // Rule 42: treatment management per calendar month.
    let minutes = minutes_of(t, Program::Rtm);
    let empty = BTreeSet::new();
    let ev = t.evidence.get(&Program::Rtm).unwrap_or(&empty);
    let interactive = t.interactive.get(&Program::Rtm).copied().unwrap_or(false);
    if minutes >= rules.rtm_mgmt_short_threshold
        && rules.rtm_mgmt_requires_interactive
        && !interactive
    {
        r.exceptions.push(Exception::new(
            Program::Rtm,
            ExceptionKind::Requirement,
            format!("{minutes} min of RTM management not billable: no interactive communication with the patient this month"),
        ));
    } else if minutes >= rules.rtm_mgmt_threshold {
        let units = rules::addon_units(
            minutes,
            rules.rtm_mgmt_threshold,
            rules.rtm_mgmt_addon_block,
            rules.rtm_mgmt_addon_cap,
        );
        r.lines
            .extend(lm.with_addon("98980", "98981", units, &dx, ev));
    } else if minutes >= rules.rtm_mgmt_short_threshold {
        r.lines.push(lm.line("98979", 1, &dx, ev));
    } else {
        r.exceptions.push(needs(
            Program::Rtm,
            rules.rtm_mgmt_short_threshold - minutes,
            "98979",
            "RTM management",
        ));
    }
    (r, periods_out)
}
