//! Alert protocols and alerts: thresholds the practice sets per facility (with per-patient
//! overrides), evaluated on every reading — on the tablet when it is recorded (offline too) and on
//! the server when readings arrive by ingestion or sync.
//!
//! An alert's id is derived from (reading id, rule id), so the tablet and the server raising the
//! "same" alert write the same key of the patient-month's `alerts` map and the documents merge to
//! one alert. What happens to an alert is a list of write-once events (`alert_events`, keyed by
//! event id): two tablets acknowledging offline keep both acknowledgements and both notes. The
//! server's escalation event has a derived id too, so two escalations of one alert are one.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, FixedOffset};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::name_uuid;
use crate::model::{Correction, Reading, ReadingKind};
use crate::problem::{Problem, Problems};

/// How soon a human must respond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Urgent,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Urgent => "urgent",
        }
    }
}

/// Which number of a reading a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    Systolic,
    Diastolic,
    Value,
}

/// One threshold rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Stable name (`systolic-high`); part of the alert id, so keep it when editing thresholds.
    pub id: String,
    pub kind: ReadingKind,
    /// `systolic` / `diastolic` for blood pressure, `value` (the default) otherwise.
    #[serde(default)]
    pub measure: Option<Measure>,
    /// The unit `above`, `below` and `gain` are in (default: the kind's first unit).
    #[serde(default)]
    pub unit: Option<String>,
    /// Alert when the value is strictly above this.
    #[serde(default)]
    pub above: Option<f64>,
    /// Alert when the value is strictly below this.
    #[serde(default)]
    pub below: Option<f64>,
    /// Alert when the value rose by more than this over the lowest value in `within_hours`.
    #[serde(default)]
    pub gain: Option<f64>,
    #[serde(default)]
    pub within_hours: Option<u32>,
    pub severity: Severity,
}

impl Rule {
    fn measure(&self) -> Measure {
        self.measure.unwrap_or(Measure::Value)
    }

    fn unit(&self) -> &str {
        self.unit
            .as_deref()
            .unwrap_or_else(|| default_unit(self.kind))
    }
}

/// Minutes to acknowledge, per severity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deadlines {
    pub urgent_minutes: u32,
    pub warning_minutes: u32,
}

impl Deadlines {
    pub fn minutes(&self, s: Severity) -> u32 {
        match s {
            Severity::Urgent => self.urgent_minutes,
            Severity::Warning => self.warning_minutes,
        }
    }
}

/// A patient's changes to the facility's rules.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientOverride {
    /// Rules replacing the facility rule of the same id (or added).
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// Facility rules that do not apply to this patient.
    #[serde(default)]
    pub disable: Vec<String>,
}

/// A facility's alert protocol (the TOML file `rounds protocol set` loads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertProtocol {
    /// Staff ids on call: they see and acknowledge alerts first.
    #[serde(default)]
    pub on_call: Vec<String>,
    pub deadlines: Deadlines,
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
    /// Per-patient overrides, by patient id.
    #[serde(default)]
    pub patients: BTreeMap<String, PatientOverride>,
}

/// The protocol used until a practice sets its own.
pub const DEFAULT_PROTOCOL: &str = include_str!("alerts-default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("alert protocol is not valid TOML: {0}")]
    Toml(String),
    #[error("alert protocol is invalid:\n{0}")]
    Invalid(Problems),
}

impl AlertProtocol {
    /// The default protocol (systolic > 180 or < 90 urgent, SpO2 < 90 urgent, weight gain
    /// > 2 lb in a day or > 5 lb in a week warning; 30 min / 4 h to acknowledge).
    pub fn standard() -> AlertProtocol {
        // The embedded file is checked by a unit test.
        AlertProtocol::from_toml(DEFAULT_PROTOCOL).unwrap_or_else(|_| AlertProtocol {
            on_call: Vec::new(),
            deadlines: Deadlines {
                urgent_minutes: 30,
                warning_minutes: 240,
            },
            rules: Vec::new(),
            patients: BTreeMap::new(),
        })
    }

