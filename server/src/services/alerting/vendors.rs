//! Device vendors' own webhook payloads (`POST /api/v1/vendors/<vendor>`), translated into the
//! readings of `POST /api/v1/readings` ([`VendorReading`]): vendor field names, vendor units
//! (mmHg, grams, pounds, Fahrenheit, bpm) to the model's UCUM units, several measurements per
//! POST, the vendor's auth style, and an idempotency key from the vendor's own identifiers.
//!
//! Lenient where vendors are sloppy (unknown fields are ignored: vendors add fields without
//! notice; numbers may come as strings), strict where it matters (every measurement of a post is
//! translated and checked before anything is written; a vital sign with a missing value or an
//! unknown unit refuses the whole post, naming the measurement and the field).
//!
//! Non-vital metrics (battery level, signal strength, an irregular-heartbeat flag, a scale's tare)
//! are not readings: they never make a data day. They are named in the answer (`skipped`) and
//! kept, with device, time and value, in the audit log (`ingest-non-vital`).
//!
//! Sources of the payload shapes (the samples in `tests/tests/vendors.rs` are built from them):
//! - Tenovi: the HWI "Measurement Webhooks" documentation (fields `metric`, `hwi_device_id`,
//!   `value_1`, `value_2`, `timestamp`, `filter_params.measurement_index`; "Post as Array" sends a
//!   JSON array) and its device overview (units per metric: mmHg, beats/min, %, mg/dL, lbs, °F).
//!   Tenovi sends optional header auth configured on its side: we accept the integration key as
//!   `Authorization: Bearer <key>`, `Authorization: <key>` or `X-Api-Key: <key>`.
//! - BodyTrace: the scale's POST format as documented for integrators (`deviceId` = IMEI,
//!   `ts` in ms since the epoch UTC, `values.weight` in grams whatever the display unit, plus
//!   `batteryVoltage`, `rssi`, `values.tare`, `values.unit`), sent with HTTP Basic auth: the
//!   password is the integration key (any user name). The blood-pressure variant
//!   (`values.systolic`, `values.diastolic`, `values.pulse`, mmHg and beats/min) is accepted too.
//! - Smart Meter (iGlucose meters, cellular cuffs, scales and pulse oximeters): its data
//!   forwarding posts one reading per request, a flat object — `reading_id`, `imei`,
//!   `device_id`, `device_model`, `reading_type` (`blood_pressure`, `blood_glucose`, `weight`,
//!   `pulse_ox`), `date_recorded` (the device's local time, no offset) with `time_zone_offset`
//!   (hours east of UTC, e.g. `-5.0`), `date_received` (UTC), then per type `systolic_mmhg`,
//!   `diastolic_mmhg`, `pulse_bpm`, `irregular`; `blood_glucose_mgdl` / `blood_glucose_mmol`,
//!   `before_meal`; `weight_kg` / `weight_lbs`; `spo2`, `pulse_bpm`; plus `device_user` (the
//!   user slot on a shared device), `qa`, `short_code`. Smart Meter's own documentation was not
//!   reachable when this was written: the field names are those two independent public
//!   receivers of its data push read, and Validic's relay of Smart Meter readings agrees on the
//!   kinds and units (tests/vendor-samples/SOURCES.md). An array of such objects is accepted
//!   too. The key comes as Tenovi's does (a header set on the forwarding).
//! - Any other vendor: the `generic` adapter, driven by the integration's [`GenericMapping`]
//!   (JSON pointers to each field, the vendor's kind names, its units), given as a TOML file to
//!   `rounds integration add --mapping FILE`.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use rounds_core::ReadingKind;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::vendor::{IngestError, VendorReading, VendorValues};

/// At most this many measurements in one post.
pub const MAX_BATCH: usize = 500;

/// The vendors with an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Tenovi,
    BodyTrace,
    SmartMeter,
    /// Any vendor, through the integration's mapping.
    Generic,
}

impl Vendor {
    /// The vendor of a path segment (`tenovi`, `bodytrace`).
    pub fn from_path(s: &str) -> Option<Vendor> {
        match s {
            "tenovi" => Some(Vendor::Tenovi),
            "bodytrace" => Some(Vendor::BodyTrace),
            "smartmeter" => Some(Vendor::SmartMeter),
            "generic" => Some(Vendor::Generic),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Tenovi => "tenovi",
            Vendor::BodyTrace => "bodytrace",
            Vendor::SmartMeter => "smartmeter",
            Vendor::Generic => "generic",
        }
    }

