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
use rounds_core::billing::worklist::{Adherence, WorklistItem, attach_alerts};
use rounds_core::{Month, Program, ReadingKind};

use super::{Ctx, audit, check_csrf, error_page, forbidden, page};
use crate::http::urlencode;
use crate::server::Shared;
use crate::services::ledger::FacilityData;

type Q = Query<HashMap<String, String>>;

fn q<'a>(query: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    query.get(k).map(String::as_str).filter(|v| !v.is_empty())
}

/// The facilities a user picks from: their own (facility staff), every facility (the company,
/// a practice's staff — whose pages then show only their practices' patients).
fn facilities_of(shared: &Shared, c: &Ctx) -> Vec<String> {
    if c.user.is_company() || c.user.is_practice_staff() {
        shared.facility_ids()
    } else {
        c.user.facilities.clone()
    }
}

/// The facility asked for (or the user's first), checked against the user's facilities.
fn facility_of(
    shared: &Shared,
    c: &Ctx,
    query: &HashMap<String, String>,
) -> Result<String, Response> {
    let f = q(query, "facility")
        .map(str::to_string)
        .or_else(|| facilities_of(shared, c).first().cloned())
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
    let fd =
        tokio::task::spawn_blocking(move || crate::services::ledger::facility_data(&s.store, &f))
            .await
            .map_err(|_| {
                error_page(Some(c), StatusCode::INTERNAL_SERVER_ERROR, "loading failed")
            })?;
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

/// The patients of a facility the user may see: None for all (the company, facility staff),
/// else those with a practitioner of record in one of the user's practices.
fn visible_patients(c: &Ctx, fd: &FacilityData) -> Option<std::collections::HashSet<String>> {
    c.user.practice_scope().map(|_| {
        fd.data
            .patients
            .iter()
            .filter(|p| {
                c.user
                    .sees_patient(&fd.data.facility.id, &fd.data.practices_of_patient(p))
            })
            .map(|p| p.id.clone())
            .collect()
    })
}

/// The practice a practice's staff member works in on this request: the `practice` asked for
/// (403 and audited when not theirs) or their first. None for the company and facility staff.
fn practice_of(shared: &Shared, c: &Ctx, asked: Option<&str>) -> Result<Option<String>, Response> {
    match (c.user.practice_scope(), asked) {
        (None, None) => Ok(None),
        (None, Some(p)) => Ok(Some(p.to_string())),
        (Some(mine), None) => Ok(mine.first().cloned()),
        (Some(_), Some(p)) if c.user.sees_practice(p) => Ok(Some(p.to_string())),
        (Some(_), Some(p)) => Err(super::forbidden_practice(shared, c, p)),
    }
}

fn facility_picker(shared: &Shared, c: &Ctx, current: &str, action: &str, extra: Markup) -> Markup {
    html! {
        form.filters method="get" action=(action) {
            label { "Facility "
                select name="facility" {
                    @for f in &facilities_of(shared, c) {
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
    if let Some(visible) = visible_patients(&c, &fd) {
        items.retain(|i| visible.contains(&i.patient));
    }
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
    // RPM periods heading for too few reading days, the worst first.
    let mut at_risk: Vec<(&WorklistItem, &rounds_core::billing::worklist::OpenPeriod)> = items
        .iter()
        .filter_map(|i| i.period.as_ref().map(|p| (i, p)))
        .filter(|(_, p)| p.adherence != Adherence::OnTrack)
        .collect();
    at_risk.sort_by_key(|(_, p)| (std::cmp::Reverse(p.adherence as u8), p.days_left));
    let body = html! {
        h1 { "Worklist — " (fd.data.facility.name) ", " (month.first_day().format("%B %Y")) }
        p.muted { "As of " (as_of) " (" (tz.name()) "). Minutes and reading days count entries synced to the server." }
        (facility_picker(&shared, &c, &facility, "/console/", html! {
            label { "As of " input type="date" name="as_of" value=(as_of); }
            label { "Program "
                select name="program" {
                    @for p in ["all", "ccm", "pcm", "rpm", "apcm", "bhi", "rtm"] { option value=(p) selected[p == program] { (p.to_uppercase()) } }
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
        @if !at_risk.is_empty() {
            div.card #adherence {
                strong { (at_risk.len()) " RPM period(s) at risk of too few reading days" }
                ul {
                    @for (i, p) in &at_risk {
                        li {
                            a href=(format!("/console/patient?facility={facility}&patient={}&month={month}", i.patient)) { (name_of(&i.patient)) }
                            " " progress value=(p.reading_days.min(16)) max="16" {}
                            " — " (p.adherence.describe(p))
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
                            td.num { @if let Some(p) = &i.period {
                                progress value=(p.reading_days.min(16)) max="16" title=(p.adherence.describe(p)) {}
                                " " (p.reading_days) " / " (p.days_left)
                                @match p.adherence {
                                    Adherence::OnTrack => {},
                                    Adherence::Behind => { " " span.badge.warning title=(p.adherence.describe(p)) { "behind" } },
                                    Adherence::Short => { " " span.badge.warning title=(p.adherence.describe(p)) { "< 16 days" } },
                                    Adherence::Lost => { " " span.badge.urgent title=(p.adherence.describe(p)) { "< 2 days" } },
                                }
                            } @else { "—" } }
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
    if !c
        .user
        .sees_patient(&facility, &fd.data.practices_of_patient(p))
    {
        return forbidden(&shared, &c, &facility, Some(&pid));
    }
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
    // What the facility's ADT feed said (events, status), read from the patient document.
    let adt = {
        let (store, doc_id, id) = (
            shared.store.clone(),
            rounds_core::DocumentId::patient(&facility, &pid),
            pid.clone(),
        );
        tokio::task::spawn_blocking(move || {
            store
                .load_doc(&doc_id)
                .map(|doc| rounds_core::view::read_adt(&doc, &id))
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
    };
    let from_feed = adt
        .events
        .iter()
        .any(|e| !e.cancelled && e.changes.contains(&rounds_core::AdtChange::Admitted));
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
                p { "CCM " (minutes.get(&Program::Ccm).copied().unwrap_or(0) / 60) " min · PCM " (minutes.get(&Program::Pcm).copied().unwrap_or(0) / 60) " min · RPM " (minutes.get(&Program::Rpm).copied().unwrap_or(0) / 60) " min"
                    // APCM, BHI and RTM only when the patient has some this month.
                    @for prog in [Program::Apcm, Program::Bhi, Program::Rtm] {
                        @if let Some(secs) = minutes.get(&prog).filter(|s| **s > 0) {
                            " · " (prog.label()) " " (secs / 60) " min"
                        }
                    }
                }
                p { (readings.len()) " readings" }
            }
            div.card {
                h2 { "Conditions" }
                @if p.conditions.is_empty() { p.muted { "None recorded." } }
                ul { @for cnd in &p.conditions { li { (cnd.icd10) @if cnd.chronic { " (chronic)" } } } }
            }
            div.card #census {
                h2 { "Stay" }
                @if let Some(st) = adt.status() { p { span.badge { (st) } " (facility ADT feed)" } }
                @if from_feed && p.conditions.is_empty() && p.consents.is_empty() {
                    p { span.badge.warning { "pending review" } " Added by the facility's ADT feed: add conditions and consent before anything can bill." }
                }
                @if let Some(into) = &p.merged_into { p { span.badge.warning { "merged" } " Merged into " a href=(format!("/console/patient?facility={facility}&patient={into}")) { (into) } ": this record is not billed." } }
                @if let Some(d) = p.died_on { p { "Died " (d) } }
                @if let Some(d) = p.discharged_on { p { "Discharged " (d) } }
                @for a in &p.absences { p { "Away (discharged, then readmitted) " (a.from) " to " (a.to) ": nothing in these days counts." } }
                @if p.stays.is_empty() { p.muted { "No Part A or inpatient stays." } }
                ul { @for st in &p.stays { li { (match st.kind { rounds_core::StayKind::PartA => "Part A", rounds_core::StayKind::Inpatient => "Hospital inpatient" }) " " (st.from) " to " (st.to_text()) } } }
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
        @if !adt.events.is_empty() {
            h2 { "Census events (ADT feed)" }
            table #adt {
                thead { tr { th { "Effective" } th { "Event" } th { "What it changed" } th { "Message" } } }
                tbody { @for e in adt.events.iter().rev() { tr {
                    td { (e.on) }
                    td { (e.trigger) }
                    td { (e.changes.iter().map(rounds_core::adt::change_text).collect::<Vec<_>>().join(", ")) @if e.cancelled { " " span.badge { "cancelled" } } }
                    td.muted { (e.message) " · received " (local(e.received_at, tz)) }
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

// ----- shared by the pages -------------------------------------------------------------

/// A form post: refused without the session's CSRF token, then unless `role` allows it.
pub(super) fn post_guard(
    shared: &Shared,
    c: &Ctx,
    form: &HashMap<String, String>,
    role: fn(&Shared, &Ctx) -> Option<Response>,
) -> Option<Response> {
    check_csrf(c, form).err().or_else(|| role(shared, c))
}

/// The hidden CSRF field every form carries.
pub(super) fn csrf_field(c: &Ctx) -> Markup {
    html! { input type="hidden" name="csrf" value=(c.session.csrf); }
}

/// None when the user's role may open the page; else the audited 403 page.
pub(super) fn role_only(
    shared: &Shared,
    c: &Ctx,
    allowed: bool,
    page: &str,
    message: &str,
) -> Option<Response> {
    if allowed {
        return None;
    }
    audit(shared, c, "console-denied", None, None, Some(page.into()));
    Some(error_page(Some(c), StatusCode::FORBIDDEN, message))
}

pub(super) fn billing_only(shared: &Shared, c: &Ctx) -> Option<Response> {
    role_only(
        shared,
        c,
        c.user.role.can_bill(),
        "billing page",
        "Month close and push are for billing staff and administrators.",
    )
}

mod admin;
mod billing;
mod practices;

pub use admin::{audit_page, devices, devices_post};
pub use billing::{close_month, close_page, download, push_month, push_retry, push_status};
pub use practices::{
    company, company_csv, practice_summary, practice_summary_csv, practices_page, practices_post,
};
