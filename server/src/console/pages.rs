//! The console's pages: worklist, patient, month close (with downloads and push), push status,
//! devices and audit.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use maud::{Markup, PreEscaped, html};
use rounds_core::alerts::AlertView;
use rounds_core::billing::worklist::{WorklistItem, attach_alerts};
use rounds_core::{Month, Program, ReadingKind};

use super::{Ctx, audit, check_csrf, error_page, forbidden, page};
use crate::admin_client::urlencode;
use crate::ledger::FacilityData;
use crate::server::Shared;

type Q = Query<HashMap<String, String>>;

fn q<'a>(query: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    query.get(k).map(String::as_str).filter(|v| !v.is_empty())
}

/// The facility asked for (or the user's first), checked against the user's facilities.
fn facility_of(
    shared: &Shared,
    c: &Ctx,
    query: &HashMap<String, String>,
) -> Result<String, Response> {
    let f = q(query, "facility")
        .map(str::to_string)
        .or_else(|| c.user.facilities.first().cloned())
        .unwrap_or_default();
    if c.user.sees(&f) {
        Ok(f)
    } else {
        Err(forbidden(shared, c, &f, q(query, "patient")))
    }
}

/// The facility's data from the store, and its zone (on a blocking thread).
async fn load(
    shared: &Arc<Shared>,
    c: &Ctx,
    facility: &str,
) -> Result<(Arc<FacilityData>, Tz), Response> {
    let s = shared.clone();
    let f = facility.to_string();
    let fd = tokio::task::spawn_blocking(move || crate::ledger::facility_data(&s.store, &f))
        .await
        .map_err(|_| error_page(Some(c), StatusCode::INTERNAL_SERVER_ERROR, "loading failed"))?;
    match fd {
        Ok(fd) => {
            let tz: Tz = fd.data.facility.timezone.parse().unwrap_or(chrono_tz::UTC);
            Ok((fd, tz))
        }
        Err(e) => Err(error_page(
            Some(c),
            StatusCode::NOT_FOUND,
            &format!("No data for facility {facility:?} yet: {e}"),
        )),
    }
}

fn facility_picker(c: &Ctx, current: &str, action: &str, extra: Markup) -> Markup {
    html! {
        form.filters method="get" action=(action) {
            label { "Facility "
                select name="facility" {
                    @for f in &c.user.facilities {
                        option value=(f) selected[f == current] { (f) }
                    }
                }
            }
            (extra)
            button type="submit" { "Show" }
        }
    }
}

fn local(t: DateTime<chrono::FixedOffset>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%b %-d %H:%M").to_string()
}

fn alert_badge(v: &AlertView) -> Markup {
    let class = match v.alert.severity {
        rounds_core::alerts::Severity::Urgent => "badge urgent",
        rounds_core::alerts::Severity::Warning => "badge warning",
    };
    html! { span class=(class) { (v.alert.severity.as_str()) } }
}

// ----- worklist ------------------------------------------------------------------------------

fn worklist_rows(
    fd: &FacilityData,
    as_of: NaiveDate,
    shared: &Shared,
) -> Result<Vec<WorklistItem>, String> {
    let mut items = rounds_core::billing::worklist::worklist(&fd.data, as_of, &shared.rules)
        .map_err(|e| e.to_string())?;
    attach_alerts(&mut items, &fd.alerts);
    Ok(items)
}

