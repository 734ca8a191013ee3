//! Vendor readings in: `Shared::ingest_reading`, the service behind `POST /api/v1/readings`.
//!
//! The key names the integration and so the facility; the device names the patient. The reading
//! is written once under an id derived from the vendor's reading id, with `source: device`, by
//! the server's staging replica (which raises the protocol's alerts), and merged into the hub.
//! Every refusal is audited; refusals a stranger can cause (no key) are aggregated per address.

use chrono::Utc;
use rounds_core::replica::NewReading;
use rounds_core::{DocumentId, Month, ReadingSource, ReplicaError};

use super::Shared;
use crate::services::alerting::Integration;
use crate::services::alerting::vendor::{IngestError, Ingested, VendorReading, reading_uuid};
use crate::services::alerting::vendors::Vendor;
use crate::services::security::AuditRecord;

impl Shared {
    /// Take one vendor reading (`body`, JSON) sent with API key `key` from `client`.
    pub(crate) async fn ingest_reading(
        &self,
        key: Option<&str>,
        client: &str,
        body: &str,
    ) -> Result<Ingested, IngestError> {
        let Some(integration) = key.and_then(|k| self.alerting.integration_of(k)) else {
            self.count_ingest("unauthorized");
            let e = IngestError::Unauthorized;
            let mut a = AuditRecord::new("ingest-rejected");
            a.detail = Some(format!("{e} (from {client})"));
            self.audit_noisy(client, "no valid API key", a);
            return Err(e);
        };
        let result = self.ingest_for(&integration, body).await;
        match &result {
            Ok(done) => self.audit_ingested(&integration, done),
            Err(e) => {
                self.count_ingest("rejected");
                let mut a = AuditRecord::new("ingest-rejected");
                a.device = Some(format!("integration:{}", integration.name));
                a.facility = Some(integration.facility.clone());
                a.detail = Some(e.to_string());
                self.security.record(a);
                tracing::warn!(integration = %integration.name, error = %e, "reading rejected");
            }
        }
        result
    }

    async fn ingest_for(
        &self,
        integration: &Integration,
        body: &str,
    ) -> Result<Ingested, IngestError> {
        let r = VendorReading::parse(body)?;
        let patient = self.prepare(integration, &r)?;
        self.write_vendor_reading(integration, r, patient).await
    }

    /// The checks that need no write: id and time, the device's patient, and the reading's
    /// values and unit (so a batch is refused whole before anything is written).
    fn prepare(&self, integration: &Integration, r: &VendorReading) -> Result<String, IngestError> {
        r.check(self.alerting.now())?;
        let entry = r.entry();
        let facility = &integration.facility;
        let patient = self.patient_of_device(facility, &r.device_id).ok_or_else(|| {
            IngestError::UnknownDevice(format!(
                "{entry}: field device_id: unknown device {:?} (not enrolled for any patient of facility {facility})",
                r.device_id
            ))
        })?;
        let reading = rounds_core::Reading {
            id: reading_uuid(&integration.name, &r.reading_id),
            patient: patient.clone(),
            kind: r.kind,
            systolic: r.values.systolic,
            diastolic: r.values.diastolic,
            value: r.values.value,
            unit: r.unit.clone(),
            measured_at: r.measured_at,
            device: Some(r.device_id.clone()),
            source: ReadingSource::Device,
            program: None,
        };
        let mut problems = Vec::new();
        rounds_core::validate::check_reading(&reading, "", &mut problems);
        if let Some(p) = problems.first() {
            return Err(IngestError::Invalid(format!(
                "{entry}: field {}: {}",
                p.field, p.message
            )));
        }
        Ok(patient)
    }

    async fn write_vendor_reading(
        &self,
        integration: &Integration,
        r: VendorReading,
        patient: String,
    ) -> Result<Ingested, IngestError> {
        let entry = r.entry();
        let now = self.alerting.now();
        let facility = &integration.facility;
        let id = reading_uuid(&integration.name, &r.reading_id);
        let _guard = self.alerting.stage_lock.lock().await;
        // The reading's month in the facility's zone is found by the replica; stage the months
        // around the measured date (the UTC month ± 1 covers every zone).
        let m = Month::of(r.measured_at.with_timezone(&Utc).date_naive());
        let mut docs = Shared::month_set(facility, &patient, m);
        docs.push(DocumentId::patient_month(facility, &patient, m.next()));
        let mut staged = self.stage(facility, &docs).map_err(IngestError::Store)?;
        let new_reading = NewReading {
            patient: patient.clone(),
            kind: r.kind,
            systolic: r.values.systolic,
            diastolic: r.values.diastolic,
            value: r.values.value,
            unit: r.unit.clone(),
            measured_at: r.measured_at.with_timezone(&Utc),
            device: Some(r.device_id.clone()),
            source: ReadingSource::Device,
            program: None,
        };
        let (reading, alerts, new) = staged
            .replica
            .record_reading_with_id(id, new_reading, now)
            .map_err(|e| match e {
                ReplicaError::Invalid(p) => IngestError::Invalid(format!(
                    "{entry} (vendor): {}",
                    p.to_string().replace(&format!("reading {id}"), "")
                )),
                e => IngestError::Store(e.to_string()),
            })?;
        if new {
            self.commit(&staged).await.map_err(IngestError::Store)?;
        }
        let month = Month::of(reading.measured_at.date_naive());
        let views = staged.replica.alerts(&patient, month);
        self.index_alerts(facility, &patient, month, &views);
        Ok(Ingested {
            vendor_reading_id: r.reading_id,
            reading,
            patient,
            alerts,
            new,
        })
    }

