//! The facility's HL7 v2 ADT feed: parse a message, decide what it changes, answer it.
//!
//! Everything here is pure: [`AdtMessage::parse`] reads the bytes of one message (bounded, never
//! panics on hostile input), [`plan`] decides from the feed's settings and the residents as they
//! stand which write-once [`BedsideEvent::Adt`] events to write on which patient (or why it
//! cannot be applied), [`fold`] turns a patient's ADT events back into what billing reads
//! (stays, discharge, death, MRN, merge), and [`ack`] builds the `ACK` the sender waits for. The
//! server's listener (`rounds serve --adt-listen`) does the I/O, the MSH-10 dedupe and the writes.
//!
//! ## What is read
//!
//! | field    | used for |
//! |----------|----------|
//! | MSH-4    | the sending facility, mapped to a Rounds facility by the feed settings |
//! | MSH-9    | the trigger event (`ADT^A03`), else EVN-1 |
//! | MSH-10   | the message control id: a repeat changes nothing |
//! | EVN-6, EVN-2, MSH-7 | the date the event took effect (first present) |
//! | PID-3    | the MRN: the repetition with identifier type `MR`, else the first |
//! | PID-5, PID-7 | name and birth date of a resident the feed adds |
//! | PID-29, PID-30 | date of death, death indicator (`Y`) |
//! | PV1-3.1  | point of care: a hospital location (settings) on A02 or A21 means the resident left for hospital |
//! | PV1-36, PV1-45 | discharge disposition (hospital or death codes, settings) and discharge date |
//! | MRG-1    | the prior MRN of an A40 merge or an A47 identifier change |
//! | settings `part_a.field` (e.g. `PV1-20`, `IN1-15`, `PV2-3.1`) | Part A coverage |
//!
//! ## Architecture invariant
//!
//! An event never edits another: a cancel (A11/A12/A13) is an event naming the message it
//! cancels, and [`fold`] skips cancelled events. Only the server's actor writes ADT events.

use std::collections::BTreeSet;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Absence, AdtChange, BedsideEvent, BedsideReport, Stay, StayKind};

/// The largest message accepted (bytes).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// The most segments one message may have.
pub const MAX_SEGMENTS: usize = 2_000;
/// The longest MRN, name or control id kept.
const MAX_VALUE: usize = 200;

/// Why a message cannot be applied: answered `AE` with this text, nothing written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct AdtError {
    /// The segment field, e.g. `PID-3`, or `message`.
    pub field: String,
    pub reason: String,
}

impl AdtError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> AdtError {
        AdtError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One segment, its fields split (field 0 is the segment name; for MSH, field 1 is the
/// separator itself, so `MSH-n` is at index n as for every other segment).
#[derive(Debug, Clone)]
struct Segment {
    fields: Vec<String>,
}

/// The encoding characters of a message (MSH-1 and MSH-2).
#[derive(Debug, Clone, Copy)]
struct Encoding {
    component: char,
    repetition: char,
    escape: char,
    subcomponent: char,
}

/// One parsed ADT message: the fields Rounds reads, and the segments for a configured field.
#[derive(Debug, Clone)]
pub struct AdtMessage {
    pub sending_application: String,
    /// MSH-4, first component.
    pub sending_facility: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-12.
    pub version: String,
    /// The trigger event (`A01`).
    pub trigger: String,
    /// The date the event took effect, in the facility's zone where the time carries an offset.
    pub event_time: Hl7Time,
    pub mrn: Option<String>,
    pub family: Option<String>,
    pub given: Option<String>,
    pub birth_date: Option<NaiveDate>,
    /// PID-30 = `Y`, with PID-29 when present.
    pub death: Option<Option<Hl7Time>>,
    /// PV1-3.1.
    pub point_of_care: Option<String>,
    /// PV1-36.
    pub disposition: Option<String>,
    /// PV1-45.
    pub discharged_at: Option<Hl7Time>,
    /// MRG-1 (A40, A47).
    pub prior_mrn: Option<String>,
    segments: Vec<Segment>,
    encoding: Encoding,
}

/// An HL7 `TS`/`DTM`: a local date-time, with its offset when the sender gave one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hl7Time {
    pub local: NaiveDateTime,
    pub offset: Option<FixedOffset>,
}

impl Hl7Time {
    /// Parse `YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]`.
    pub fn parse(s: &str) -> Option<Hl7Time> {
        let s = s.trim();
        let (body, offset) = match s.find(['+', '-']) {
            Some(i) => {
                let (b, o) = s.split_at(i);
                let sign = if o.starts_with('-') { -1 } else { 1 };
                let digits = &o[1..];
                if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let h: i32 = digits[..2].parse().ok()?;
                let m: i32 = digits[2..].parse().ok()?;
                (b, Some(FixedOffset::east_opt(sign * (h * 3600 + m * 60))?))
            }
            None => (s, None),
        };
        let main = body.split('.').next().unwrap_or("");
        if main.len() < 8 || main.len() > 14 || !main.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n = |a: usize, b: usize| -> Option<u32> {
            if main.len() >= b {
                main[a..b].parse().ok()
            } else {
                Some(0)
            }
        };
        let date = NaiveDate::from_ymd_opt(main[..4].parse().ok()?, n(4, 6)?, n(6, 8)?)?;
        let time = NaiveTime::from_hms_opt(n(8, 10)?, n(10, 12)?, n(12, 14)?)?;
        Some(Hl7Time {
            local: date.and_time(time),
            offset,
        })
    }