    /// Parse and check a protocol; every problem names the rule and field.
    pub fn from_toml(text: &str) -> Result<AlertProtocol, ProtocolError> {
        let p: AlertProtocol =
            toml::from_str(text).map_err(|e| ProtocolError::Toml(e.to_string()))?;
        let problems = p.check();
        if problems.is_empty() {
            Ok(p)
        } else {
            Err(ProtocolError::Invalid(Problems(problems)))
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A protocol as stored in a facility document. One that fails [`AlertProtocol::check`]
    /// (a threshold of −1000, an unknown unit) is not used: `None`, and the standard protocol
    /// applies — wherever the stored text came from.
    pub fn from_json(text: &str) -> Option<AlertProtocol> {
        let p: AlertProtocol = serde_json::from_str(text).ok()?;
        if p.check().is_empty() {
            Some(p)
        } else {
            tracing::warn!("a stored alert protocol fails its checks; the standard one applies");
            None
        }
    }

    /// Semantic checks (the TOML parser checks the shapes).
    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for (name, m) in [
            ("urgent_minutes", self.deadlines.urgent_minutes),
            ("warning_minutes", self.deadlines.warning_minutes),
        ] {
            if m == 0 || m > 7 * 24 * 60 {
                out.push(Problem::new(
                    "deadlines",
                    name,
                    format!("{m} is not between 1 minute and 7 days"),
                ));
            }
        }
        check_rules(&self.rules, "rule", &mut out);
        for (patient, o) in &self.patients {
            check_rules(&o.rules, &format!("patients.{patient}.rule"), &mut out);
            for d in &o.disable {
                if !self.rules.iter().any(|r| &r.id == d) {
                    out.push(Problem::new(
                        format!("patients.{patient}"),
                        "disable",
                        format!("no facility rule {d:?}"),
                    ));
                }
            }
        }
        out
    }

    /// The rules that apply to a patient.
    pub fn rules_for(&self, patient: &str) -> Vec<&Rule> {
        let o = self.patients.get(patient);
        let mut out: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| {
                o.is_none_or(|o| {
                    !o.disable.contains(&r.id) && !o.rules.iter().any(|x| x.id == r.id)
                })
            })
            .collect();
        if let Some(o) = o {
            out.extend(o.rules.iter());
        }
        out
    }
}

fn check_rules(rules: &[Rule], entry: &str, out: &mut Vec<Problem>) {
    let mut seen = BTreeSet::new();
    for r in rules {
        let at = format!("{entry} {:?}", r.id);
        if r.id.trim().is_empty() || r.id.contains('/') {
            out.push(Problem::new(
                entry,
                "id",
                "must be a non-empty name without '/'",
            ));
        }
        if !seen.insert(r.id.clone()) {
            out.push(Problem::new(&at, "id", "appears twice"));
        }
        let bp = r.kind == ReadingKind::BloodPressure;
        match (bp, r.measure()) {
            (true, Measure::Value) => out.push(Problem::new(
                &at,
                "measure",
                "blood_pressure rules need measure = \"systolic\" or \"diastolic\"",
            )),
            (false, Measure::Systolic | Measure::Diastolic) => out.push(Problem::new(
                &at,
                "measure",
                format!("{} readings have only a value", r.kind.as_str()),
            )),
            _ => {}
        }
        if convert(r.kind, 1.0, r.unit(), default_unit(r.kind)).is_none() {
            out.push(Problem::new(
                &at,
                "unit",
                format!("{:?} is not a unit for {}", r.unit(), r.kind.as_str()),
            ));
        }
        let limits = [r.above, r.below, r.gain];
        if limits.iter().all(Option::is_none) {
            out.push(Problem::new(
                &at,
                "above",
                "a rule needs `above`, `below` or `gain`",
            ));
        }
        for (name, v) in [("above", r.above), ("below", r.below), ("gain", r.gain)] {
            if let Some(v) = v
                && (!v.is_finite() || v < 0.0)
            {
                out.push(Problem::new(
                    &at,
                    name,
                    format!("{v} is not a non-negative number"),
                ));
            }
        }
        if let (Some(a), Some(b)) = (r.above, r.below)
            && a <= b
        {
            out.push(Problem::new(
                &at,
                "above",
                format!("{a} is not above `below` ({b}): every reading would alert"),
            ));
        }
        match (r.gain, r.within_hours) {
            (Some(0.0), _) => {
                out.push(Problem::new(&at, "gain", "must be more than 0"));
            }
            (Some(_), None | Some(0)) => out.push(Problem::new(
                &at,
                "within_hours",
                "a gain rule needs within_hours (1 or more)",
            )),
            (Some(_), Some(h)) if h > 31 * 24 => out.push(Problem::new(
                &at,
                "within_hours",
                format!("{h} is more than 31 days"),
            )),
            (None, Some(_)) => out.push(Problem::new(
                &at,
                "within_hours",
                "only a gain rule has within_hours",
            )),
            _ => {}
        }
    }
}

