//! A practice's monthly summary over all its facilities, and the company's view of every
//! practice and facility with estimated payments; both as pages and as CSV.

use rounds_core::billing::summary::{PracticeFacilityMonth, dollars};

use super::*;

fn month_or_last(c: &Ctx, query: &HashMap<String, String>) -> Result<Month, Response> {
    match q(query, "month").map(str::parse::<Month>) {
        Some(Ok(m)) => Ok(m),
        Some(Err(_)) => Err(error_page(
            Some(c),
            StatusCode::BAD_REQUEST,
            "month: use YYYY-MM",
        )),
        None => Ok(Month::of(Utc::now().date_naive()).previous()),
    }
}

/// The practice asked for, checked against the user (403 and audited otherwise). Facility staff
/// see facilities, not practices: they are refused too.
fn practice_checked(
    shared: &Shared,
    c: &Ctx,
    query: &HashMap<String, String>,
) -> Result<String, Response> {
    let asked = q(query, "practice")
        .map(str::to_string)
        .or_else(|| c.user.practices.first().cloned());
    if let Some(p) = &asked
        && let Err(e) = rounds_core::ids::check_id("practice", p)
    {
        return Err(error_page(Some(c), StatusCode::BAD_REQUEST, &e.to_string()));
    }
    match asked {
        Some(p) if c.user.sees_practice(&p) => Ok(p),
        Some(p) => Err(super::super::forbidden_practice(shared, c, &p)),
        None => Err(error_page(
            Some(c),
            StatusCode::BAD_REQUEST,
            "practice: missing",
        )),
    }
}

/// A billing page of one practice: the role, the practice (checked) and the month.
fn practice_month(
    shared: &Shared,
    c: &Ctx,
    query: &HashMap<String, String>,
) -> Result<(String, Month), Response> {
    if let Some(r) = billing_only(shared, c) {
        return Err(r);
    }
    Ok((
        practice_checked(shared, c, query)?,
        month_or_last(c, query)?,
    ))
}

/// The company's view: the role, the month and every practice's rows.
async fn company_rows(
    shared: &Arc<Shared>,
    c: &Ctx,
    query: &HashMap<String, String>,
) -> Result<(Month, Vec<PracticeFacilityMonth>), Response> {
    if let Some(r) = company_only(shared, c) {
        return Err(r);
    }
    let month = month_or_last(c, query)?;
    Ok((month, rows(shared, c, month, None).await?))
}

async fn rows(
    shared: &Arc<Shared>,
    c: &Ctx,
    month: Month,
    practice: Option<String>,
) -> Result<Vec<PracticeFacilityMonth>, Response> {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || {
        crate::services::practice_summary::rows(
            &s.store,
            &s.ledger,
            &s.rules,
            month,
            practice.as_deref(),
        )
    })
    .await
    .map_err(|_| error_page(Some(c), StatusCode::INTERNAL_SERVER_ERROR, "summary failed"))?
    .map_err(|e| error_page(Some(c), StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()))
}