    /// The date in the facility's zone: converted when the time has an offset, as written
    /// otherwise (a facility's feed writes its own local time).
    pub fn date_in(&self, tz: chrono_tz::Tz) -> NaiveDate {
        match self.offset {
            Some(o) => match o.from_local_datetime(&self.local).single() {
                Some(t) => t.with_timezone(&tz).date_naive(),
                None => self.local.date(),
            },
            None => self.local.date(),
        }
    }
}

fn unescape(s: &str, enc: Encoding) -> String {
    if !s.contains(enc.escape) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut parts = s.split(enc.escape);
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut inside = true;
    for p in parts {
        if inside {
            match p {
                "F" => out.push('|'),
                "S" => out.push(enc.component),
                "T" => out.push(enc.subcomponent),
                "R" => out.push(enc.repetition),
                "E" => out.push(enc.escape),
                _ => {} // formatting and hex escapes: dropped
            }
        } else {
            out.push_str(p);
        }
        inside = !inside;
    }
    out
}

impl AdtMessage {
    /// Parse one message (without its MLLP frame). Segments may end in `\r`, `\n` or `\r\n`.
    pub fn parse(bytes: &[u8]) -> Result<AdtMessage, AdtError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(AdtError::new(
                "message",
                format!("larger than {MAX_MESSAGE_BYTES} bytes"),
            ));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| AdtError::new("message", format!("not UTF-8 ({e})")))?;
        let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\u{b}' || c == '\u{1c}');
        if !text.starts_with("MSH") || text.len() < 8 {
            return Err(AdtError::new("MSH", "the message does not start with MSH"));
        }
        let mut chars = text[3..].chars();
        let sep = chars.next().unwrap_or('|');
        let enc_chars: Vec<char> = chars.take_while(|c| *c != sep).collect();
        if sep.is_alphanumeric() || enc_chars.len() < 4 {
            return Err(AdtError::new(
                "MSH-2",
                "the encoding characters are missing (expected ^~\\&)",
            ));
        }
        let enc = Encoding {
            component: enc_chars[0],
            repetition: enc_chars[1],
            escape: enc_chars[2],
            subcomponent: enc_chars[3],
        };
        let mut segments = Vec::new();
        for line in text.split(['\r', '\n']).filter(|l| !l.trim().is_empty()) {
            if segments.len() >= MAX_SEGMENTS {
                return Err(AdtError::new(
                    "message",
                    format!("more than {MAX_SEGMENTS} segments"),
                ));
            }
            let mut fields: Vec<String> = line.split(sep).map(str::to_string).collect();
            if fields.first().is_some_and(|f| f == "MSH") {
                // MSH-1 is the separator itself.
                fields.insert(1, sep.to_string());
            }
            segments.push(Segment { fields });
        }
        let mut m = AdtMessage {
            sending_application: String::new(),
            sending_facility: String::new(),
            control_id: String::new(),
            version: String::new(),
            trigger: String::new(),
            event_time: Hl7Time {
                local: NaiveDateTime::MIN,
                offset: None,
            },
            mrn: None,
            family: None,
            given: None,
            birth_date: None,
            death: None,
            point_of_care: None,
            disposition: None,
            discharged_at: None,
            prior_mrn: None,
            segments,
            encoding: enc,
        };
        m.sending_application = m.value("MSH", 3, 1).unwrap_or_default();
        m.sending_facility = m
            .value("MSH", 4, 1)
            .ok_or_else(|| AdtError::new("MSH-4", "the sending facility is empty"))?;
        m.control_id = m
            .value("MSH", 10, 0)
            .ok_or_else(|| AdtError::new("MSH-10", "the message control id is empty"))?;
        for (name, v) in [("MSH-4", &m.sending_facility), ("MSH-10", &m.control_id)] {
            if v.chars().count() > MAX_VALUE {
                return Err(AdtError::new(
                    name,
                    format!("longer than {MAX_VALUE} characters"),
                ));
            }
        }
        m.version = m.value("MSH", 12, 1).unwrap_or_default();
        let kind = m.value("MSH", 9, 1).unwrap_or_default();
        if kind != "ADT" {
            return Err(AdtError::new(
                "MSH-9",
                format!("message type {kind:?} is not ADT"),
            ));
        }
        m.trigger = m
            .value("MSH", 9, 2)
            .or_else(|| m.value("EVN", 1, 1))
            .ok_or_else(|| AdtError::new("MSH-9", "the trigger event is empty"))?
            .to_ascii_uppercase();
        let time = |m: &AdtMessage, seg: &str, field: usize| -> Result<Option<Hl7Time>, AdtError> {
            match m.value(seg, field, 1) {
                None => Ok(None),
                Some(v) => Hl7Time::parse(&v).map(Some).ok_or_else(|| {
                    AdtError::new(
                        format!("{seg}-{field}"),
                        format!("{v:?} is not an HL7 date/time (YYYYMMDD[HHMM[SS]][+ZZZZ])"),
                    )
                }),
            }
        };
        m.event_time = match time(&m, "EVN", 6)? {
            Some(t) => t,
            None => match time(&m, "EVN", 2)? {
                Some(t) => t,
                None => time(&m, "MSH", 7)?.ok_or_else(|| {
                    AdtError::new(
                        "EVN-2",
                        "no event time (EVN-6, EVN-2 and MSH-7 are all empty)",
                    )
                })?,
            },
        };
        m.mrn = m.mrn_of("PID", 3);
        if let Some(v) = &m.mrn
            && v.chars().count() > 64
        {
            return Err(AdtError::new(
                "PID-3",
                "the MRN is longer than 64 characters",
            ));
        }
        m.family = m.value("PID", 5, 1).map(|s| cap(&s));
        m.given = m.value("PID", 5, 2).map(|s| cap(&s));
        m.birth_date = time(&m, "PID", 7)?.map(|t| t.local.date());
        let died = m
            .value("PID", 30, 1)
            .is_some_and(|v| v.eq_ignore_ascii_case("Y"));
        let death_time = time(&m, "PID", 29)?;
        if died || death_time.is_some() {
            m.death = Some(death_time);
        }
        m.point_of_care = m.value("PV1", 3, 1);
        m.disposition = m.value("PV1", 36, 1);
        m.discharged_at = time(&m, "PV1", 45)?;
        m.prior_mrn = m.mrn_of("MRG", 1);
        Ok(m)
    }

    fn segments<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Segment> + 'a {
        let name = name.to_string();
        self.segments
            .iter()
            .filter(move |s| s.fields.first().is_some_and(|n| *n == name))
    }

    /// The raw (escaped) field `name-field` of the first such segment.
    fn raw(&self, name: &str, field: usize) -> Option<&str> {
        self.segments(name)
            .next()
            .and_then(|s| s.fields.get(field))
            .map(String::as_str)
    }

    /// Component `component` (1-based; 0 = the whole first repetition) of the first
    /// repetition of a field, unescaped and trimmed; None when empty.
    fn value(&self, name: &str, field: usize, component: usize) -> Option<String> {
        let raw = self.raw(name, field)?;
        self.component_of(raw, component)
    }

    fn component_of(&self, raw: &str, component: usize) -> Option<String> {
        let rep = raw.split(self.encoding.repetition).next().unwrap_or("");
        let c = if component == 0 {
            rep
        } else {
            rep.split(self.encoding.component).nth(component - 1)?
        };
        let c = c.split(self.encoding.subcomponent).next().unwrap_or("");
        let v = unescape(c, self.encoding).trim().to_string();
        (!v.is_empty() && v != "\"\"").then_some(v)
    }

    /// A CX list's identifier: the repetition typed `MR` (CX-5), else the first.
    fn mrn_of(&self, name: &str, field: usize) -> Option<String> {
        let raw = self.raw(name, field)?;
        let reps: Vec<&str> = raw.split(self.encoding.repetition).collect();
        let typed = reps.iter().find(|r| {
            r.split(self.encoding.component)
                .nth(4)
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("MR"))
        });
        let rep = typed.or(reps.first())?;
        self.component_of(rep, 1)
    }

    /// Every value of a configured field (`PV1-20`, `IN1-15.1`) across repeated segments.
    pub fn field_values(&self, spec: &FieldSpec) -> Vec<String> {
        self.segments(&spec.segment)
            .filter_map(|s| s.fields.get(spec.field))
            .filter_map(|raw| self.component_of(raw, spec.component.max(1)))
            .collect()
    }

    /// The resident's name as `Family, Given`.
    pub fn name(&self) -> Option<String> {
        match (&self.family, &self.given) {
            (Some(f), Some(g)) => Some(format!("{f}, {g}")),
            (Some(f), None) => Some(f.clone()),
            (None, Some(g)) => Some(g.clone()),
            (None, None) => None,
        }
    }
}

