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
//! are not readings: they never make a data day. They are counted in the answer (`skipped`) and
//! the audit record, and otherwise dropped.
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

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use rounds_core::ReadingKind;
use serde_json::Value;

use super::vendor::{IngestError, VendorReading, VendorValues};

/// At most this many measurements in one post.
pub const MAX_BATCH: usize = 500;

/// The vendors with an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Tenovi,
    BodyTrace,
}

impl Vendor {
    /// The vendor of a path segment (`tenovi`, `bodytrace`).
    pub fn from_path(s: &str) -> Option<Vendor> {
        match s {
            "tenovi" => Some(Vendor::Tenovi),
            "bodytrace" => Some(Vendor::BodyTrace),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Tenovi => "tenovi",
            Vendor::BodyTrace => "bodytrace",
        }
    }

    /// The integration key from the request, in the vendor's auth style.
    pub fn key<'a>(
        self,
        authorization: Option<&'a str>,
        x_api_key: Option<&'a str>,
    ) -> Option<String> {
        match self {
            Vendor::Tenovi => authorization
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

    /// Translate a post into readings (and the names of the non-vital metrics it carried).
    pub fn parse(self, body: &str) -> Result<Translated, IngestError> {
        let v: Value = serde_json::from_str(body).map_err(|e| {
            IngestError::Malformed(format!("{} post: not JSON: {e}", self.as_str()))
        })?;
        let items: Vec<&Value> = match &v {
            Value::Array(a) => a.iter().collect(),
            Value::Object(_) => vec![&v],
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
            };
            for m in ms {
                match m {
                    Measurement::Reading(r) => out.readings.push(*r),
                    Measurement::NonVital(name) => out.skipped.push(name),
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
    pub skipped: Vec<String>,
}

enum Measurement {
    Reading(Box<VendorReading>),
    NonVital(String),
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
    let s = match v.get(field) {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        None | Some(Value::Null) => return Err(at.err(field, "missing")),
        Some(_) => return Err(at.err(field, "expected a string or a number")),
    };
    if s.is_empty() {
        return Err(at.err(field, "empty"));
    }
    Ok(s)
}

/// A number, or a string holding one.
fn number(v: &Value, field: &str, at: &Entry) -> Result<Option<f64>, IngestError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| at.err(field, "not a finite number")),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| at.err(field, format!("{s:?} is not a number"))),
        Some(_) => Err(at.err(field, "expected a number")),
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
    let measured_at = DateTime::parse_from_rfc3339(&timestamp)
        .or_else(|_| {
            // Tenovi timestamps are UTC; accept them without an offset too.
            chrono::NaiveDateTime::parse_from_str(&timestamp, "%Y-%m-%dT%H:%M:%S%.f")
                .map(|n| Utc.from_utc_datetime(&n).fixed_offset())
        })
        .map_err(|_| {
            at.err(
                "timestamp",
                format!("{timestamp:?} is not an ISO 8601 time"),
            )
        })?;
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
        other => return Ok(Measurement::NonVital(format!("tenovi {other}"))),
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
        return Ok(vec![Measurement::NonVital("bodytrace status".into())]);
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
        let t = Vendor::Tenovi.parse(body).unwrap();
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
        let t = Vendor::BodyTrace.parse(body).unwrap();
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
            match vendor.parse(body) {
                Err(e) => assert!(e.to_string().contains(needle), "{body}: {e}"),
                Ok(t) => panic!("{body}: accepted {t:?}"),
            }
        }
        let big = format!("[{}]", vec!["{}"; MAX_BATCH + 1].join(","));
        assert!(Vendor::Tenovi.parse(&big).is_err());
    }
}
