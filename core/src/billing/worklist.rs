//! The worklist: for the current month, per patient and program, where they stand and what the
//! next code needs — what a nurse looks at to decide whom to call today.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::rules::RuleSet;
use super::time::whole_minutes;
use super::{
    BillingError, ExceptionKind, ExceptionProgram, Input, bill_patient, ccm_lane, month_time,
    rpm_periods,
};
use crate::model::{CcmLane, DataFile, Program};
use crate::month::Month;

/// One patient × program row of the worklist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorklistItem {
    pub patient: String,
    pub program: Program,
    /// Qualifying minutes so far this month (the lane's minutes for CCM).
    pub minutes: u32,
    /// The next code the month can earn, if any is left.
    pub next_code: Option<String>,
    /// Minutes still needed for `next_code`.
    pub minutes_to_next: Option<u32>,
    /// RPM: the open device period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<OpenPeriod>,
    /// Alerts of the patient still waiting for a response (see [`attach_alerts`]).
    #[serde(default)]
    pub open_alerts: u32,
    /// Requirements that block billing whatever the minutes (consent, conditions, …), and
    /// conflicts that remove the program's lines this month (an APCM month blocks CCM, a TCM
    /// blocks APCM, …).
    pub blocked_by: Vec<String>,
}

/// The RPM device period that contains the as-of date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenPeriod {
    pub start: NaiveDate,
    pub end: NaiveDate,
    /// Days with device readings so far.
    pub reading_days: u32,
    /// Days left in the period after the as-of date.
    pub days_left: u32,
    /// Reading days still needed for 99454 (0 when reached).
    pub days_to_99454: u32,
    /// Whether 16 days can still be reached if a reading comes every remaining day (today included
    /// when today has none yet).
    pub can_reach_99454: bool,
    /// Reading days still needed for 99445 (0 when reached).
    #[serde(default)]
    pub days_to_99445: u32,
    /// Whether 2 days can still be reached.
    #[serde(default = "yes")]
    pub can_reach_99445: bool,
    /// The days the period ends with if readings keep coming at the rate so far (reading days
    /// per elapsed day, applied to the days left).
    #[serde(default)]
    pub projected_days: u32,
    /// Where the period is heading.
    #[serde(default)]
    pub adherence: Adherence,
}

fn yes() -> bool {
    true
}

/// Where an RPM device period is heading, at the rate of readings so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Adherence {
    /// On course for 16 days (99454).
    #[default]
    OnTrack,
    /// 16 days are still possible, but not at the rate so far.
    Behind,
    /// 16 days can no longer be reached; 2 (99445) still can.
    Short,
    /// Not even 2 days can be reached: no device code this period.
    Lost,
}

impl Adherence {
    /// What the period needs, for a person: days needed and days left.
    pub fn describe(self, p: &OpenPeriod) -> String {
        match self {
            Adherence::OnTrack => format!(
                "on track: {} of 16 days, {} left",
                p.reading_days, p.days_left
            ),
            Adherence::Behind => format!(
                "behind: {} more days needed in {} left; at this rate {} days",
                p.days_to_99454, p.days_left, p.projected_days
            ),
            Adherence::Short => format!(
                "16 days out of reach ({} so far, {} left): 99445 at most",
                p.reading_days, p.days_left
            ),
            Adherence::Lost => format!(
                "no device code this period: {} day(s) so far, {} left",
                p.reading_days, p.days_left
            ),
        }
    }
}

/// Where a period heads: `so_far` reading days after `elapsed` days (as-of included), `left`
/// days after today, `today_open` when today has no reading yet.
pub fn adherence(
    so_far: u32,
    elapsed: u32,
    left: u32,
    today_open: u32,
    long: u32,
    short: u32,
) -> (Adherence, u32) {
    let possible = so_far + left + today_open;
    let projected = if elapsed == 0 {
        so_far
    } else {
        so_far + (u64::from(so_far) * u64::from(left) / u64::from(elapsed)) as u32
    };
    let status = if possible < short {
        Adherence::Lost
    } else if possible < long {
        Adherence::Short
    } else if so_far < long && projected < long {
        Adherence::Behind
    } else {
        Adherence::OnTrack
    };
    (status, projected)
}

/// The next threshold in a base + add-on ladder: (code, minutes at which it is reached).
fn next_step(
    minutes: u32,
    base: (&str, u32),
    addon: (&str, u32, Option<u32>),
) -> Option<(String, u32)> {
    let (base_code, threshold) = base;
    let (addon_code, block, cap) = addon;
    if minutes < threshold {
        return Some((base_code.to_string(), threshold));
    }
    let units = (minutes - threshold) / block;
    if cap.is_some_and(|c| units >= c) {
        return None;
    }
    Some((addon_code.to_string(), threshold + (units + 1) * block))
}