fn default_unit(kind: ReadingKind) -> &'static str {
    use ReadingKind::*;
    match kind {
        BloodPressure => "mm[Hg]",
        HeartRate | RespiratoryRate => "/min",
        Weight => "[lb_av]",
        Glucose => "mg/dL",
        Spo2 => "%",
        Temperature => "[degF]",
        MedicationAdherence => "{dose}",
        TherapyAdherence => "{session}",
        TherapyResponse | PainScore => "{score}",
        RangeOfMotion => "deg",
    }
}

/// `value` in `from` converted to `to` (both units of `kind`); None when either is not.
pub fn convert(kind: ReadingKind, value: f64, from: &str, to: &str) -> Option<f64> {
    use ReadingKind::*;
    // To the kind's base unit, then out of it.
    let base = match (kind, from) {
        (BloodPressure, "mm[Hg]") | (HeartRate | RespiratoryRate, "/min") | (Spo2, "%") => value,
        (Weight, "[lb_av]") => value,
        (Weight, "kg") => value / 0.453_592_37,
        (Glucose, "mg/dL") => value,
        (Glucose, "mmol/L") => value * 18.0,
        (Temperature, "[degF]") => value,
        (Temperature, "Cel") => value * 9.0 / 5.0 + 32.0,
        (k, u) if k.therapeutic().is_some_and(|(unit, _, _)| unit == u) => value,
        _ => return None,
    };
    Some(match (kind, to) {
        (BloodPressure, "mm[Hg]") | (HeartRate | RespiratoryRate, "/min") | (Spo2, "%") => base,
        (Weight, "[lb_av]") => base,
        (Weight, "kg") => base * 0.453_592_37,
        (Glucose, "mg/dL") => base,
        (Glucose, "mmol/L") => base / 18.0,
        (Temperature, "[degF]") => base,
        (Temperature, "Cel") => (base - 32.0) * 5.0 / 9.0,
        (k, u) if k.therapeutic().is_some_and(|(unit, _, _)| unit == u) => base,
        _ => return None,
    })
}

/// A raised alert (write-once; what happens to it is in [`AlertEvent`]s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: Uuid,
    pub patient: String,
    pub reading: Uuid,
    pub rule: String,
    pub severity: Severity,
    /// What broke the rule, without patient identifiers ("systolic 192 mm[Hg] > 180").
    pub message: String,
    pub measured_at: DateTime<FixedOffset>,
    pub raised_at: DateTime<FixedOffset>,
    /// Acknowledge before this, or the alert escalates.
    pub deadline: DateTime<FixedOffset>,
    /// Who evaluated it: a device's actor or `server`.
    pub raised_by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertAction {
    Acknowledged,
    Resolved,
    Escalated,
}

/// Something a person (or the server) did about an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub id: Uuid,
    pub alert: Uuid,
    pub action: AlertAction,
    /// Staff or practitioner id; `server` for automatic escalation.
    pub by: String,
    pub at: DateTime<FixedOffset>,
    #[serde(default)]
    pub note: Option<String>,
    /// The interaction logging the time spent (acknowledgements).
    #[serde(default)]
    pub interaction: Option<Uuid>,
    /// Escalations: who it went to (the billing practitioner).
    #[serde(default)]
    pub to: Option<String>,
}

/// The id of the alert rule `rule` raises for `reading`: the same on every replica.
pub fn alert_id(reading: Uuid, rule: &str) -> Uuid {
    name_uuid(&format!("rounds/alert/{reading}/{rule}"))
}

