//! Running the server: `serve` (its flags become `ServeOptions`) and `demo`.

use super::*;

pub(super) fn serve(args: ServeArgs) -> Result<(), CliError> {
    let ServeArgs {
        store,
        listen,
        tls_cert,
        tls_key,
        insecure_http,
        max_frame,
        dev_token,
        max_connections_per_device,
        max_documents_per_connection,
        max_outbound_bytes,
        sign_ins_per_minute,
        network,
        frames_per_second,
        frame_burst,
        enrolment_code_hours,
        rules,
        close_check_seconds,
        notify,
        alert_tick_seconds,
        clock_file,
        push,
    } = args;
    let push = push
        .as_deref()
        .map(crate::services::push::PushConfig::load)
        .transpose()
        .map_err(CliError::Invalid)?;
    let rules = load_rules(rules.as_deref())?;
    let notify = notify
        .as_deref()
        .map(crate::services::notify::NotifyConfig::load)
        .transpose()
        .map_err(|e| CliError::Invalid(e.to_string()))?;
    let opts = crate::server::ServeOptions {
        store,
        listen,
        tls_cert,
        tls_key,
        insecure_http,
        max_frame,
        dev_token,
        limits: crate::server::Limits {
            connections_per_device: max_connections_per_device,
            documents_per_connection: max_documents_per_connection,
            outbound_bytes: max_outbound_bytes,
            sign_ins_per_minute,
            network: *network,
            frames_per_second,
            frame_burst,
            code_lifetime: chrono::Duration::milliseconds(
                (enrolment_code_hours * 3_600_000.0) as i64,
            ),
            ..crate::server::Limits::default()
        },
        rules,
        close_check: std::time::Duration::from_secs(close_check_seconds.max(1)),
        notify,
        clock: clock_file
            .map(crate::services::alerting::Clock::File)
            .unwrap_or_default(),
        alert_tick: std::time::Duration::from_secs(alert_tick_seconds.max(1)),
        push,
    };
    runtime()?
        .block_on(crate::http::serve(opts))
        .map_err(|e| CliError::Invalid(e.to_string()))
}

pub(super) fn demo(
    store: PathBuf,
    out: PathBuf,
    listen: std::net::SocketAddr,
    tablets: usize,
    exit: bool,
) -> Result<(), CliError> {
    runtime()?.block_on(crate::cli::demo::run(crate::cli::demo::DemoOptions {
        store,
        out,
        listen,
        tablets,
        exit,
    }))
}
