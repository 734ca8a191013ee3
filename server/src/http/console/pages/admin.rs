//! Devices, refused changes and the audit log: the admin pages.

use super::*;

// ----- devices and audit (admin) -------------------------------------------------------------

fn admin_only(shared: &Shared, c: &Ctx) -> Option<Response> {
    role_only(
        shared,
        c,
        c.user.role.is_admin(),
        "admin page",
        "Devices and the audit log are for administrators.",
    )
}

pub async fn devices(State(shared): State<Arc<Shared>>, c: Ctx, Query(query): Q) -> Response {
    if let Some(r) = admin_only(&shared, &c) {
        return r;
    }
    let list: Vec<_> = shared
        .security
        .list()
        .into_iter()
        .filter(|d| c.user.sees(&d.facility))
        .collect();
    // Changes the write policy refused from this user's facilities' devices (newest first).
    let refused: Vec<_> = c
        .user
        .facilities
        .iter()
        .flat_map(|f| shared.quarantine.list(Some(f), 100))
        .collect();
    let body = html! {
        h1 { "Devices" }
        @if let Some(n) = q(&query, "notice") { div.notice { (n) } }
        div.card {
            form method="post" action="/console/devices" {
                (csrf_field(&c))
                input type="hidden" name="action" value="code";
                label { "Enrolment code for "
                    select name="facility" { @for f in &c.user.facilities { option value=(f) { (f) } } }
                }
                " " button type="submit" { "Create code (24 h, single use)" }
            }
        }
        @if list.is_empty() { div.empty { "No devices enrolled yet. Create a code and enter it on the tablet." } } @else {
            table {
                thead { tr { th { "Device" } th { "Facility" } th { "Enrolled" } th { "Status" } th { "" } } }
                tbody { @for d in &list { tr {
                    td { (d.name) } td { (d.facility) } td { (d.enrolled_at.format("%Y-%m-%d %H:%M UTC")) }
                    td { @if let Some(r) = d.revoked_at { span.badge.urgent { "revoked " (r.format("%Y-%m-%d")) } } @else { span.badge.ok { "active" } } }
                    td { @if d.revoked_at.is_none() {
                        form.inline method="post" action="/console/devices" {
                            (csrf_field(&c))
                            input type="hidden" name="action" value="revoke";
                            input type="hidden" name="name" value=(d.name);
                            button type="submit" { "Revoke" }
                        }
                    } }
                } } }
            }
        }
        h2 { "Refused changes" }
        @if refused.is_empty() { div.empty { "No change has been refused." } } @else {
            p { "Changes a tablet sent that the write policy refused: nothing of them was stored. The tablet resets the document and re-logs its valid entries. Details: " code { "rounds quarantine show ID" } "." }
            table {
                thead { tr { th { "When" } th { "Device" } th { "Facility" } th { "Rule" } th { "Detail" } th { "Times" } th { "Id" } } }
                tbody { @for e in &refused { tr {
                    td { (e.at.format("%Y-%m-%d %H:%M UTC")) }
                    td { (e.device.as_deref().unwrap_or("")) }
                    td { (e.facility.as_deref().unwrap_or("")) }
                    td { span.badge.urgent { (e.rule) } }
                    td { (e.detail.chars().take(160).collect::<String>()) }
                    td { (e.times) }
                    td { code { (e.id) } }
                } } }
            }
        }
    };
    page(Some(&c), "Devices", body)
}

