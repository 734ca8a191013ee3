//! A practice's month over all its facilities, and the company's view: per practice and
//! facility, patients served, units per code and the estimated payment (the rule set's fee
//! schedule, by the practice's locality). Read from the ledger's latest versions of closed
//! months only: what was billed, not what might be.

use rounds_core::Month;
use rounds_core::billing::RuleSet;
use rounds_core::billing::summary::{self, PracticeFacilityMonth};

use crate::services::ledger::{ClosedMonth, Ledger, LedgerError, closed_month};
use crate::sync::store::Store;

/// The facilities closed for `month` (a close in progress is not yet), sorted, each loaded.
fn closed_facilities(
    store: &Store,
    ledger: &Ledger,
    month: Month,
) -> Result<Vec<ClosedMonth>, LedgerError> {
    let mut facilities: Vec<String> = ledger
        .closed_months()
        .into_iter()
        .filter(|(f, m)| *m == month && ledger.is_closed(f, *m))
        .map(|(f, _)| f)
        .collect();
    facilities.sort();
    facilities.dedup();
    facilities
        .iter()
        .map(|f| closed_month(store, ledger, f, month))
        .collect()
}

/// One row per (practice, facility) of `month` (only `practice`'s when given), sorted by
/// practice then facility.
pub fn rows(
    store: &Store,
    ledger: &Ledger,
    rules: &RuleSet,
    month: Month,
    practice: Option<&str>,
) -> Result<Vec<PracticeFacilityMonth>, LedgerError> {
    let mut out = Vec::new();
    for closed in closed_facilities(store, ledger, month)? {
        let facility = closed.default_practice().to_string();
        let encounters: Vec<_> = closed
            .versions
            .iter()
            .map(|v| v.encounter.clone())
            .collect();
        for p in closed.practices() {
            if practice.is_some_and(|x| x != p) {
                continue;
            }
            let locality = closed.practice(&p).and_then(|x| x.locality);
            out.push(PracticeFacilityMonth::of(
                &p,
                &facility,
                &facility,
                &encounters,
                &rules.fees,
                locality.as_deref(),
            ));
        }
    }
    out.sort_by(|a, b| (&a.practice, &a.facility).cmp(&(&b.practice, &b.facility)));
    Ok(out)
}

/// The practice's summary CSV of `month`: each of its facilities' rows (its patients and lines
/// only) and totals, then the practice's total.
pub fn practice_csv(
    store: &Store,
    ledger: &Ledger,
    practice: &str,
    month: Month,
) -> Result<Vec<u8>, LedgerError> {
    let closed = closed_facilities(store, ledger, month)?;
    let mut parts = Vec::new();
    let mut name = practice.to_string();
    for c in &closed {
        if !c.practices().iter().any(|p| p == practice) {
            continue;
        }
        if let Some(p) = c.practice(practice) {
            name = p.name;
        }
        let run = crate::services::ledger::billing_run(month, &c.versions_for(practice));
        parts.push((&c.data.data, run));
    }
    let runs: Vec<_> = parts.iter().map(|(d, r)| (*d, r)).collect();
    let mut buf = Vec::new();
    summary::write_csv_many(&runs, Some(&name), &mut buf)
        .map_err(|e| LedgerError::Store(e.to_string()))?;
    Ok(buf)
}

/// The company's view of `month` as CSV.
pub fn company_csv(rows: &[PracticeFacilityMonth], month: Month) -> Result<Vec<u8>, LedgerError> {
    let mut buf = Vec::new();
    summary::write_company_csv(month, rows, &mut buf)
        .map_err(|e| LedgerError::Store(e.to_string()))?;
    Ok(buf)
}