pub async fn worklist(State(shared): State<Arc<Shared>>, c: Ctx, Query(query): Q) -> Response {
    let facility = match facility_of(&shared, &c, &query) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let started = std::time::Instant::now();
    let (fd, tz) = match load(&shared, &c, &facility).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let loaded = started.elapsed();
    let today = Utc::now().with_timezone(&tz).date_naive();
    let as_of = match q(&query, "as_of") {
        Some(s) => match s.parse::<NaiveDate>() {
            Ok(d) => d,
            Err(_) => {
                return error_page(
                    Some(&c),
                    StatusCode::BAD_REQUEST,
                    &format!("as_of: {s:?} is not a date (YYYY-MM-DD)"),
                );
            }
        },
        None => today,
    };
    let mut items = match worklist_rows(&fd, as_of, &shared) {
        Ok(i) => i,
        Err(e) => return error_page(Some(&c), StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    let computed = started.elapsed();
    // Names by id, once: a lookup per row over 10,000 residents was quadratic.
    let names: std::collections::HashMap<&str, &str> = fd
        .data
        .patients
        .iter()
        .map(|p| (p.id.as_str(), p.name.as_str()))
        .collect();
    let name_of = |id: &str| {
        names
            .get(id)
            .map_or_else(|| id.to_string(), |n| (*n).to_string())
    };
    // Filters.
    let program = q(&query, "program").unwrap_or("all");
    let needle = q(&query, "q").unwrap_or("").to_lowercase();
    let only_alerts = q(&query, "alerts") == Some("1");
    items.retain(|i| {
        (program == "all" || i.program.as_str() == program)
            && (needle.is_empty()
                || name_of(&i.patient).to_lowercase().contains(&needle)
                || i.patient.to_lowercase().contains(&needle))
            && (!only_alerts || i.open_alerts > 0)
    });
    // Sorting.
    let sort = q(&query, "sort").unwrap_or("alerts");
    match sort {
        "patient" => items.sort_by_key(|i| name_of(&i.patient)),
        "minutes" => items.sort_by_key(|i| std::cmp::Reverse(i.minutes)),
        "to_next" => items.sort_by_key(|i| i.minutes_to_next.unwrap_or(u32::MAX)),
        "days_left" => {
            items.sort_by_key(|i| i.period.as_ref().map(|p| p.days_left).unwrap_or(u32::MAX))
        }
        _ => items.sort_by_key(|i| {
            (
                std::cmp::Reverse(i.open_alerts),
                i.minutes_to_next.unwrap_or(u32::MAX),
            )
        }),
    }
    let month = Month::of(as_of);
    let link = |s: &str| {
        format!(
            "/console/?facility={facility}&as_of={as_of}&program={program}&q={}&alerts={}&sort={s}",
            urlencode(&needle),
            if only_alerts { "1" } else { "" }
        )
    };
    let open_alerts: Vec<&AlertView> = fd.alerts.iter().filter(|v| v.needs_response()).collect();
    let body = html! {
        h1 { "Worklist — " (fd.data.facility.name) ", " (month.first_day().format("%B %Y")) }
        p.muted { "As of " (as_of) " (" (tz.name()) "). Minutes and reading days count entries synced to the server." }
        (facility_picker(&c, &facility, "/console/", html! {
            label { "As of " input type="date" name="as_of" value=(as_of); }
            label { "Program "
                select name="program" {
                    @for p in ["all", "ccm", "pcm", "rpm"] { option value=(p) selected[p == program] { (p.to_uppercase()) } }
                }
            }
            label { "Patient " input name="q" value=(needle) placeholder="name or id"; }
            label { input type="checkbox" name="alerts" value="1" checked[only_alerts]; " with open alerts" }
            input type="hidden" name="sort" value=(sort);
        }))
        @if !open_alerts.is_empty() {
            div.card {
                strong { (open_alerts.len()) " alert(s) waiting for a response" }
                ul {
                    @for v in &open_alerts {
                        li {
                            (alert_badge(v)) " "
                            a href=(format!("/console/patient?facility={facility}&patient={}&month={}", v.alert.patient, Month::of(v.alert.raised_at.date_naive()))) { (name_of(&v.alert.patient)) }
                            " — " (v.alert.message) " — due " (local(v.alert.deadline, tz))
                            @if v.status == rounds_core::alerts::AlertStatus::Escalated { " " span.badge.urgent { "escalated" } }
                        }
                    }
                }
            }
        }
        @if items.is_empty() {
            div.empty { "No patients match. Patients appear here once they have a consent or time logged this month; clear the filters to see everyone." }
        } @else {
            table #worklist {
                thead { tr {
                    th { a href=(link("patient")) { "Patient" } }
                    th { "Program" }
                    th.num { a href=(link("minutes")) { "Minutes" } }
                    th { "Next code" }
                    th.num { a href=(link("to_next")) { "Minutes to next" } }
                    th.num { a href=(link("days_left")) { "Reading days (so far / left)" } }
                    th.num { a href=(link("alerts")) { "Open alerts" } }
                    th { "Blocked by" }
                } }
                tbody {
                    @for i in &items {
                        tr data-patient=(i.patient) {
                            td { a href=(format!("/console/patient?facility={facility}&patient={}&month={month}", i.patient)) { (name_of(&i.patient)) } }
                            td { (i.program.as_str().to_uppercase()) }
                            td.num { (i.minutes) }
                            td { (i.next_code.clone().unwrap_or_else(|| "—".into())) }
                            td.num { (i.minutes_to_next.map(|m| m.to_string()).unwrap_or_else(|| "—".into())) }
                            td.num { @if let Some(p) = &i.period { (p.reading_days) " / " (p.days_left) } @else { "—" } }
                            td.num { @if i.open_alerts > 0 { span.badge.urgent { (i.open_alerts) } } @else { "0" } }
                            td { (i.blocked_by.join("; ")) }
                        }
                    }
                }
            }
        }
    };
    audit(
        &shared,
        &c,
        "console-worklist",
        Some(&facility),
        None,
        Some(format!("as of {as_of}")),
    );
    let page = page(Some(&c), "Worklist", body);
    tracing::debug!(
        facility,
        rows = items.len(),
        load_ms = loaded.as_secs_f64() * 1e3,
        worklist_ms = (computed - loaded).as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "console worklist"
    );
    page
}

// ----- patient -------------------------------------------------------------------------------

pub async fn patient(State(shared): State<Arc<Shared>>, c: Ctx, Query(query): Q) -> Response {
    let facility = match facility_of(&shared, &c, &query) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(pid) = q(&query, "patient").map(str::to_string) else {
        return error_page(Some(&c), StatusCode::BAD_REQUEST, "patient: missing");
    };
    let (fd, tz) = match load(&shared, &c, &facility).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(p) = fd.data.patients.iter().find(|p| p.id == pid) else {
        return error_page(
            Some(&c),
            StatusCode::NOT_FOUND,
            &format!("No patient {pid:?} in {facility}."),
        );
    };
    let month = match q(&query, "month").map(str::parse::<Month>) {
        Some(Ok(m)) => m,
        Some(Err(_)) => return error_page(Some(&c), StatusCode::BAD_REQUEST, "month: use YYYY-MM"),
        None => Month::of(Utc::now().with_timezone(&tz).date_naive()),
    };
    audit(
        &shared,
        &c,
        "console-view-patient",
        Some(&facility),
        Some(&pid),
        Some(format!("month {month}")),
    );
    let superseded = fd.data.superseded_ids();
    let in_month =
        |t: DateTime<chrono::FixedOffset>| month.contains(t.with_timezone(&tz).date_naive());
    let mut interactions: Vec<_> = fd
        .data
        .interactions
        .iter()
        .filter(|i| i.patient == pid && in_month(i.started_at))
        .collect();
    interactions.sort_by_key(|i| i.started_at);
    let mut readings: Vec<_> = fd
        .data
        .readings
        .iter()
        .filter(|r| r.patient == pid && in_month(r.measured_at))
        .collect();
    readings.sort_by_key(|r| r.measured_at);
    let alerts: Vec<&AlertView> = fd
        .alerts
        .iter()
        .filter(|v| v.alert.patient == pid && in_month(v.alert.raised_at))
        .collect();
    let staff_name = |id: &str| {
        fd.data
            .staff
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.name.clone())
            .or_else(|| {
                fd.data
                    .practitioners
                    .iter()
                    .find(|s| s.id == id)
                    .map(|s| s.name.clone())
            })
            .unwrap_or_else(|| id.to_string())
    };
    let mut minutes: HashMap<Program, i64> = HashMap::new();
    for i in interactions.iter().filter(|i| !superseded.contains(&i.id)) {
        *minutes.entry(i.program).or_default() += (i.ended_at - i.started_at).num_seconds();
    }
    let kinds: std::collections::BTreeSet<ReadingKind> = readings.iter().map(|r| r.kind).collect();
    let charts: Vec<String> = kinds
        .iter()
        .filter_map(|k| {
            let rs: Vec<_> = readings
                .iter()
                .copied()
                .filter(|r| r.kind == *k && !superseded.contains(&r.id))
                .collect();
            super::chart::vitals_svg(*k, &rs, month, tz)
        })
        .collect();
    // One timeline: interactions and readings by time.
    enum Item<'a> {
        I(&'a rounds_core::Interaction),
        R(&'a rounds_core::Reading),
    }
    let mut timeline: Vec<(DateTime<chrono::FixedOffset>, Item)> = interactions
        .iter()
        .map(|i| (i.started_at, Item::I(i)))
        .collect();
    timeline.extend(readings.iter().map(|r| (r.measured_at, Item::R(r))));
    timeline.sort_by_key(|(t, _)| *t);
    let plan = p.care_plan.clone().unwrap_or_default();
    let body = html! {
        p { a href=(format!("/console/?facility={facility}")) { "← Worklist" } }
        h1 { (p.name) " — " (month.first_day().format("%B %Y")) }
        p.muted {
            "MRN " (p.mrn.clone().unwrap_or_else(|| "—".into()))
            " · born " (p.birth_date.map(|d| d.to_string()).unwrap_or_else(|| "—".into()))
            " · billing practitioner " (staff_name(&p.billing_practitioner))
            " · times in " (tz.name())
        }
        form.filters method="get" action="/console/patient" {
            input type="hidden" name="facility" value=(facility);
            input type="hidden" name="patient" value=(pid);
            label { "Month " input type="month" name="month" value=(month.to_string()); }
            button type="submit" { "Show" }
        }
        div.grid {
            div.card {
                h2 { "This month" }
                p { "CCM " (minutes.get(&Program::Ccm).copied().unwrap_or(0) / 60) " min · PCM " (minutes.get(&Program::Pcm).copied().unwrap_or(0) / 60) " min · RPM " (minutes.get(&Program::Rpm).copied().unwrap_or(0) / 60) " min" }
                p { (readings.len()) " readings" }
            }
            div.card {
                h2 { "Conditions" }
                @if p.conditions.is_empty() { p.muted { "None recorded." } }
                ul { @for cnd in &p.conditions { li { (cnd.icd10) @if cnd.chronic { " (chronic)" } } } }
            }
            div.card {
                h2 { "Consents" }
                @if p.consents.is_empty() { p.muted { "No consent on file." } }
                ul { @for cs in &p.consents { li { (cs.program.as_str().to_uppercase()) " given " (cs.given_on) @if let Some(r) = cs.revoked_on { ", revoked " (r) } } } }
            }
        }
        h2 { "Alerts" }
        @if alerts.is_empty() { div.empty { "No alerts this month." } } @else {
            table #alerts {
                thead { tr { th { "Raised" } th { "Severity" } th { "What" } th { "Deadline" } th { "Status" } th { "History" } } }
                tbody { @for v in &alerts { tr {
                    td { (local(v.alert.raised_at, tz)) }
                    td { (alert_badge(v)) }
                    td { (v.alert.message) }
                    td { (local(v.alert.deadline, tz)) }
                    td { (format!("{:?}", v.status).to_lowercase()) @if let Some(m) = v.minutes_to_acknowledge { " after " (m) " min" } }
                    td { @for e in &v.events { div { (local(e.at, tz)) " " (format!("{:?}", e.action).to_lowercase()) " by " (staff_name(&e.by)) @if let Some(n) = &e.note { ": " (n) } } } }
                } } }
            }
        }
        h2 { "Vitals" }
        @if charts.is_empty() { div.empty { "No readings this month." } }
        @for svg in &charts { div.card.chart { (PreEscaped(svg)) } }
        h2 { "Timeline" }
        @if timeline.is_empty() { div.empty { "Nothing logged this month." } } @else {
            table #timeline {
                thead { tr { th { "When" } th { "What" } th { "Who / source" } th { "Details" } } }
                tbody { @for (t, item) in &timeline { tr {
                    td { (local(*t, tz)) }
                    @match item {
                        Item::I(i) => {
                            td { (i.program.as_str().to_uppercase()) " " ((i.ended_at - i.started_at).num_minutes()) " min" @if i.interactive { " · interactive" } @if superseded.contains(&i.id) { " " span.badge { "voided/amended" } } }
                            td { (staff_name(&i.staff)) }
                            td { (i.activity.clone().unwrap_or_default().replace('_', " ")) @if let Some(n) = &i.note { div { (n) } } }
                        }
                        Item::R(r) => {
                            td { (r.kind.as_str().replace('_', " ")) @if superseded.contains(&r.id) { " " span.badge { "voided" } } }
                            td { (format!("{:?}", r.source).to_lowercase()) @if let Some(d) = &r.device { " (" (d) ")" } }
                            td { @if let (Some(s), Some(d)) = (r.systolic, r.diastolic) { (s) "/" (d) } @else { (r.value.map(|v| v.to_string()).unwrap_or_default()) } " " (r.unit) }
                        }
                    }
                } } }
            }
        }
        h2 { "Care plan" }
        div.card {
            p.muted { "Established " (plan.established_on.map(|d| d.to_string()).unwrap_or_else(|| "—".into())) }
            @match plan.text.as_deref().filter(|t| !t.trim().is_empty()) {
                Some(t) => { @for l in t.lines() { p { (l) } } }
                None => { p.muted { "No care plan text." } }
            }
        }
    };
    page(Some(&c), &p.name, body)
}

