//! Running the server: `serve` (its flags become `ServeOptions`) and `demo`.

use super::*;

pub(super) fn serve(args: ServeArgs) -> Result<(), CliError> {
    let push = args
        .push
        .as_deref()
        .map(crate::services::push::PushConfig::load)
        .transpose()
        .map_err(CliError::Invalid)?;
    let rules = load_rules(args.rules.as_deref())?;
    let notify = args
        .notify
        .as_deref()
        .map(crate::services::notify::NotifyConfig::load)
        .transpose()
        .map_err(|e| CliError::Invalid(e.to_string()))?;
    let adt = match (args.adt_listen, args.adt_config.as_deref()) {
        (Some(listen), Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::Invalid(format!("--adt-config {}: {e}", path.display())))?;
            let settings = rounds_core::adt::AdtSettings::parse(&text)
                .map_err(|e| CliError::Invalid(format!("--adt-config {}: {e}", path.display())))?;
            Some(crate::server::AdtListen {
                listen,
                settings,
                tls: args.adt_tls,
            })
        }
        _ => None,
    };
    let opts = crate::server::ServeOptions {
        store: args.store,
        listen: args.listen,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        insecure_http: args.insecure_http,
        max_frame: args.max_frame,
        dev_token: args.dev_token,
        limits: crate::server::Limits {
            connections_per_device: args.max_connections_per_device,
            documents_per_connection: args.max_documents_per_connection,
            idle_documents: args.idle_documents,
            outbound_bytes: args.max_outbound_bytes,
            sign_ins_per_minute: args.sign_ins_per_minute,
            network: *args.network,
            frames_per_second: args.frames_per_second,
            frame_burst: args.frame_burst,
            code_lifetime: chrono::Duration::milliseconds(
                (args.enrolment_code_hours * 3_600_000.0) as i64,
            ),
            ..crate::server::Limits::default()
        },
        rules,
        close_check: std::time::Duration::from_secs(args.close_check_seconds.max(1)),
        notify,
        clock: args
            .clock_file
            .map(crate::services::alerting::Clock::File)
            .unwrap_or_default(),
        alert_tick: std::time::Duration::from_secs(args.alert_tick_seconds.max(1)),
        push,
        adt,
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
