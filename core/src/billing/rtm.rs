//! Remote Therapeutic Monitoring (rules 38–42): 30-day device periods from set-up, and
//! treatment management per calendar month.

use super::{
    DeviceCodes, Exception, ExceptionKind, Input, LineMaker, ManagementCodes, MonthTime,
    ProgramResult, RpmPeriod, RuleSet, bill_device_periods, bill_management, chronic_diagnoses,
    consent_for, monitored, rtm_periods,
};
use crate::model::{Patient, Program};
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
    if !monitored(input, p, t, Program::Rtm, p.rtm.is_some()) {
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
    bill_management(
        t,
        lm,
        &dx,
        &ManagementCodes {
            program: Program::Rtm,
            short: "98979",
            base: "98980",
            addon: "98981",
            short_threshold: rules.rtm_mgmt_short_threshold,
            threshold: rules.rtm_mgmt_threshold,
            block: rules.rtm_mgmt_addon_block,
            cap: rules.rtm_mgmt_addon_cap,
            requires_interactive: rules.rtm_mgmt_requires_interactive,
        },
        &mut r,
    );
    (r, periods_out)
}