    /// The integration key from the request, in the vendor's auth style.
    pub fn key<'a>(
        self,
        authorization: Option<&'a str>,
        x_api_key: Option<&'a str>,
    ) -> Option<String> {
        match self {
            Vendor::Tenovi | Vendor::SmartMeter | Vendor::Generic => authorization
                .map(|a| a.strip_prefix("Bearer ").unwrap_or(a).trim().to_string())
                .or_else(|| x_api_key.map(|k| k.trim().to_string()))
                .filter(|k| !k.is_empty()),
            Vendor::BodyTrace => {
                use base64::Engine;
                let b64 = authorization?.strip_prefix("Basic ")?.trim();
                let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
                let text = String::from_utf8(raw).ok()?;
                let (_, password) = text.split_once(':')?;
                (!password.is_empty()).then(|| password.to_string())
            }
        }
    }

    /// Translate a post into readings (and the names of the non-vital metrics it carried);
    /// `mapping` is the integration's, which the generic adapter needs.
    pub fn parse(
        self,
        body: &str,
        mapping: Option<&GenericMapping>,
    ) -> Result<Translated, IngestError> {
        let v: Value = serde_json::from_str(body).map_err(|e| {
            IngestError::Malformed(format!("{} post: not JSON: {e}", self.as_str()))
        })?;
        // Only the generic adapter reads a mapping.
        let mapping = mapping.filter(|_| self == Vendor::Generic);
        if self == Vendor::Generic && mapping.is_none() {
            return Err(IngestError::Invalid(
                "generic post: this integration has no mapping (rounds integration add --mapping FILE)"
                    .into(),
            ));
        }
        let list = match mapping {
            Some(m) if !m.measurements.is_empty() => {
                v.pointer(&m.measurements).ok_or_else(|| {
                    IngestError::Malformed(format!(
                        "generic post: field {}: missing",
                        m.measurements
                    ))
                })?
            }
            _ => &v,
        };
        let items: Vec<&Value> = match list {
            Value::Array(a) => a.iter().collect(),
            Value::Object(_) => vec![list],
            _ => {
                return Err(IngestError::Malformed(format!(
                    "{} post: expected a measurement object or an array of them",
                    self.as_str()
                )));
            }
        };
        if items.is_empty() {
            return Err(IngestError::Malformed(format!(
                "{} post: no measurement",
                self.as_str()
            )));
        }
        if items.len() > MAX_BATCH {
            return Err(IngestError::Malformed(format!(
                "{} post: {} measurements, at most {MAX_BATCH} per post",
                self.as_str(),
                items.len()
            )));
        }
        let mut out = Translated::default();
        for (i, item) in items.into_iter().enumerate() {
            let at = Entry(self, i);
            let ms = match self {
                Vendor::Tenovi => vec![tenovi(item, &at)?],
                Vendor::BodyTrace => bodytrace(item, &at)?,
                Vendor::SmartMeter => smartmeter(item, &at)?,
                Vendor::Generic => match mapping {
                    Some(m) => vec![generic(m, item, &at)?],
                    None => Vec::new(),
                },
            };
            for m in ms {
                match m {
                    Measurement::Reading(r) => out.readings.push(*r),
                    Measurement::NonVital(name, detail) => {
                        out.skipped.push(name);
                        out.non_vital.push(detail);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A post translated: the readings to store, and the non-vital metrics left out.
#[derive(Debug, Default)]
pub struct Translated {
    pub readings: Vec<VendorReading>,
    /// The non-vital metrics by name (`tenovi battery_percentage`).
    pub skipped: Vec<String>,
    /// Each with its device, time and value, for the audit log.
    pub non_vital: Vec<String>,
}

enum Measurement {
    Reading(Box<VendorReading>),
    /// A metric that is not a vital sign: its name, and what it said.
    NonVital(String, String),
}

/// A field's value as short text for the audit log (at most 40 characters).
fn raw(v: &Value, pointer: &str) -> String {
    let s = match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    };
    s.chars().take(40).collect()
}

/// How a measurement is named in errors: the vendor and its index in the post.
struct Entry(Vendor, usize);

impl Entry {
    fn err(&self, field: &str, msg: impl std::fmt::Display) -> IngestError {
        IngestError::Malformed(format!(
            "{} measurement [{}]: field {field}: {msg}",
            self.0.as_str(),
            self.1
        ))
    }
}

/// A string or a number, as text (vendors send ids both ways).
fn text(v: &Value, field: &str, at: &Entry) -> Result<String, IngestError> {
    text_of(v.get(field), field, at)
}

/// A value found at `name` (a field or a JSON pointer) as text, not empty.
fn text_of(found: Option<&Value>, name: &str, at: &Entry) -> Result<String, IngestError> {
    let s = match found {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        None | Some(Value::Null) => return Err(at.err(name, "missing")),
        Some(_) => return Err(at.err(name, "expected a string or a number")),
    };
    if s.is_empty() {
        return Err(at.err(name, "empty"));
    }
    Ok(s)
}

/// An ISO 8601 time with an offset, or without one meaning UTC (as vendors send it).
fn iso_time(t: &str, name: &str, at: &Entry) -> Result<DateTime<FixedOffset>, IngestError> {
    DateTime::parse_from_rfc3339(t)
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
                .map(|n| Utc.from_utc_datetime(&n).fixed_offset())
        })
        .map_err(|_| at.err(name, format!("{t:?} is not an ISO 8601 time")))
}

/// A number, or a string holding one.
fn number(v: &Value, field: &str, at: &Entry) -> Result<Option<f64>, IngestError> {
    number_of(v.get(field), field, at)
}

/// A value found at `name` as a finite number (a number, or a string holding one); absent,
/// null or an empty string is None.
fn number_of(found: Option<&Value>, name: &str, at: &Entry) -> Result<Option<f64>, IngestError> {
    match found {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| at.err(name, "not a finite number")),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| at.err(name, format!("{s:?} is not a number"))),
        Some(_) => Err(at.err(name, "expected a number")),
    }
}

fn required(v: &Value, field: &str, at: &Entry) -> Result<f64, IngestError> {
    number(v, field, at)?.ok_or_else(|| at.err(field, "missing"))
}

