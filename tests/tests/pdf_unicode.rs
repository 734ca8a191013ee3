//! The PDF note prints names in any Latin script as written: the text extracted back from the
//! PDF (`pdftotext`) contains them, and the page renders (`pdftoppm`).

use rounds_tests::{repo_root, rounds_cli};

const NAMES: [&str; 5] = [
    "José Álvarez",
    "Nguyễn Thị Lan",
    "Zoë Brontë",
    "Øyvind Ødegård",
    "Müller Straße",
];

#[test]
fn names_like_jose_nguyen_zoe_oyvind_and_muller_are_in_the_pdf_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut data: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/sunnyvale.json")).unwrap(),
    )
    .unwrap();
    for (p, name) in data["patients"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(NAMES)
    {
        p["name"] = name.into();
    }
    let file = dir.path().join("data.json");
    std::fs::write(&file, data.to_string()).unwrap();
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    rounds_cli(&["import", "--store", s, file.to_str().unwrap()]);
    rounds_cli(&[
        "close-month",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--store",
        s,
    ]);
    let out = dir.path().join("out");
    rounds_cli(&[
        "export",
        "--facility",
        "sunnyvale",
        "--month",
        "2026-11",
        "--format",
        "pdf",
        "--out",
        out.to_str().unwrap(),
        "--store",
        s,
    ]);
    for (i, name) in NAMES.iter().enumerate() {
        let pdf = out.join(format!("pdf/p-{:03}-2026-11-v1.pdf", i + 1));
        let text = std::process::Command::new("pdftotext")
            .arg(&pdf)
            .arg("-")
            .output()
            .expect("pdftotext (poppler-utils)");
        assert!(text.status.success());
        let text = String::from_utf8(text.stdout).unwrap();
        assert!(
            text.contains(&format!("Patient: {name} (MRN")),
            "{name}: {text}"
        );
        assert!(
            !text.contains('?'),
            "{name}: a character fell back to '?': {text}"
        );
        let png = dir.path().join(format!("page-{i}"));
        let render = std::process::Command::new("pdftoppm")
            .args(["-png", "-r", "50", "-f", "1", "-l", "1"])
            .arg(&pdf)
            .arg(&png)
            .output()
            .unwrap();
        assert!(
            render.status.success(),
            "{}",
            String::from_utf8_lossy(&render.stderr)
        );
        let rendered = std::fs::read(dir.path().join(format!("page-{i}-1.png"))).unwrap();
        assert!(rendered.len() > 2_000, "a rendered page");
    }
}
