//! Residents from the facility's own systems: a census CSV (the export every facility EHR has) or
//! FHIR R4 `Patient` resources, turned into [`Patient`]s of a facility's data file.
//!
//! Both are hostile input: every row or resource is checked, and each problem names the row (as
//! a spreadsheet shows it: the header is row 1) or the resource, and the field. Nothing is
//! returned when any row is bad, so an import either takes the whole roster or nothing.
//!
//! Census columns (matched by name, case, spaces and `_` ignored; other columns are ignored):
//!
//! | field | column names | required |
//! |---|---|---|
//! | id | `resident_id`, `resident id`, `resident number`, `patient id`, `id` | yes |
//! | name | `name`, or `first_name` and `last_name` | yes |
//! | birth date | `birth_date`, `dob`, `date of birth` (`YYYY-MM-DD` or `MM/DD/YYYY`) | no |
//! | MRN | `mrn`, `medical record number` | no |
//! | billing practitioner | `practitioner` (an id of the file), or `attending_npi`, `attending physician npi`, `physician npi` | yes |
//! | chronic conditions | `chronic_conditions`, `chronic diagnoses` (ICD-10-CM, `;` or `\|` between) | no |
//! | other conditions | `other_conditions`, `diagnoses` | no |
//!
//! FHIR: a `Bundle` of `Patient` resources (other resources are ignored) or one `Patient`:
//! `id`; the first `name` (`given` then `family`, or `text`); `birthDate`; the `identifier`
//! whose type is `MR` (the MRN); the billing practitioner from `generalPractitioner[0]` — an
//! NPI `identifier` (system `http://hl7.org/fhir/sid/us-npi`) or a `Practitioner/<id>` reference
//! naming a practitioner of the file.

use chrono::NaiveDate;
use serde_json::Value;

use crate::model::{CarePlan, Condition, DataFile, Patient};
use crate::problem::{Problem, Problems};

/// At most this many residents in one roster.
pub const MAX_RESIDENTS: usize = 20_000;

/// Where a roster comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RosterFormat {
    CensusCsv,
    Fhir,
}

impl RosterFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            RosterFormat::CensusCsv => "census",
            RosterFormat::Fhir => "fhir",
        }
    }
}

/// The residents of `text`, for a facility whose practitioners are `base`'s.
pub fn residents(
    format: RosterFormat,
    text: &str,
    base: &DataFile,
) -> Result<Vec<Patient>, Problems> {
    match format {
        RosterFormat::CensusCsv => from_census(text, base),
        RosterFormat::Fhir => from_fhir(text, base),
    }
}

fn norm(h: &str) -> String {
    h.chars()
        .filter(|c| !c.is_whitespace() && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// A resident with only the facts every source has: id, name, billing practitioner.
pub fn blank_patient(id: String, name: String, practitioner: String) -> Patient {
    Patient {
        id,
        name,
        birth_date: None,
        mrn: None,
        billing_practitioner: practitioner,
        practitioners_of_record: Vec::new(),
        conditions: Vec::new(),
        consents: Vec::new(),
        initiating_visit_on: None,
        care_plan: None::<CarePlan>,
        complex_ccm_months: Vec::new(),
        ccm_lane: Default::default(),
        pcm_condition: None,
        rpm: None,
        stays: Vec::new(),
        died_on: None,
        rtm: None,
        qmb_periods: Vec::new(),
        external_services: Vec::new(),
        program_choice: Default::default(),
        discharged_on: None,
        absences: Vec::new(),
        merged_into: None,
    }
}

fn date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .or_else(|_| NaiveDate::parse_from_str(s, "%m/%d/%Y"))
        .ok()
}

fn codes(s: &str) -> Vec<String> {
    s.split([';', '|', ','])
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// The practitioner id for an NPI of the file.
fn by_npi<'a>(base: &'a DataFile, npi: &str) -> Option<&'a str> {
    base.practitioners
        .iter()
        .find(|p| p.npi == npi.trim())
        .map(|p| p.id.as_str())
}