fn one(kind: ReadingKind, value: f64, unit: &str) -> (ReadingKind, VendorValues, String) {
    (
        kind,
        VendorValues {
            systolic: None,
            diastolic: None,
            value: Some(value),
        },
        unit.to_string(),
    )
}

fn bp(systolic: f64, diastolic: f64) -> (ReadingKind, VendorValues, String) {
    (
        ReadingKind::BloodPressure,
        VendorValues {
            systolic: Some(systolic),
            diastolic: Some(diastolic),
            value: None,
        },
        "mm[Hg]".to_string(),
    )
}

/// Pounds to the model's `[lb_av]` (kept in pounds: the model takes either).
const LB: &str = "[lb_av]";

/// One Tenovi measurement.
fn tenovi(v: &Value, at: &Entry) -> Result<Measurement, IngestError> {
    if !v.is_object() {
        return Err(at.err("", "expected an object"));
    }
    let metric = text(v, "metric", at)?;
    let device = text(v, "hwi_device_id", at)?;
    let timestamp = text(v, "timestamp", at)?;
    let measured_at = iso_time(&timestamp, "timestamp", at)?;
    let (kind, values, unit) = match metric.as_str() {
        "blood_pressure" => bp(required(v, "value_1", at)?, required(v, "value_2", at)?),
        "pulse" => one(ReadingKind::HeartRate, required(v, "value_1", at)?, "/min"),
        "spO2" | "spo2" => one(ReadingKind::Spo2, required(v, "value_1", at)?, "%"),
        "glucose" => one(ReadingKind::Glucose, required(v, "value_1", at)?, "mg/dL"),
        "weight" => one(ReadingKind::Weight, required(v, "value_1", at)?, LB),
        "temperature" => one(
            ReadingKind::Temperature,
            required(v, "value_1", at)?,
            "[degF]",
        ),
        other => {
            return Ok(Measurement::NonVital(
                format!("tenovi {other}"),
                format!(
                    "tenovi {other}={} device {device} at {timestamp}",
                    raw(v, "/value_1")
                ),
            ));
        }
    };
    // Coincident measurements share a timestamp; the index tells them apart.
    let index = v
        .get("filter_params")
        .and_then(|f| f.get("measurement_index"))
        .map(|i| match i {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default();
    Ok(Measurement::Reading(Box::new(VendorReading {
        reading_id: format!("tenovi:{device}:{metric}:{timestamp}:{index}"),
        device_id: device,
        kind,
        values,
        unit,
        measured_at,
    })))
}

/// One BodyTrace message: a weight, or a blood pressure with its pulse.
fn bodytrace(v: &Value, at: &Entry) -> Result<Vec<Measurement>, IngestError> {
    if !v.is_object() {
        return Err(at.err("", "expected an object"));
    }
    let device = text(v, "deviceId", at)?;
    let ts = required(v, "ts", at)?;
    if ts.fract() != 0.0 || !(0.0..=4.0e12).contains(&ts) {
        return Err(at.err(
            "ts",
            format!("{ts} is not a time in milliseconds since 1970"),
        ));
    }
    let measured_at: DateTime<FixedOffset> = Utc
        .timestamp_millis_opt(ts as i64)
        .single()
        .ok_or_else(|| at.err("ts", format!("{ts} is not a time")))?
        .fixed_offset();
    let Some(values) = v.get("values").filter(|x| x.is_object()) else {
        // A status message (battery, signal) without measurement values.
        return Ok(vec![Measurement::NonVital(
            "bodytrace status".into(),
            format!(
                "bodytrace status battery={}mV rssi={} device {device} at {measured_at}",
                raw(v, "/batteryVoltage"),
                raw(v, "/rssi")
            ),
        )]);
    };
    let num =
        |f: &str| number(values, f, at).map_err(|_| at.err(&format!("values.{f}"), "not a number"));
    let reading = |suffix: &str, (kind, values, unit): (ReadingKind, VendorValues, String)| {
        Measurement::Reading(Box::new(VendorReading {
            reading_id: format!("bodytrace:{device}:{}{suffix}", ts as i64),
            device_id: device.clone(),
            kind,
            values,
            unit,
            measured_at,
        }))
    };
    if let Some(grams) = num("weight")? {
        // Grams whatever the scale displayed.
        return Ok(vec![reading(
            "",
            one(ReadingKind::Weight, grams / 1000.0, "kg"),
        )]);
    }
    if let (Some(s), Some(d)) = (num("systolic")?, num("diastolic")?) {
        let mut out = vec![reading("", bp(s, d))];
        if let Some(p) = num("pulse")? {
            out.push(reading(":pulse", one(ReadingKind::HeartRate, p, "/min")));
        }
        return Ok(out);
    }
    Err(at.err(
        "values",
        "neither weight nor systolic and diastolic: not a measurement",
    ))
}

/// The latest and earliest offsets from UTC a clock can be set to, in hours.
const MAX_OFFSET_HOURS: f64 = 14.0;

/// When a Smart Meter reading was taken: `date_recorded` with its own offset, or the device's
/// local time plus `time_zone_offset` (hours east of UTC, whole minutes). Never guessed: without
/// an offset the day the reading counts for would be unknown.
fn smartmeter_time(v: &Value, at: &Entry) -> Result<DateTime<FixedOffset>, IngestError> {
    let t = text(v, "date_recorded", at)?;
    if let Ok(with_offset) = DateTime::parse_from_rfc3339(&t) {
        return Ok(with_offset);
    }
    let local = chrono::NaiveDateTime::parse_from_str(&t, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(&t, "%Y-%m-%d %H:%M:%S%.f"))
        .map_err(|_| at.err("date_recorded", format!("{t:?} is not an ISO 8601 time")))?;
    let hours = number(v, "time_zone_offset", at)?.ok_or_else(|| {
        at.err(
            "time_zone_offset",
            "missing (date_recorded has no offset of its own)",
        )
    })?;
    let seconds = hours * 3600.0;
    if hours.abs() > MAX_OFFSET_HOURS || seconds % 60.0 != 0.0 {
        return Err(at.err(
            "time_zone_offset",
            format!("{hours} is not an offset in hours from UTC"),
        ));
    }
    let offset = FixedOffset::east_opt(seconds as i32).ok_or_else(|| {
        at.err(
            "time_zone_offset",
            format!("{hours} is not an offset in hours from UTC"),
        )
    })?;
    local
        .and_local_timezone(offset)
        .single()
        .ok_or_else(|| at.err("date_recorded", format!("{t:?} is not a time")))
}

/// Whether a field holds a set flag (`true`, a non-zero number, a non-empty string other than
/// "false"/"0"/"no").
fn flag(v: &Value, field: &str) -> bool {
    match v.get(field) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|x| x != 0.0),
        Some(Value::String(s)) => {
            let s = s.trim().to_ascii_lowercase();
            !(s.is_empty() || s == "false" || s == "0" || s == "no")
        }
        _ => false,
    }
}