/// The id of the automatic escalation of `alert`: one per alert, whoever writes it.
pub fn escalation_id(alert: Uuid) -> Uuid {
    name_uuid(&format!("rounds/alert-escalation/{alert}"))
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Open,
    Escalated,
    Acknowledged,
    Resolved,
}

/// An alert with its history folded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertView {
    #[serde(flatten)]
    pub alert: Alert,
    pub status: AlertStatus,
    /// Events in time order (then id).
    pub events: Vec<AlertEvent>,
    /// Minutes from raise to the first acknowledgement.
    pub minutes_to_acknowledge: Option<i64>,
}

impl AlertView {
    /// Not acknowledged or resolved (escalated alerts still need a human).
    pub fn needs_response(&self) -> bool {
        matches!(self.status, AlertStatus::Open | AlertStatus::Escalated)
    }
}

/// Fold alerts and their events (events of unknown alerts are ignored).
pub fn fold(alerts: &[Alert], events: &[AlertEvent]) -> Vec<AlertView> {
    let mut out: Vec<AlertView> = alerts
        .iter()
        .map(|a| {
            let mut evs: Vec<AlertEvent> =
                events.iter().filter(|e| e.alert == a.id).cloned().collect();
            evs.sort_by(|x, y| x.at.cmp(&y.at).then(x.id.cmp(&y.id)));
            evs.dedup_by_key(|e| e.id);
            let has = |act: AlertAction| evs.iter().any(|e| e.action == act);
            let status = if has(AlertAction::Resolved) {
                AlertStatus::Resolved
            } else if has(AlertAction::Acknowledged) {
                AlertStatus::Acknowledged
            } else if has(AlertAction::Escalated) {
                AlertStatus::Escalated
            } else {
                AlertStatus::Open
            };
            let minutes_to_acknowledge = evs
                .iter()
                .find(|e| e.action == AlertAction::Acknowledged)
                .map(|e| (e.at - a.raised_at).num_minutes().max(0));
            AlertView {
                alert: a.clone(),
                status,
                events: evs,
                minutes_to_acknowledge,
            }
        })
        .collect();
    out.sort_by(|x, y| {
        x.alert
            .raised_at
            .cmp(&y.alert.raised_at)
            .then(x.alert.id.cmp(&y.alert.id))
    });
    out.dedup_by_key(|v| v.alert.id);
    out
}

/// Counts for the monthly note and the worklist.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertStats {
    pub raised: usize,
    pub urgent: usize,
    pub acknowledged: usize,
    pub escalated: usize,
    pub open: usize,
    /// Median minutes to acknowledge, over acknowledged alerts.
    pub median_minutes_to_acknowledge: Option<i64>,
}

impl AlertStats {
    pub fn of(views: &[AlertView]) -> AlertStats {
        let mut mins: Vec<i64> = views
            .iter()
            .filter_map(|v| v.minutes_to_acknowledge)
            .collect();
        mins.sort();
        AlertStats {
            raised: views.len(),
            urgent: views
                .iter()
                .filter(|v| v.alert.severity == Severity::Urgent)
                .count(),
            acknowledged: views
                .iter()
                .filter(|v| v.minutes_to_acknowledge.is_some())
                .count(),
            escalated: views
                .iter()
                .filter(|v| v.events.iter().any(|e| e.action == AlertAction::Escalated))
                .count(),
            open: views.iter().filter(|v| v.needs_response()).count(),
            median_minutes_to_acknowledge: mins
                .get(mins.len() / 2)
                .copied()
                .filter(|_| !mins.is_empty()),
        }
    }
}

fn measure_of(r: &Reading, m: Measure) -> Option<f64> {
    match m {
        Measure::Systolic => r.systolic,
        Measure::Diastolic => r.diastolic,
        Measure::Value => r.value,
    }
}

