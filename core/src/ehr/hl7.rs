//! HL7 v2.5.1 messages per patient-month: DFT^P03 (charges), MDM^T02 (the note), ORU^R01
//! (readings). Field positions: `docs/ehr-integration.md`; business keys (FT1-2,
//! PV1-19, TXA-12, ORC-3) stay stable across resends, MSH-10 is new per message.

use chrono::{DateTime, FixedOffset};

use super::{PatientMonth, code_text, note::note_lines};
use crate::billing::Line;
use crate::model::ReadingKind;

/// Escape the delimiters inside a field value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\E\\"),
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn ts(t: &DateTime<FixedOffset>) -> String {
    t.format("%Y%m%d%H%M%S%z").to_string()
}

/// A segment from (position, value) pairs; unlisted positions are empty.
fn seg(name: &str, fields: &[(usize, String)]) -> String {
    let max = fields.iter().map(|(p, _)| *p).max().unwrap_or(0);
    let mut v = vec![String::new(); max + 1];
    v[0] = name.to_string();
    for (p, val) in fields {
        v[*p] = val.clone();
    }
    v.join("|")
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A control id of at most 20 characters, unique per (package, message type, version, attempt).
pub fn control_id(pm: &PatientMonth<'_>, kind: &str, attempt: u32) -> String {
    let u = crate::ids::name_uuid(&format!("{}-{kind}-v{}-{attempt}", pm.key(), pm.version));
    format!("R{}", &u.simple().to_string()[..19])
}

struct Common {
    msh_tail: String,
    pid: String,
    pv1: String,
    now: String,
    xcn: String,
    location: String,
}

fn common(pm: &PatientMonth<'_>) -> Common {
    let cfg = pm.config;
    let now = ts(&pm.local(pm.now));
    let name = pm.patient.name.trim();
    let (given, family) = name.rsplit_once(' ').unwrap_or(("", name));
    let npi = pm.practitioner_npi();
    let prac_name = pm.person_name(pm.practitioner_id());
    let prac_core = prac_name
        .split(',')
        .next()
        .unwrap_or(&prac_name)
        .trim()
        .to_string();
    let (pg, pf) = prac_core
        .rsplit_once(' ')
        .unwrap_or(("", prac_core.as_str()));
    let xcn = format!(
        "{npi}^{}^{}^^^^^^NPI^L^^^NPI",
        escape(&pf.to_uppercase()),
        escape(&pg.to_uppercase())
    );
    let location = format!(
        "{}^^^{}",
        escape(&pm.data.facility.id.to_uppercase()),
        escape(&cfg.receiving_facility)
    );
    let (start, end) = pm.period();
    let pid = seg(
        "PID",
        &[
            (1, "1".into()),
            (
                3,
                format!(
                    "{}^^^{}^MR",
                    escape(&pm.mrn()),
                    escape(&cfg.receiving_facility)
                ),
            ),
            (
                5,
                format!(
                    "{}^{}",
                    escape(&family.to_uppercase()),
                    escape(&given.to_uppercase())
                ),
            ),
            (
                7,
                pm.patient
                    .birth_date
                    .map(|d| d.format("%Y%m%d").to_string())
                    .unwrap_or_default(),
            ),
        ],
    );
    let pv1 = seg(
        "PV1",
        &[
            (1, "1".into()),
            (2, "O".into()),
            (3, location.clone()),
            (7, xcn.clone()),
            (19, escape(&pm.key())),
            (44, ts(&start)),
            (45, ts(&end)),
        ],
    );
    Common {
        msh_tail: format!(
            "{}|{}|{}|{}|{now}",
            escape(&cfg.sending_application),
            escape(&cfg.sending_facility),
            escape(&cfg.receiving_application),
            escape(&cfg.receiving_facility)
        ),
        pid,
        pv1,
        now,
        xcn,
        location,
    }
}

fn msh(c: &Common, kind: &str, control: &str) -> String {
    format!("MSH|^~\\&|{}||{kind}|{control}|P|2.5.1|||AL|NE", c.msh_tail)
}

fn charge_key(pm: &PatientMonth<'_>, l: &Line) -> String {
    let mut k = format!("{}-{}", pm.key(), l.code);
    if ["99454", "99445"].contains(&l.code.as_str()) {
        k.push_str(&format!("-{}", l.date_of_service.format("%Y%m%d")));
    }
    k
}

/// DFT^P03 with one FT1 per billed line, or `None` when nothing is billed.
pub fn dft_p03(pm: &PatientMonth<'_>, attempt: u32) -> Option<String> {
    if pm.encounter.lines.is_empty() {
        return None;
    }
    let c = common(pm);
    let (start, end) = pm.period();
    let mut segs = vec![
        msh(&c, "DFT^P03^DFT_P03", &control_id(pm, "DFT", attempt)),
        seg("EVN", &[(1, "P03".into()), (2, c.now.clone())]),
        c.pid.clone(),
        c.pv1.clone(),
    ];
    for (i, l) in pm.encounter.lines.iter().enumerate() {
        let code = format!("{}^{}^C4", l.code, escape(code_text(&l.code)));
        let dx = l
            .diagnoses
            .iter()
            .map(|d| format!("{}^^I10", escape(d)))
            .collect::<Vec<_>>()
            .join("~");
        segs.push(seg(
            "FT1",
            &[
                (1, (i + 1).to_string()),
                (2, escape(&charge_key(pm, l))),
                (
                    4,
                    format!("{}^{}", start.format("%Y%m%d"), end.format("%Y%m%d")),
                ),
                (5, c.now.clone()),
                (6, "CG".into()),
                (7, code.clone()),
                (10, l.units.to_string()),
                (16, c.location.clone()),
                (18, "O".into()),
                (19, dx),
                (20, c.xcn.clone()),
                (21, c.xcn.clone()),
                (25, code),
            ],
        ));
    }
    let mut dx: Vec<&String> = pm
        .encounter
        .lines
        .iter()
        .flat_map(|l| &l.diagnoses)
        .collect();
    dx.dedup();
    let mut seen = Vec::new();
    for d in dx {
        if seen.contains(&d) {
            continue;
        }
        seen.push(d);
        segs.push(seg(
            "DG1",
            &[
                (1, seen.len().to_string()),
                (3, format!("{}^^I10", escape(d))),
                (6, "W".into()),
            ],
        ));
    }
    Some(segs.join("\r") + "\r")
}

/// MDM^T02 carrying the note as text lines.
pub fn mdm_t02(pm: &PatientMonth<'_>, attempt: u32) -> String {
    let c = common(pm);
    let (_, end) = pm.period();
    let doc_key = format!("{}-NOTE-v{}", pm.key(), pm.version);
    let mut segs = vec![
        msh(&c, "MDM^T02^MDM_T02", &control_id(pm, "MDM", attempt)),
        seg("EVN", &[(1, "T02".into()), (2, c.now.clone())]),
        c.pid.clone(),
        c.pv1.clone(),
        seg(
            "TXA",
            &[
                (1, "1".into()),
                (2, "PN".into()),
                (3, "TX".into()),
                (4, ts(&end)),
                (5, c.xcn.clone()),
                (6, c.now.clone()),
                (9, c.xcn.clone()),
                (10, c.xcn.clone()),
                (
                    12,
                    format!(
                        "{}^{}",
                        escape(&doc_key),
                        escape(&pm.config.sending_facility)
                    ),
                ),
                (17, "AU".into()),
                (19, "AV".into()),
            ],
        ),
    ];
    let mut n = 0;
    for line in note_lines(pm).iter().filter(|l| !l.trim().is_empty()) {
        n += 1;
        segs.push(seg(
            "OBX",
            &[
                (1, n.to_string()),
                (2, "TX".into()),
                (3, "11506-3^Progress note^LN".into()),
                (4, "1".into()),
                (5, escape(line)),
                (11, "F".into()),
                (14, ts(&end)),
            ],
        ));
    }
    segs.join("\r") + "\r"
}

/// ORU^R01 with one order group per reading of the month, or `None` when there are none.
pub fn oru_r01(pm: &PatientMonth<'_>, attempt: u32) -> Option<String> {
    let superseded = pm.data.superseded_ids();
    let readings: Vec<_> = pm
        .data
        .readings
        .iter()
        .filter(|r| r.patient == pm.patient.id && !superseded.contains(&r.id))
        .filter(|r| {
            pm.month
                .contains(r.measured_at.with_timezone(&pm.tz).date_naive())
        })
        .collect();
    if readings.is_empty() {
        return None;
    }
    let c = common(pm);
    let mut segs = vec![
        msh(&c, "ORU^R01^ORU_R01", &control_id(pm, "ORU", attempt)),
        c.pid.clone(),
        c.pv1.clone(),
    ];
    for (i, r) in readings.iter().enumerate() {
        let at = ts(&r.measured_at);
        let order = format!("{}^{}", r.id.simple(), escape(&pm.config.sending_facility));
        let (panel, obs): (&str, Vec<(&str, f64)>) = match r.kind {
            ReadingKind::BloodPressure => (
                "85354-9^Blood pressure panel with all children optional^LN",
                vec![
                    (
                        "8480-6^Systolic blood pressure^LN",
                        r.systolic.unwrap_or_default(),
                    ),
                    (
                        "8462-4^Diastolic blood pressure^LN",
                        r.diastolic.unwrap_or_default(),
                    ),
                ],
            ),
            ReadingKind::HeartRate => (
                "8867-4^Heart rate^LN",
                vec![("8867-4^Heart rate^LN", r.value.unwrap_or_default())],
            ),
            ReadingKind::RespiratoryRate => (
                "9279-1^Respiratory rate^LN",
                vec![("9279-1^Respiratory rate^LN", r.value.unwrap_or_default())],
            ),
            ReadingKind::Temperature => (
                "8310-5^Body temperature^LN",
                vec![("8310-5^Body temperature^LN", r.value.unwrap_or_default())],
            ),
            ReadingKind::Weight => (
                "29463-7^Body weight^LN",
                vec![("29463-7^Body weight^LN", r.value.unwrap_or_default())],
            ),
            ReadingKind::Spo2 => (
                "59408-5^Oxygen saturation by Pulse oximetry^LN",
                vec![(
                    "59408-5^Oxygen saturation by Pulse oximetry^LN",
                    r.value.unwrap_or_default(),
                )],
            ),
            ReadingKind::Glucose => (
                "2339-0^Glucose in Blood^LN",
                vec![("2339-0^Glucose in Blood^LN", r.value.unwrap_or_default())],
            ),
            ReadingKind::PainScore => (
                "72514-3^Pain severity 0-10 verbal numeric rating^LN",
                vec![(
                    "72514-3^Pain severity 0-10 verbal numeric rating^LN",
                    r.value.unwrap_or_default(),
                )],
            ),
            // Therapeutic kinds without a LOINC code: local codes (coding system L).
            ReadingKind::MedicationAdherence => (
                "RTM-MED^Medication adherence^L",
                vec![(
                    "RTM-MED^Medication adherence^L",
                    r.value.unwrap_or_default(),
                )],
            ),
            ReadingKind::TherapyAdherence => (
                "RTM-ADH^Therapy adherence^L",
                vec![("RTM-ADH^Therapy adherence^L", r.value.unwrap_or_default())],
            ),
            ReadingKind::TherapyResponse => (
                "RTM-RSP^Therapy response^L",
                vec![("RTM-RSP^Therapy response^L", r.value.unwrap_or_default())],
            ),
            ReadingKind::RangeOfMotion => (
                "RTM-ROM^Range of motion^L",
                vec![("RTM-ROM^Range of motion^L", r.value.unwrap_or_default())],
            ),
        };
        segs.push(seg("ORC", &[(1, "RE".into()), (3, order.clone())]));
        segs.push(seg(
            "OBR",
            &[
                (1, (i + 1).to_string()),
                (3, order),
                (4, panel.into()),
                (7, at.clone()),
                (25, "F".into()),
            ],
        ));
        for (k, (code, value)) in obs.iter().enumerate() {
            let unit = escape(&r.unit);
            let mut fields = vec![
                (1, (k + 1).to_string()),
                (2, "NM".into()),
                (3, (*code).into()),
                (4, "1".into()),
                (5, num(*value)),
                (6, format!("{unit}^{unit}^UCUM")),
                (11, "F".into()),
                (14, at.clone()),
            ];
            if let Some(d) = &r.device {
                fields.push((
                    18,
                    format!("{}^{}", escape(d), escape(&pm.config.sending_facility)),
                ));
            }
            segs.push(seg("OBX", &fields));
        }
    }
    Some(segs.join("\r") + "\r")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_delimiters() {
        assert_eq!(escape("a|b^c&d~e\\f"), "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f");
    }

    #[test]
    fn segments_place_fields_by_position() {
        assert_eq!(
            seg(
                "DG1",
                &[(1, "1".into()), (3, "I10^^I10".into()), (6, "W".into())]
            ),
            "DG1|1||I10^^I10|||W"
        );
    }
}