// ----- month close ---------------------------------------------------------------------------

/// A form post: refused without the session's CSRF token, then unless `role` allows it.
fn post_guard(
    shared: &Shared,
    c: &Ctx,
    form: &HashMap<String, String>,
    role: fn(&Shared, &Ctx) -> Option<Response>,
) -> Option<Response> {
    check_csrf(c, form).err().or_else(|| role(shared, c))
}

/// The hidden CSRF field every form carries.
fn csrf_field(c: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(c.session.csrf); }
}

fn billing_only(shared: &Shared, c: &Ctx) -> Option<Response> {
    if c.user.role.can_bill() {
        None
    } else {
        audit(
            shared,
            c,
            "console-denied",
            None,
            None,
            Some("billing page".into()),
        );
        Some(error_page(
            Some(c),
            StatusCode::FORBIDDEN,
            "Month close and push are for billing staff and administrators.",
        ))
    }
}

pub async fn close_page(State(shared): State<Arc<Shared>>, c: Ctx, Query(query): Q) -> Response {
    if let Some(r) = billing_only(&shared, &c) {
        return r;
    }
    let facility = match facility_of(&shared, &c, &query) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let (fd, tz) = match load(&shared, &c, &facility).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let month = match q(&query, "month").map(str::parse::<Month>) {
        Some(Ok(m)) => m,
        Some(Err(_)) => return error_page(Some(&c), StatusCode::BAD_REQUEST, "month: use YYYY-MM"),
        None => Month::of(Utc::now().with_timezone(&tz).date_naive()).previous(),
    };
    let closed = shared.ledger.is_closed(&facility, month);
    let latest = shared.ledger.latest(&facility, month);
    let all = shared.ledger.versions(&facility, month);
    let changed: Vec<_> = all.iter().filter(|v| v.version > 1).collect();
    let name_of = |id: &str| {
        fd.data
            .patients
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let can_push = shared.push_config().is_some();
    let notice = q(&query, "notice");
    let dl =
        |fmt: &str| format!("/console/download?facility={facility}&month={month}&format={fmt}");
    let body = html! {
        h1 { "Month close — " (fd.data.facility.name) ", " (month.first_day().format("%B %Y")) }
        @if let Some(n) = notice { div.notice { (n) } }
        (facility_picker(&c, &facility, "/console/close", html! {
            label { "Month " input type="month" name="month" value=(month.to_string()); }
        }))
        table #facilities {
            thead { tr { th { "Facility" } th { (month.first_day().format("%B %Y")) } th.num { "Encounters" } th.num { "Amended / voided" } } }
            tbody { @for f in &c.user.facilities {
                @let versions = shared.ledger.versions(f, month);
                tr {
                    td { a href=(format!("/console/close?facility={f}&month={month}")) { (f) } }
                    td { @if shared.ledger.is_closed(f, month) { span.badge.ok { "closed" } } @else { span.badge.warning { "open" } } }
                    td.num { (versions.iter().filter(|v| v.version == 1).count()) }
                    td.num { (versions.iter().filter(|v| v.version > 1).count()) }
                }
            } }
        }
        div.card {
            @if closed {
                p { span.badge.ok { "closed" } " " (latest.len()) " encounters, " (latest.iter().filter(|v| !v.encounter.lines.is_empty()).count()) " with billable lines." }
            } @else {
                p { span.badge.warning { "open" } " Not closed yet. Closing stores version 1 of every encounter; later data makes amendments or voids." }
            }
            form.inline method="post" action="/console/close" {
                (csrf_field(&c))
                input type="hidden" name="facility" value=(facility);
                input type="hidden" name="month" value=(month.to_string());
                button #close-month type="submit" { @if closed { "Re-evaluate month" } @else { "Close month" } }
            }
            " "
            @if closed && can_push {
                form.inline method="post" action="/console/push-month" {
                    (csrf_field(&c))
                    input type="hidden" name="facility" value=(facility);
                    input type="hidden" name="month" value=(month.to_string());
                    button type="submit" { "Approve and push to the EHR" }
                }
            } @else if closed {
                span.muted { "Pushing needs the server started with --push push.toml." }
            }
        }
        @if closed {
            div.card {
                strong { "Download: " }
                a #download-csv href=(dl("csv")) { "CSV summary" } " · "
                a href=(dl("fhir")) { "FHIR bundles (JSON)" } " · "
                a href=(dl("hl7")) { "HL7 v2 messages" }
            }
            h2 { "Encounters" }
            @if latest.is_empty() { div.empty { "No encounters: no patient had billable data this month." } } @else {
                table #encounters {
                    thead { tr { th { "Patient" } th.num { "Version" } th { "Codes" } th { "Exceptions" } th { "Note" } } }
                    tbody { @for v in &latest { tr {
                        td { (name_of(&v.patient)) }
                        td.num { (v.version) " " span.badge { (format!("{:?}", v.kind).to_lowercase()) } }
                        td { (v.encounter.lines.iter().map(|l| format!("{}×{}", l.code, l.units)).collect::<Vec<_>>().join(", ")) }
                        td { @for e in &v.encounter.exceptions { div { (e.reason) } } }
                        td { a href=(format!("/console/download?facility={facility}&month={month}&format=pdf&patient={}", v.patient)) { "PDF" } }
                    } } }
                }
            }
            h2 { "Amendments and voids since close" }
            @if changed.is_empty() { div.empty { "None: no late data changed a closed encounter." } } @else {
                table {
                    thead { tr { th { "Patient" } th.num { "Version" } th { "Kind" } th { "Computed" } th { "Lines added / removed" } } }
                    tbody { @for v in &changed { tr {
                        td { (name_of(&v.patient)) }
                        td.num { (v.version) }
                        td { (format!("{:?}", v.kind).to_lowercase()) }
                        td { (v.computed_at.with_timezone(&tz).format("%b %-d %H:%M")) }
                        td { @if let Some(d) = &v.diff { "+" (d.added.iter().map(|l| l.code.clone()).collect::<Vec<_>>().join(",")) " −" (d.removed.iter().map(|l| l.code.clone()).collect::<Vec<_>>().join(",")) } }
                    } } }
                }
            }
        }
    };
    page(Some(&c), "Month close", body)
}

