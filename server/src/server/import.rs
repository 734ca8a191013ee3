//! Onboarding on a running server: `Shared::import_data`, the service behind
//! `POST /api/v1/import`.

use super::Shared;

/// What an import wrote.
#[derive(Debug)]
pub struct Imported {
    pub facility: String,
    /// Documents written (facility, patients, patient-months).
    pub documents: usize,
}

/// Why an import changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is not a valid `rounds-data/1` file: one line per problem, naming entry and field.
    #[error("{0}")]
    Invalid(rounds_core::Problems),
    /// The file's practices conflict with the server's (a practitioner in two practices).
    #[error(transparent)]
    Practice(#[from] crate::sync::store::practices::PracticeError),
    #[error("{0}")]
    Internal(String),
}

impl Shared {
    /// Validate a whole data file, build its documents with the server's clock, merge them into
    /// the facility's hub (persisted and fanned out like any change) and read them into the read
    /// model, so the first page or month close does not pay for it.
    pub(crate) async fn import_data(&self, body: String) -> Result<Imported, ImportError> {
        let data = tokio::task::spawn_blocking(move || rounds_core::parse_data_file(&body))
            .await
            .map_err(|e| ImportError::Internal(format!("the import task failed: {e}")))?
            .map_err(ImportError::Invalid)?;
        self.import_parsed(data).await
    }

    /// [`Shared::import_data`] for a file already parsed and checked (the CLI checks it before
    /// it opens the store, so a bad file creates nothing).
    pub(crate) async fn import_parsed(
        &self,
        data: rounds_core::DataFile,
    ) -> Result<Imported, ImportError> {
        let now = self.alerting.now();
        let (data, docs) = tokio::task::spawn_blocking(move || {
            let docs =
                crate::services::import::documents_of(&data, now).map_err(ImportError::Internal)?;
            Ok::<_, ImportError>((data, docs))
        })
        .await
        .map_err(|e| ImportError::Internal(format!("the import task failed: {e}")))??;
        let facility = data.facility.id.clone();
        // The practices first: a conflict with the server's stops the import before any
        // document is written.
        if !data.practices.is_empty() {
            let store = self.store.clone();
            let practices = data.practices.clone();
            tokio::task::spawn_blocking(move || store.practices.put(&practices))
                .await
                .map_err(|e| ImportError::Internal(format!("the import task failed: {e}")))??;
        }
        self.register_facility(&facility);
        let documents = docs.len();
        self.merge(&facility, docs)
            .await
            .map_err(ImportError::Internal)?;
        let store = self.store.clone();
        let f = facility.clone();
        tokio::task::spawn_blocking(move || {
            crate::sync::store::read_model::facility_data(&store, &f).map(|_| ())
        })
        .await
        .map_err(|e| ImportError::Internal(format!("the read-model task failed: {e}")))?
        .map_err(|e| ImportError::Internal(e.to_string()))?;
        Ok(Imported {
            facility,
            documents,
        })
    }
}

/// What a roster import did.
#[derive(Debug)]
pub struct RosterImported {
    pub facility: String,
    /// Residents added to the roster.
    pub added: Vec<String>,
    /// Residents already on the roster (same id or MRN), left as they are.
    pub already: Vec<String>,
    pub documents: usize,
}

impl Shared {
    /// Add the residents of a census CSV or a FHIR `Patient` bundle to a facility already on
    /// this server: every row checked first (one problem per row and field, nothing written on
    /// any); residents already on the roster, by id or MRN, are reported and left as they are.
    pub(crate) async fn import_roster(
        &self,
        facility: &str,
        format: rounds_core::roster::RosterFormat,
        body: String,
    ) -> Result<RosterImported, ImportError> {
        rounds_core::ids::check_id("facility", facility).map_err(|e| {
            ImportError::Invalid(rounds_core::Problems(vec![rounds_core::Problem::new(
                "facility",
                "id",
                e.to_string(),
            )]))
        })?;
        let store = self.store.clone();
        let f = facility.to_string();
        let base = tokio::task::spawn_blocking(move || {
            crate::sync::store::read_model::facility_data(&store, &f)
        })
        .await
        .map_err(|e| ImportError::Internal(format!("the read-model task failed: {e}")))?
        .map_err(|e| {
            ImportError::Invalid(rounds_core::Problems(vec![rounds_core::Problem::new(
                "facility",
                "id",
                format!("{e}: import the facility's data file first (rounds import FILE)"),
            )]))
        })?;
        if base.data.facility.id != facility {
            return Err(ImportError::Invalid(rounds_core::Problems(vec![
                rounds_core::Problem::new(
                    "facility",
                    "id",
                    format!(
                        "{facility:?} is not on this server: import its data file first (rounds import FILE)"
                    ),
                ),
            ])));
        }
        let existing = base.data.clone();
        let (residents, existing) = tokio::task::spawn_blocking(move || {
            rounds_core::roster::residents(format, &body, &existing).map(|r| (r, existing))
        })
        .await
        .map_err(|e| ImportError::Internal(format!("the import task failed: {e}")))?
        .map_err(ImportError::Invalid)?;
        let mut added = Vec::new();
        let mut already = Vec::new();
        let mut data = rounds_core::DataFile::new(existing.facility.clone());
        data.practitioners = existing.practitioners.clone();
        data.staff = existing.staff.clone();
        for p in residents {
            let known = existing
                .patients
                .iter()
                .any(|e| e.id == p.id || (p.mrn.is_some() && e.mrn.is_some() && e.mrn == p.mrn));
            if known {
                already.push(p.id);
            } else {
                added.push(p.id.clone());
                data.patients.push(p);
            }
        }
        let problems = rounds_core::validate::validate(&data);
        if !problems.is_empty() {
            return Err(ImportError::Invalid(rounds_core::Problems(problems)));
        }
        let documents = if added.is_empty() {
            0
        } else {
            self.import_parsed(data).await?.documents
        };
        let mut a = crate::services::security::AuditRecord::new("roster-import");
        a.facility = Some(facility.to_string());
        a.detail = Some(format!(
            "{}: {} added, {} already on the roster",
            format.as_str(),
            added.len(),
            already.len()
        ));
        self.security.record(a);
        Ok(RosterImported {
            facility: facility.to_string(),
            added,
            already,
            documents,
        })
    }
}
