//! `rounds demo`: the whole loop on one machine — a server, the example facility, tablets that
//! log a month offline and sync, month close, the EHR package, a summary.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use chrono::Utc;
use rounds_core::replica::{NewInteraction, NewReading};
use rounds_core::sync::net::{SyncOptions, Trust};
use rounds_core::{DataFile, Month, Replica, parse_data_file};

use crate::cli::CliError;
use crate::server::{Limits, ServeOptions};

/// The example facility, built into the binary.
const EXAMPLE: &str = include_str!("../../../examples/sunnyvale.json");

/// The demo's two practices: one per billing practitioner of the example facility, each with
/// its own group NPI and TIN (and so its own EHR).
fn demo_practices() -> Vec<rounds_core::Practice> {
    let practice = |id: &str, name: &str, npi: &str, tin: &str, who: &str| rounds_core::Practice {
        id: id.into(),
        name: name.into(),
        group_npi: Some(npi.into()),
        tin: Some(tin.into()),
        practitioners: vec![who.into()],
        ehr: rounds_core::PracticeEhr {
            code: Some(id.to_uppercase()),
            ..Default::default()
        },
        contacts: Vec::new(),
        confirms_transition_months: false,
        locality: None,
    };
    vec![
        practice(
            "smith-primary-care",
            "Smith Primary Care",
            "1112223338",
            "123456789",
            "dr-smith",
        ),
        practice(
            "garcia-geriatrics",
            "Garcia Geriatrics",
            "1444555662",
            "987654321",
            "np-garcia",
        ),
    ]
}

/// Demo settings.
pub struct DemoOptions {
    pub store: PathBuf,
    pub out: PathBuf,
    pub listen: std::net::SocketAddr,
    pub tablets: usize,
    /// Exit after the summary instead of serving until Ctrl-C.
    pub exit: bool,
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Invalid(e.to_string())
}