fn form_month(c: &Ctx, form: &HashMap<String, String>) -> Result<(String, Month), Response> {
    let facility = form.get("facility").cloned().unwrap_or_default();
    let month = form
        .get("month")
        .and_then(|m| m.parse::<Month>().ok())
        .ok_or_else(|| error_page(Some(c), StatusCode::BAD_REQUEST, "month: use YYYY-MM"))?;
    Ok((facility, month))
}

pub async fn close_month(
    State(shared): State<Arc<Shared>>,
    c: Ctx,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = post_guard(&shared, &c, &form, billing_only) {
        return r;
    }
    let (facility, month) = match form_month(&c, &form) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !c.user.sees(&facility) {
        return forbidden(&shared, &c, &facility, None);
    }
    let s = shared.clone();
    let f = facility.clone();
    let result = tokio::task::spawn_blocking(move || s.close_month(&f, month)).await;
    match result {
        Ok(Ok(v)) => {
            audit(
                &shared,
                &c,
                "console-close-month",
                Some(&facility),
                None,
                Some(format!("{month}: {} versions", v.len())),
            );
            Redirect::to(&format!(
                "/console/close?facility={facility}&month={month}&notice={}",
                urlencode(&format!(
                    "{month} closed: {} new encounter versions.",
                    v.len()
                ))
            ))
            .into_response()
        }
        Ok(Err(e)) => error_page(
            Some(&c),
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("Could not close {month}: {e}"),
        ),
        Err(_) => error_page(
            Some(&c),
            StatusCode::INTERNAL_SERVER_ERROR,
            "closing failed",
        ),
    }
}

