//! Time entries cut into local days, and counted: who qualifies, what falls in a stay or after
//! death, and how overlapping time by one person is counted once.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

use crate::model::{Interaction, Program};

/// A piece of one interaction that falls on one local date.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub entry: Uuid,
    pub person: String,
    pub program: Program,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub date: NaiveDate,
    pub interactive: bool,
}

/// The UTC instant of local midnight at the start of `date` (the earliest, if a DST change makes
/// it ambiguous; the first valid instant after it if midnight does not exist that day).
pub fn local_midnight(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let naive = date.and_time(chrono::NaiveTime::MIN);
    for hours in 0..4 {
        if let Some(t) = tz
            .from_local_datetime(&(naive + Duration::hours(hours)))
            .earliest()
        {
            return t.with_timezone(&Utc);
        }
    }
    naive.and_utc()
}

/// Cut an interaction at every local midnight it crosses.
pub fn split_by_local_day(i: &Interaction, tz: Tz) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut start = i.started_at.with_timezone(&Utc);
    let end = i.ended_at.with_timezone(&Utc);
    while start < end {
        let date = start.with_timezone(&tz).date_naive();
        let next = date
            .succ_opt()
            .map(|d| local_midnight(tz, d))
            .unwrap_or(end);
        let cut = if next > start { next.min(end) } else { end };
        out.push(Segment {
            entry: i.id,
            person: i.staff.clone(),
            program: i.program,
            start,
            end: cut,
            date,
            interactive: i.interactive,
        });
        start = cut;
    }
    out
}

/// The result of counting qualifying segments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counted {
    /// Effective seconds per segment index (overlap with the same person's earlier time removed).
    pub seconds: Vec<i64>,
    /// Seconds counted once because the same person's entries overlapped, per person.
    pub overlap: BTreeMap<String, i64>,
}

/// Count segments so that a person's overlapping time counts once: each person's segments are
/// taken in order of (start, end, entry id) and each contributes only what earlier ones did not
/// cover. The result does not depend on the order of the input.
pub fn count_once_per_person(segments: &[Segment]) -> Counted {
    let mut by_person: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in segments.iter().enumerate() {
        by_person.entry(s.person.as_str()).or_default().push(i);
    }
    let mut counted = Counted {
        seconds: vec![0; segments.len()],
        overlap: BTreeMap::new(),
    };
    for (person, mut idx) in by_person {
        idx.sort_by(|&a, &b| {
            let (x, y) = (&segments[a], &segments[b]);
            (x.start, x.end, x.entry).cmp(&(y.start, y.end, y.entry))
        });
        let mut covered_until: Option<DateTime<Utc>> = None;
        for i in idx {
            let s = &segments[i];
            let from = covered_until.map_or(s.start, |c| c.max(s.start));
            let effective = (s.end - from).num_seconds().max(0);
            let full = (s.end - s.start).num_seconds();
            counted.seconds[i] = effective;
            if full > effective {
                *counted.overlap.entry(person.to_string()).or_default() += full - effective;
            }
            covered_until = Some(covered_until.map_or(s.end, |c| c.max(s.end)));
        }
    }
    counted
}

/// Whole minutes from seconds (floored).
pub fn whole_minutes(seconds: i64) -> u32 {
    u32::try_from(seconds.max(0) / 60).unwrap_or(u32::MAX)
}

/// `12 min 30 s`, `45 s`, `20 min`.
pub fn human_duration(seconds: i64) -> String {
    let (m, s) = (seconds / 60, seconds % 60);
    match (m, s) {
        (0, s) => format!("{s} s"),
        (m, 0) => format!("{m} min"),
        (m, s) => format!("{m} min {s} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn inter(start: &str, end: &str) -> Interaction {
        Interaction {
            id: Uuid::nil(),
            patient: "p".into(),
            staff: "s".into(),
            program: Program::Ccm,
            started_at: DateTime::<FixedOffset>::parse_from_rfc3339(start).unwrap(),
            ended_at: DateTime::<FixedOffset>::parse_from_rfc3339(end).unwrap(),
            interactive: true,
            activity: None,
            note: None,
            amends: None,
        }
    }

    #[test]
    fn splits_at_local_midnight_across_dst() {
        let tz: Tz = "America/New_York".parse().unwrap();
        // 2026-10-31 23:50 EDT to 2026-11-01 00:20 EDT: 10 min on Oct 31, 20 min on Nov 1.
        let segs = split_by_local_day(
            &inter("2026-10-31T23:50:00-04:00", "2026-11-01T00:20:00-04:00"),
            tz,
        );
        assert_eq!(segs.len(), 2);
        assert_eq!((segs[0].end - segs[0].start).num_minutes(), 10);
        assert_eq!((segs[1].end - segs[1].start).num_minutes(), 20);
        // DST ends 2026-11-01 02:00 EDT → 01:00 EST: 00:30 EDT to 02:30 EST is 3 hours.
        let segs = split_by_local_day(
            &inter("2026-11-01T00:30:00-04:00", "2026-11-01T02:30:00-05:00"),
            tz,
        );
        assert_eq!(segs.len(), 1);
        assert_eq!((segs[0].end - segs[0].start).num_minutes(), 180);
    }

    #[test]
    fn overlap_counts_once() {
        let tz: Tz = "UTC".parse().unwrap();
        let mut a = split_by_local_day(&inter("2026-11-03T10:00:00Z", "2026-11-03T10:20:00Z"), tz);
        let mut b = split_by_local_day(&inter("2026-11-03T10:10:00Z", "2026-11-03T10:25:00Z"), tz);
        b[0].entry = Uuid::max();
        a.append(&mut b);
        let c = count_once_per_person(&a);
        assert_eq!(c.seconds.iter().sum::<i64>(), 25 * 60);
        assert_eq!(c.overlap["s"], 10 * 60);
    }
}
