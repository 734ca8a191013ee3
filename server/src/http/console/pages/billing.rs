//! Month close, downloads and the EHR push: the billing pages.

use super::*;

// ----- month close ---------------------------------------------------------------------------

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
    let practice = match practice_of(&shared, &c, q(&query, "practice")) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let scoped = |v: Vec<crate::services::ledger::EncounterVersion>| match &practice {
        Some(p) => crate::services::ledger::for_practice(&v, p, &facility),
        None => v,
    };
    let closed = shared.ledger.is_closed(&facility, month);
    let latest = scoped(shared.ledger.latest(&facility, month));
    let all = scoped(shared.ledger.versions(&facility, month));
    let practice_q = practice
        .as_ref()
        .map(|p| format!("&practice={}", urlencode(p)))
        .unwrap_or_default();
    let may_close = !c.user.is_practice_staff();
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
    let dl = |fmt: &str| {
        format!("/console/download?facility={facility}&month={month}&format={fmt}{practice_q}")
    };
    let body = html! {
        h1 { "Month close — " (fd.data.facility.name) ", " (month.first_day().format("%B %Y")) }
        @if let Some(n) = notice { div.notice { (n) } }
        @if let Some(p) = &practice { p { "Practice " strong #practice { (p) } ": its patients and lines only." } }
        (facility_picker(&shared, &c, &facility, "/console/close", html! {
            label { "Month " input type="month" name="month" value=(month.to_string()); }
        }))
        table #facilities {
            thead { tr { th { "Facility" } th { (month.first_day().format("%B %Y")) } th.num { "Encounters" } th.num { "Amended / voided" } } }
            tbody { @for f in &facilities_of(&shared, &c) {
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
            @if may_close {
                form.inline method="post" action="/console/close" {
                    (csrf_field(&c))
                    input type="hidden" name="facility" value=(facility);
                    input type="hidden" name="month" value=(month.to_string());
                    button #close-month type="submit" { @if closed { "Re-evaluate month" } @else { "Close month" } }
                }
            }
            " "
            @if closed && can_push {
                form.inline method="post" action="/console/push-month" {
                    (csrf_field(&c))
                    input type="hidden" name="facility" value=(facility);
                    input type="hidden" name="month" value=(month.to_string());
                    @if let Some(p) = &practice { input type="hidden" name="practice" value=(p); }
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
                        td { a href=(format!("/console/download?facility={facility}&month={month}&format=pdf&patient={}{practice_q}", v.patient)) { "PDF" } }
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
    // A facility's month is closed for every practice at once: by the company or the
    // facility's billing staff, not by one practice's.
    if !c.user.sees(&facility) || c.user.is_practice_staff() {
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
    let practice = match practice_of(&shared, &c, form.get("practice").map(String::as_str)) {
        Ok(p) => p,
        Err(r) => return r,
    };
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
        let outbox = crate::services::push::Outbox::open(s.store.db())?;
        outbox
            .enqueue(&s.store, &s.ledger, &config, &f, month, practice.as_deref())
            .map_err(|e| e.to_string())
    })
    .await;
    match result {
        Ok(Ok(queued)) => {
            let n = queued.added;
            let missing = if queued.without_target.is_empty() {
                String::new()
            } else {
                format!(
                    " Not queued (no EHR target configured): practice {}.",
                    queued.without_target.join(", ")
                )
            };
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
                urlencode(&format!(
                    "{n} messages queued for {facility} {month}.{missing}"
                ))
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
        Some("csv") => crate::services::export::Format::Csv,
        Some("fhir") => crate::services::export::Format::Fhir,
        Some("hl7") => crate::services::export::Format::Hl7,
        Some("pdf") => crate::services::export::Format::Pdf,
        other => {
            return error_page(
                Some(&c),
                StatusCode::BAD_REQUEST,
                &format!("format: {other:?} is not csv, fhir, hl7 or pdf"),
            );
        }
    };
    let patient = q(&query, "patient").map(str::to_string);
    if format == crate::services::export::Format::Pdf && patient.is_none() {
        return error_page(
            Some(&c),
            StatusCode::BAD_REQUEST,
            "patient: a PDF note is per patient",
        );
    }
    let practice = match practice_of(&shared, &c, q(&query, "practice")) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if let Some(pid) = &patient
        && c.user.is_practice_staff()
    {
        let (fd, _) = match load(&shared, &c, &facility).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let seen = fd
            .data
            .patients
            .iter()
            .find(|p| &p.id == pid)
            .is_some_and(|p| {
                c.user
                    .sees_patient(&facility, &fd.data.practices_of_patient(p))
            });
        if !seen {
            return forbidden(&shared, &c, &facility, Some(pid));
        }
    }
    let s = shared.clone();
    let f = facility.clone();
    let files = tokio::task::spawn_blocking(move || {
        crate::services::export::export(
            &s.store,
            &s.ledger,
            &f,
            month,
            format,
            &rounds_core::ehr::ExportConfig::default(),
            practice.as_deref(),
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
        crate::services::export::Format::Csv => {
            match files.into_iter().find(|f| f.name.ends_with(".csv")) {
                Some(f) => (f.name, f.bytes, "text/csv; charset=utf-8"),
                None => return error_page(Some(&c), StatusCode::NOT_FOUND, "no summary"),
            }
        }
        crate::services::export::Format::Pdf => {
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
        crate::services::export::Format::Fhir => {
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
        crate::services::export::Format::Hl7 => {
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
    let items: Vec<crate::services::push::OutboxItem> =
        crate::services::push::Outbox::open(shared.store.db())
            .map(|o| o.all())
            .unwrap_or_default()
            .into_iter()
            .filter(|i| c.user.sees_package(&i.facility, i.practice.as_deref()))
            .collect();
    let body = html! {
        h1 { "Push status" }
        @if let Some(n) = q(&query, "notice") { div.notice { (n) } }
        @if shared.push_config().is_none() { p.muted { "No EHR is configured on this server (start it with --push push.toml); packages can still be downloaded from Month close." } }
        @if items.is_empty() { div.empty { "Nothing pushed yet. Close a month, then use “Approve and push”." } } @else {
            table #push {
                thead { tr { th { "Facility / month" } th { "Patient" } th { "Target" } th { "Status" } th.num { "Attempts" } th { "EHR answer / error" } th { "" } } }
                tbody { @for i in &items { tr {
                    td { (i.facility) " " (i.month) @if let Some(p) = &i.practice { " · " (p) } }
                    td { (i.patient) " v" (i.version) }
                    td { (format!("{:?}", i.target).to_uppercase()) }
                    td { @match i.status {
                        crate::services::push::Status::Acknowledged => { span.badge.ok { "acknowledged" } }
                        crate::services::push::Status::Failed => { span.badge.urgent { "failed" } }
                        crate::services::push::Status::Pending => { span.badge.warning { "pending" } }
                    } }
                    td.num { (i.attempts) }
                    td {
                        (i.acknowledgement.clone().or(i.last_error.clone()).unwrap_or_default())
                        @let refused: Vec<_> = i.resources.iter().filter(|r| r.error.is_some()).collect();
                        @if !refused.is_empty() {
                            ul.refused { @for r in refused { li { (r.resource) " — " (r.status) ": " (r.error.clone().unwrap_or_default()) } } }
                        }
                    }
                    td { @if i.status == crate::services::push::Status::Failed {
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
    let outbox = match crate::services::push::Outbox::open(shared.store.db()) {
        Ok(o) => o,
        Err(e) => return error_page(Some(&c), StatusCode::INTERNAL_SERVER_ERROR, &e),
    };
    match outbox.all().into_iter().find(|i| i.key == key) {
        Some(i) if c.user.sees_package(&i.facility, i.practice.as_deref()) => {
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
