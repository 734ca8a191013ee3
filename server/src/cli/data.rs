//! Commands on a `rounds-data/1` file, with no server or store: `bill`, `worklist`, `rules`,
//! `check`.

use super::*;

pub(super) fn bill(
    data: PathBuf,
    month: String,
    rules: Option<PathBuf>,
    format: BillFormat,
) -> Result<(), CliError> {
    let month = parse_month(&month)?;
    let rules = load_rules(rules.as_deref())?;
    let data = load_data(&data)?;
    let run = billing::bill(&data, month, &rules).map_err(|e| CliError::Invalid(e.to_string()))?;
    // Render fully before writing, so that a failure prints nothing on stdout.
    let mut buf = Vec::new();
    match format {
        BillFormat::Json => {
            serde_json::to_writer_pretty(&mut buf, &run).map_err(out_err)?;
            buf.push(b'\n');
        }
        BillFormat::Csv => summary::write_csv(&data, &run, &mut buf).map_err(out_err)?,
    }
    std::io::stdout().lock().write_all(&buf).map_err(out_err)
}

pub(super) fn worklist(
    data: PathBuf,
    as_of: String,
    rules: Option<PathBuf>,
    format: WorklistFormat,
) -> Result<(), CliError> {
    let as_of: NaiveDate = as_of
        .parse()
        .map_err(|_| CliError::BadDate(as_of.clone()))?;
    let rules = load_rules(rules.as_deref())?;
    let data = load_data(&data)?;
    let items =
        worklist::worklist(&data, as_of, &rules).map_err(|e| CliError::Invalid(e.to_string()))?;
    let text = match format {
        WorklistFormat::Json => serde_json::to_string_pretty(&items).map_err(out_err)? + "\n",
        WorklistFormat::Table => worklist_table(&items),
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(out_err)
}

pub(super) fn rules() -> Result<(), CliError> {
    print!("{}", RuleSet::default().to_toml());
    Ok(())
}

pub(super) fn check(data: PathBuf) -> Result<(), CliError> {
    let d = load_data(&data)?;
    println!(
        "{}: valid ({} patients, {} interactions, {} readings)",
        data.display(),
        d.patients.len(),
        d.interactions.len(),
        d.readings.len()
    );
    Ok(())
}
