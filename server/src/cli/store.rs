//! Commands on a store: `read-model` (check, rebuild), `push` (send, status) and `import`
//! (through a running server, or into a stopped server's store).

use super::*;

pub(super) fn read_model(
    action: ReadModelAction,
    store: crate::sync::store::StoreLocation,
) -> Result<(), CliError> {
    let (st, _writer) = open_alone(&store, "stop the server to use this store")?;
    match action {
        ReadModelAction::Check => {
            let r = st.read_model.check(&st);
            println!(
                "read model: {} entries compared, {} stale (read again on next use), {} wrong",
                r.compared,
                r.stale,
                r.mismatched.len()
            );
            if r.mismatched.is_empty() {
                Ok(())
            } else {
                let ids: Vec<String> = r.mismatched.iter().map(|d| d.url()).collect();
                Err(CliError::Invalid(format!(
                    "read-model entries differ from their documents: {} (run `rounds read-model rebuild`)",
                    ids.join(", ")
                )))
            }
        }
        ReadModelAction::Rebuild => {
            let n = st
                .read_model
                .rebuild(&st)
                .map_err(|e| CliError::Invalid(e.to_string()))?;
            st.flush().map_err(|e| CliError::Invalid(e.to_string()))?;
            println!("read model: {n} documents read again");
            Ok(())
        }
    }
}

pub(super) fn push(
    command: PushCommand,
    store: crate::sync::store::StoreLocation,
    server: String,
) -> Result<(), CliError> {
    match command {
        PushCommand::Send {
            facility,
            month,
            config,
            practice,
            wait,
        } => push_send(store, facility, month, config, practice, wait),
        PushCommand::Retry {
            keys,
            facility,
            month,
        } => push_retry(store, keys, facility, month),
        PushCommand::Status {
            facility,
            month,
            practice,
        } => {
            // On the store, or through the running server's admin API.
            let out = crate::cli::admin_client::run(
                &crate::cli::admin_client::AdminTarget { store, server },
                crate::cli::admin_client::Op::PushStatus {
                    facility,
                    month,
                    practice,
                },
            )?;
            println!("{}", out.trim_end());
            Ok(())
        }
    }
}

/// Requeue failed items (by key, or every failed one of a facility's month).
fn push_retry(
    store: crate::sync::store::StoreLocation,
    keys: Vec<String>,
    facility: Option<String>,
    month: Option<String>,
) -> Result<(), CliError> {
    let (st, _writer) = open_alone(
        &store,
        "stop the server, or retry on the console's Push status page",
    )?;
    let outbox = crate::services::push::Outbox::open(st.db()).map_err(CliError::Invalid)?;
    let mut keys = keys;
    if let Some(f) = &facility {
        keys.extend(
            outbox
                .status(Some(f), month.as_deref(), None)
                .into_iter()
                .filter(|i| i.status == crate::services::push::Status::Failed)
                .map(|i| i.key),
        );
    }
    if keys.is_empty() {
        return Err(CliError::Invalid(
            "nothing to retry: give outbox keys, or --facility F --month M for every failed item"
                .into(),
        ));
    }
    for k in &keys {
        outbox.retry(k).map_err(CliError::Invalid)?;
    }
    println!("{} item(s) queued again", keys.len());
    Ok(())
}