fn cap(s: &str) -> String {
    s.chars().take(MAX_VALUE).collect()
}

/// A field named like `PV1-20`, `IN1-15` or `PV2-3.1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    pub segment: String,
    pub field: usize,
    pub component: usize,
}

impl std::str::FromStr for FieldSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<FieldSpec, String> {
        let bad = || format!("{s:?} is not a field like PV1-20 or IN1-15.1");
        let (seg, rest) = s.trim().split_once('-').ok_or_else(bad)?;
        if seg.len() != 3 || !seg.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad());
        }
        let (field, component) = match rest.split_once('.') {
            Some((f, c)) => (f, c.parse().map_err(|_| bad())?),
            None => (rest, 1),
        };
        let field: usize = field.parse().map_err(|_| bad())?;
        if field == 0 || field > 200 || component == 0 || component > 50 {
            return Err(bad());
        }
        Ok(FieldSpec {
            segment: seg.to_ascii_uppercase(),
            field,
            component,
        })
    }
}

/// Where a feed carries Part A coverage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartASettings {
    /// The field, e.g. `PV1-20` (financial class), `IN1-15` (plan type), `PV2-3.1`.
    pub field: String,
    /// Values of that field that mean a Part A stay (compared without case). Any other
    /// non-empty value means no Part A; an empty or absent field says nothing.
    pub covered: Vec<String>,
}

/// One sending facility's feed: how its messages map onto a Rounds facility.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedSettings {
    /// MSH-4 (first component) as the facility's EHR sends it.
    pub sending_facility: String,
    /// The Rounds facility id.
    pub facility: String,
    /// The billing practitioner given to a resident the feed adds (pending review: no
    /// conditions or consent until the practice adds them, so nothing bills before).
    pub practitioner: String,
    /// PV1-3.1 values that mean a hospital (an A02 or A21 there starts an inpatient stay).
    #[serde(default)]
    pub hospital_locations: Vec<String>,
    /// PV1-36 values of an A03 that mean the resident went to hospital (an inpatient stay,
    /// not the end of their period). Default: UB-04 02, 43, 65, 66.
    #[serde(default = "hospital_dispositions")]
    pub hospital_dispositions: Vec<String>,
    /// PV1-36 values that mean the resident died. Default: UB-04 20, 40, 41, 42.
    #[serde(default = "death_dispositions")]
    pub death_dispositions: Vec<String>,
    /// Where the feed carries Part A coverage; without it no message changes Part A.
    #[serde(default)]
    pub part_a: Option<PartASettings>,
}

fn hospital_dispositions() -> Vec<String> {
    ["02", "43", "65", "66"].map(String::from).to_vec()
}

fn death_dispositions() -> Vec<String> {
    ["20", "40", "41", "42"].map(String::from).to_vec()
}

/// The feeds a server listens for (the TOML file of `--adt-config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdtSettings {
    #[serde(default)]
    pub feed: Vec<FeedSettings>,
}

impl AdtSettings {
    /// Parse and check the settings file: every problem names the feed and field.
    pub fn parse(text: &str) -> Result<AdtSettings, String> {
        let s: AdtSettings = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut seen = BTreeSet::new();
        for (i, f) in s.feed.iter().enumerate() {
            let at = format!("feed[{i}]");
            if f.sending_facility.trim().is_empty() {
                return Err(format!("{at}.sending_facility: empty"));
            }
            if !seen.insert(f.sending_facility.to_ascii_uppercase()) {
                return Err(format!(
                    "{at}.sending_facility: {:?} is configured twice",
                    f.sending_facility
                ));
            }
            crate::ids::check_id("facility", &f.facility)
                .map_err(|e| format!("{at}.facility: {e}"))?;
            crate::ids::check_id("practitioner", &f.practitioner)
                .map_err(|e| format!("{at}.practitioner: {e}"))?;
            if let Some(p) = &f.part_a {
                p.field
                    .parse::<FieldSpec>()
                    .map_err(|e| format!("{at}.part_a.field: {e}"))?;
                if p.covered.is_empty() {
                    return Err(format!("{at}.part_a.covered: name at least one value"));
                }
            }
        }
        Ok(s)
    }

    /// The feed of a sending facility (MSH-4, compared without case).
    pub fn feed_of(&self, sending_facility: &str) -> Option<&FeedSettings> {
        self.feed
            .iter()
            .find(|f| f.sending_facility.eq_ignore_ascii_case(sending_facility))
    }
}

/// One ADT event of a patient, as [`fold`] lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdtEntry {
    pub message: String,
    pub trigger: String,
    pub on: NaiveDate,
    pub received_at: DateTime<FixedOffset>,
    pub changes: Vec<AdtChange>,
    /// Cancelled by a later A11/A12/A13.
    pub cancelled: bool,
}

/// What a patient's ADT events add up to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdtFold {
    /// Inpatient and Part A stays (an open one ends at [`Stay::OPEN_END`]).
    pub stays: Vec<Stay>,
    pub discharged_on: Option<NaiveDate>,
    /// The days between a discharge and a readmission.
    pub absences: Vec<Absence>,
    pub died_on: Option<NaiveDate>,
    pub mrn: Option<String>,
    pub merged_into: Option<String>,
    /// In hospital now (a stay opened and not closed).
    pub in_hospital: bool,
    /// In a Part A stay now.
    pub part_a: bool,
    /// Every event, oldest first (cancelled ones marked).
    pub events: Vec<AdtEntry>,
}