pub async fn devices_post(
    State(shared): State<Arc<Shared>>,
    c: Ctx,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = post_guard(&shared, &c, &form, admin_only) {
        return r;
    }
    match form.get("action").map(String::as_str) {
        Some("code") => {
            let f = form.get("facility").cloned().unwrap_or_default();
            if !c.user.sees(&f) {
                return forbidden(&shared, &c, &f, None);
            }
            match shared.security.create_code(&f) {
                Ok((code, until)) => Redirect::to(&format!(
                    "/console/devices?notice={}",
                    urlencode(&format!(
                        "Enrolment code for {f}: {code} (valid until {} UTC)",
                        until.format("%Y-%m-%d %H:%M")
                    ))
                ))
                .into_response(),
                Err(e) => error_page(Some(&c), StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
            }
        }
        Some("revoke") => {
            let name = form.get("name").cloned().unwrap_or_default();
            match shared.security.device(&name) {
                Some(d) if c.user.sees(&d.facility) => match shared.security.revoke(&name) {
                    Ok(_) => Redirect::to(&format!(
                        "/console/devices?notice={}",
                        urlencode(&format!("Device {name} revoked."))
                    ))
                    .into_response(),
                    Err(e) => {
                        error_page(Some(&c), StatusCode::UNPROCESSABLE_ENTITY, &e.to_string())
                    }
                },
                Some(d) => forbidden(&shared, &c, &d.facility, None),
                None => error_page(Some(&c), StatusCode::NOT_FOUND, "No such device."),
            }
        }
        _ => error_page(Some(&c), StatusCode::BAD_REQUEST, "action: unknown"),
    }
}

/// Whether a console admin may see an audit record: records of their facilities, and — of the
/// records without a facility — those about a user who shares one of their facilities. Sign-ins
/// of unknown usernames, unauthenticated requests and server-wide events belong to no facility:
/// the server's operator reads them with `rounds audit` (admin token).
fn visible_to(
    viewer: &crate::services::accounts::User,
    colleagues: &std::collections::HashSet<String>,
    r: &crate::services::security::AuditRecord,
) -> bool {
    match &r.facility {
        Some(f) => viewer.sees(f),
        None => r
            .device
            .as_deref()
            .and_then(|d| d.strip_prefix("user:"))
            .is_some_and(|u| colleagues.contains(u)),
    }
}

pub async fn audit_page(State(shared): State<Arc<Shared>>, c: Ctx, Query(query): Q) -> Response {
    if let Some(r) = admin_only(&shared, &c) {
        return r;
    }
    let since = match q(&query, "since").map(crate::http::admin::parse_since) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            return error_page(Some(&c), StatusCode::BAD_REQUEST, &format!("since: {e}"));
        }
        None => None,
    };
    let action = q(&query, "action").map(str::to_string);
    // The users who share a facility with this admin: their sign-ins and lockouts show.
    let colleagues: std::collections::HashSet<String> = shared
        .accounts
        .users()
        .into_iter()
        .filter(|u| u.facilities.iter().any(|f| c.user.sees(f)))
        .map(|u| u.username)
        .collect();
    let mut records: Vec<_> = shared
        .security
        .query(&crate::services::security::AuditQuery {
            patient: q(&query, "patient").map(str::to_string),
            device: q(&query, "device").map(str::to_string),
            since,
        })
        .into_iter()
        .filter(|r| visible_to(&c.user, &colleagues, r))
        .filter(|r| {
            action
                .as_ref()
                .is_none_or(|a| r.action.contains(a.as_str()))
        })
        .collect();
    records.reverse();
    let total = records.len();
    records.truncate(500);
    let body = html! {
        h1 { "Audit log" }
        form.filters method="get" action="/console/audit" {
            label { "Patient id " input name="patient" value=(q(&query, "patient").unwrap_or("")); }
            label { "Device / user " input name="device" value=(q(&query, "device").unwrap_or("")) placeholder="user:name"; }
            label { "Action contains " input name="action" value=(action.clone().unwrap_or_default()); }
            label { "Since " input type="date" name="since" value=(q(&query, "since").unwrap_or("")); }
            button type="submit" { "Filter" }
        }
        p.muted { (total) " records" @if total > 500 { " (newest 500 shown)" } ". Times in UTC." }
        @if records.is_empty() { div.empty { "No records match." } } @else {
            table #audit {
                thead { tr { th { "When" } th { "Action" } th { "Who" } th { "Facility" } th { "Patient" } th { "Document / detail" } } }
                tbody { @for r in &records { tr {
                    td { (r.at.format("%Y-%m-%d %H:%M:%S")) } td { (r.action) } td { (r.device.clone().unwrap_or_default()) }
                    td { (r.facility.clone().unwrap_or_default()) } td { (r.patient.clone().unwrap_or_default()) }
                    td { (r.document.clone().unwrap_or_default()) " " (r.detail.clone().unwrap_or_default()) }
                } } }
            }
        }
    };
    page(Some(&c), "Audit", body)
}