fn codes_cell(r: &PracticeFacilityMonth) -> String {
    r.units
        .iter()
        .map(|(c, u)| format!("{c}×{u}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn table(rows: &[PracticeFacilityMonth], with_practice: bool) -> Markup {
    let mut totals: std::collections::BTreeMap<&str, PracticeFacilityMonth> = Default::default();
    for r in rows {
        totals
            .entry(r.practice.as_str())
            .or_insert_with(|| PracticeFacilityMonth {
                practice: r.practice.clone(),
                facility: "all facilities".into(),
                ..Default::default()
            })
            .add(r);
    }
    html! {
        table #summary {
            thead { tr {
                @if with_practice { th { "Practice" } }
                th { "Facility" } th.num { "Patients served" } th.num { "Billed" }
                th { "Lines by code" } th.num { "Estimated payment" }
            } }
            tbody {
                @for r in rows { tr {
                    @if with_practice { td { (r.practice) } }
                    td { (r.facility) } td.num { (r.patients_served) } td.num { (r.patients_billed) }
                    td { (codes_cell(r)) } td.num { "$" (dollars(r.total_cents())) }
                } }
                @for t in totals.values() { tr.total {
                    @if with_practice { td { strong { (t.practice) } } }
                    td { strong { "Total, all facilities" } } td.num { strong { (t.patients_served) } }
                    td.num { strong { (t.patients_billed) } } td { strong { (codes_cell(t)) } }
                    td.num { strong { "$" (dollars(t.total_cents())) } }
                } }
            }
        }
        p.muted { "Estimated payments use the rule set's fee schedule (approximate national non-facility amounts unless the practice's locality has its own); codes without an amount count as $0." }
    }
}

fn csv_response(name: String, bytes: Vec<u8>) -> Response {
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /console/summary?practice=P&month=M`: one practice's month over all its facilities.
pub async fn practice_summary(
    State(shared): State<Arc<Shared>>,
    c: Ctx,
    Query(query): Q,
) -> Response {
    let (practice, month) = match practice_month(&shared, &c, &query) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let rows = match rows(&shared, &c, month, Some(practice.clone())).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    audit(
        &shared,
        &c,
        "console-practice-summary",
        None,
        None,
        Some(format!("practice {practice} {month}")),
    );
    let body = html! {
        h1 { "Summary — practice " (practice) ", " (month.first_day().format("%B %Y")) }
        form.filters method="get" action="/console/summary" {
            input type="hidden" name="practice" value=(practice);
            label { "Month " input type="month" name="month" value=(month.to_string()); }
            button type="submit" { "Show" }
        }
        @if rows.is_empty() { div.empty { "No closed month of any facility has this practice's patients." } } @else {
            (table(&rows, false))
            p { a #summary-csv href=(format!("/console/summary.csv?practice={}&month={month}", urlencode(&practice))) { "Download the summary (CSV)" } }
        }
    };
    page(Some(&c), "Practice summary", body)
}

/// `GET /console/summary.csv?practice=P&month=M`.
pub async fn practice_summary_csv(
    State(shared): State<Arc<Shared>>,
    c: Ctx,
    Query(query): Q,
) -> Response {
    let (practice, month) = match practice_month(&shared, &c, &query) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let s = shared.clone();
    let p = practice.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        crate::services::practice_summary::practice_csv(&s.store, &s.ledger, &p, month)
    })
    .await;
    let bytes = match bytes {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return error_page(Some(&c), StatusCode::UNPROCESSABLE_ENTITY, &e.to_string());
        }
        Err(_) => {
            return error_page(
                Some(&c),
                StatusCode::INTERNAL_SERVER_ERROR,
                "summary failed",
            );
        }
    };
    audit(
        &shared,
        &c,
        "console-download",
        None,
        None,
        Some(format!("practice {practice} {month} summary")),
    );
    csv_response(format!("summary-{practice}-{month}.csv"), bytes)
}

fn company_only(shared: &Shared, c: &Ctx) -> Option<Response> {
    role_only(
        shared,
        c,
        c.user.is_company(),
        "company view",
        "The company's view is for the care-management company's staff.",
    )
}

/// `GET /console/company?month=M`: every practice and facility.
pub async fn company(State(shared): State<Arc<Shared>>, c: Ctx, Query(query): Q) -> Response {
    let (month, rows) = match company_rows(&shared, &c, &query).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let practices: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.practice.as_str()).collect();
    let body = html! {
        h1 { "Practices and facilities — " (month.first_day().format("%B %Y")) }
        form.filters method="get" action="/console/company" {
            label { "Month " input type="month" name="month" value=(month.to_string()); }
            button type="submit" { "Show" }
        }
        @if rows.is_empty() { div.empty { "No facility has closed this month yet." } } @else {
            (table(&rows, true))
            p {
                a href="/console/practices" { "Manage practices" } " · "
                a #company-csv href=(format!("/console/company.csv?month={month}")) { "Download (CSV)" }
                @for p in &practices { " · " a href=(format!("/console/summary?practice={}&month={month}", urlencode(p))) { "summary of " (p) } }
            }
        }
    };
    page(Some(&c), "Company", body)
}

/// `GET /console/company.csv?month=M`.
pub async fn company_csv(State(shared): State<Arc<Shared>>, c: Ctx, Query(query): Q) -> Response {
    let (month, rows) = match company_rows(&shared, &c, &query).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match crate::services::practice_summary::company_csv(&rows, month) {
        Ok(bytes) => {
            audit(
                &shared,
                &c,
                "console-download",
                None,
                None,
                Some(format!("company {month}")),
            );
            csv_response(format!("company-{month}.csv"), bytes)
        }
        Err(e) => error_page(Some(&c), StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// `GET /console/practices`: the registered practices, and a form to add or replace one.
pub async fn practices_page(
    State(shared): State<Arc<Shared>>,
    c: Ctx,
    Query(query): Q,
) -> Response {
    if let Some(r) = company_only(&shared, &c) {
        return r;
    }
    let s = shared.clone();
    let list = tokio::task::spawn_blocking(move || s.store.practices.all())
        .await
        .unwrap_or_default();
    let body = html! {
        h1 { "Practices" }
        @if let Some(n) = q(&query, "notice") { div.notice { (n) } }
        @if list.is_empty() { div.empty { "No practices yet: each facility is billed as its own practice. Import a data file with a practices section, or add one below." } } @else {
            table #practices {
                thead { tr { th { "Id" } th { "Name" } th { "Group NPI" } th { "TIN" } th { "Practitioners" } th { "Transition months" } th { "Locality" } th { "Contacts" } } }
                tbody { @for p in &list { tr {
                    td { a href=(format!("/console/summary?practice={}", urlencode(&p.id))) { (p.id) } }
                    td { (p.name) }
                    td { (p.group_npi.clone().unwrap_or_default()) }
                    td { (p.tin.clone().unwrap_or_default()) }
                    td { (p.practitioners.join(", ")) }
                    td { @if p.confirms_transition_months { "confirmed by the practice" } @else { "held" } }
                    td { (p.locality.clone().unwrap_or_default()) }
                    td { (p.contacts.join(", ")) }
                } } }
            }
        }
        h2 { "Add or replace a practice" }
        form.card method="post" action="/console/practices" {
            (csrf_field(&c))
            div.grid {
                label { "Id " input name="id" required; }
                label { "Name " input name="name" required; }
                label { "Group NPI " input name="group_npi"; }
                label { "TIN " input name="tin"; }
                label { "Practitioner ids (comma-separated) " input name="practitioners"; }
                label { "Contacts (comma-separated e-mail) " input name="contacts"; }
                label { "Payment locality " input name="locality"; }
                label { input type="checkbox" name="confirms_transition_months" value="1"; " The practice confirms transition months" }
            }
            button type="submit" { "Save practice" }
        }
    };
    page(Some(&c), "Practices", body)
}

/// `POST /console/practices`: save one practice from the form (checked like the data file's).
pub async fn practices_post(
    State(shared): State<Arc<Shared>>,
    c: Ctx,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = post_guard(&shared, &c, &form, company_only) {
        return r;
    }
    let field = |k: &str| {
        form.get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let list = |k: &str| -> Vec<String> {
        field(k)
            .map(|v| {
                v.split(',')
                    .map(|x| x.trim().to_string())
                    .filter(|x| !x.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let id = field("id").unwrap_or_default();
    // The existing practice's EHR identifiers are kept: the form does not show them.
    let ehr = shared
        .store
        .practices
        .get(&id)
        .map(|p| p.ehr)
        .unwrap_or_default();
    let practice = rounds_core::Practice {
        id: id.clone(),
        name: field("name").unwrap_or_default(),
        group_npi: field("group_npi"),
        tin: field("tin"),
        practitioners: list("practitioners"),
        ehr,
        contacts: list("contacts"),
        confirms_transition_months: field("confirms_transition_months").is_some(),
        locality: field("locality"),
    };
    let s = shared.clone();
    let p = practice.clone();
    let saved = tokio::task::spawn_blocking(move || s.store.practices.put(&[p])).await;
    match saved {
        Ok(Ok(())) => {
            audit(
                &shared,
                &c,
                "console-practice-set",
                None,
                None,
                Some(format!("practice {id}")),
            );
            Redirect::to(&format!(
                "/console/practices?notice={}",
                urlencode(&format!("Practice {id} saved."))
            ))
            .into_response()
        }
        Ok(Err(e)) => error_page(Some(&c), StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        Err(_) => error_page(Some(&c), StatusCode::INTERNAL_SERVER_ERROR, "saving failed"),
    }
}
