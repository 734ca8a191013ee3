//! Month close in the running server: on demand, automatically after the grace window, and again
//! when late data reaches a closed month.

use std::sync::Arc;
use std::time::Duration;

use rounds_core::{DocumentId, Month, view};

use crate::server::Shared;
use crate::services::ledger::{EncounterVersion, LedgerError};

impl Shared {
    /// Remember a facility (for automatic close and for routing its documents to its shard).
    pub fn register_facility(&self, facility: &str) {
        if let Err(e) = self.facilities.insert(facility.as_bytes(), &[]) {
            tracing::error!(error = %e, "could not record a facility");
        }
        *self
            .facility_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Every facility imported into this store (read from the store once, then kept).
    pub fn facility_ids(&self) -> Vec<String> {
        // Another server may register facilities in a shared store: read it each time.
        if self.store.is_shared() {
            *self
                .facility_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
        }
        let mut cache = self
            .facility_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cache
            .get_or_insert_with(|| {
                self.facilities
                    .iter()
                    .keys()
                    .flatten()
                    .map(|k| String::from_utf8_lossy(&k).to_string())
                    .collect()
            })
            .clone()
    }

    /// Close a month now (or re-evaluate it); returns the versions written.
    pub fn close_month(
        &self,
        facility: &str,
        month: Month,
    ) -> Result<Vec<EncounterVersion>, LedgerError> {
        let _span = tracing::info_span!("close", %facility, %month).entered();
        let started = std::time::Instant::now();
        // Another server's close of the same month may write a version first: close again
        // from the versions as they are then (a few times; each attempt reads afresh).
        let mut attempt = 0;
        let written = loop {
            attempt += 1;
            match self.ledger.close(&self.store, facility, month, &self.rules) {
                Err(LedgerError::Conflict { patient, version }) if attempt < 4 => {
                    tracing::info!(facility, %month, %patient, version, attempt, "another close wrote first; closing again");
                    std::thread::sleep(Duration::from_millis(50 * attempt));
                }
                other => break other?,
            }
        };
        self.metrics
            .close_seconds
            .observe(started.elapsed().as_secs_f64());
        self.watch_closed(facility, month);
        for v in &written {
            tracing::info!(facility, month = %month, patient = %v.patient, version = v.version, kind = ?v.kind, "encounter version stored");
        }
        Ok(written)
    }

    /// Watch the documents whose changes affect a closed month.
    pub fn watch_closed(&self, facility: &str, month: Month) {
        // Only the roster is needed: read the facility document, not the whole facility.
        let Some(roster) = self.facility_doc(facility) else {
            return;
        };
        let patients = view::roster_patient_ids(&roster);
        let mut recheck = self.recheck.lock().unwrap_or_else(|p| p.into_inner());
        let mut add = |id: DocumentId| {
            recheck
                .entry(id)
                .or_default()
                .insert((facility.to_string(), month));
        };
        add(DocumentId::facility(facility));
        for p in &patients {
            add(DocumentId::patient(facility, p));
            // The month itself, and the one before (entries crossing midnight, RPM periods).
            add(DocumentId::patient_month(facility, p, month));
            add(DocumentId::patient_month(facility, p, month.previous()));
        }
    }

    /// Queue re-evaluation of closed months touched by these (just flushed) documents; the
    /// late-data task batches them (a sync touches many documents at once).
    pub async fn late_data(self: &Shared, docs: Vec<DocumentId>) {
        // On a shared store another server may have closed a month since: watch what the
        // ledger says is closed (read after this server's writes committed).
        if self.store.is_shared() && !docs.is_empty() {
            let closed = self.ledger.closed_months();
            let known: std::collections::BTreeSet<(String, Month)> = {
                let recheck = self.recheck.lock().unwrap_or_else(|p| p.into_inner());
                recheck.values().flatten().cloned().collect()
            };
            for (f, m) in closed {
                if !known.contains(&(f.clone(), m)) {
                    self.watch_closed(&f, m);
                }
            }
        }
        let months: std::collections::BTreeSet<(String, Month)> = {
            let recheck = self.recheck.lock().unwrap_or_else(|p| p.into_inner());
            docs.iter()
                .filter_map(|d| recheck.get(d))
                .flatten()
                .cloned()
                .collect()
        };
        for m in months {
            let _ = self.late_tx.send(m);
        }
    }

    /// The late-data task: waits for a quiet moment, then re-closes each touched month once.
    pub fn start_late_data(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, Month)>,
    ) {
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut due = std::collections::BTreeSet::from([first]);
                while let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(300), rx.recv()).await
                {
                    due.insert(m);
                }
                let shared = self.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    for (facility, month) in due {
                        match shared.close_month(&facility, month) {
                            Ok(v) if !v.is_empty() => tracing::warn!(facility = %facility, month = %month, versions = v.len(), "late data changed a closed month: new encounter versions for billing staff"),
                            Ok(_) => {}
                            Err(e) => tracing::error!(facility = %facility, month = %month, error = %e, "re-evaluating a closed month failed"),
                        }
                    }
                })
                .await;
            }
        });
    }

    /// Months past their grace window that are not closed yet.
    pub fn due_months(&self) -> Vec<(String, Month)> {
        let today = self.alerting.now().date_naive();
        let grace = i64::from(self.rules.grace_days);
        let mut out = Vec::new();
        for facility in self.facility_ids() {
            let months: std::collections::BTreeSet<Month> = self
                .store_months(&facility)
                .into_iter()
                .filter(|m| (today - m.last_day()).num_days() > grace)
                .collect();
            for m in months {
                if !self.ledger.is_closed(&facility, m) {
                    out.push((facility.clone(), m));
                }
            }
        }
        out
    }

    fn facility_doc(&self, facility: &str) -> Option<automerge::Automerge> {
        self.store.load_doc(&DocumentId::facility(facility))
    }

    fn store_months(&self, facility: &str) -> Vec<Month> {
        self.facility_doc(facility)
            .map(|doc| {
                view::roster_months(&doc)
                    .into_iter()
                    .map(|(_, m)| m)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Close due months now and then every `every`.
    pub fn start_auto_close(self: Arc<Self>, every: Duration) {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut shutdown = self.shutdown.clone();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                let Some(round) = self.run_job("auto-close").await else {
                    continue;
                };
                let shared = self.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let _round = round;
                    for (facility, month) in shared.due_months() {
                        match shared.close_month(&facility, month) {
                            Ok(v) => tracing::info!(facility = %facility, month = %month, encounters = v.len(), "month closed after the grace window"),
                            Err(e) => tracing::error!(facility = %facility, month = %month, error = %e, "automatic month close failed"),
                        }
                    }
                })
                .await;
            }
        });
    }
}