pub async fn push_month(
    State(shared): State<Arc<Shared>>,
    c: Ctx,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = post_guard(&shared, &c, &form, billing_only) {
        return r;
    }
    let (facility, month) = match form_month(&c, &form) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !c.user.sees(&facility) {
        return forbidden(&shared, &c, &facility, None);
    }
    let Some(config) = shared.push_config() else {
        return error_page(
            Some(&c),
            StatusCode::CONFLICT,
            "No EHR is configured: start the server with --push push.toml.",
        );
    };
    let s = shared.clone();
    let f = facility.clone();
    let result = tokio::task::spawn_blocking(move || {
        let outbox = crate::push::Outbox::open(s.store.db())?;
        outbox
            .enqueue(&s.store, &s.ledger, &config, &f, month)
            .map_err(|e| e.to_string())
    })
    .await;
    match result {
        Ok(Ok(n)) => {
            audit(
                &shared,
                &c,
                "console-push",
                Some(&facility),
                None,
                Some(format!("{month}: {n} messages queued")),
            );
            Redirect::to(&format!(
                "/console/push?notice={}",
                urlencode(&format!("{n} messages queued for {facility} {month}."))
            ))
            .into_response()
        }
        Ok(Err(e)) => error_page(Some(&c), StatusCode::UNPROCESSABLE_ENTITY, &e),
        Err(_) => error_page(
            Some(&c),
            StatusCode::INTERNAL_SERVER_ERROR,
            "queueing failed",
        ),
    }
}

