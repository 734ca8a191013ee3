//! FHIR R4 transaction Bundle per patient-month: Conditions, Consents, an Encounter per program,
//! the note (DocumentReference), ChargeItems, Observations, and the CarePlan — every entry a
//! conditional create on a business identifier, so a re-push creates nothing twice.

use serde_json::{Value, json};

use super::{PatientMonth, code_text, note::note_lines};
use crate::billing::summary::program_of_code;
use crate::model::{Program, ReadingKind, ReadingSource};

const CPT: &str = "http://www.ama-assn.org/go/cpt";
const ICD10: &str = "http://hl7.org/fhir/sid/icd-10-cm";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const NPI: &str = "http://hl7.org/fhir/sid/us-npi";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

struct Entries {
    list: Vec<Value>,
    next: u32,
    seed: String,
}

impl Entries {
    /// A deterministic `urn:uuid` per entry of this package.
    fn urn(&mut self) -> String {
        self.next += 1;
        let u = crate::ids::name_uuid(&format!("{}#{}", self.seed, self.next));
        format!("urn:uuid:{u}")
    }

    fn add(
        &mut self,
        resource_type: &str,
        id_system: &str,
        id_value: &str,
        mut resource: Value,
    ) -> String {
        let urn = self.urn();
        resource["resourceType"] = json!(resource_type);
        resource["identifier"] = json!([{ "system": id_system, "value": id_value }]);
        self.list.push(json!({
            "fullUrl": urn,
            "resource": resource,
            "request": {
                "method": "POST",
                "url": resource_type,
                "ifNoneExist": format!("identifier={id_system}|{id_value}"),
            }
        }));
        urn
    }
}

/// The text of a therapeutic (RTM) observation without a LOINC code.
fn therapeutic_text(kind: ReadingKind) -> &'static str {
    match kind {
        ReadingKind::MedicationAdherence => "Medication adherence (RTM), doses",
        ReadingKind::TherapyAdherence => "Therapy adherence (RTM), sessions",
        ReadingKind::TherapyResponse => "Therapy response (RTM), score",
        ReadingKind::RangeOfMotion => "Range of motion (RTM), degrees",
        _ => kind.as_str(),
    }
}

fn program_text(p: Program) -> &'static str {
    match p {
        Program::Ccm => "Chronic care management",
        Program::Pcm => "Principal care management",
        Program::Rpm => "Remote physiologic monitoring",
        Program::Apcm => "Advanced primary care management",
        Program::Bhi => "Behavioral health integration",
        Program::Rtm => "Remote therapeutic monitoring",
    }
}