    /// Take a device vendor's own webhook post (`POST /api/v1/vendors/<vendor>`): authenticated
    /// in the vendor's style, every measurement translated and checked before any is written.
    pub(crate) async fn ingest_vendor(
        &self,
        vendor: Vendor,
        key: Option<&str>,
        client: &str,
        body: &str,
    ) -> Result<VendorIngested, IngestError> {
        let Some(integration) = key.and_then(|k| self.alerting.integration_of(k)) else {
            self.count_ingest("unauthorized");
            let e = IngestError::Unauthorized;
            let mut a = AuditRecord::new("ingest-rejected");
            a.detail = Some(format!("{} post: {e} (from {client})", vendor.as_str()));
            self.audit_noisy(client, "no valid API key", a);
            return Err(e);
        };
        let result = self.ingest_vendor_for(vendor, &integration, body).await;
        match &result {
            Ok(done) => {
                for r in &done.readings {
                    self.audit_ingested(&integration, r);
                }
                if !done.skipped.is_empty() {
                    let mut a = AuditRecord::new("ingest-non-vital");
                    a.device = Some(format!("integration:{}", integration.name));
                    a.facility = Some(integration.facility.clone());
                    a.detail = Some(format!(
                        "{} post: {} non-vital metric(s), not readings: {}",
                        vendor.as_str(),
                        done.non_vital.len(),
                        done.non_vital.join("; ")
                    ));
                    self.security.record(a);
                }
            }
            Err(e) => {
                self.count_ingest("rejected");
                let mut a = AuditRecord::new("ingest-rejected");
                a.device = Some(format!("integration:{}", integration.name));
                a.facility = Some(integration.facility.clone());
                a.detail = Some(format!("{} post: {e}", vendor.as_str()));
                self.security.record(a);
                tracing::warn!(integration = %integration.name, vendor = vendor.as_str(), error = %e, "vendor post rejected");
            }
        }
        result
    }

    async fn ingest_vendor_for(
        &self,
        vendor: Vendor,
        integration: &Integration,
        body: &str,
    ) -> Result<VendorIngested, IngestError> {
        let t = vendor.parse(body, integration.mapping.as_ref())?;
        let mut ready = Vec::with_capacity(t.readings.len());
        for r in t.readings {
            let patient = self.prepare(integration, &r)?;
            ready.push((r, patient));
        }
        let mut readings = Vec::with_capacity(ready.len());
        for (r, patient) in ready {
            readings.push(self.write_vendor_reading(integration, r, patient).await?);
        }
        Ok(VendorIngested {
            readings,
            skipped: t.skipped,
            non_vital: t.non_vital,
        })
    }

    fn count_ingest(&self, outcome: &str) {
        self.metrics.count_ingested("vendor", outcome);
    }

    fn audit_ingested(&self, integration: &Integration, done: &Ingested) {
        self.count_ingest(if done.new { "stored" } else { "duplicate" });
        let facility = &integration.facility;
        let month = Month::of(done.reading.measured_at.date_naive());
        let mut a = AuditRecord::new(if done.new {
            "ingest"
        } else {
            "ingest-duplicate"
        });
        a.device = Some(format!("integration:{}", integration.name));
        a.facility = Some(facility.clone());
        a.patient = Some(done.patient.clone());
        a.document = Some(DocumentId::patient_month(facility, &done.patient, month).to_string());
        a.detail = Some(format!(
            "vendor reading {} device {}",
            done.vendor_reading_id,
            done.reading.device.as_deref().unwrap_or("")
        ));
        self.security.record(a);
    }
}

/// What a vendor post answers: each reading stored (or found already stored), and the non-vital
/// metrics left out.
#[derive(Debug)]
pub struct VendorIngested {
    pub readings: Vec<Ingested>,
    pub skipped: Vec<String>,
    /// The non-vital metrics with device, time and value (kept in the audit log).
    pub non_vital: Vec<String>,
}

impl VendorIngested {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "stored": self.readings.iter().filter(|r| r.new).count(),
            "duplicates": self.readings.iter().filter(|r| !r.new).count(),
            "skipped": self.skipped,
            "readings": self.readings.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
        })
    }
}
