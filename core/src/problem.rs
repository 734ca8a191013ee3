//! `Problem`: one thing wrong with one entry, naming the entry and the field.

use std::fmt;

/// One problem with input: which entry, which field, what is wrong. Never carries patient names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// The entry, e.g. `interaction 0193…` or `patients[3]` when it has no usable id.
    pub entry: String,
    /// The field, e.g. `ended_at` or `conditions[1].icd10`; empty for the entry as a whole.
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(
        entry: impl Into<String>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            entry: entry.into(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.entry, self.message)
        } else {
            write!(
                f,
                "{}: field `{}`: {}",
                self.entry, self.field, self.message
            )
        }
    }
}

/// Several problems, shown one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}
