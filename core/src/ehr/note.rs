//! The monthly CCM/RPM note a clinician signs: time log, readings summary, care-plan status,
//! billed lines and exceptions. Plain text lines, shared by the PDF, FHIR and HL7 outputs.

use std::collections::BTreeMap;

use super::{PatientMonth, code_text};
use crate::billing::time::human_duration;
use crate::model::{ReadingKind, ReadingSource};

/// The note as lines of text.
pub fn note_lines(pm: &PatientMonth<'_>) -> Vec<String> {
    let p = pm.patient;
    let month_name = pm.month.first_day().format("%B %Y").to_string();
    let mut out = vec![
        format!("Care management monthly note - {month_name}"),
        format!(
            "Patient: {} (MRN {}, DOB {})",
            p.name,
            pm.mrn(),
            p.birth_date
                .map(|d| d.to_string())
                .unwrap_or_else(|| "unknown".into())
        ),
        format!("Facility: {}", pm.data.facility.name),
        format!(
            "Billing practitioner: {} (NPI {})",
            pm.person_name(pm.practitioner_id()),
            pm.practitioner_npi()
        ),
        format!(
            "Conditions: {}",
            p.conditions
                .iter()
                .map(|c| c.icd10.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        String::new(),
        format!(
            "Qualifying minutes: CCM {} (billing practitioner {}), PCM {}, RPM management {}{}",
            pm.encounter.minutes.ccm,
            pm.encounter.minutes.ccm_practitioner,
            pm.encounter.minutes.pcm,
            pm.encounter.minutes.rpm,
            breadth_minutes(&pm.encounter.minutes)
        ),
        "Time log:".into(),
    ];
    let superseded = pm.data.superseded_ids();
    let mut entries: Vec<_> = pm
        .data
        .interactions
        .iter()
        .filter(|i| i.patient == p.id && !superseded.contains(&i.id))
        .filter(|i| {
            pm.month
                .contains(i.started_at.with_timezone(&pm.tz).date_naive())
                || pm
                    .month
                    .contains(i.ended_at.with_timezone(&pm.tz).date_naive())
        })
        .collect();
    entries.sort_by_key(|i| i.started_at);
    if entries.is_empty() {
        out.push("  (no time logged)".into());
    }
    for i in entries {
        let s = i.started_at.with_timezone(&pm.tz);
        let e = i.ended_at.with_timezone(&pm.tz);
        let counted = if pm.encounter.evidence.contains(&i.id) {
            ""
        } else {
            " [not billed]"
        };
        out.push(format!(
            "  {} {}-{} {} {}: {} ({}){}{}",
            s.format("%m/%d"),
            s.format("%H:%M"),
            e.format("%H:%M"),
            i.program.as_str().to_uppercase(),
            pm.person_name(&i.staff),
            i.activity
                .clone()
                .unwrap_or_else(|| "care management".into())
                .replace('_', " "),
            human_duration((i.ended_at - i.started_at).num_seconds()),
            if i.interactive { ", interactive" } else { "" },
            counted,
        ));
        if let Some(n) = &i.note
            && !n.is_empty()
        {
            out.push(format!("      {n}"));
        }
    }
    out.push(String::new());
    out.push("Readings:".into());
    let mut by_kind: BTreeMap<ReadingKind, Vec<&crate::model::Reading>> = BTreeMap::new();
    for r in pm
        .data
        .readings
        .iter()
        .filter(|r| r.patient == p.id && !superseded.contains(&r.id))
    {
        if pm
            .month
            .contains(r.measured_at.with_timezone(&pm.tz).date_naive())
        {
            by_kind.entry(r.kind).or_default().push(r);
        }
    }
    if by_kind.is_empty() {
        out.push("  (none this month)".into());
    }
    for (kind, rs) in &by_kind {
        let device = rs
            .iter()
            .filter(|r| r.source == ReadingSource::Device)
            .count();
        let values: Vec<f64> = rs.iter().filter_map(|r| r.systolic.or(r.value)).collect();
        let (min, max) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
        let avg = values.iter().sum::<f64>() / values.len().max(1) as f64;
        out.push(format!(
            "  {}: {} readings ({} from devices), {}min {:.0} / avg {:.0} / max {:.0} {}",
            kind.as_str().replace('_', " "),
            rs.len(),
            device,
            if *kind == ReadingKind::BloodPressure {
                "systolic "
            } else {
                ""
            },
            min,
            avg,
            max,
            rs[0].unit
        ));
    }
    let alerts: Vec<&crate::alerts::AlertView> = pm
        .alerts
        .iter()
        .filter(|v| {
            v.alert.patient == p.id
                && pm
                    .month
                    .contains(v.alert.raised_at.with_timezone(&pm.tz).date_naive())
        })
        .collect();
    let owned: Vec<crate::alerts::AlertView> = alerts.iter().map(|v| (*v).clone()).collect();
    let stats = crate::alerts::AlertStats::of(&owned);
    if stats.raised > 0 {
        out.push(format!(
            "  Alerts: {} raised ({} urgent), {} acknowledged{}, {} escalated, {} still open",
            stats.raised,
            stats.urgent,
            stats.acknowledged,
            stats
                .median_minutes_to_acknowledge
                .map(|m| format!(" (median {m} min to acknowledge)"))
                .unwrap_or_default(),
            stats.escalated,
            stats.open,
        ));
        for v in alerts {
            let at = v.alert.raised_at.with_timezone(&pm.tz);
            let outcome = match v.minutes_to_acknowledge {
                Some(m) => format!("acknowledged after {m} min"),
                None => format!("{:?}", v.status).to_lowercase(),
            };
            out.push(format!(
                "    {} {} {}: {} - {}",
                at.format("%m/%d %H:%M"),
                v.alert.severity.as_str(),
                v.alert.rule,
                v.alert.message,
                outcome
            ));
        }
    }
    for period in &pm.encounter.rpm_periods {
        out.push(format!(
            "  RPM period {} to {}: {} days with device data",
            period.start, period.end, period.days
        ));
    }
    for period in &pm.encounter.rtm_periods {
        out.push(format!(
            "  RTM period {} to {}: {} days with therapeutic data",
            period.start, period.end, period.days
        ));
    }
    out.push(String::new());
    let plan = p.care_plan.clone().unwrap_or_default();
    out.push(format!(
        "Care plan: established {}{}",
        plan.established_on
            .map(|d| d.to_string())
            .unwrap_or_else(|| "not on file".into()),
        plan.revised_on
            .iter()
            .max()
            .map(|d| format!(", last revised {d}"))
            .unwrap_or_default()
    ));
    if let Some(t) = plan.text.filter(|t| !t.trim().is_empty()) {
        for l in t.lines() {
            out.push(format!("  {l}"));
        }
    }
    out.push(String::new());
    out.push("Services billed:".into());
    if pm.encounter.lines.is_empty() {
        out.push("  none".into());
    }
    for l in &pm.encounter.lines {
        out.push(format!(
            "  {} x{} {} (date of service {})",
            l.code,
            l.units,
            code_text(&l.code),
            l.date_of_service
        ));
    }
    if !pm.encounter.exceptions.is_empty() {
        out.push("Exceptions:".into());
        for e in &pm.encounter.exceptions {
            out.push(format!("  - {}", e.reason));
        }
    }
    out.push(String::new());
    out.push(format!(
        "Prepared {} (version {}). Signature: ______________________",
        pm.local(pm.now).format("%Y-%m-%d %H:%M %:z"),
        pm.version
    ));
    out
}

/// APCM, BHI and RTM minutes, named only when there are some (notes of months without them read
/// as before).
fn breadth_minutes(m: &crate::billing::Minutes) -> String {
    [("APCM", m.apcm), ("BHI", m.bhi), ("RTM management", m.rtm)]
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(name, v)| format!(", {name} {v}"))
        .collect()
}
