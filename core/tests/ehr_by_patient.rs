//! A patient's package built from `DataFile::by_patient`'s part is byte for byte the package
//! built from the whole file (the export builds 10,000 packages from parts).

use chrono::TimeZone;
use rounds_core::billing::{RuleSet, bill};
use rounds_core::ehr::{ExportConfig, PatientMonth, fhir, hl7, note};
use rounds_core::{Month, parse_data_file};

#[test]
fn a_patients_part_builds_the_same_package_as_the_whole_file() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/sunnyvale.json"
    ))
    .unwrap();
    let mut data = parse_data_file(&text).unwrap();
    // Void one interaction and one reading, so corrections are part of what is compared.
    for target in [data.interactions[0].id, data.readings[0].id] {
        data.corrections.push(rounds_core::Correction {
            id: uuid::Uuid::now_v7(),
            target,
            kind: rounds_core::CorrectionKind::Void,
            at: data.interactions[0].ended_at,
            by: data.interactions[0].staff.clone(),
            reason: Some("entered twice".into()),
        });
    }
    let month: Month = "2026-11".parse().unwrap();
    let run = bill(&data, month, &RuleSet::default()).unwrap();
    let parts = data.by_patient();
    assert_eq!(parts.len(), data.patients.len());
    let entries: usize = parts
        .values()
        .map(|p| p.interactions.len() + p.readings.len() + p.timers.len())
        .sum();
    assert_eq!(
        entries,
        data.interactions.len() + data.readings.len() + data.timers.len()
    );
    let tz: chrono_tz::Tz = data.facility.timezone.parse().unwrap();
    let now = chrono::Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap();
    let config = ExportConfig::default();
    let mut compared = 0;
    for enc in &run.encounters {
        let patient = data.patients.iter().find(|p| p.id == enc.patient).unwrap();
        let pm = |d| PatientMonth {
            data: d,
            patient,
            month,
            encounter: enc,
            alerts: &[],
            version: 1,
            tz,
            now,
            config: &config,
        };
        let (whole, part) = (pm(&data), pm(&parts[&enc.patient]));
        assert_eq!(fhir::bundle(&whole), fhir::bundle(&part), "{}", enc.patient);
        assert_eq!(hl7::dft_p03(&whole, 0), hl7::dft_p03(&part, 0));
        assert_eq!(hl7::mdm_t02(&whole, 0), hl7::mdm_t02(&part, 0));
        assert_eq!(hl7::oru_r01(&whole, 0), hl7::oru_r01(&part, 0));
        assert_eq!(note::note_lines(&whole), note::note_lines(&part));
        compared += 1;
    }
    assert!(compared >= 5, "{compared}");
    // The example has corrections: each went to the part of the patient whose entry it corrects.
    let corrections: usize = parts.values().map(|p| p.corrections.len()).sum();
    assert_eq!(corrections, 2);
}