/// The worklist for the month containing `as_of`, counting entries up to and including that day.
pub fn worklist(
    data: &DataFile,
    as_of: NaiveDate,
    rules: &RuleSet,
) -> Result<Vec<WorklistItem>, BillingError> {
    let input = Input::new(data)?;
    let month = Month::of(as_of);
    let mut out = Vec::new();
    for p in &data.patients {
        // Not in the facility any more: died, discharged (ADT) or merged into another record.
        if p.died_on.is_some_and(|d| d < as_of)
            || p.discharged_on.is_some_and(|d| d < as_of)
            || p.merged_into.is_some()
        {
            continue;
        }
        let enc = bill_patient(&input, p, month, rules);
        let ten = super::Tenures::new(p, as_of);
        let t = month_time(&input, p, month, as_of, rules, &ten);
        let blocked = |program: ExceptionProgram| -> Vec<String> {
            enc.exceptions
                .iter()
                .filter(|e| {
                    e.program == program
                        && matches!(e.kind, ExceptionKind::Requirement | ExceptionKind::Conflict)
                })
                .map(|e| e.reason.clone())
                .collect()
        };
        let secs = |prog: Program| t.seconds.get(&prog).copied().unwrap_or(0);
        let own = |prog: Program| t.practitioner_seconds.get(&prog).copied().unwrap_or(0);
        let has =
            |prog: Program| p.consents.iter().any(|c| c.program == prog) || t.any.contains(&prog);

        if has(Program::Ccm) {
            let all = whole_minutes(secs(Program::Ccm));
            let (minutes, step) = match ccm_lane(p, month, all, rules) {
                CcmLane::Practitioner => {
                    let m = whole_minutes(own(Program::Ccm));
                    (
                        m,
                        next_step(
                            m,
                            ("99491", rules.ccm_practitioner_threshold),
                            (
                                "99437",
                                rules.ccm_practitioner_addon_block,
                                rules.ccm_practitioner_addon_cap,
                            ),
                        ),
                    )
                }
                CcmLane::Complex => {
                    let m = whole_minutes(secs(Program::Ccm));
                    (
                        m,
                        next_step(
                            m,
                            ("99487", rules.ccm_complex_threshold),
                            (
                                "99489",
                                rules.ccm_complex_addon_block,
                                rules.ccm_complex_addon_cap,
                            ),
                        ),
                    )
                }
                CcmLane::Standard => {
                    let m = all;
                    (
                        m,
                        next_step(
                            m,
                            ("99490", rules.ccm_standard_threshold),
                            (
                                "99439",
                                rules.ccm_standard_addon_block,
                                rules.ccm_standard_addon_cap,
                            ),
                        ),
                    )
                }
            };
            out.push(item(
                &p.id,
                Program::Ccm,
                minutes,
                step,
                None,
                blocked(ExceptionProgram::Ccm),
            ));
        }
        if p.pcm_condition.is_some() || has(Program::Pcm) {
            let m = whole_minutes(secs(Program::Pcm) - own(Program::Pcm));
            let step = next_step(
                m,
                ("99426", rules.pcm_threshold),
                ("99427", rules.pcm_addon_block, rules.pcm_staff_addon_cap),
            );
            out.push(item(
                &p.id,
                Program::Pcm,
                m,
                step,
                None,
                blocked(ExceptionProgram::Pcm),
            ));
        }
        if p.rpm.is_some() || has(Program::Rpm) {
            let m = whole_minutes(secs(Program::Rpm));
            let step = if m < rules.rpm_mgmt_99470_threshold {
                Some(("99470".to_string(), rules.rpm_mgmt_99470_threshold))
            } else {
                next_step(
                    m,
                    ("99457", rules.rpm_mgmt_99457_threshold),
                    (
                        "99458",
                        rules.rpm_mgmt_addon_block,
                        rules.rpm_mgmt_addon_cap,
                    ),
                )
            };
            let period = rpm_periods(&input, p, as_of, rules)
                .into_iter()
                .find(|pd| pd.start <= as_of && as_of <= pd.end)
                .map(|pd| {
                    let so_far = pd.days.iter().filter(|d| **d <= as_of).count() as u32;
                    let days_left = (pd.last - as_of).num_days().max(0) as u32;
                    let today_open = u32::from(!pd.days.contains(&as_of) && as_of <= pd.last);
                    let to_16 = rules.rpm_min_days_99454.saturating_sub(so_far);
                    let to_2 = rules.rpm_min_days_99445.saturating_sub(so_far);
                    let elapsed = ((as_of - pd.start).num_days() + 1).max(1) as u32;
                    let (adherence, projected_days) = adherence(
                        so_far,
                        elapsed,
                        days_left,
                        today_open,
                        rules.rpm_min_days_99454,
                        rules.rpm_min_days_99445,
                    );
                    OpenPeriod {
                        start: pd.start,
                        end: pd.end,
                        reading_days: so_far,
                        days_left,
                        days_to_99454: to_16,
                        can_reach_99454: to_16 <= days_left + today_open,
                        days_to_99445: to_2,
                        can_reach_99445: to_2 <= days_left + today_open,
                        projected_days,
                        adherence,
                    }
                });
            out.push(item(
                &p.id,
                Program::Rpm,
                m,
                step,
                period,
                blocked(ExceptionProgram::Rpm),
            ));
        }
        // APCM has no threshold: one qualifying interaction of any length is the step left.
        let apcm_billed = enc
            .lines
            .iter()
            .any(|l| super::APCM_CODES.contains(&l.code.as_str()));
        let active = |prog: Program| {
            t.qualifying_entries
                .get(&prog)
                .is_some_and(|e| !e.is_empty())
        };
        if has(Program::Apcm) {
            let m = whole_minutes(secs(Program::Apcm));
            let code = super::apcm_level(p, month, month.last_day(), rules);
            let step = (!active(Program::Apcm)).then(|| (code.to_string(), m + 1));
            out.push(item(
                &p.id,
                Program::Apcm,
                m,
                step,
                None,
                blocked(ExceptionProgram::Apcm),
            ));
        }
        if has(Program::Bhi) {
            let m = whole_minutes(secs(Program::Bhi));
            let step = if apcm_billed && rules.apcm_bhi == super::rules::ApcmBhi::Addon {
                (!active(Program::Bhi)).then(|| ("G0570".to_string(), m + 1))
            } else {
                (m < rules.bhi_threshold).then(|| ("99484".to_string(), rules.bhi_threshold))
            };
            out.push(item(
                &p.id,
                Program::Bhi,
                m,
                step,
                None,
                blocked(ExceptionProgram::Bhi),
            ));
        }
        if p.rtm.is_some() || has(Program::Rtm) {
            let m = whole_minutes(secs(Program::Rtm));
            let step = if m < rules.rtm_mgmt_short_threshold {
                Some(("98979".to_string(), rules.rtm_mgmt_short_threshold))
            } else {
                next_step(
                    m,
                    ("98980", rules.rtm_mgmt_threshold),
                    (
                        "98981",
                        rules.rtm_mgmt_addon_block,
                        rules.rtm_mgmt_addon_cap,
                    ),
                )
            };
            out.push(item(
                &p.id,
                Program::Rtm,
                m,
                step,
                None,
                blocked(ExceptionProgram::Rtm),
            ));
        }
    }
    Ok(out)
}