fn from_census(text: &str, base: &DataFile) -> Result<Vec<Patient>, Problems> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = match rdr.headers() {
        Ok(h) => h.iter().map(norm).collect(),
        Err(e) => {
            return Err(Problems(vec![Problem::new(
                "census row 1",
                "",
                format!("not a CSV header: {e}"),
            )]));
        }
    };
    let col = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| headers.iter().position(|h| *h == norm(n)))
    };
    let id_col = col(&["resident_id", "resident number", "patient id", "id"]);
    let name_col = col(&["name"]);
    let (first_col, last_col) = (col(&["first_name"]), col(&["last_name"]));
    let dob_col = col(&["birth_date", "dob", "date of birth"]);
    let mrn_col = col(&["mrn", "medical record number"]);
    let practitioner_col = col(&["practitioner"]);
    let npi_col = col(&["attending_npi", "attending physician npi", "physician npi"]);
    let chronic_col = col(&["chronic_conditions", "chronic diagnoses"]);
    let other_col = col(&["other_conditions", "diagnoses"]);
    let mut header_problems = Vec::new();
    if id_col.is_none() {
        header_problems.push(Problem::new(
            "census row 1",
            "resident_id",
            "no resident id column (resident_id, resident number, patient id or id)",
        ));
    }
    if name_col.is_none() && (first_col.is_none() || last_col.is_none()) {
        header_problems.push(Problem::new(
            "census row 1",
            "name",
            "no name column (name, or first_name and last_name)",
        ));
    }
    if practitioner_col.is_none() && npi_col.is_none() {
        header_problems.push(Problem::new(
            "census row 1",
            "practitioner",
            "no practitioner column (practitioner, or attending_npi)",
        ));
    }
    if !header_problems.is_empty() {
        return Err(Problems(header_problems));
    }
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let entry = format!("census row {}", i + 2);
        if out.len() >= MAX_RESIDENTS {
            problems.push(Problem::new(
                entry,
                "",
                format!("more than {MAX_RESIDENTS} residents in one census"),
            ));
            break;
        }
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                problems.push(Problem::new(entry, "", format!("not a CSV row: {e}")));
                continue;
            }
        };
        let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).unwrap_or("").trim().to_string();
        let before = problems.len();
        let id = get(id_col);
        if id.is_empty() {
            problems.push(Problem::new(&entry, "resident_id", "empty"));
        }
        let name = match name_col {
            Some(_) => get(name_col),
            None => format!("{} {}", get(first_col), get(last_col))
                .trim()
                .to_string(),
        };
        if name.is_empty() {
            problems.push(Problem::new(&entry, "name", "empty"));
        }
        let practitioner = match (get(practitioner_col), get(npi_col)) {
            (p, _) if !p.is_empty() => {
                if base.practitioners.iter().any(|x| x.id == p) {
                    Some(p)
                } else {
                    problems.push(Problem::new(
                        &entry,
                        "practitioner",
                        format!("{p:?} is not a practitioner of the facility's file"),
                    ));
                    None
                }
            }
            (_, npi) if !npi.is_empty() => match by_npi(base, &npi) {
                Some(p) => Some(p.to_string()),
                None => {
                    problems.push(Problem::new(
                        &entry,
                        "attending_npi",
                        format!("NPI {npi} is not one of the facility's practitioners"),
                    ));
                    None
                }
            },
            _ => {
                problems.push(Problem::new(&entry, "practitioner", "empty"));
                None
            }
        };
        let dob = get(dob_col);
        let birth_date = if dob.is_empty() {
            None
        } else {
            let d = date(&dob);
            if d.is_none() {
                problems.push(Problem::new(
                    &entry,
                    "birth_date",
                    format!("{dob:?} is not a date (YYYY-MM-DD or MM/DD/YYYY)"),
                ));
            }
            d
        };
        if problems.len() > before {
            continue;
        }
        let mut p = blank_patient(id, name, practitioner.unwrap_or_default());
        p.birth_date = birth_date;
        let mrn = get(mrn_col);
        p.mrn = (!mrn.is_empty()).then_some(mrn);
        for (c, chronic) in [(chronic_col, true), (other_col, false)] {
            for icd10 in codes(&get(c)) {
                p.conditions.push(Condition {
                    icd10,
                    chronic,
                    behavioral: None,
                });
            }
        }
        out.push(p);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Problems(problems))
    }
}