impl AdtFold {
    /// A short status for the console.
    pub fn status(&self) -> Option<&'static str> {
        if self.events.is_empty() {
            return None;
        }
        Some(if self.merged_into.is_some() {
            "merged"
        } else if self.died_on.is_some() {
            "deceased"
        } else if self.discharged_on.is_some() {
            "discharged"
        } else if self.in_hospital {
            "in hospital"
        } else if self.part_a {
            "in house, Part A"
        } else if self
            .events
            .iter()
            .any(|e| !e.cancelled && e.changes.contains(&AdtChange::Admitted))
        {
            "in house"
        } else if self.events.iter().any(|e| e.trigger == "A11") {
            "admission cancelled"
        } else {
            "in house"
        })
    }
}

/// Fold a patient's ADT events (other bedside reports are skipped): cancelled events left
/// out, the rest in order of effect date then arrival.
pub fn fold(reports: &[BedsideReport]) -> AdtFold {
    let mut entries: Vec<AdtEntry> = reports
        .iter()
        .filter_map(|r| match &r.event {
            BedsideEvent::Adt {
                message,
                trigger,
                on,
                changes,
                ..
            } => Some(AdtEntry {
                message: message.clone(),
                trigger: trigger.clone(),
                on: *on,
                received_at: r.reported_at,
                changes: changes.clone(),
                cancelled: false,
            }),
            _ => None,
        })
        .collect();
    entries
        .sort_by(|a, b| (a.on, a.received_at, &a.message).cmp(&(b.on, b.received_at, &b.message)));
    let cancelled: BTreeSet<String> = entries
        .iter()
        .flat_map(|e| e.changes.iter())
        .filter_map(|c| match c {
            AdtChange::Cancelled { message } => Some(message.clone()),
            _ => None,
        })
        .collect();
    let mut f = AdtFold::default();
    let mut hospital: Option<NaiveDate> = None;
    let mut part_a: Option<NaiveDate> = None;
    let close = |stays: &mut Vec<Stay>, kind, from: NaiveDate, to: NaiveDate| {
        if to >= from {
            stays.push(Stay { kind, from, to });
        }
    };
    for e in &mut entries {
        if cancelled.contains(&e.message) {
            e.cancelled = true;
            continue;
        }
        let day_before = e.on.pred_opt().unwrap_or(e.on);
        for c in &e.changes {
            match c {
                AdtChange::Admitted | AdtChange::Returned => {
                    if let Some(h) = hospital.take() {
                        close(&mut f.stays, StayKind::Inpatient, h, day_before);
                    }
                    // Back after a discharge: the days away count for nothing.
                    if let Some(gone) = f.discharged_on.take()
                        && let Some(from) = gone.succ_opt()
                        && from <= day_before
                    {
                        f.absences.push(Absence {
                            from,
                            to: day_before,
                        });
                    }
                }
                AdtChange::ToHospital => {
                    hospital.get_or_insert(e.on);
                }
                AdtChange::Discharged => {
                    if let Some(h) = hospital.take() {
                        close(&mut f.stays, StayKind::Inpatient, h, e.on);
                    }
                    if let Some(p) = part_a.take() {
                        close(&mut f.stays, StayKind::PartA, p, e.on);
                    }
                    f.discharged_on = Some(e.on);
                }
                AdtChange::PartA { covered: true } => {
                    part_a.get_or_insert(e.on);
                }
                AdtChange::PartA { covered: false } => {
                    if let Some(p) = part_a.take() {
                        close(&mut f.stays, StayKind::PartA, p, day_before);
                    }
                }
                AdtChange::Died { on } => {
                    if f.died_on.is_none_or(|d| *on < d) {
                        f.died_on = Some(*on);
                    }
                }
                AdtChange::Mrn { mrn } => f.mrn = Some(mrn.clone()),
                AdtChange::MergedInto { patient } => f.merged_into = Some(patient.clone()),
                AdtChange::Cancelled { .. } | AdtChange::Updated => {}
            }
        }
    }
    f.in_hospital = hospital.is_some();
    f.part_a = part_a.is_some();
    if let Some(h) = hospital {
        close(&mut f.stays, StayKind::Inpatient, h, Stay::OPEN_END);
    }
    if let Some(p) = part_a {
        close(&mut f.stays, StayKind::PartA, p, Stay::OPEN_END);
    }
    f.events = entries;
    f
}

/// A resident as [`plan`] sees them: id, MRN and ADT history folded.
#[derive(Debug, Clone)]
pub struct Resident {
    pub id: String,
    pub mrn: Option<String>,
    pub adt: AdtFold,
}

impl Resident {
    fn current_mrn(&self) -> Option<&str> {
        self.adt.mrn.as_deref().or(self.mrn.as_deref())
    }
}

/// A resident the feed adds (A01/A04 with an MRN no resident has).
#[derive(Debug, Clone, PartialEq)]
pub struct NewResident {
    pub id: String,
    pub name: String,
    pub mrn: String,
    pub birth_date: Option<NaiveDate>,
    pub practitioner: String,
}

/// One event to write on one patient.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedEvent {
    pub patient: String,
    /// The id the event is written under (derived from facility, sender, control id and
    /// patient, so a retry writes the same key).
    pub id: uuid::Uuid,
    pub event: BedsideEvent,
}

/// What a message does.
#[derive(Debug, Clone, PartialEq)]
pub enum AdtPlan {
    /// Write these events (after adding `new` to the roster, when present).
    Apply {
        new: Option<NewResident>,
        events: Vec<PlannedEvent>,
        /// A one-line summary for the ACK and the audit log (ids, no names).
        summary: String,
    },
    /// A trigger Rounds does not use: acknowledged, nothing written.
    Ignored { reason: String },
}

/// The id of an ADT event: one per (facility, sender, control id, patient).
pub fn event_id(facility: &str, sender: &str, control_id: &str, patient: &str) -> uuid::Uuid {
    crate::ids::name_uuid(&format!(
        "rounds/adt/{facility}/{sender}/{control_id}/{patient}"
    ))
}