pub async fn download(State(shared): State<Arc<Shared>>, c: Ctx, Query(query): Q) -> Response {
    if let Some(r) = billing_only(&shared, &c) {
        return r;
    }
    let facility = match facility_of(&shared, &c, &query) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(Ok(month)) = q(&query, "month").map(str::parse::<Month>) else {
        return error_page(Some(&c), StatusCode::BAD_REQUEST, "month: use YYYY-MM");
    };
    let format = match q(&query, "format") {
        Some("csv") => crate::export::Format::Csv,
        Some("fhir") => crate::export::Format::Fhir,
        Some("hl7") => crate::export::Format::Hl7,
        Some("pdf") => crate::export::Format::Pdf,
        other => {
            return error_page(
                Some(&c),
                StatusCode::BAD_REQUEST,
                &format!("format: {other:?} is not csv, fhir, hl7 or pdf"),
            );
        }
    };
    let patient = q(&query, "patient").map(str::to_string);
    if format == crate::export::Format::Pdf && patient.is_none() {
        return error_page(
            Some(&c),
            StatusCode::BAD_REQUEST,
            "patient: a PDF note is per patient",
        );
    }
    let s = shared.clone();
    let f = facility.clone();
    let files = tokio::task::spawn_blocking(move || {
        crate::export::export(
            &s.store,
            &s.ledger,
            &f,
            month,
            format,
            &rounds_core::ehr::ExportConfig::default(),
        )
    })
    .await;
    let files = match files {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            return error_page(Some(&c), StatusCode::UNPROCESSABLE_ENTITY, &e.to_string());
        }
        Err(_) => return error_page(Some(&c), StatusCode::INTERNAL_SERVER_ERROR, "export failed"),
    };
    let (name, bytes, mime) = match format {
        crate::export::Format::Csv => match files.into_iter().find(|f| f.name.ends_with(".csv")) {
            Some(f) => (f.name, f.bytes, "text/csv; charset=utf-8"),
            None => return error_page(Some(&c), StatusCode::NOT_FOUND, "no summary"),
        },
        crate::export::Format::Pdf => {
            let p = patient.clone().unwrap_or_default();
            match files
                .into_iter()
                .find(|f| f.name.starts_with(&format!("pdf/{p}-{month}-")))
            {
                Some(f) => (
                    f.name.trim_start_matches("pdf/").to_string(),
                    f.bytes,
                    "application/pdf",
                ),
                None => {
                    return error_page(
                        Some(&c),
                        StatusCode::NOT_FOUND,
                        &format!("No note for patient {p:?} in {month}."),
                    );
                }
            }
        }
        crate::export::Format::Fhir => {
            let bundles: Vec<serde_json::Value> = files
                .iter()
                .filter_map(|f| serde_json::from_slice(&f.bytes).ok())
                .collect();
            (
                format!("fhir-{facility}-{month}.json"),
                serde_json::to_vec_pretty(&bundles).unwrap_or_default(),
                "application/fhir+json",
            )
        }
        crate::export::Format::Hl7 => {
            let mut out = Vec::new();
            for f in &files {
                out.extend_from_slice(&f.bytes);
                if !f.bytes.ends_with(b"\r") {
                    out.push(b'\r');
                }
            }
            (
                format!("hl7-{facility}-{month}.hl7"),
                out,
                "application/hl7-v2",
            )
        }
    };
    audit(
        &shared,
        &c,
        "console-download",
        Some(&facility),
        patient.as_deref(),
        Some(format!("{month} {name}")),
    );
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        name.replace('"', "")
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