/// One Smart Meter reading: a blood pressure with its pulse, a glucose, a weight, or a pulse
/// oximetry with its pulse.
fn smartmeter(v: &Value, at: &Entry) -> Result<Vec<Measurement>, IngestError> {
    if !v.is_object() {
        return Err(at.err("", "expected an object"));
    }
    let reading_id = text(v, "reading_id", at)?;
    let imei = text(v, "imei", at)?;
    // A shared device (a cuff with two user buttons) says whose reading it is: user 1 (or none)
    // is the device enrolled as its IMEI; user N > 1 is enrolled as `IMEI/N`, so another
    // user's readings never land on the first user's chart.
    let device = match number(v, "device_user", at)? {
        None => imei,
        Some(u) if u == 1.0 || u == 0.0 => imei,
        Some(u) if u.fract() == 0.0 && (2.0..=9.0).contains(&u) => format!("{imei}/{u}"),
        Some(u) => return Err(at.err("device_user", format!("{u} is not a user slot"))),
    };
    let reading_type = text(v, "reading_type", at)?;
    let measured_at = smartmeter_time(v, at)?;
    let non_vital = |what: &str, value: String| {
        Measurement::NonVital(
            format!("smartmeter {what}"),
            format!("smartmeter {what}={value} device {device} at {measured_at}"),
        )
    };
    // A quality-control test (control solution on a glucose meter) is not the resident's
    // reading: kept in the audit log, never a data day.
    if flag(v, "qa") {
        return Ok(vec![non_vital(
            &format!("{reading_type} qa"),
            raw(v, "/qa"),
        )]);
    }
    let reading = |suffix: &str, (kind, values, unit): (ReadingKind, VendorValues, String)| {
        Measurement::Reading(Box::new(VendorReading {
            reading_id: format!("smartmeter:{reading_id}{suffix}"),
            device_id: device.clone(),
            kind,
            values,
            unit,
            measured_at,
        }))
    };
    let mut out = Vec::new();
    match reading_type.as_str() {
        "blood_pressure" => {
            out.push(reading(
                "",
                bp(
                    required(v, "systolic_mmhg", at)?,
                    required(v, "diastolic_mmhg", at)?,
                ),
            ));
            if let Some(p) = number(v, "pulse_bpm", at)? {
                out.push(reading(":pulse", one(ReadingKind::HeartRate, p, "/min")));
            }
            if flag(v, "irregular") {
                out.push(non_vital("irregular", "true".into()));
            }
        }
        "blood_glucose" => {
            let g = match number(v, "blood_glucose_mgdl", at)? {
                Some(mg) => one(ReadingKind::Glucose, mg, "mg/dL"),
                None => match number(v, "blood_glucose_mmol", at)? {
                    Some(mmol) => one(ReadingKind::Glucose, mmol, "mmol/L"),
                    None => {
                        return Err(
                            at.err("blood_glucose_mgdl", "missing (and no blood_glucose_mmol)")
                        );
                    }
                },
            };
            out.push(reading("", g));
        }
        "weight" => {
            let w = match number(v, "weight_kg", at)? {
                Some(kg) => one(ReadingKind::Weight, kg, "kg"),
                None => match number(v, "weight_lbs", at)? {
                    Some(lb) => one(ReadingKind::Weight, lb, LB),
                    None => return Err(at.err("weight_kg", "missing (and no weight_lbs)")),
                },
            };
            out.push(reading("", w));
        }
        "pulse_ox" => {
            out.push(reading(
                "",
                one(ReadingKind::Spo2, required(v, "spo2", at)?, "%"),
            ));
            if let Some(p) = number(v, "pulse_bpm", at)? {
                out.push(reading(":pulse", one(ReadingKind::HeartRate, p, "/min")));
            }
        }
        other => out.push(non_vital(other, "-".into())),
    }
    Ok(out)
}