/// The transaction Bundle for one patient-month.
pub fn bundle(pm: &PatientMonth<'_>) -> Value {
    let cfg = pm.config;
    let sid = |s: &str| format!("{}/{s}", cfg.id_base.trim_end_matches('/'));
    let key = pm.key();
    let mrn = pm.mrn();
    let patient_ref =
        json!({ "reference": format!("Patient?identifier={}|{}", cfg.mrn_system, mrn) });
    let npi = pm.practitioner_npi();
    let practitioner_ref = json!({ "reference": format!("Practitioner?identifier={NPI}|{npi}") });
    let pprf = json!({ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PPRF" }] });
    let (start, end) = pm.period();
    let service_provider = pm.practice().and_then(|p| {
        p.group_npi
            .as_ref()
            .map(|npi| json!({ "identifier": { "system": NPI, "value": npi }, "display": p.name }))
    });
    let mut e = Entries {
        list: Vec::new(),
        next: 0,
        seed: format!("{key}-v{}", pm.version),
    };

    // Conditions (the diagnoses on the lines).
    let mut condition_urns = Vec::new();
    for c in pm.patient.conditions.iter().filter(|c| c.chronic) {
        let urn = e.add(
            "Condition",
            &sid("condition"),
            &format!("{}-{}-{}", cfg.practice, mrn, c.icd10),
            json!({
                "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
                "verificationStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed" }] },
                "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item" }] }],
                "code": { "coding": [{ "system": ICD10, "code": c.icd10 }] },
                "subject": patient_ref,
            }),
        );
        condition_urns.push(urn);
    }

    // Consents for the programs billed.
    for program in pm.programs() {
        if let Some(c) = pm
            .patient
            .consents
            .iter()
            .filter(|c| c.program == program)
            .max_by_key(|c| c.given_on)
        {
            let mut provision =
                json!({ "type": "permit", "period": { "start": c.given_on.to_string() } });
            if let Some(r) = c.revoked_on {
                provision["period"]["end"] = json!(r.to_string());
            }
            e.add(
                "Consent",
                &sid("consent"),
                &format!("{}-{}-{}-{}", cfg.practice, mrn, program.as_str().to_uppercase(), c.given_on),
                json!({
                    "status": if c.revoked_on.is_some() { "inactive" } else { "active" },
                    "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "treatment" }] },
                    "category": [{ "coding": [{ "system": LOINC, "code": "59284-0" }] }],
                    "patient": patient_ref,
                    "dateTime": c.given_on.to_string(),
                    "policy": [{ "uri": sid(&format!("consent-policy/{}", program.as_str())) }],
                    "provision": provision,
                }),
            );
        }
    }

    // The note.
    let text = note_lines(pm).join("\n");
    let doc_key = format!("{key}-NOTE-v{}", pm.version);

    for program in pm.programs() {
        let lines: Vec<_> = pm
            .encounter
            .lines
            .iter()
            .filter(|l| program_of_code(&l.code) == Some(program))
            .collect();
        let main = lines
            .iter()
            .find(|l| {
                [
                    "99490", "99487", "99491", "99426", "99424", "99457", "99470", "G0556",
                    "G0557", "G0558", "99484", "G0570", "98980", "98979", "98976", "98977",
                    "98978", "98984", "98985", "98986",
                ]
                .contains(&l.code.as_str())
            })
            .or(lines.first())
            .map(|l| l.code.clone())
            .unwrap_or_default();
        let minutes = pm.encounter.minutes.of(program);
        let enc_key = format!("{key}-{}", program.as_str().to_uppercase());
        let mut resource = json!({
            "status": "finished",
            "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": cfg.encounter_class },
            "type": [{ "coding": [{ "system": CPT, "code": main }], "text": code_text(&main) }],
            "serviceType": { "text": program_text(program) },
            "subject": patient_ref,
            "participant": [{ "type": [pprf], "individual": practitioner_ref }],
            "period": { "start": start.to_rfc3339(), "end": end.to_rfc3339() },
            "length": { "value": minutes, "unit": "min", "system": UCUM, "code": "min" },
            "diagnosis": condition_urns.iter().enumerate().map(|(i, u)| json!({ "condition": { "reference": u }, "rank": i + 1 })).collect::<Vec<_>>(),
        });
        // The billing provider: the practice's group NPI, as a logical reference (nothing to
        // resolve on the EHR's side).
        if let Some(org) = &service_provider {
            resource["serviceProvider"] = org.clone();
        }
        let encounter = e.add("Encounter", &sid("monthly-encounter"), &enc_key, resource);
        let note = e.add(
            "DocumentReference",
            &sid("document"),
            &format!("{doc_key}-{}", program.as_str().to_uppercase()),
            json!({
                "status": "current",
                "docStatus": "final",
                "type": { "coding": [{ "system": LOINC, "code": "11506-3", "display": "Progress note" }] },
                "category": [{ "coding": [{ "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category", "code": "clinical-note" }] }],
                "subject": patient_ref,
                "date": pm.local(pm.now).to_rfc3339(),
                "author": [practitioner_ref],
                "content": [{ "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": b64(text.as_bytes()),
                    "title": format!("{} monthly note {}", program.as_str().to_uppercase(), pm.month),
                    "creation": pm.local(pm.now).to_rfc3339(),
                } }],
                "context": { "encounter": [{ "reference": encounter }], "period": { "start": start.to_rfc3339(), "end": end.to_rfc3339() } },
            }),
        );
        for l in &lines {
            let mut charge_key = format!("{key}-{}", l.code);
            if ["99454", "99445"].contains(&l.code.as_str()) {
                charge_key.push_str(&format!("-{}", l.date_of_service.format("%Y%m%d")));
            }
            e.add(
                "ChargeItem",
                &sid("charge"),
                &charge_key,
                json!({
                    "status": "billable",
                    "code": { "coding": [{ "system": CPT, "code": l.code, "display": code_text(&l.code) }] },
                    "subject": patient_ref,
                    "context": { "reference": encounter },
                    "occurrenceDateTime": l.date_of_service.to_string(),
                    "performer": [{ "function": pprf, "actor": { "reference": format!("Practitioner?identifier={NPI}|{}", l.rendering_npi) } }],
                    "quantity": { "value": l.units },
                    "reason": l.diagnoses.iter().map(|d| json!({ "coding": [{ "system": ICD10, "code": d }] })).collect::<Vec<_>>(),
                    "enteredDate": pm.local(pm.now).to_rfc3339(),
                    "supportingInformation": [{ "reference": note }],
                }),
            );
        }
    }

    // Vitals of the month.
    let superseded = pm.data.superseded_ids();
    for r in pm
        .data
        .readings
        .iter()
        .filter(|r| r.patient == pm.patient.id && !superseded.contains(&r.id))
    {
        if !pm
            .month
            .contains(r.measured_at.with_timezone(&pm.tz).date_naive())
        {
            continue;
        }
        let mut obs = json!({
            "status": "final",
            "subject": patient_ref,
            "effectiveDateTime": r.measured_at.to_rfc3339(),
            "method": { "text": match r.source { ReadingSource::Device => "remote device, automatic upload", ReadingSource::Manual => "entered by staff", ReadingSource::PatientReported => "reported by the patient in the RTM device or app" } },
        });
        let vital = json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }]);
        let quantity =
            |v: f64, unit: &str| json!({ "value": v, "unit": unit, "system": UCUM, "code": unit });
        let (codes, category): (Vec<(&str, &str)>, Value) = match r.kind {
            ReadingKind::BloodPressure => {
                (vec![("85354-9", "Blood pressure panel")], vital.clone())
            }
            ReadingKind::HeartRate => (vec![("8867-4", "Heart rate")], vital.clone()),
            ReadingKind::RespiratoryRate => (vec![("9279-1", "Respiratory rate")], vital.clone()),
            ReadingKind::Temperature => (vec![("8310-5", "Body temperature")], vital.clone()),
            ReadingKind::Weight => (vec![("29463-7", "Body weight")], vital.clone()),
            ReadingKind::Spo2 => (
                vec![
                    ("2708-6", "Oxygen saturation in Arterial blood"),
                    ("59408-5", "Oxygen saturation by Pulse oximetry"),
                ],
                vital.clone(),
            ),
            ReadingKind::Glucose => (
                vec![("2339-0", "Glucose [Mass/volume] in Blood")],
                json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory" }] }]),
            ),
            // Therapeutic (RTM) kinds: pain has a LOINC code; the others go as text.
            ReadingKind::PainScore => (
                vec![(
                    "72514-3",
                    "Pain severity - 0-10 verbal numeric rating [Score] - Reported",
                )],
                json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey" }] }]),
            ),
            ReadingKind::MedicationAdherence
            | ReadingKind::TherapyAdherence
            | ReadingKind::TherapyResponse
            | ReadingKind::RangeOfMotion => (
                Vec::new(),
                json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "therapy" }] }]),
            ),
        };
        obs["category"] = category;
        obs["code"] = json!({ "coding": codes.iter().map(|(c, d)| json!({ "system": LOINC, "code": c, "display": d })).collect::<Vec<_>>() });
        if codes.is_empty() {
            obs["code"] = json!({ "text": therapeutic_text(r.kind) });
        }
        if r.kind == ReadingKind::BloodPressure {
            obs["component"] = json!([
                { "code": { "coding": [{ "system": LOINC, "code": "8480-6", "display": "Systolic blood pressure" }] }, "valueQuantity": quantity(r.systolic.unwrap_or_default(), &r.unit) },
                { "code": { "coding": [{ "system": LOINC, "code": "8462-4", "display": "Diastolic blood pressure" }] }, "valueQuantity": quantity(r.diastolic.unwrap_or_default(), &r.unit) },
            ]);
        } else {
            obs["valueQuantity"] = quantity(r.value.unwrap_or_default(), &r.unit);
        }
        if let Some(d) = &r.device {
            obs["device"] = json!({ "display": d });
        }
        e.add("Observation", &sid("reading"), &r.id.to_string(), obs);
    }

    // The care plan.
    if let Some(plan) = &pm.patient.care_plan {
        let narrative = plan
            .text
            .clone()
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| "Care plan on file.".into());
        let escaped = narrative
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let mut cp = json!({
            "text": { "status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{escaped}</div>") },
            "status": "active",
            "intent": "plan",
            "category": [{ "coding": [{ "system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category", "code": "assess-plan" }] }],
            "subject": patient_ref,
            "author": practitioner_ref,
            "addresses": condition_urns.iter().map(|u| json!({ "reference": u })).collect::<Vec<_>>(),
        });
        if let Some(d) = plan.established_on {
            cp["period"] = json!({ "start": d.to_string() });
        }
        e.add(
            "CarePlan",
            &sid("careplan"),
            &format!("{}-{}", cfg.practice, mrn),
            cp,
        );
    }

    json!({ "resourceType": "Bundle", "type": "transaction", "entry": e.list })
}