// ----- push status ---------------------------------------------------------------------------

pub async fn push_status(State(shared): State<Arc<Shared>>, c: Ctx, Query(query): Q) -> Response {
    if let Some(r) = billing_only(&shared, &c) {
        return r;
    }
    let items: Vec<crate::push::OutboxItem> = crate::push::Outbox::open(shared.store.db())
        .map(|o| o.all())
        .unwrap_or_default()
        .into_iter()
        .filter(|i| c.user.sees(&i.facility))
        .collect();
    let body = html! {
        h1 { "Push status" }
        @if let Some(n) = q(&query, "notice") { div.notice { (n) } }
        @if shared.push_config().is_none() { p.muted { "No EHR is configured on this server (start it with --push push.toml); packages can still be downloaded from Month close." } }
        @if items.is_empty() { div.empty { "Nothing pushed yet. Close a month, then use “Approve and push”." } } @else {
            table #push {
                thead { tr { th { "Facility / month" } th { "Patient" } th { "Target" } th { "Status" } th.num { "Attempts" } th { "EHR answer / error" } th { "" } } }
                tbody { @for i in &items { tr {
                    td { (i.facility) " " (i.month) }
                    td { (i.patient) " v" (i.version) }
                    td { (format!("{:?}", i.target).to_uppercase()) }
                    td { @match i.status {
                        crate::push::Status::Acknowledged => { span.badge.ok { "acknowledged" } }
                        crate::push::Status::Failed => { span.badge.urgent { "failed" } }
                        crate::push::Status::Pending => { span.badge.warning { "pending" } }
                    } }
                    td.num { (i.attempts) }
                    td { (i.acknowledgement.clone().or(i.last_error.clone()).unwrap_or_default()) }
                    td { @if i.status == crate::push::Status::Failed {
                        form.inline method="post" action="/console/push" {
                            (csrf_field(&c))
                            input type="hidden" name="key" value=(i.key);
                            button type="submit" { "Retry" }
                        }
                    } }
                } } }
            }
        }
    };
    page(Some(&c), "Push status", body)
}