/// Decide what a message does to the residents of its facility, or why it cannot be applied.
pub fn plan(
    msg: &AdtMessage,
    feed: &FeedSettings,
    residents: &[Resident],
    tz: chrono_tz::Tz,
) -> Result<AdtPlan, AdtError> {
    let trigger = msg.trigger.as_str();
    if !matches!(
        trigger,
        "A01"
            | "A02"
            | "A03"
            | "A04"
            | "A08"
            | "A11"
            | "A12"
            | "A13"
            | "A21"
            | "A22"
            | "A40"
            | "A47"
            | "A52"
            | "A53"
    ) {
        return Ok(AdtPlan::Ignored {
            reason: format!("trigger {trigger} is not used by Rounds"),
        });
    }
    let on = msg.event_time.date_in(tz);
    let mrn = msg
        .mrn
        .clone()
        .ok_or_else(|| AdtError::new("PID-3", "no MRN (patient identifier list is empty)"))?;
    let find = |mrn: &str| -> Result<Option<&Resident>, AdtError> {
        let found: Vec<&Resident> = residents
            .iter()
            .filter(|r| r.adt.merged_into.is_none() && r.current_mrn() == Some(mrn))
            .collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one)),
            many => Err(AdtError::new(
                "PID-3",
                format!(
                    "MRN {mrn:?} matches {} residents ({}): fix the roster first",
                    many.len(),
                    many.iter()
                        .map(|r| r.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    };
    let known = |mrn: &str| -> Result<&Resident, AdtError> {
        find(mrn)?.ok_or_else(|| {
            AdtError::new(
                "PID-3",
                format!(
                    "no resident of facility {} has MRN {mrn:?} (an A01 or A04 adds one)",
                    feed.facility
                ),
            )
        })
    };
    let event = |patient: &str, changes: Vec<AdtChange>| PlannedEvent {
        patient: patient.to_string(),
        id: event_id(
            &feed.facility,
            &msg.sending_facility,
            &msg.control_id,
            patient,
        ),
        event: BedsideEvent::Adt {
            message: msg.control_id.clone(),
            sender: msg.sending_facility.clone(),
            trigger: trigger.to_string(),
            on,
            changes,
        },
    };
    let death = |changes: &mut Vec<AdtChange>| {
        if let Some(t) = msg.death {
            changes.push(AdtChange::Died {
                on: t.map_or(on, |t| t.date_in(tz)),
            });
        }
    };
    let part_a = |current: bool, changes: &mut Vec<AdtChange>| {
        if let Some(p) = &feed.part_a
            && let Ok(spec) = p.field.parse::<FieldSpec>()
        {
            let values = msg.field_values(&spec);
            if values.is_empty() {
                return;
            }
            let covered = values
                .iter()
                .any(|v| p.covered.iter().any(|c| c.eq_ignore_ascii_case(v)));
            if covered != current {
                changes.push(AdtChange::PartA { covered });
            }
        }
    };
    let apply = |new, events: Vec<PlannedEvent>| {
        let summary = events
            .iter()
            .map(|e| {
                let changes = match &e.event {
                    BedsideEvent::Adt { changes, .. } => changes
                        .iter()
                        .map(change_text)
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => String::new(),
                };
                format!("{}: {changes}", e.patient)
            })
            .collect::<Vec<_>>()
            .join("; ");
        Ok(AdtPlan::Apply {
            new,
            events,
            summary,
        })
    };
    match trigger {
        "A01" | "A04" => {
            let mut changes = Vec::new();
            match find(&mrn)? {
                Some(r) => {
                    changes.push(if r.adt.in_hospital {
                        AdtChange::Returned
                    } else {
                        AdtChange::Admitted
                    });
                    part_a(r.adt.part_a, &mut changes);
                    death(&mut changes);
                    apply(None, vec![event(&r.id, changes)])
                }
                None => {
                    let name = msg.name().ok_or_else(|| {
                        AdtError::new("PID-5", "a new resident needs a name (PID-5 is empty)")
                    })?;
                    let id = new_id(&mrn, residents);
                    changes.push(AdtChange::Admitted);
                    part_a(false, &mut changes);
                    death(&mut changes);
                    let new = NewResident {
                        id: id.clone(),
                        name,
                        mrn: mrn.clone(),
                        birth_date: msg.birth_date,
                        practitioner: feed.practitioner.clone(),
                    };
                    apply(Some(new), vec![event(&id, changes)])
                }
            }
        }
        // A21/A22, a leave of absence out and back, is read like a transfer: a leave whose
        // point of care is a hospital location is a hospital stay (a bed-hold leave), any other
        // leave is recorded; the return from a leave ends a hospital stay wherever it points.
        "A02" | "A21" | "A22" => {
            let r = known(&mrn)?;
            let to_hospital = trigger != "A22"
                && msg.point_of_care.as_deref().is_some_and(|p| {
                    feed.hospital_locations
                        .iter()
                        .any(|h| h.eq_ignore_ascii_case(p))
                });
            let mut changes = vec![match (to_hospital, r.adt.in_hospital) {
                (true, false) => AdtChange::ToHospital,
                (false, true) => AdtChange::Returned,
                _ => AdtChange::Updated,
            }];
            death(&mut changes);
            apply(None, vec![event(&r.id, changes)])
        }
        "A03" => {
            let r = known(&mrn)?;
            let disposition = msg.disposition.as_deref().unwrap_or("");
            let is = |list: &[String]| list.iter().any(|c| c.eq_ignore_ascii_case(disposition));
            let when = msg.discharged_at.map_or(on, |t| t.date_in(tz));
            let mut changes = Vec::new();
            if is(&feed.death_dispositions) {
                changes.push(AdtChange::Died { on: when });
                changes.push(AdtChange::Discharged);
            } else if is(&feed.hospital_dispositions) {
                changes.push(AdtChange::ToHospital);
                death(&mut changes);
            } else {
                changes.push(AdtChange::Discharged);
                death(&mut changes);
            }
            apply(None, vec![event(&r.id, changes)])
        }
        "A08" => {
            let r = known(&mrn)?;
            let mut changes = Vec::new();
            part_a(r.adt.part_a, &mut changes);
            death(&mut changes);
            if changes.is_empty() {
                changes.push(AdtChange::Updated);
            }
            apply(None, vec![event(&r.id, changes)])
        }
        "A11" | "A12" | "A13" | "A52" | "A53" => {
            let r = known(&mrn)?;
            let cancels: &[&str] = match trigger {
                "A11" => &["A01", "A04"],
                "A12" => &["A02"],
                "A52" => &["A21"],
                "A53" => &["A22"],
                _ => &["A03"],
            };
            let target = r
                .adt
                .events
                .iter()
                .rev()
                .find(|e| !e.cancelled && cancels.contains(&e.trigger.as_str()))
                .ok_or_else(|| {
                    AdtError::new(
                        "MSH-9",
                        format!(
                            "{trigger}: resident {} has no {} to cancel",
                            r.id,
                            cancels.join(" or ")
                        ),
                    )
                })?;
            apply(
                None,
                vec![event(
                    &r.id,
                    vec![AdtChange::Cancelled {
                        message: target.message.clone(),
                    }],
                )],
            )
        }
        _ => {
            // A40: PID-3 survives, MRG-1 is merged into it. A47: the resident known by MRG-1 is
            // known by PID-3 from now on (an identifier change, never a merge).
            let prior = msg.prior_mrn.clone().ok_or_else(|| {
                AdtError::new("MRG-1", format!("an {trigger} needs the prior MRN (MRG-1)"))
            })?;
            let survivor = find(&mrn)?;
            let merged = find(&prior)?;
            match (merged, survivor) {
                (None, None) => Err(AdtError::new(
                    "MRG-1",
                    format!(
                        "neither MRN {mrn:?} nor prior MRN {prior:?} is a resident of facility {}",
                        feed.facility
                    ),
                )),
                (Some(p), None) => apply(
                    None,
                    vec![event(&p.id, vec![AdtChange::Mrn { mrn: mrn.clone() }])],
                ),
                (None, Some(s)) => apply(None, vec![event(&s.id, vec![AdtChange::Updated])]),
                (Some(p), Some(s)) if p.id == s.id => {
                    apply(None, vec![event(&s.id, vec![AdtChange::Updated])])
                }
                (Some(p), Some(s)) if trigger == "A47" => Err(AdtError::new(
                    "PID-3",
                    format!(
                        "A47 would give resident {} the MRN {mrn:?} that resident {} has: if they are one person, send an A40 (merge)",
                        p.id, s.id
                    ),
                )),
                (Some(p), Some(s)) => apply(
                    None,
                    vec![
                        event(
                            &p.id,
                            vec![AdtChange::MergedInto {
                                patient: s.id.clone(),
                            }],
                        ),
                        event(&s.id, vec![AdtChange::Updated]),
                    ],
                ),
            }
        }
    }
}

/// A new resident's id: `mrn-` and the MRN (characters outside `A-Za-z0-9._-` as `-`), with a
/// suffix when taken.
fn new_id(mrn: &str, residents: &[Resident]) -> String {
    let clean: String = mrn
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(56)
        .collect();
    let base = format!("mrn-{clean}");
    let taken = |id: &str| residents.iter().any(|r| r.id == id);
    if !taken(&base) {
        return base;
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|id| !taken(id))
        .unwrap_or(base)
}

/// A change in words (for the ACK, the audit log and the console).
pub fn change_text(c: &AdtChange) -> String {
    match c {
        AdtChange::Admitted => "admitted".into(),
        AdtChange::ToHospital => "left for hospital".into(),
        AdtChange::Returned => "back from hospital".into(),
        AdtChange::Discharged => "discharged".into(),
        AdtChange::PartA { covered: true } => "Part A stay began".into(),
        AdtChange::PartA { covered: false } => "Part A stay ended".into(),
        AdtChange::Died { on } => format!("died on {on}"),
        AdtChange::Cancelled { message } => format!("cancels message {message}"),
        AdtChange::Mrn { mrn } => format!("MRN now {mrn}"),
        AdtChange::MergedInto { patient } => format!("merged into {patient}"),
        AdtChange::Updated => "updated".into(),
    }
}

/// The acknowledgement code of an `ACK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Applied (or a repeat, or a trigger Rounds does not use).
    Accept,
    /// Not applied; the text says why.
    Error,
}

/// The `ACK` for a message (`msg` None when it could not even be parsed).
pub fn ack(msg: Option<&AdtMessage>, code: AckCode, text: &str, now: DateTime<Utc>) -> String {
    let esc = crate::ehr::hl7::escape;
    let (app, fac, control, trigger, version) = match msg {
        Some(m) => (
            esc(&m.sending_application),
            esc(&m.sending_facility),
            esc(&m.control_id),
            esc(&m.trigger),
            if m.version.is_empty() {
                "2.5.1".to_string()
            } else {
                esc(&m.version)
            },
        ),
        None => (
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            "2.5.1".to_string(),
        ),
    };
    let own = format!("A{}", &uuid::Uuid::new_v4().simple().to_string()[..19]);
    let code_str = match code {
        AckCode::Accept => "AA",
        AckCode::Error => "AE",
    };
    let text = esc(&text.chars().take(400).collect::<String>());
    let mut out = format!(
        "MSH|^~\\&|ROUNDS|ROUNDS|{app}|{fac}|{}||ACK^{trigger}^ACK|{own}|P|{version}\rMSA|{code_str}|{control}|{text}\r",
        now.format("%Y%m%d%H%M%S")
    );
    if code == AckCode::Error {
        out.push_str(&format!("ERR||||E|||{text}\r"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TZ: chrono_tz::Tz = chrono_tz::America::Los_Angeles;

    fn feed() -> FeedSettings {
        AdtSettings::parse(
            r#"
[[feed]]
sending_facility = "SUNNY"
facility = "sunnyvale"
practitioner = "dr-ng"
hospital_locations = ["HOSP"]
[feed.part_a]
field = "PV1-20"
covered = ["MA"]
"#,
        )
        .map(|s| s.feed[0].clone())
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn msg(trigger: &str, control: &str, pid3: &str, extra: &str) -> AdtMessage {
        let text = format!(
            "MSH|^~\\&|PCC|SUNNY|ROUNDS|RX|20261201080000||ADT^{trigger}^ADT_A01|{control}|P|2.5.1\rEVN|{trigger}|20261201080000\rPID|1||{pid3}^^^PCC^MR||Doe^Jane||19400102|F\r{extra}"
        );
        AdtMessage::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn report(p: &PlannedEvent, at: u32) -> BedsideReport {
        BedsideReport {
            id: p.id,
            patient: p.patient.clone(),
            reported_by: "adt".into(),
            reported_at: FixedOffset::east_opt(0)
                .and_then(|o| o.with_ymd_and_hms(2026, 12, 1, 8, 0, at).single())
                .unwrap_or_else(|| panic!("time")),
            event: p.event.clone(),
        }
    }

    #[test]
    fn parses_fields_with_escapes_and_lf_segments() {
        let m = AdtMessage::parse(
            b"MSH|^~\\&|PCC|SUNNY\\T\\X|R|R|20261201||ADT^A08|C1|P|2.5.1\nEVN|A08|20261201\nPID|1||X9^^^^PI~M7^^^^MR||O\\S\\Brien^Pat\nPV1|1|I|HOSP^1|||||||||||||||||MA",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.sending_facility, "SUNNY&X");
        assert_eq!(m.mrn.as_deref(), Some("M7"));
        assert_eq!(m.family.as_deref(), Some("O^Brien"));
        assert_eq!(m.point_of_care.as_deref(), Some("HOSP"));
        let spec: FieldSpec = "PV1-20".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.field_values(&spec), vec!["MA".to_string()]);
    }

    #[test]
    fn hostile_messages_are_refused_with_the_field() {
        for (bytes, field) in [
            (&b"garbage"[..], "MSH"),
            (b"MSH|^~\\&|A||R|R|20261201||ADT^A01|C1|P|2.5.1", "MSH-4"),
            (b"MSH|^~\\&|A|F|R|R|20261201||ADT^A01||P|2.5.1", "MSH-10"),
            (b"MSH|^~\\&|A|F|R|R|20261201||ORU^R01|C1|P|2.5.1", "MSH-9"),
            (b"MSH|^~\\&|A|F|R|R|2026-12-01||ADT^A01|C1|P|2.5.1", "MSH-7"),
            (
                b"MSH|^~\\&|A|F|R|R|20261201||ADT^A01|C1|P|2.5.1\rPID|1||1||X||19401399",
                "PID-7",
            ),
            (
                b"MSH|^~\\&|A|F|R|R|20261201||ADT^A01|C1|P|2.5.1\rEVN|A01|20261301",
                "EVN-2",
            ),
            (b"MSH|", "MSH"),
            (b"\xff\xfe", "message"),
        ] {
            let e = AdtMessage::parse(bytes)
                .err()
                .unwrap_or_else(|| panic!("accepted {bytes:?}"));
            assert_eq!(e.field, field, "{bytes:?}: {e}");
        }
        let big = vec![b'x'; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            AdtMessage::parse(&big).err().map(|e| e.field).as_deref(),
            Some("message")
        );
    }

    #[test]
    fn a_day_of_events_folds_into_stays_discharge_and_death() {
        let f = feed();
        let mut reports: Vec<BedsideReport> = Vec::new();
        fn step(
            f: &FeedSettings,
            reports: &mut Vec<BedsideReport>,
            trigger: &str,
            control: &str,
            extra: &str,
            evn: &str,
        ) {
            let residents = vec![Resident {
                id: "p1".into(),
                mrn: Some("M1".into()),
                adt: fold(reports),
            }];
            let mut m = msg(trigger, control, "M1", extra);
            m.event_time = Hl7Time::parse(evn).unwrap_or_else(|| panic!("time"));
            match plan(&m, f, &residents, TZ).unwrap_or_else(|e| panic!("{e}")) {
                AdtPlan::Apply { events, .. } => {
                    for e in events {
                        let n = reports.len() as u32;
                        reports.push(report(&e, n));
                    }
                }
                AdtPlan::Ignored { reason } => panic!("{reason}"),
            }
        }
        step(
            &f,
            &mut reports,
            "A01",
            "c1",
            &pv1(&[(3, "2W^201"), (20, "MA")]),
            "20261101",
        );
        step(
            &f,
            &mut reports,
            "A02",
            "c2",
            &pv1(&[(3, "HOSP")]),
            "20261110",
        );
        step(
            &f,
            &mut reports,
            "A02",
            "c3",
            &pv1(&[(3, "2W^201")]),
            "20261114",
        );
        step(
            &f,
            &mut reports,
            "A08",
            "c4",
            &pv1(&[(3, "2W^201"), (20, "MB")]),
            "20261120",
        );
        step(
            &f,
            &mut reports,
            "A03",
            "c5",
            &pv1(&[(3, "2W^201"), (36, "01")]),
            "20261125",
        );
        let folded = fold(&reports);
        assert_eq!(
            folded.stays,
            vec![
                Stay {
                    kind: StayKind::Inpatient,
                    from: d(2026, 11, 10),
                    to: d(2026, 11, 13)
                },
                Stay {
                    kind: StayKind::PartA,
                    from: d(2026, 11, 1),
                    to: d(2026, 11, 19)
                },
            ]
        );
        assert_eq!(folded.discharged_on, Some(d(2026, 11, 25)));
        assert_eq!(folded.status(), Some("discharged"));
        // A13 cancels the discharge.
        step(&f, &mut reports, "A13", "c6", "", "20261126");
        let folded = fold(&reports);
        assert_eq!(folded.discharged_on, None);
        assert!(
            folded
                .events
                .iter()
                .any(|e| e.message == "c5" && e.cancelled)
        );
        assert!(folded.absences.is_empty());
        // Discharged on the 27th, readmitted on December 3rd: the days between count for
        // nothing, and the resident is in house again.
        step(
            &f,
            &mut reports,
            "A03",
            "c7",
            &pv1(&[(3, "2W^201")]),
            "20261127",
        );
        step(
            &f,
            &mut reports,
            "A01",
            "c8",
            &pv1(&[(3, "2W^201")]),
            "20261203",
        );
        let folded = fold(&reports);
        assert_eq!(folded.discharged_on, None);
        assert_eq!(
            folded.absences,
            vec![Absence {
                from: d(2026, 11, 28),
                to: d(2026, 12, 2)
            }]
        );
        assert_eq!(folded.status(), Some("in house"));
        // Readmitted the day after: no day away.
        step(
            &f,
            &mut reports,
            "A03",
            "c9",
            &pv1(&[(3, "2W^201")]),
            "20261210",
        );
        step(
            &f,
            &mut reports,
            "A01",
            "c10",
            &pv1(&[(3, "2W^201")]),
            "20261211",
        );
        assert_eq!(fold(&reports).absences.len(), 1);
    }

    #[test]
    fn a_leave_of_absence_to_hospital_is_a_stay_and_other_leaves_are_recorded() {
        let f = feed();
        let mut reports: Vec<BedsideReport> = Vec::new();
        let mut send = |trigger: &str, control: &str, extra: String, on: &str| {
            let residents = vec![Resident {
                id: "p1".into(),
                mrn: Some("M1".into()),
                adt: fold(&reports),
            }];
            let mut m = msg(trigger, control, "M1", &extra);
            m.event_time = Hl7Time::parse(on).unwrap_or_else(|| panic!("time"));
            match plan(&m, &f, &residents, TZ) {
                Ok(AdtPlan::Apply { events, .. }) => {
                    let n = reports.len() as u32;
                    reports.push(report(&events[0], n));
                    fold(&reports)
                }
                other => panic!("{trigger}: {other:?}"),
            }
        };
        // A leave home for the weekend: recorded, no stay.
        let f1 = send("A21", "l1", pv1(&[(3, "2W^201")]), "20261106");
        assert!(f1.stays.is_empty() && !f1.in_hospital);
        send("A22", "l2", pv1(&[(3, "2W^201")]), "20261108");
        // A bed-hold leave to hospital, back on the 14th.
        assert!(send("A21", "l3", pv1(&[(3, "HOSP")]), "20261110").in_hospital);
        let back = send("A22", "l4", pv1(&[(3, "HOSP")]), "20261114");
        assert!(!back.in_hospital);
        assert_eq!(
            back.stays,
            vec![Stay {
                kind: StayKind::Inpatient,
                from: d(2026, 11, 10),
                to: d(2026, 11, 13)
            }]
        );
        // A53 cancels the return (the resident is still in hospital), A52 the leave itself.
        assert!(send("A53", "l5", String::new(), "20261115").in_hospital);
        let cancelled = send("A52", "l6", String::new(), "20261115");
        assert!(cancelled.stays.is_empty() && !cancelled.in_hospital);
    }

    #[test]
    fn an_a47_changes_the_mrn_and_never_merges() {
        let f = feed();
        let resident = |id: &str, mrn: &str| Resident {
            id: id.into(),
            mrn: Some(mrn.into()),
            adt: AdtFold::default(),
        };
        let residents = vec![resident("p1", "M1"), resident("p2", "M2")];
        let mrg = |prior: &str| format!("MRG|{prior}^^^PCC^MR");
        // M1 becomes M9: p1 is known by M9 from now on, and later messages find it.
        let events = match plan(&msg("A47", "c1", "M9", &mrg("M1")), &f, &residents, TZ) {
            Ok(AdtPlan::Apply {
                new: None, events, ..
            }) => events,
            other => panic!("{other:?}"),
        };
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].patient, "p1");
        let mut reports = vec![report(&events[0], 0)];
        let changed = Resident {
            adt: fold(&reports),
            ..resident("p1", "M1")
        };
        assert_eq!(changed.current_mrn(), Some("M9"));
        let residents = vec![changed, resident("p2", "M2")];
        match plan(&msg("A08", "c2", "M9", ""), &f, &residents, TZ) {
            Ok(AdtPlan::Apply { events, .. }) => {
                assert_eq!(events[0].patient, "p1");
                reports.push(report(&events[0], 1));
            }
            other => panic!("{other:?}"),
        }
        // Giving p1 the MRN p2 has is refused (a merge is an A40), and so is an A47 naming
        // nobody or lacking MRG-1.
        for (m, field) in [
            (msg("A47", "c3", "M2", &mrg("M9")), "PID-3"),
            (msg("A47", "c4", "M7", &mrg("M404")), "MRG-1"),
            (msg("A47", "c5", "M7", ""), "MRG-1"),
        ] {
            let e = plan(&m, &f, &residents, TZ).err();
            assert_eq!(e.map(|e| e.field).as_deref(), Some(field));
        }
    }

    #[test]
    fn unknown_mrn_on_a_transfer_is_an_error_and_admit_adds_a_resident() {
        let f = feed();
        let e = plan(&msg("A02", "c1", "M404", ""), &f, &[], TZ).err();
        assert_eq!(e.map(|e| e.field).as_deref(), Some("PID-3"));
        match plan(&msg("A04", "c2", "M 5", ""), &f, &[], TZ) {
            Ok(AdtPlan::Apply { new: Some(n), .. }) => {
                assert_eq!(n.id, "mrn-M-5");
                assert_eq!(n.name, "Doe, Jane");
                assert_eq!(n.birth_date, Some(d(1940, 1, 2)));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan(&msg("A31", "c3", "M1", ""), &f, &[], TZ),
            Ok(AdtPlan::Ignored { .. })
        ));
    }

    #[test]
    fn bad_feed_settings_are_refused_naming_the_feed_and_field() {
        let base = "[[feed]]\nsending_facility = \"A\"\nfacility = \"sunnyvale\"\npractitioner = \"dr-ng\"\n";
        for (extra, needle) in [
            (
                "[feed.part_a]\nfield = \"PV1\"\ncovered = [\"MA\"]\n",
                "feed[0].part_a.field",
            ),
            (
                "[feed.part_a]\nfield = \"PV1-20\"\ncovered = []\n",
                "feed[0].part_a.covered",
            ),
            ("colour = \"blue\"\n", "colour"),
            (
                "[[feed]]\nsending_facility = \"a\"\nfacility = \"oak\"\npractitioner = \"dr-ng\"\n",
                "feed[1].sending_facility",
            ),
        ] {
            let e = AdtSettings::parse(&format!("{base}{extra}"))
                .err()
                .unwrap_or_default();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let e = AdtSettings::parse(
            "[[feed]]\nsending_facility = \"A\"\nfacility = \"../x\"\npractitioner = \"dr\"\n",
        )
        .err()
        .unwrap_or_default();
        assert!(e.contains("feed[0].facility"), "{e}");
    }

    #[test]
    fn ack_names_the_message_and_reason() {
        let m = msg("A01", "c^1", "M1", "");
        let a = ack(Some(&m), AckCode::Error, "PID-3: no|MRN", Utc::now());
        assert!(a.contains("MSA|AE|c\\S\\1|PID-3: no\\F\\MRN\r"), "{a}");
        assert!(a.contains("|ACK^A01^ACK|"), "{a}");
        assert!(a.contains("ERR|"), "{a}");
        let a = ack(None, AckCode::Accept, "ok", Utc::now());
        assert!(a.contains("MSA|AA||ok"), "{a}");
    }

    /// A PV1 segment with these fields set.
    fn pv1(fields: &[(usize, &str)]) -> String {
        let n = fields.iter().map(|(i, _)| *i).max().unwrap_or(1);
        let mut v = vec![String::new(); n + 1];
        v[0] = "PV1".into();
        for (i, x) in fields {
            v[*i] = x.to_string();
        }
        v.join("|")
    }

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap_or_else(|| panic!("date"))
    }
}