/// Queue a closed month and send it; exits non-zero unless every item of that month (and
/// practice) is acknowledged when `--wait` runs out.
fn push_send(
    store: crate::sync::store::StoreLocation,
    facility: String,
    month: String,
    config: PathBuf,
    practice: Option<String>,
    wait: u64,
) -> Result<(), CliError> {
    let (st, _writer) = open_alone(&store, "stop the server to push from this store")?;
    let outbox = crate::services::push::Outbox::open(st.db()).map_err(CliError::Invalid)?;
    let month = parse_month(&month)?;
    let config = crate::services::push::PushConfig::load(&config).map_err(CliError::Invalid)?;
    let ledger = crate::services::ledger::Ledger::open(st.db())
        .map_err(|e| CliError::Invalid(e.to_string()))?;
    let queued = outbox
        .enqueue(&st, &ledger, &config, &facility, month, practice.as_deref())
        .map_err(|e| CliError::Invalid(e.to_string()))?;
    for p in &queued.charges_by_csv {
        eprintln!(
            "practice {p}: its FHIR profile takes no ChargeItem and it has no [hl7] target: send its charges with the charge CSV (rounds export --format csv)"
        );
    }
    for p in &queued.without_target {
        eprintln!(
            "practice {p}: no push target in push.toml ([practices.{p}]): its packages were not queued"
        );
    }
    // This month's items (of this practice): what the progress and the exit status are about.
    let mine_of =
        |outbox: &crate::services::push::Outbox| -> Vec<crate::services::push::OutboxItem> {
            outbox
                .all()
                .into_iter()
                .filter(|i| i.facility == facility && i.month == month)
                .filter(|i| {
                    practice
                        .as_ref()
                        .is_none_or(|p| i.practice.as_ref().unwrap_or(&i.facility) == p)
                })
                .collect()
        };
    use crate::services::push::Status;
    let tally = |items: &[crate::services::push::OutboxItem]| {
        let n = |s: Status| items.iter().filter(|i| i.status == s).count() as u64;
        (
            n(Status::Acknowledged),
            n(Status::Failed),
            n(Status::Pending),
        )
    };
    let progress = crate::cli::progress::Progress::new("push", Some(mine_of(&outbox).len() as u64));
    runtime()?.block_on(outbox.drain_observed(
        &config,
        std::time::Duration::from_secs(wait),
        &mut |_| {
            let (a, f, p) = tally(&mine_of(&outbox));
            progress.update(
                Some(a + f),
                &format!("acknowledged {a}, failed {f}, pending {p}"),
            );
        },
    ));
    progress.finish("done");
    let mine = mine_of(&outbox);
    let count = |s: Status| mine.iter().filter(|i| i.status == s).count();
    let (ack, failed, pending) = (
        count(Status::Acknowledged),
        count(Status::Failed),
        count(Status::Pending),
    );
    for i in mine.iter().filter(|i| i.status == Status::Failed) {
        println!(
            "  failed {}: {}",
            i.key,
            i.last_error.clone().unwrap_or_default()
        );
    }
    println!(
        "{facility} {month}: queued {} new; acknowledged {ack}, failed {failed}, pending {pending}",
        queued.added
    );
    if failed + pending > 0 {
        return Err(CliError::Invalid(format!(
            "push of {facility} {month} incomplete: {failed} failed, {pending} pending (rounds push status; failed items need a person, pending ones are retried by the next push)"
        )));
    }
    Ok(())
}

/// The store, opened as a server would (no server may be running on it), for an import; keep
/// the sender (the shutdown signal) alive while the import runs.
type Opened = (
    std::sync::Arc<crate::server::Shared>,
    tokio::sync::watch::Sender<bool>,
);

fn open_for_import(store: &crate::sync::store::StoreLocation) -> Result<Opened, CliError> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    crate::server::Shared::open_command(
        store,
        crate::server::Limits::default(),
        RuleSet::default(),
        rx,
    )
    .map(|shared| (shared, tx))
    .map_err(|e| match store.dir() {
        // sled's directory lock: a server holds it.
        Some(_) => CliError::Invalid(format!(
            "{e} (is a server running on this store? then import through it)"
        )),
        None => CliError::Invalid(e.to_string()),
    })
}