pub async fn push_retry(
    State(shared): State<Arc<Shared>>,
    c: Ctx,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(r) = post_guard(&shared, &c, &form, billing_only) {
        return r;
    }
    let key = form.get("key").cloned().unwrap_or_default();
    let outbox = match crate::push::Outbox::open(shared.store.db()) {
        Ok(o) => o,
        Err(e) => return error_page(Some(&c), StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    match outbox.all().into_iter().find(|i| i.key == key) {
        Some(i) if c.user.sees(&i.facility) => {
            if let Err(e) = outbox.retry(&key) {
                return error_page(Some(&c), StatusCode::INTERNAL_SERVER_ERROR, &e);
            }
            audit(
                &shared,
                &c,
                "console-push-retry",
                Some(&i.facility),
                Some(&i.patient),
                Some(key.clone()),
            );
            Redirect::to("/console/push?notice=Queued%20for%20another%20attempt.").into_response()
        }
        Some(i) => forbidden(&shared, &c, &i.facility, None),
        None => error_page(Some(&c), StatusCode::NOT_FOUND, "No such push item."),
    }
}

// ----- devices and audit (admin) -------------------------------------------------------------

fn admin_only(shared: &Shared, c: &Ctx) -> Option<Response> {
    if c.user.role.is_admin() {
        None
    } else {
        audit(
            shared,
            c,
            "console-denied",
            None,
            None,
            Some("admin page".into()),
        );
        Some(error_page(
            Some(c),
            StatusCode::FORBIDDEN,
            "Devices and the audit log are for administrators.",
        ))
    }
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
    viewer: &super::accounts::User,
    colleagues: &std::collections::HashSet<String>,
    r: &crate::security::AuditRecord,
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
    let since = match q(&query, "since").map(crate::admin::parse_since) {
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
        .query(&crate::security::AuditQuery {
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