fn from_fhir(text: &str, base: &DataFile) -> Result<Vec<Patient>, Problems> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Problems(vec![Problem::new("fhir", "", format!("not JSON: {e}"))]))?;
    let resources: Vec<(String, &Value)> = match v.get("resourceType").and_then(Value::as_str) {
        Some("Patient") => vec![("Patient".to_string(), &v)],
        Some("Bundle") => v
            .get("entry")
            .and_then(Value::as_array)
            .map(|entries| {
                entries
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| {
                        let r = e.get("resource")?;
                        (r.get("resourceType")? == "Patient").then(|| (format!("entry[{i}]"), r))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        other => {
            return Err(Problems(vec![Problem::new(
                "fhir",
                "resourceType",
                format!("{other:?}: expected a Bundle of Patient resources or a Patient"),
            )]));
        }
    };
    if resources.is_empty() {
        return Err(Problems(vec![Problem::new(
            "fhir",
            "entry",
            "no Patient resource",
        )]));
    }
    if resources.len() > MAX_RESIDENTS {
        return Err(Problems(vec![Problem::new(
            "fhir",
            "entry",
            format!("more than {MAX_RESIDENTS} Patient resources"),
        )]));
    }
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (at, r) in resources {
        let id = r.get("id").and_then(Value::as_str).unwrap_or("").trim();
        let entry = if id.is_empty() {
            format!("Patient {at}")
        } else {
            format!("Patient {id}")
        };
        let before = problems.len();
        if id.is_empty() {
            problems.push(Problem::new(&entry, "id", "missing"));
        }
        let name = r
            .get("name")
            .and_then(Value::as_array)
            .and_then(|n| n.first())
            .map(|n| {
                let given: Vec<&str> = n
                    .get("given")
                    .and_then(Value::as_array)
                    .map(|g| g.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let family = n.get("family").and_then(Value::as_str).unwrap_or("");
                let joined = format!("{} {family}", given.join(" ")).trim().to_string();
                if joined.is_empty() {
                    n.get("text")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                } else {
                    joined
                }
            })
            .unwrap_or_default();
        if name.is_empty() {
            problems.push(Problem::new(&entry, "name", "missing"));
        }
        let birth_date = match r.get("birthDate").and_then(Value::as_str) {
            None => None,
            Some(s) => {
                let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
                if d.is_none() {
                    problems.push(Problem::new(
                        &entry,
                        "birthDate",
                        format!("{s:?} is not a full date (YYYY-MM-DD)"),
                    ));
                }
                d
            }
        };
        let mrn = r
            .get("identifier")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|i| {
                i.pointer("/type/coding")
                    .and_then(Value::as_array)
                    .is_some_and(|c| c.iter().any(|c| c.get("code") == Some(&Value::from("MR"))))
            })
            .and_then(|i| i.get("value").and_then(Value::as_str))
            .map(str::to_string);
        let gp = r
            .get("generalPractitioner")
            .and_then(Value::as_array)
            .and_then(|g| g.first());
        let practitioner = gp.and_then(|g| {
            if let Some(npi) = g
                .get("identifier")
                .filter(|i| {
                    i.get("system").and_then(Value::as_str)
                        == Some("http://hl7.org/fhir/sid/us-npi")
                })
                .and_then(|i| i.get("value").and_then(Value::as_str))
            {
                return by_npi(base, npi).map(str::to_string);
            }
            let reference = g.get("reference").and_then(Value::as_str)?;
            let pid = reference.strip_prefix("Practitioner/")?;
            base.practitioners
                .iter()
                .any(|p| p.id == pid)
                .then(|| pid.to_string())
        });
        if practitioner.is_none() {
            problems.push(Problem::new(
                &entry,
                "generalPractitioner",
                "missing, or not a practitioner of the facility's file (an NPI identifier or a Practitioner/<id> reference)",
            ));
        }
        if problems.len() > before {
            continue;
        }
        let mut p = blank_patient(id.to_string(), name, practitioner.unwrap_or_default());
        p.birth_date = birth_date;
        p.mrn = mrn;
        out.push(p);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(Problems(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Facility, Practitioner};

    fn base() -> DataFile {
        let mut d = DataFile::new(Facility {
            id: "f".into(),
            name: "F".into(),
            timezone: "America/New_York".into(),
            place_of_service: "32".into(),
        });
        d.practitioners.push(Practitioner {
            id: "dr-smith".into(),
            name: "Dr".into(),
            npi: "1234567893".into(),
            apcm_attested_on: None,
        });
        d
    }

    #[test]
    fn a_census_export_with_its_own_column_names() {
        let csv = "Resident Number,Last Name,First Name,DOB,Room,Attending Physician NPI,Chronic Diagnoses\n\
                   r-100,Doe,Jane,02/15/1940,12B,1234567893,I10; E11.9\n\
                   r-101,Roe,Rick,1938-07-01,14,1234567893,\n";
        let p = residents(RosterFormat::CensusCsv, csv, &base()).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].name, "Jane Doe");
        assert_eq!(p[0].birth_date, NaiveDate::from_ymd_opt(1940, 2, 15));
        assert_eq!(p[0].billing_practitioner, "dr-smith");
        assert_eq!(p[0].conditions.len(), 2);
        assert!(p[0].conditions.iter().all(|c| c.chronic));
    }

    #[test]
    fn bad_census_rows_are_named_and_nothing_is_returned() {
        let csv = "resident_id,name,dob,practitioner\n\
                   r-1,Jane Doe,1940-02-15,dr-smith\n\
                   ,No Id,1940-02-15,dr-smith\n\
                   r-3,Bad Date,31/31/1940,dr-smith\n\
                   r-4,Nobody's,1940-01-01,dr-who\n";
        let e = residents(RosterFormat::CensusCsv, csv, &base()).unwrap_err();
        let text = e.to_string();
        for needle in [
            "census row 3: field `resident_id`",
            "census row 4: field `birth_date`",
            "census row 5: field `practitioner`",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        let e = residents(RosterFormat::CensusCsv, "room,bed\n1,2\n", &base()).unwrap_err();
        assert!(e.to_string().contains("resident_id"), "{e}");
    }

    #[test]
    fn fhir_patients_from_a_bundle() {
        let bundle = r#"{"resourceType":"Bundle","type":"searchset","entry":[
          {"resource":{"resourceType":"Patient","id":"pcc-77",
            "identifier":[{"type":{"coding":[{"code":"MR"}]},"value":"556677"}],
            "name":[{"family":"Doe","given":["Jane","Q"]}],"birthDate":"1940-02-15",
            "generalPractitioner":[{"identifier":{"system":"http://hl7.org/fhir/sid/us-npi","value":"1234567893"}}]}},
          {"resource":{"resourceType":"Encounter","id":"e1"}},
          {"resource":{"resourceType":"Patient","id":"pcc-78","name":[{"text":"Rick Roe"}],
            "generalPractitioner":[{"reference":"Practitioner/dr-smith"}]}}
        ]}"#;
        let p = residents(RosterFormat::Fhir, bundle, &base()).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].name.as_str(), p[0].mrn.as_deref()),
            ("Jane Q Doe", Some("556677"))
        );
        assert_eq!(p[1].billing_practitioner, "dr-smith");
        let bad = bundle
            .replace("1940-02-15", "1940")
            .replace("Practitioner/dr-smith", "Practitioner/x");
        let e = residents(RosterFormat::Fhir, &bad, &base())
            .unwrap_err()
            .to_string();
        assert!(e.contains("Patient pcc-77: field `birthDate`"), "{e}");
        assert!(
            e.contains("Patient pcc-78: field `generalPractitioner`"),
            "{e}"
        );
        assert!(
            residents(
                RosterFormat::Fhir,
                r#"{"resourceType":"Observation"}"#,
                &base()
            )
            .is_err()
        );
    }
}
