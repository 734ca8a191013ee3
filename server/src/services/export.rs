//! `rounds export`: the monthly package of a closed month, from the ledger's latest versions.

use chrono::Utc;
use rounds_core::Month;
use rounds_core::billing::summary;
use rounds_core::ehr::{ExportConfig, fhir, hl7, note};
use serde::{Deserialize, Serialize};

use crate::services::ledger::{Ledger, LedgerError, closed_month};
use crate::sync::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Fhir,
    Hl7,
    Csv,
    Pdf,
}

/// One file of the package, relative to the output directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportFile {
    pub name: String,
    #[serde(with = "b64")]
    pub bytes: Vec<u8>,
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// Build the package for a closed month: the whole facility's, or with `practice` only that
/// practice's patients and lines, with its EHR identifiers.
pub fn export(
    store: &Store,
    ledger: &Ledger,
    facility: &str,
    month: Month,
    format: Format,
    config: &ExportConfig,
    practice: Option<&str>,
) -> Result<Vec<ExportFile>, LedgerError> {
    let closed = closed_month(store, ledger, facility, month)?;
    let (versions, config) = match practice {
        None => (closed.versions.clone(), config.clone()),
        Some(p) => {
            let Some(known) = closed.practice(p) else {
                return Err(LedgerError::Store(format!(
                    "practice {p:?} is not a practice of facility {facility}"
                )));
            };
            (closed.versions_for(p), config.for_practice(&known))
        }
    };
    let (fd, versions, config) = (&closed.data, &versions, &config);
    let now = Utc::now();
    let mut files = Vec::new();
    if format == Format::Csv {
        let run = crate::services::ledger::billing_run(month, versions);
        let mut buf = Vec::new();
        summary::write_csv(&fd.data, &run, &mut buf)
            .map_err(|e| LedgerError::Store(e.to_string()))?;
        files.push(ExportFile {
            name: match practice {
                Some(p) => format!("summary-{p}-{facility}-{month}.csv"),
                None => format!("summary-{facility}-{month}.csv"),
            },
            bytes: buf,
        });
        return Ok(files);
    }
    // One patient's files at a time on every core (the packages are independent).
    let pms = closed.patient_months(versions, month, now, config);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk = pms.len().div_ceil(workers).max(1);
    let built: Option<Vec<Vec<ExportFile>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = pms
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut files = Vec::new();
                    for pm in part {
                        package_files(pm, facility, month, format, &mut files);
                    }
                    files
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().ok()).collect()
    });
    let built = built
        .ok_or_else(|| LedgerError::Store("building a package failed; nothing written".into()))?;
    files.extend(built.into_iter().flatten());
    Ok(files)
}

/// The files of one patient's package in `format` (FHIR, HL7 or PDF).
fn package_files(
    pm: &rounds_core::ehr::PatientMonth<'_>,
    facility: &str,
    month: Month,
    format: Format,
    files: &mut Vec<ExportFile>,
) {
    let v = pm.encounter;
    let patient = pm.patient;
    if rounds_core::ids::check_id("patient", &patient.id).is_err() {
        // Stored before ids were restricted: never becomes a file name.
        tracing::warn!(
            facility,
            "skipping a patient whose stored id is not a valid id"
        );
        return;
    }
    let stem = format!("{}-{month}-v{}", patient.id, pm.version);
    match format {
        Format::Fhir => {
            if !v.lines.is_empty() {
                let bundle = fhir::bundle(pm);
                files.push(ExportFile {
                    name: format!("fhir/{stem}.json"),
                    bytes: serde_json::to_vec_pretty(&bundle).unwrap_or_default(),
                });
            }
        }
        Format::Hl7 => {
            if let Some(m) = hl7::dft_p03(pm, 0) {
                files.push(ExportFile {
                    name: format!("hl7/{stem}-DFT_P03.hl7"),
                    bytes: m.into_bytes(),
                });
                files.push(ExportFile {
                    name: format!("hl7/{stem}-MDM_T02.hl7"),
                    bytes: hl7::mdm_t02(pm, 0).into_bytes(),
                });
            }
            if let Some(m) = hl7::oru_r01(pm, 0) {
                files.push(ExportFile {
                    name: format!("hl7/{stem}-ORU_R01.hl7"),
                    bytes: m.into_bytes(),
                });
            }
        }
        Format::Pdf => {
            let title = format!(
                "{} - {} - care management note",
                patient.name,
                month.first_day().format("%B %Y")
            );
            files.push(ExportFile {
                name: format!("pdf/{stem}.pdf"),
                bytes: crate::services::pdf::render(&title, &note::note_lines(pm)),
            });
        }
        Format::Csv => {}
    }
}

/// Write files under `dir`. Every name must be a plain relative path (no root, no `..`, no
/// empty or dot-leading component, no control characters), whatever ids the store holds, so
/// nothing is ever written outside `dir`.
pub fn write(dir: &std::path::Path, files: &[ExportFile]) -> std::io::Result<()> {
    let mut parents = std::collections::BTreeSet::new();
    for f in files {
        if !plain_relative(&f.name) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "refusing to write {:?}: not a plain relative file name",
                    f.name.chars().take(64).collect::<String>()
                ),
            ));
        }
        if let Some(parent) = dir.join(&f.name).parent() {
            parents.insert(parent.to_path_buf());
        }
    }
    for p in parents {
        std::fs::create_dir_all(p)?;
    }
    // One writer: files of one directory created from several threads only contend for the
    // directory's lock (measured: more system time, no faster).
    for f in files {
        std::fs::write(dir.join(&f.name), &f.bytes)?;
    }
    Ok(())
}

/// `a/b.json`-like: components of safe characters, none empty, none starting with `.`.
fn plain_relative(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|c| {
            !c.is_empty()
                && !c.starts_with('.')
                && c.len() <= 200
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_never_writes_outside_its_directory() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        for name in [
            "../x.json",
            "fhir/../../x.json",
            "/etc/x",
            "fhir/.hidden",
            "a\nb",
            "",
            "fhir//x",
        ] {
            let files = [ExportFile {
                name: name.to_string(),
                bytes: b"x".to_vec(),
            }];
            assert!(write(&out, &files).is_err(), "{name:?}");
        }
        assert!(!root.path().join("x.json").exists());
        write(
            &out,
            &[ExportFile {
                name: "fhir/p-001-2026-11.json".into(),
                bytes: b"{}".to_vec(),
            }],
        )
        .unwrap();
        assert!(out.join("fhir/p-001-2026-11.json").exists());
    }
}