fn fmt_num(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// The alerts `reading` raises under `protocol`. `history` holds the patient's other readings
/// (for gain rules; voided ones are skipped), `now` is when it is evaluated (local time of the
/// facility) and `raised_by` who evaluates.
pub fn evaluate(
    protocol: &AlertProtocol,
    reading: &Reading,
    history: &[Reading],
    voided: &BTreeSet<Uuid>,
    now: DateTime<FixedOffset>,
    raised_by: &str,
) -> Vec<Alert> {
    let mut out = Vec::new();
    if voided.contains(&reading.id) {
        return out;
    }
    for rule in protocol.rules_for(&reading.patient) {
        if rule.kind != reading.kind {
            continue;
        }
        let m = rule.measure();
        let Some(v) = measure_of(reading, m)
            .and_then(|v| convert(reading.kind, v, &reading.unit, rule.unit()))
        else {
            continue;
        };
        let what = match m {
            Measure::Systolic => "systolic".to_string(),
            Measure::Diastolic => "diastolic".to_string(),
            Measure::Value => reading.kind.as_str().replace('_', " "),
        };
        let unit = rule.unit();
        let mut message = None;
        if let Some(a) = rule.above
            && v > a
        {
            message = Some(format!("{what} {} {unit} > {}", fmt_num(v), fmt_num(a)));
        }
        if let Some(b) = rule.below
            && v < b
        {
            message = Some(format!("{what} {} {unit} < {}", fmt_num(v), fmt_num(b)));
        }
        if let (Some(g), Some(h)) = (rule.gain, rule.within_hours) {
            let from = reading.measured_at - Duration::hours(i64::from(h));
            let baseline = history
                .iter()
                .filter(|o| {
                    o.id != reading.id
                        && o.patient == reading.patient
                        && o.kind == reading.kind
                        && !voided.contains(&o.id)
                        && o.measured_at >= from
                        && o.measured_at < reading.measured_at
                })
                .filter_map(|o| measure_of(o, m).and_then(|x| convert(o.kind, x, &o.unit, unit)))
                .fold(None, |acc: Option<f64>, x| {
                    Some(acc.map_or(x, |a| a.min(x)))
                });
            if let Some(base) = baseline
                && v - base > g
            {
                message = Some(format!(
                    "{what} up {} {unit} in {h} h (from {} to {}; limit {})",
                    fmt_num(v - base),
                    fmt_num(base),
                    fmt_num(v),
                    fmt_num(g)
                ));
            }
        }
        if let Some(message) = message {
            let minutes = i64::from(protocol.deadlines.minutes(rule.severity));
            out.push(Alert {
                id: alert_id(reading.id, &rule.id),
                patient: reading.patient.clone(),
                reading: reading.id,
                rule: rule.id.clone(),
                severity: rule.severity,
                message,
                measured_at: reading.measured_at,
                raised_at: now,
                deadline: now + Duration::minutes(minutes),
                raised_by: raised_by.to_string(),
            });
        }
    }
    out
}

/// Ids voided by corrections.
pub fn voided_ids(corrections: &[Correction]) -> BTreeSet<Uuid> {
    corrections.iter().map(|c| c.target).collect()
}

/// What a 24/7 triage call ended with (logged as the interaction's activity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriageOutcome {
    Advised,
    NurseVisit,
    PractitionerNotified,
    SentToEmergency,
    NoActionNeeded,
}