pub(super) fn import(
    file: PathBuf,
    store: crate::sync::store::StoreLocation,
    server: Option<String>,
    token: Option<String>,
    fingerprint: Option<String>,
) -> Result<(), CliError> {
    // The whole file is read and checked once, before anything is sent, opened or written.
    let body = read(&file)?;
    let data = parse_data_file(&body).map_err(|p| CliError::Invalid(p.to_string()))?;
    if let Some(url) = server {
        let trust = match fingerprint.as_deref() {
            Some(hex) => rounds_core::sync::net::Trust::Fingerprint(parse_fingerprint(hex)?),
            None => rounds_core::sync::net::Trust::SystemRoots,
        };
        let reply = runtime()?.block_on(post_import(
            &url,
            token.as_deref().unwrap_or_default(),
            trust,
            body,
            "/api/v1/import",
            "application/json",
        ))?;
        println!("{reply}");
        return Ok(());
    }
    let progress = crate::cli::progress::Progress::new("import", None);
    progress.update(
        None,
        &format!(
            "writing {} patients, {} entries",
            data.patients.len(),
            data.interactions.len() + data.readings.len()
        ),
    );
    let done = runtime()?.block_on(async {
        let (shared, _shutdown) = open_for_import(&store)?;
        shared
            .import_parsed(data)
            .await
            .map_err(|e| CliError::Invalid(e.to_string()))
    })?;
    progress.finish("done");
    println!(
        "imported {} ({} documents); facility document {}",
        done.facility,
        done.documents,
        rounds_core::DocumentId::facility(&done.facility).url()
    );
    Ok(())
}

/// `rounds import --facility F FILE`: the residents of a census CSV or a FHIR Patient bundle join
/// a facility already imported.
pub(super) fn import_roster(
    file: PathBuf,
    facility: String,
    store: crate::sync::store::StoreLocation,
    server: Option<String>,
    token: Option<String>,
    fingerprint: Option<String>,
) -> Result<(), CliError> {
    use rounds_core::roster::RosterFormat;
    let body = read(&file)?;
    let format = if file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
    {
        RosterFormat::CensusCsv
    } else {
        RosterFormat::Fhir
    };
    if let Some(url) = server {
        let trust = match fingerprint.as_deref() {
            Some(hex) => rounds_core::sync::net::Trust::Fingerprint(parse_fingerprint(hex)?),
            None => rounds_core::sync::net::Trust::SystemRoots,
        };
        let path = format!("/api/v1/import/{}/{facility}", format.as_str());
        let content_type = match format {
            RosterFormat::CensusCsv => "text/csv",
            RosterFormat::Fhir => "application/fhir+json",
        };
        let reply = runtime()?.block_on(post_import(
            &url,
            token.as_deref().unwrap_or_default(),
            trust,
            body,
            &path,
            content_type,
        ))?;
        println!("{reply}");
        return Ok(());
    }
    let done = runtime()?.block_on(async {
        let (shared, _shutdown) = open_for_import(&store)?;
        shared
            .import_roster(&facility, format, body)
            .await
            .map_err(|e| CliError::Invalid(e.to_string()))
    })?;
    println!(
        "{}",
        serde_json::json!({
            "facility": done.facility,
            "added": done.added,
            "already_on_roster": done.already,
            "documents": done.documents,
        })
    );
    Ok(())
}

/// The store with no server writing to it: sled's directory lock, or on PostgreSQL the writer's
/// lease (held until the returned guard drops), so the command never works beside a server.
fn open_alone(
    store: &crate::sync::store::StoreLocation,
    hint: &str,
) -> Result<
    (
        crate::sync::store::Store,
        Option<crate::sync::store::lease::WriterGuard>,
    ),
    CliError,
> {
    let st = crate::sync::store::Store::open_at(store)
        .map_err(|e| CliError::Invalid(format!("{e} ({hint})")))?;
    let writer = match store.dir() {
        Some(_) => None,
        None => Some(
            crate::sync::store::lease::WriterGuard::acquire(st.meta().clone())
                .map_err(|e| CliError::Invalid(format!("{e} ({hint})")))?,
        ),
    };
    Ok((st, writer))
}
