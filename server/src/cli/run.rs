//! Carrying out a parsed command: one line per command over the file of its group
//! (`data`, `admin`, `store`, `serve`).

use super::*;

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Bill {
            data,
            month,
            rules,
            format,
        } => data::bill(data, month, rules, format),
        Command::Worklist {
            data,
            as_of,
            rules,
            format,
        } => data::worklist(data, as_of, rules, format),
        Command::User {
            command,
            store,
            server,
        } => admin::user(command, store, server),
        Command::Practice {
            command,
            store,
            server,
        } => admin::practice(command, store, server),
        Command::Integration {
            command,
            store,
            server,
        } => admin::integration(command, store, server),
        Command::Protocol {
            command,
            store,
            server,
        } => admin::protocol(command, store, server),
        Command::Quarantine {
            command,
            store,
            server,
        } => admin::quarantine(command, store, server),
        Command::Device {
            command,
            store,
            server,
        } => admin::device(command, store, server),
        Command::Audit {
            patient,
            device,
            since,
            csv,
            store,
            server,
        } => admin::audit(patient, device, since, csv, store, server),
        Command::CloseMonth {
            facility,
            month,
            store,
            server,
        } => admin::close_month(facility, month, store, server),
        Command::Encounters {
            facility,
            month,
            changed,
            practice,
            store,
            server,
        } => admin::encounters(facility, month, changed, practice, store, server),
        Command::Export {
            facility,
            month,
            format,
            practice,
            out,
            store,
            server,
        } => admin::export(facility, month, format, practice, out, store, server),
        Command::Demo {
            store,
            out,
            listen,
            tablets,
            exit,
        } => serve::demo(store, out, listen, tablets, exit),
        Command::ReadModel { action, store } => store::read_model(action, store),
        Command::Push {
            command,
            store,
            server,
        } => store::push(command, store, server),
        Command::Rules => data::rules(),
        Command::Serve(args) => serve::serve(*args),
        Command::Backup { to, store, server } => {
            let progress = crate::cli::progress::Progress::new("backup", None);
            progress.update(None, &format!("copying the store to {}", to.display()));
            let out = crate::cli::admin_client::run(
                &crate::cli::admin_client::AdminTarget { store, server },
                crate::cli::admin_client::Op::Backup { to },
            )?;
            progress.finish("done");
            println!("{}", out.trim_end());
            Ok(())
        }
        Command::Migrate { from, to } => {
            let progress = crate::cli::progress::Progress::new("migrate", None);
            let m = crate::services::migrate::migrate(&from, &to, &mut |step| {
                progress.update(None, step);
            })
            .map_err(|e| CliError::Invalid(e.to_string()))?;
            progress.finish("done");
            println!(
                "{}",
                serde_json::json!({"migrated": m, "to": to.to_string()})
            );
            if from.join("tls/cert.pem").exists() {
                eprintln!(
                    "rounds: the tablets trust this store's certificate: serve the database with --tls-cert {} --tls-key {}",
                    from.join("tls/cert.pem").display(),
                    from.join("tls/key.pem").display()
                );
            }
            Ok(())
        }
        Command::Restore { from, to } => {
            let progress = crate::cli::progress::Progress::new("restore", None);
            progress.update(None, "copying");
            let m = crate::services::backup::restore(&from, &to, &mut |step| {
                progress.update(None, step);
            })
            .map_err(|e| CliError::Invalid(e.to_string()))?;
            progress.finish("done");
            println!(
                "{}",
                serde_json::json!({"restored": to, "from": from, "documents": m.documents.len(), "backup_created_at": m.created_at})
            );
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check(args),
        } => {
            let text = super::config::check(&args)?;
            print!("{text}");
            Ok(())
        }
        Command::Import {
            file,
            facility,
            store,
            server,
            token,
            fingerprint,
        } => match facility {
            Some(f) => store::import_roster(file, f, store, server, token, fingerprint),
            None => store::import(file, store, server, token, fingerprint),
        },
        Command::Check { data } => data::check(data),
    }
}