/// How a generic vendor's measurement time is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// RFC 3339 / ISO 8601 with an offset (or UTC when it has none).
    #[default]
    Rfc3339,
    /// Milliseconds since 1970, UTC.
    UnixMs,
    /// Seconds since 1970, UTC.
    UnixS,
}

/// Where a vendor puts each field, as JSON pointers (`/device/serial`) into one measurement;
/// `measurements` points at the list in the post (empty: the post is one measurement or an
/// array of them). `kinds` names the vendor's kinds that are vital signs; any other kind is a
/// non-vital metric (not stored). `unit` points at the unit in the payload; `units` gives it per
/// vendor kind when the payload has none. Units are translated to the model's (mmHg, bpm, g, lb,
/// °F, °C … to UCUM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericMapping {
    #[serde(default)]
    pub measurements: String,
    pub reading_id: String,
    pub device_id: String,
    pub measured_at: String,
    #[serde(default)]
    pub time_format: TimeFormat,
    pub kind: String,
    pub kinds: BTreeMap<String, ReadingKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub systolic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diastolic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub units: BTreeMap<String, String>,
}

impl GenericMapping {
    /// Parse and check a mapping file (TOML).
    pub fn from_toml(text: &str) -> Result<GenericMapping, String> {
        let m: GenericMapping = toml::from_str(text).map_err(|e| format!("mapping: {e}"))?;
        m.check()?;
        Ok(m)
    }

    /// Every pointer is a JSON pointer; at least one kind; blood pressure needs both values.
    pub fn check(&self) -> Result<(), String> {
        let pointers = [
            ("reading_id", Some(&self.reading_id)),
            ("device_id", Some(&self.device_id)),
            ("measured_at", Some(&self.measured_at)),
            ("kind", Some(&self.kind)),
            ("value", self.value.as_ref()),
            ("systolic", self.systolic.as_ref()),
            ("diastolic", self.diastolic.as_ref()),
            ("unit", self.unit.as_ref()),
        ];
        for (field, p) in pointers {
            if let Some(p) = p
                && !p.starts_with('/')
            {
                return Err(format!(
                    "mapping: field {field}: {p:?} is not a JSON pointer (like \"/device/id\")"
                ));
            }
        }
        if !self.measurements.is_empty() && !self.measurements.starts_with('/') {
            return Err("mapping: field measurements: not a JSON pointer".into());
        }
        if self.kinds.is_empty() {
            return Err("mapping: field kinds: name at least one vendor kind".into());
        }
        let bp = self
            .kinds
            .values()
            .any(|k| *k == ReadingKind::BloodPressure);
        if bp && (self.systolic.is_none() || self.diastolic.is_none()) {
            return Err("mapping: fields systolic and diastolic: needed for blood_pressure".into());
        }
        if self
            .kinds
            .values()
            .any(|k| *k != ReadingKind::BloodPressure)
            && self.value.is_none()
        {
            return Err("mapping: field value: needed for kinds other than blood_pressure".into());
        }
        for (vendor_kind, kind) in &self.kinds {
            if kind.therapeutic().is_some() {
                return Err(format!(
                    "mapping: field kinds.{vendor_kind}: {kind:?} is a therapeutic (RTM) kind; vendor readings are RPM"
                ));
            }
            if self.unit.is_none() && !self.units.contains_key(vendor_kind) {
                return Err(format!(
                    "mapping: field units.{vendor_kind}: no unit pointer and no fixed unit"
                ));
            }
        }
        Ok(())
    }
}

/// A value at a pointer, as text.
fn text_at(v: &Value, pointer: &str, at: &Entry) -> Result<String, IngestError> {
    text_of(v.pointer(pointer), pointer, at)
}

fn number_at(v: &Value, pointer: &str, at: &Entry) -> Result<f64, IngestError> {
    number_of(v.pointer(pointer), pointer, at)?.ok_or_else(|| at.err(pointer, "missing"))
}

/// A vendor's unit to the model's, with the factor to apply (grams to kilograms).
pub fn model_unit(unit: &str) -> Option<(&'static str, f64)> {
    Some(match unit.trim() {
        "mmHg" | "mm Hg" | "mmhg" | "mm[Hg]" => ("mm[Hg]", 1.0),
        "bpm" | "beats/min" | "/min" | "1/min" | "rpm" | "breaths/min" => ("/min", 1.0),
        "g" => ("kg", 0.001),
        "kg" => ("kg", 1.0),
        "lb" | "lbs" | "[lb_av]" => ("[lb_av]", 1.0),
        "mg/dL" | "mg/dl" => ("mg/dL", 1.0),
        "mmol/L" | "mmol/l" => ("mmol/L", 1.0),
        "%" | "percent" => ("%", 1.0),
        "F" | "°F" | "degF" | "[degF]" => ("[degF]", 1.0),
        "C" | "°C" | "degC" | "Cel" => ("Cel", 1.0),
        _ => return None,
    })
}