fn item(
    patient: &str,
    program: Program,
    minutes: u32,
    step: Option<(String, u32)>,
    period: Option<OpenPeriod>,
    blocked_by: Vec<String>,
) -> WorklistItem {
    WorklistItem {
        patient: patient.to_string(),
        program,
        minutes,
        minutes_to_next: step.as_ref().map(|(_, at)| at.saturating_sub(minutes)),
        next_code: step.map(|(code, _)| code),
        period,
        open_alerts: 0,
        blocked_by,
    }
}

/// Count each patient's alerts that still need a response into their worklist rows.
pub fn attach_alerts(items: &mut [WorklistItem], alerts: &[crate::alerts::AlertView]) {
    for item in items.iter_mut() {
        item.open_alerts = alerts
            .iter()
            .filter(|v| v.alert.patient == item.patient && v.needs_response())
            .count() as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adherence_at_the_rate_so_far() {
        // 10 days into the period with 9 reading days and 20 left: on track (projects to 27).
        assert_eq!(adherence(9, 10, 20, 0, 16, 2), (Adherence::OnTrack, 27));
        // 15 days in, 5 reading days, 15 left: 16 still possible (5+15+0=20) but not at 1 in 3.
        assert_eq!(adherence(5, 15, 15, 0, 16, 2), (Adherence::Behind, 10));
        // 25 days in, 3 reading days, 5 left: 16 out of reach.
        assert_eq!(adherence(3, 25, 5, 0, 16, 2).0, Adherence::Short);
        // The last day, none so far, today open: 1 possible, below 2.
        assert_eq!(adherence(0, 30, 0, 1, 16, 2).0, Adherence::Lost);
        // 16 reached: on track whatever the rate.
        assert_eq!(adherence(16, 29, 1, 0, 16, 2).0, Adherence::OnTrack);
    }

    #[test]
    fn ladder_steps() {
        let add = ("99439", 20, Some(2));
        assert_eq!(next_step(0, ("99490", 20), add), Some(("99490".into(), 20)));
        assert_eq!(
            next_step(25, ("99490", 20), add),
            Some(("99439".into(), 40))
        );
        assert_eq!(
            next_step(45, ("99490", 20), add),
            Some(("99439".into(), 60))
        );
        assert_eq!(next_step(60, ("99490", 20), add), None);
    }
}
