//! The engine's output: one `Encounter` per patient and month, with its lines and reasons.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::month::Month;

/// One billable line (a CPT/HCPCS code with units).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub code: String,
    pub units: u32,
    pub date_of_service: NaiveDate,
    /// ICD-10-CM codes, in the patient's file order.
    pub diagnoses: Vec<String>,
    pub place_of_service: String,
    pub rendering_npi: String,
    /// The practice billing the line (the rendering practitioner's); absent in a file without
    /// practices, whose one practice is the facility's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practice: Option<String>,
    /// The entries (interactions or readings) this line rests on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<Uuid>,
}

/// Whole minutes per bucket (exact durations summed, floored after summing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minutes {
    /// CCM minutes of clinical staff and practitioners.
    pub ccm: u32,
    /// The billing practitioner's own CCM minutes (part of `ccm`).
    pub ccm_practitioner: u32,
    /// PCM minutes (clinical staff and practitioners).
    pub pcm: u32,
    /// RPM treatment-management minutes.
    pub rpm: u32,
    /// APCM minutes (no threshold: reported, rule 29).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub apcm: u32,
    /// BHI minutes (stay time included by default, rule 36).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bhi: u32,
    /// RTM treatment-management minutes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rtm: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl Minutes {
    /// The minutes of one program's bucket.
    pub fn of(&self, program: crate::model::Program) -> u32 {
        use crate::model::Program;
        match program {
            Program::Ccm => self.ccm,
            Program::Pcm => self.pcm,
            Program::Rpm => self.rpm,
            Program::Apcm => self.apcm,
            Program::Bhi => self.bhi,
            Program::Rtm => self.rtm,
        }
    }
}

/// An RPM (or RTM) device period evaluated this month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpmPeriod {
    pub start: NaiveDate,
    /// The period's last counted day (earlier than day 30 when cut short by death or revocation).
    pub end: NaiveDate,
    /// Distinct local days with at least one device reading.
    pub days: u32,
}

/// Which program an exception is about; `general` for the patient as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceptionProgram {
    Ccm,
    Pcm,
    Rpm,
    Apcm,
    Bhi,
    Rtm,
    General,
}

impl From<crate::model::Program> for ExceptionProgram {
    fn from(p: crate::model::Program) -> ExceptionProgram {
        match p {
            crate::model::Program::Ccm => ExceptionProgram::Ccm,
            crate::model::Program::Pcm => ExceptionProgram::Pcm,
            crate::model::Program::Rpm => ExceptionProgram::Rpm,
            crate::model::Program::Apcm => ExceptionProgram::Apcm,
            crate::model::Program::Bhi => ExceptionProgram::Bhi,
            crate::model::Program::Rtm => ExceptionProgram::Rtm,
        }
    }
}

/// What kind of exception, for sorting and filtering in the billing office.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceptionKind {
    /// A requirement (consent, conditions, visit, care plan, enrolment) is missing.
    Requirement,
    /// Not enough minutes or reading days for the code.
    Threshold,
    /// Time or readings that exist but do not count (who, stay, death, revocation).
    NotCounted,
    /// Codes that may not be billed together.
    Conflict,
    /// Something billing staff should look at; the lines stand.
    Warning,
}

/// Why something is not billed, or what to look at; human-readable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Exception {
    pub program: ExceptionProgram,
    pub kind: ExceptionKind,
    pub reason: String,
}

impl Exception {
    pub fn new(
        program: impl Into<ExceptionProgram>,
        kind: ExceptionKind,
        reason: impl Into<String>,
    ) -> Exception {
        Exception {
            program: program.into(),
            kind,
            reason: reason.into(),
        }
    }
}

/// One patient's month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Encounter {
    pub patient: String,
    /// Sorted by code.
    pub lines: Vec<Line>,
    pub minutes: Minutes,
    pub rpm_periods: Vec<RpmPeriod>,
    /// RTM device periods evaluated this month (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rtm_periods: Vec<RpmPeriod>,
    pub exceptions: Vec<Exception>,
    /// Every entry id behind the lines, sorted.
    pub evidence: Vec<Uuid>,
    /// The practices with a practitioner of record in the month, sorted (absent in a file
    /// without practices).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub practices: Vec<String>,
}

impl Encounter {
    /// The practice of a line: its own, or `default` (the facility's implicit practice).
    pub fn line_practice<'a>(line: &'a Line, default: &'a str) -> &'a str {
        line.practice.as_deref().unwrap_or(default)
    }

    /// Whether the month concerns `practice` (`default` standing for a file without practices).
    pub fn concerns(&self, practice: &str, default: &str) -> bool {
        if self.practices.is_empty() {
            practice == default
        } else {
            self.practices.iter().any(|p| p == practice)
        }
    }

    /// The encounter as one practice sees it: only its lines (and their evidence); the
    /// exceptions stay (they explain the month to whoever bills it).
    pub fn for_practice(&self, practice: &str, default: &str) -> Encounter {
        let mut e = self.clone();
        e.lines
            .retain(|l| Encounter::line_practice(l, default) == practice);
        let evidence: std::collections::BTreeSet<Uuid> = e
            .lines
            .iter()
            .flat_map(|l| l.evidence.iter().copied())
            .collect();
        e.evidence = evidence.into_iter().collect();
        e
    }
}

/// The output of `rounds bill`: every patient's encounter for one month.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BillingRun {
    pub month: Month,
    pub rule_set: String,
    pub encounters: Vec<Encounter>,
}