fn generic(m: &GenericMapping, v: &Value, at: &Entry) -> Result<Measurement, IngestError> {
    let vendor_kind = text_at(v, &m.kind, at)?;
    let Some(&kind) = m.kinds.get(&vendor_kind) else {
        return Ok(Measurement::NonVital(
            format!("generic {vendor_kind}"),
            format!(
                "generic {vendor_kind}={} device {} at {}",
                m.value.as_deref().map(|p| raw(v, p)).unwrap_or_default(),
                raw(v, &m.device_id),
                raw(v, &m.measured_at)
            ),
        ));
    };
    let reading_id = text_at(v, &m.reading_id, at)?;
    let device = text_at(v, &m.device_id, at)?;
    let measured_at = match m.time_format {
        TimeFormat::Rfc3339 => {
            let t = text_at(v, &m.measured_at, at)?;
            iso_time(&t, &m.measured_at, at)?
        }
        TimeFormat::UnixMs | TimeFormat::UnixS => {
            let n = number_at(v, &m.measured_at, at)?;
            let ms = if m.time_format == TimeFormat::UnixS {
                n * 1000.0
            } else {
                n
            };
            if !(0.0..=4.0e12).contains(&ms) {
                return Err(at.err(&m.measured_at, format!("{n} is not a time")));
            }
            Utc.timestamp_millis_opt(ms as i64)
                .single()
                .ok_or_else(|| at.err(&m.measured_at, format!("{n} is not a time")))?
                .fixed_offset()
        }
    };
    let vendor_unit = match &m.unit {
        Some(p) => text_at(v, p, at)?,
        None => m.units.get(&vendor_kind).cloned().unwrap_or_default(),
    };
    let unit_field = m.unit.as_deref().unwrap_or("unit");
    let (unit, factor) = model_unit(&vendor_unit).ok_or_else(|| {
        at.err(
            unit_field,
            format!("unit {vendor_unit:?} is not one we convert"),
        )
    })?;
    let values = if kind == ReadingKind::BloodPressure {
        let (Some(sp), Some(dp)) = (&m.systolic, &m.diastolic) else {
            return Err(at.err("systolic", "no pointer in the mapping"));
        };
        VendorValues {
            systolic: Some(number_at(v, sp, at)? * factor),
            diastolic: Some(number_at(v, dp, at)? * factor),
            value: None,
        }
    } else {
        let Some(vp) = &m.value else {
            return Err(at.err("value", "no pointer in the mapping"));
        };
        VendorValues {
            systolic: None,
            diastolic: None,
            value: Some(number_at(v, vp, at)? * factor),
        }
    };
    Ok(Measurement::Reading(Box::new(VendorReading {
        reading_id: format!("generic:{reading_id}"),
        device_id: device,
        kind,
        values,
        unit: unit.to_string(),
        measured_at,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenovi_units_and_batches() {
        let body = r#"[
          {"metric":"blood_pressure","device_name":"Tenovi BPM - L","hwi_device_id":"dev-1",
           "patient_id":"","hardware_uuid":"A1B2C3D4E5F6","sensor_code":"10",
           "value_1":"142","value_2":"88","created":"2026-11-03T13:02:10Z",
           "timestamp":"2026-11-03T13:01:00Z","filter_params":{"measurement_index":1}},
          {"metric":"pulse","hwi_device_id":"dev-1","value_1":76,
           "timestamp":"2026-11-03T13:01:00Z","filter_params":{"measurement_index":1}},
          {"metric":"battery_percentage","hwi_device_id":"dev-1","value_1":80,
           "timestamp":"2026-11-03T13:01:00Z"}
        ]"#;
        let t = Vendor::Tenovi.parse(body, None).unwrap();
        assert_eq!(t.readings.len(), 2);
        assert_eq!(t.skipped, vec!["tenovi battery_percentage"]);
        let bp = &t.readings[0];
        assert_eq!(bp.kind, ReadingKind::BloodPressure);
        assert_eq!(
            (bp.values.systolic, bp.values.diastolic),
            (Some(142.0), Some(88.0))
        );
        assert_eq!(bp.unit, "mm[Hg]");
        assert_ne!(bp.reading_id, t.readings[1].reading_id);
        assert_eq!(t.readings[1].unit, "/min");
    }

    #[test]
    fn bodytrace_grams_become_kilograms_and_basic_auth_carries_the_key() {
        let body = r#"{"deviceId":12345678901234,"ts":1762174800000,"batteryVoltage":5522,
                       "rssi":91,"values":{"unit":1,"weight":69800,"tare":0}}"#;
        let t = Vendor::BodyTrace.parse(body, None).unwrap();
        assert_eq!(t.readings[0].values.value, Some(69.8));
        assert_eq!(t.readings[0].unit, "kg");
        assert_eq!(t.readings[0].device_id, "12345678901234");
        use base64::Engine;
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("bodytrace:s3cret")
        );
        assert_eq!(
            Vendor::BodyTrace.key(Some(&auth), None).as_deref(),
            Some("s3cret")
        );
        assert_eq!(Vendor::BodyTrace.key(Some("Bearer s3cret"), None), None);
    }

    #[test]
    fn hostile_posts_name_the_measurement_and_field() {
        for (vendor, body, needle) in [
            (Vendor::Tenovi, "nope", "not JSON"),
            (Vendor::Tenovi, "[]", "no measurement"),
            (Vendor::Tenovi, "7", "expected a measurement"),
            (
                Vendor::Tenovi,
                r#"[{"metric":"pulse","hwi_device_id":"d","timestamp":"2026-11-03T13:01:00Z"}]"#,
                "[0]: field value_1: missing",
            ),
            (
                Vendor::Tenovi,
                r#"{"metric":"pulse","hwi_device_id":"d","value_1":"high","timestamp":"2026-11-03T13:01:00Z"}"#,
                "field value_1",
            ),
            (
                Vendor::Tenovi,
                r#"{"metric":"pulse","hwi_device_id":"d","value_1":70,"timestamp":"yesterday"}"#,
                "field timestamp",
            ),
            (
                Vendor::Tenovi,
                r#"{"metric":"pulse","value_1":70,"timestamp":"2026-11-03T13:01:00Z"}"#,
                "field hwi_device_id: missing",
            ),
            (
                Vendor::BodyTrace,
                r#"{"deviceId":1,"ts":-5,"values":{"weight":1}}"#,
                "field ts",
            ),
            (
                Vendor::BodyTrace,
                r#"{"deviceId":1,"ts":1762174800000,"values":{"weight":"heavy"}}"#,
                "field values.weight",
            ),
            (
                Vendor::BodyTrace,
                r#"{"deviceId":1,"ts":1762174800000,"values":{"tare":0}}"#,
                "field values",
            ),
        ] {
            match vendor.parse(body, None) {
                Err(e) => assert!(e.to_string().contains(needle), "{body}: {e}"),
                Ok(t) => panic!("{body}: accepted {t:?}"),
            }
        }
        let big = format!("[{}]", vec!["{}"; MAX_BATCH + 1].join(","));
        assert!(Vendor::Tenovi.parse(&big, None).is_err());
    }

    const SMART_METER_BP: &str = r#"{"reading_id":500000000000991,"device_id":"77001",
        "device_model":"SM5000-IB","date_recorded":"2026-11-03T07:29:00",
        "date_received":"2026-11-03T12:29:04","reading_type":"blood_pressure",
        "systolic_mmhg":128,"diastolic_mmhg":"81","pulse_bpm":70,"irregular":true,
        "time_zone_offset":-5.0,"short_code":null,"qa":null,"imei":"015732000000991",
        "device_user":1}"#;

    #[test]
    fn smart_meter_local_time_and_offset_make_the_instant() {
        let t = Vendor::SmartMeter.parse(SMART_METER_BP, None).unwrap();
        assert_eq!(t.readings.len(), 2);
        let bp = &t.readings[0];
        assert_eq!(
            bp.measured_at.with_timezone(&Utc),
            Utc.with_ymd_and_hms(2026, 11, 3, 12, 29, 0).unwrap()
        );
        assert_eq!(
            (bp.values.systolic, bp.values.diastolic, bp.unit.as_str()),
            (Some(128.0), Some(81.0), "mm[Hg]")
        );
        assert_eq!(bp.device_id, "015732000000991");
        assert_eq!(bp.reading_id, "smartmeter:500000000000991");
        assert_eq!(t.readings[1].kind, ReadingKind::HeartRate);
        assert_ne!(t.readings[0].reading_id, t.readings[1].reading_id);
        // The irregular-heartbeat flag is a non-vital metric.
        assert_eq!(t.skipped, vec!["smartmeter irregular"]);
        // Half-hour zones, and a time that carries its own offset.
        let india = SMART_METER_BP.replace("-5.0", "5.5");
        let t = Vendor::SmartMeter.parse(&india, None).unwrap();
        assert_eq!(
            t.readings[0].measured_at.with_timezone(&Utc),
            Utc.with_ymd_and_hms(2026, 11, 3, 1, 59, 0).unwrap()
        );
        let own = SMART_METER_BP
            .replace("07:29:00\"", "07:29:00-08:00\"")
            .replace("\"time_zone_offset\":-5.0,", "");
        let t = Vendor::SmartMeter.parse(&own, None).unwrap();
        assert_eq!(
            t.readings[0].measured_at.with_timezone(&Utc),
            Utc.with_ymd_and_hms(2026, 11, 3, 15, 29, 0).unwrap()
        );
    }

    #[test]
    fn smart_meter_units_user_slots_and_control_tests() {
        let body = r#"[
          {"reading_id":"1","imei":"A","reading_type":"blood_glucose","blood_glucose_mgdl":null,
           "blood_glucose_mmol":6.1,"date_recorded":"2026-11-03T08:00:00","time_zone_offset":0},
          {"reading_id":"2","imei":"A","reading_type":"blood_glucose","blood_glucose_mgdl":110,
           "blood_glucose_mmol":6.1,"date_recorded":"2026-11-03T08:00:00","time_zone_offset":0,
           "qa":"false"},
          {"reading_id":"3","imei":"B","reading_type":"weight","weight_kg":null,"weight_lbs":"171.2",
           "date_recorded":"2026-11-03T08:00:00","time_zone_offset":0,"device_user":2},
          {"reading_id":"4","imei":"C","reading_type":"pulse_ox","spo2":97,"pulse_bpm":64,
           "date_recorded":"2026-11-03T08:00:00","time_zone_offset":0},
          {"reading_id":"5","imei":"A","reading_type":"blood_glucose","blood_glucose_mgdl":99,
           "date_recorded":"2026-11-03T08:00:00","time_zone_offset":0,"qa":true},
          {"reading_id":"6","imei":"D","reading_type":"temperature","value":98.2,
           "date_recorded":"2026-11-03T08:00:00","time_zone_offset":0}
        ]"#;
        let t = Vendor::SmartMeter.parse(body, None).unwrap();
        let got: Vec<_> = t
            .readings
            .iter()
            .map(|r| {
                (
                    r.device_id.as_str(),
                    r.kind,
                    r.values.value,
                    r.unit.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("A", ReadingKind::Glucose, Some(6.1), "mmol/L"),
                ("A", ReadingKind::Glucose, Some(110.0), "mg/dL"),
                ("B/2", ReadingKind::Weight, Some(171.2), LB),
                ("C", ReadingKind::Spo2, Some(97.0), "%"),
                ("C", ReadingKind::HeartRate, Some(64.0), "/min"),
            ]
        );
        assert_eq!(
            t.skipped,
            vec!["smartmeter blood_glucose qa", "smartmeter temperature"]
        );
        // The key comes as Tenovi's.
        assert_eq!(
            Vendor::SmartMeter.key(Some("Bearer k1"), None).as_deref(),
            Some("k1")
        );
        assert_eq!(
            Vendor::SmartMeter.key(None, Some("k2")).as_deref(),
            Some("k2")
        );
    }

    #[test]
    fn hostile_smart_meter_posts_name_the_measurement_and_field() {
        let bp: Value = serde_json::from_str(SMART_METER_BP).unwrap();
        let with = |field: &str, value: Value| {
            let mut v = bp.clone();
            if let Some(o) = v.as_object_mut() {
                if value.is_null() {
                    o.remove(field);
                } else {
                    o.insert(field.into(), value);
                }
            }
            format!("[{SMART_METER_BP},{v}]")
        };
        for (body, needle) in [
            (with("imei", Value::Null), "[1]: field imei: missing"),
            (
                with("reading_id", Value::Null),
                "[1]: field reading_id: missing",
            ),
            (with("reading_type", Value::Null), "[1]: field reading_type"),
            (
                with("time_zone_offset", Value::Null),
                "[1]: field time_zone_offset: missing",
            ),
            (
                with("time_zone_offset", 20.into()),
                "[1]: field time_zone_offset",
            ),
            (
                with("time_zone_offset", "east".into()),
                "[1]: field time_zone_offset",
            ),
            (
                with("time_zone_offset", serde_json::json!(5.123)),
                "[1]: field time_zone_offset",
            ),
            (
                with("date_recorded", "03/11/2026".into()),
                "[1]: field date_recorded",
            ),
            (
                with("device_user", serde_json::json!(1.5)),
                "[1]: field device_user",
            ),
            (with("device_user", (-1).into()), "[1]: field device_user"),
            (
                with("systolic_mmhg", Value::Null),
                "[1]: field systolic_mmhg: missing",
            ),
            (
                with("diastolic_mmhg", "high".into()),
                "[1]: field diastolic_mmhg",
            ),
            (
                with("reading_type", "blood_glucose".into()),
                "[1]: field blood_glucose_mgdl: missing",
            ),
            (
                with("reading_type", "weight".into()),
                "[1]: field weight_kg: missing",
            ),
            (
                with("reading_type", "pulse_ox".into()),
                "[1]: field spo2: missing",
            ),
            ("[7]".to_string(), "[0]: field : expected an object"),
        ] {
            match Vendor::SmartMeter.parse(&body, None) {
                Err(e) => assert!(e.to_string().contains(needle), "{needle}: {e}"),
                Ok(t) => panic!("{needle}: accepted {t:?}"),
            }
        }
    }

    const MAPPING: &str = r#"
measurements = "/data"
reading_id = "/uid"
device_id = "/meter/serial"
measured_at = "/t"
time_format = "unix_s"
kind = "/type"
value = "/v"
systolic = "/sys"
diastolic = "/dia"
unit = "/u"

[kinds]
bp = "blood_pressure"
wt = "weight"
"#;

    #[test]
    fn a_generic_mapping_translates_fields_kinds_and_units() {
        let m = GenericMapping::from_toml(MAPPING).unwrap();
        let body = r#"{"data":[
            {"uid":"a1","meter":{"serial":"m-1"},"t":1762174800,"type":"bp","sys":130,"dia":80,"u":"mmHg"},
            {"uid":"a2","meter":{"serial":"m-1"},"t":1762174800,"type":"wt","v":"81500","u":"g"},
            {"uid":"a3","meter":{"serial":"m-1"},"t":1762174800,"type":"battery","v":90,"u":"%"}
        ]}"#;
        let t = Vendor::Generic.parse(body, Some(&m)).unwrap();
        assert_eq!(t.readings.len(), 2);
        assert_eq!(t.readings[0].unit, "mm[Hg]");
        assert_eq!(t.readings[1].values.value, Some(81.5));
        assert_eq!(t.readings[1].unit, "kg");
        assert_eq!(t.skipped, vec!["generic battery"]);
        assert!(Vendor::Generic.parse(body, None).is_err());
        let bad = body.replace("\"mmHg\"", "\"inHg\"");
        let e = Vendor::Generic.parse(&bad, Some(&m)).unwrap_err();
        assert!(e.to_string().contains("[0]: field /u"), "{e}");
    }

    #[test]
    fn bad_mappings_are_refused_naming_the_field() {
        for (change, needle) in [
            (MAPPING.replace("\"/uid\"", "\"uid\""), "reading_id"),
            (
                MAPPING
                    .replace("bp = \"blood_pressure\"\n", "")
                    .replace("wt = \"weight\"\n", ""),
                "kinds",
            ),
            (
                MAPPING.replace("wt = \"weight\"", "wt = \"pain_score\""),
                "therapeutic",
            ),
            (MAPPING.replace("systolic = \"/sys\"\n", ""), "systolic"),
            (format!("extra = 1\n{MAPPING}"), "extra"),
        ] {
            let e = GenericMapping::from_toml(&change).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