fn hex32(s: &str) -> Result<[u8; 32], CliError> {
    let bytes: Vec<u8> = (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    <[u8; 32]>::try_from(bytes).map_err(|_| err("bad certificate fingerprint"))
}

/// Run the demo.
pub async fn run(opts: DemoOptions) -> Result<(), CliError> {
    let example = parse_data_file(EXAMPLE).map_err(err)?;
    let month: Month = "2026-11".parse().map_err(err)?;
    for dir in [&opts.store, &opts.out] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        }
    }
    let serve = ServeOptions {
        store: opts.store.clone().into(),
        listen: opts.listen,
        tls_cert: None,
        tls_key: None,
        insecure_http: false,
        max_frame: 8 << 20,
        dev_token: None,
        limits: Limits::default(),
        rules: rounds_core::billing::RuleSet::default(),
        close_check: std::time::Duration::from_secs(3600),
        notify: None,
        clock: Default::default(),
        alert_tick: std::time::Duration::from_secs(10),
        push: None,
        adt: None,
    };
    let running = crate::http::start(&serve).await.map_err(err)?;
    let shared = running.shared.clone();

    // 1. Onboarding: the facility, its staff and residents (no entries yet).
    let mut roster = example.clone();
    roster.interactions.clear();
    roster.readings.clear();
    let docs = crate::services::import::documents_of(&roster, chrono::Utc::now()).map_err(err)?;
    let practices = demo_practices();
    shared.store.practices.put(&practices).map_err(err)?;
    shared.register_facility(&roster.facility.id);
    shared.merge(&roster.facility.id, docs).await.map_err(err)?;
    println!(
        "imported {} ({} residents of {} practices: {})",
        roster.facility.name,
        roster.patients.len(),
        practices.len(),
        practices
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    // 2. Tablets: each enrolled, each logs its share of the month offline, then syncs.
    let url = format!("wss://{}/sync", running.addr);
    let trust = Trust::Fingerprint(hex32(&running.fingerprint)?);
    let tablets = opts.tablets.max(1);
    let tablet_dirs: Vec<PathBuf> = (0..tablets)
        .map(|i| opts.store.join(format!("tablet-{}", i + 1)))
        .collect();
    for (t, dir) in tablet_dirs.iter().enumerate() {
        let name = format!("demo-tablet-{}", t + 1);
        let token = shared
            .security
            .add_device(&roster.facility.id, &name)
            .map_err(err)?;
        let mut replica = Replica::open_encrypted(dir, &[t as u8 + 1; 32]).map_err(err)?;
        replica.join_facility(&roster.facility.id).map_err(err)?;
        // First contact: get the roster.
        let options = SyncOptions::new(token.clone(), trust.clone());
        rounds_core::sync::net::sync(&mut replica, &url, &options, &mut |_, _| {})
            .await
            .map_err(err)?;
        let now = Utc::now();
        let mine = |k: usize| k % tablets == t;
        let mut logged = 0;
        for (k, i) in example
            .interactions
            .iter()
            .enumerate()
            .filter(|(k, _)| mine(*k))
        {
            let _ = k;
            replica
                .log_interaction(
                    NewInteraction {
                        patient: i.patient.clone(),
                        staff: i.staff.clone(),
                        program: i.program,
                        started_at: i.started_at.with_timezone(&Utc),
                        ended_at: i.ended_at.with_timezone(&Utc),
                        interactive: i.interactive,
                        activity: i.activity.clone(),
                        note: i.note.clone(),
                    },
                    now,
                )
                .map_err(err)?;
            logged += 1;
        }
        for (_, r) in example
            .readings
            .iter()
            .enumerate()
            .filter(|(k, _)| mine(*k))
        {
            replica
                .record_reading(
                    NewReading {
                        patient: r.patient.clone(),
                        kind: r.kind,
                        systolic: r.systolic,
                        diastolic: r.diastolic,
                        value: r.value,
                        unit: r.unit.clone(),
                        measured_at: r.measured_at.with_timezone(&Utc),
                        device: r.device.clone(),
                        source: r.source,
                        program: None,
                    },
                    now,
                )
                .map_err(err)?;
            logged += 1;
        }
        print!("{name}: logged {logged} entries offline; syncing ");
        let _ = std::io::stdout().flush();
        let mut last = 0;
        let report =
            rounds_core::sync::net::sync(&mut replica, &url, &options, &mut |done, total| {
                let step = total.max(1) / 10;
                if done >= last + step.max(1) || done == total {
                    last = done;
                    print!("{done}/{total} ");
                    let _ = std::io::stdout().flush();
                }
            })
            .await
            .map_err(err)?;
        println!("- {} documents confirmed by the server", report.confirmed);
    }

    // 3. Month close and the package.
    let s = shared.clone();
    let facility = roster.facility.id.clone();
    let versions = tokio::task::spawn_blocking(move || s.close_month(&facility, month))
        .await
        .map_err(err)?
        .map_err(err)?;
    std::fs::create_dir_all(&opts.out).map_err(err)?;
    let mut written = 0;
    for format in [
        crate::services::export::Format::Fhir,
        crate::services::export::Format::Hl7,
        crate::services::export::Format::Csv,
        crate::services::export::Format::Pdf,
    ] {
        let files = crate::services::export::export(
            &shared.store,
            &shared.ledger,
            &roster.facility.id,
            month,
            format,
            &rounds_core::ehr::ExportConfig::default(),
            None,
        )
        .map_err(err)?;
        crate::services::export::write(&opts.out, &files).map_err(err)?;
        written += files.len();
    }
    // Each practice's own summary (its patients and lines only).
    for p in &practices {
        let files = crate::services::export::export(
            &shared.store,
            &shared.ledger,
            &roster.facility.id,
            month,
            crate::services::export::Format::Csv,
            &rounds_core::ehr::ExportConfig::default(),
            Some(&p.id),
        )
        .map_err(err)?;
        crate::services::export::write(&opts.out, &files).map_err(err)?;
        written += files.len();
    }
    let fd =
        crate::services::ledger::facility_data(&shared.store, &roster.facility.id).map_err(err)?;
    let data: DataFile = fd.data.clone();
    std::fs::write(
        opts.out.join("data.json"),
        serde_json::to_vec_pretty(&data).map_err(err)?,
    )
    .map_err(err)?;

    // 4. The summary.
    let served = versions
        .iter()
        .filter(|v| !v.encounter.lines.is_empty())
        .count();
    let mut codes: BTreeMap<String, (usize, u32)> = BTreeMap::new();
    let mut exceptions = 0;
    for v in &versions {
        for l in &v.encounter.lines {
            let e = codes.entry(l.code.clone()).or_default();
            e.0 += 1;
            e.1 += l.units;
        }
        exceptions += v.encounter.exceptions.len();
    }
    println!();
    println!("Month {month} closed for {}:", roster.facility.name);
    println!(
        "  patients served (with billable lines): {served} of {}",
        versions.len()
    );
    println!("  billable lines by code:");
    for (code, (lines, units)) in &codes {
        println!(
            "    {code}  {lines} lines, {units} units  {}",
            rounds_core::ehr::code_text(code)
        );
    }
    println!("  exceptions: {exceptions}");
    for v in versions.iter().filter(|v| v.encounter.lines.is_empty()) {
        if let Some(e) = v.encounter.exceptions.first() {
            println!("    {}: {}", v.patient, e.reason);
        }
    }
    let s = shared.clone();
    let rows = tokio::task::spawn_blocking(move || {
        crate::services::practice_summary::rows(&s.store, &s.ledger, &s.rules, month, None)
    })
    .await
    .map_err(err)?
    .map_err(err)?;
    println!("  practices (each billed into its own EHR):");
    for r in &rows {
        println!(
            "    {}: {} patients served, {} billed; {}; estimated ${}",
            r.practice,
            r.patients_served,
            r.patients_billed,
            r.units
                .iter()
                .map(|(c, u)| format!("{c}x{u}"))
                .collect::<Vec<_>>()
                .join(" "),
            rounds_core::billing::summary::dollars(r.total_cents())
        );
    }
    println!(
        "  package: {written} files in {} (fhir/, hl7/, pdf/, summary CSVs, data.json)",
        opts.out.display()
    );
    println!(
        "  the same numbers: rounds bill --data {} --month {month}",
        opts.out.join("data.json").display()
    );
    if opts.exit {
        running.stop().await.map_err(err)?;
        return Ok(());
    }
    println!("serving on https://{} - Ctrl-C to stop", running.addr);
    let _ = tokio::signal::ctrl_c().await;
    running.stop().await.map_err(err)?;
    Ok(())
}