impl TriageOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TriageOutcome::Advised => "advised",
            TriageOutcome::NurseVisit => "nurse_visit",
            TriageOutcome::PractitionerNotified => "practitioner_notified",
            TriageOutcome::SentToEmergency => "sent_to_emergency",
            TriageOutcome::NoActionNeeded => "no_action_needed",
        }
    }

    /// The interaction activity recording a triage call with this outcome.
    pub fn activity(self) -> String {
        format!("triage-call: {}", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_protocol_that_fails_its_checks_is_not_used() {
        let mut p = AlertProtocol::standard();
        assert!(AlertProtocol::from_json(&p.to_json()).is_some());
        for r in &mut p.rules {
            if r.below.is_some() {
                r.below = Some(-1001.0);
            }
        }
        assert!(AlertProtocol::from_json(&p.to_json()).is_none());
    }
    use crate::model::ReadingSource;

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn reading(kind: ReadingKind, value: f64, unit: &str, at: &str) -> Reading {
        Reading {
            program: None,
            id: Uuid::new_v4(),
            patient: "p-001".into(),
            kind,
            systolic: None,
            diastolic: None,
            value: Some(value),
            unit: unit.into(),
            measured_at: t(at),
            device: None,
            source: ReadingSource::Device,
        }
    }

    #[test]
    fn the_default_protocol_parses_and_has_the_issue_thresholds() {
        let p = AlertProtocol::from_toml(DEFAULT_PROTOCOL).unwrap();
        assert_eq!(p.deadlines.urgent_minutes, 30);
        let ids: Vec<&str> = p.rules.iter().map(|r| r.id.as_str()).collect();
        for id in [
            "systolic-high",
            "systolic-low",
            "spo2-low",
            "weight-gain-day",
            "weight-gain-week",
        ] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
    }

    #[test]
    fn blood_pressure_and_spo2_thresholds() {
        let p = AlertProtocol::standard();
        let now = t("2026-12-03T10:00:00-05:00");
        let mut bp = reading(
            ReadingKind::BloodPressure,
            0.0,
            "mm[Hg]",
            "2026-12-03T09:50:00-05:00",
        );
        bp.value = None;
        bp.systolic = Some(192.0);
        bp.diastolic = Some(95.0);
        let a = evaluate(&p, &bp, &[], &BTreeSet::new(), now, "dev");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].rule, "systolic-high");
        assert_eq!(a[0].severity, Severity::Urgent);
        assert_eq!(a[0].deadline, now + Duration::minutes(30));
        assert_eq!(a[0].id, alert_id(bp.id, "systolic-high"));
        bp.systolic = Some(180.0);
        assert!(evaluate(&p, &bp, &[], &BTreeSet::new(), now, "dev").is_empty());
        bp.systolic = Some(88.0);
        bp.diastolic = Some(50.0);
        assert_eq!(
            evaluate(&p, &bp, &[], &BTreeSet::new(), now, "dev")[0].rule,
            "systolic-low"
        );
        let o2 = reading(ReadingKind::Spo2, 89.0, "%", "2026-12-03T09:50:00-05:00");
        assert_eq!(
            evaluate(&p, &o2, &[], &BTreeSet::new(), now, "dev")[0].rule,
            "spo2-low"
        );
        let o2 = reading(ReadingKind::Spo2, 90.0, "%", "2026-12-03T09:50:00-05:00");
        assert!(evaluate(&p, &o2, &[], &BTreeSet::new(), now, "dev").is_empty());
    }

    #[test]
    fn weight_gain_in_a_day_and_a_week_across_units() {
        let p = AlertProtocol::standard();
        let now = t("2026-12-08T10:00:00-05:00");
        let monday = reading(ReadingKind::Weight, 80.0, "kg", "2026-12-01T08:00:00-05:00");
        let friday = reading(
            ReadingKind::Weight,
            177.5,
            "[lb_av]",
            "2026-12-05T08:00:00-05:00",
        );
        let history = vec![monday.clone(), friday.clone()];
        // 80 kg = 176.4 lb; Sunday 182 lb: +5.6 lb in the week, +4.5 lb... not within a day.
        let sunday = reading(
            ReadingKind::Weight,
            182.0,
            "[lb_av]",
            "2026-12-07T08:00:00-05:00",
        );
        let a = evaluate(&p, &sunday, &history, &BTreeSet::new(), now, "dev");
        let rules: Vec<&str> = a.iter().map(|a| a.rule.as_str()).collect();
        assert_eq!(rules, vec!["weight-gain-week"]);
        // Voiding Monday's reading leaves +4.5 lb in the week: no alert.
        let voided = BTreeSet::from([monday.id]);
        assert!(evaluate(&p, &sunday, &history, &voided, now, "dev").is_empty());
        // +2.5 lb overnight.
        let next = reading(
            ReadingKind::Weight,
            184.5,
            "[lb_av]",
            "2026-12-08T07:00:00-05:00",
        );
        let a = evaluate(
            &p,
            &next,
            std::slice::from_ref(&sunday),
            &BTreeSet::new(),
            now,
            "dev",
        );
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].rule, "weight-gain-day");
        assert_eq!(a[0].severity, Severity::Warning);
    }

    #[test]
    fn patient_overrides_replace_and_disable_rules() {
        let text = format!(
            "{DEFAULT_PROTOCOL}\n[patients.p-001]\ndisable = [\"spo2-low\"]\n\
             [[patients.p-001.rule]]\nid = \"systolic-high\"\nkind = \"blood_pressure\"\n\
             measure = \"systolic\"\nabove = 160\nseverity = \"warning\"\n"
        );
        let p = AlertProtocol::from_toml(&text).unwrap();
        let now = t("2026-12-03T10:00:00-05:00");
        let mut bp = reading(
            ReadingKind::BloodPressure,
            0.0,
            "mm[Hg]",
            "2026-12-03T09:50:00-05:00",
        );
        bp.value = None;
        bp.systolic = Some(170.0);
        bp.diastolic = Some(90.0);
        let a = evaluate(&p, &bp, &[], &BTreeSet::new(), now, "dev");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].severity, Severity::Warning);
        let o2 = reading(ReadingKind::Spo2, 85.0, "%", "2026-12-03T09:50:00-05:00");
        assert!(evaluate(&p, &o2, &[], &BTreeSet::new(), now, "dev").is_empty());
        let mut other = o2.clone();
        other.patient = "p-002".into();
        assert_eq!(
            evaluate(&p, &other, &[], &BTreeSet::new(), now, "dev").len(),
            1
        );
    }

    #[test]
    fn invalid_thresholds_are_rejected_naming_rule_and_field() {
        let bad = r#"
            [deadlines]
            urgent_minutes = 0
            warning_minutes = 240
            [[rule]]
            id = "bp"
            kind = "blood_pressure"
            above = 180
            severity = "urgent"
            [[rule]]
            id = "o2"
            kind = "spo2"
            unit = "kg"
            above = 80
            below = 90
            severity = "urgent"
            [[rule]]
            id = "w"
            kind = "weight"
            gain = 2
            severity = "warning"
        "#;
        let Err(ProtocolError::Invalid(p)) = AlertProtocol::from_toml(bad) else {
            panic!("accepted");
        };
        let s = p.to_string();
        for needle in [
            "deadlines",
            "urgent_minutes",
            "rule \"bp\"",
            "measure",
            "rule \"o2\"",
            "unit",
            "above",
            "rule \"w\"",
            "within_hours",
        ] {
            assert!(s.contains(needle), "{needle:?} not in:\n{s}");
        }
        // Shape errors name the field too.
        let e = AlertProtocol::from_toml(
            "[deadlines]\nurgent_minutes = \"soon\"\nwarning_minutes = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("urgent_minutes"), "{e}");
        let e = AlertProtocol::from_toml(
            "[deadlines]\nurgent_minutes = 5\nwarning_minutes = 1\n[[rule]]\nid = \"x\"\nkind = \"spo2\"\nbelow = 90\nseverity = \"critical\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("severity") || e.contains("critical"), "{e}");
    }

    #[test]
    fn folding_keeps_every_acknowledgement_and_derives_status() {
        let now = t("2026-12-03T10:00:00-05:00");
        let a = Alert {
            id: Uuid::new_v4(),
            patient: "p-001".into(),
            reading: Uuid::new_v4(),
            rule: "spo2-low".into(),
            severity: Severity::Urgent,
            message: "spo2 85 % < 90".into(),
            measured_at: now,
            raised_at: now,
            deadline: now + Duration::minutes(30),
            raised_by: "dev".into(),
        };
        let ev = |by: &str, mins: i64, action| AlertEvent {
            id: Uuid::new_v4(),
            alert: a.id,
            action,
            by: by.into(),
            at: now + Duration::minutes(mins),
            note: Some(format!("note by {by}")),
            interaction: None,
            to: None,
        };
        let events = vec![
            ev("rn-b", 12, AlertAction::Acknowledged),
            ev("rn-a", 7, AlertAction::Acknowledged),
        ];
        let v = fold(&[a.clone(), a.clone()], &events);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].status, AlertStatus::Acknowledged);
        assert_eq!(v[0].events.len(), 2);
        assert_eq!(v[0].events[0].by, "rn-a");
        assert_eq!(v[0].minutes_to_acknowledge, Some(7));
        let stats = AlertStats::of(&v);
        assert_eq!((stats.raised, stats.acknowledged, stats.open), (1, 1, 0));
        let open = fold(&[a], &[]);
        assert!(open[0].needs_response());
    }
}
