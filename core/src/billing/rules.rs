//! `RuleSet`: the billing thresholds, caps and the UNCONFIRMED choices, as data.
//!
//! The built-in default is `medicare-ffs-2026` (`docs/billing-rules.md`). A TOML file
//! may override any field; unknown fields are an error so that a typo never silently changes
//! billing.

use serde::{Deserialize, Serialize};

use crate::model::Program;

/// When a revoked consent stops counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revocation {
    /// Effective at the end of the revocation's calendar month (CMS rule for CCM).
    EndOfMonth,
    /// Effective on the revocation date.
    OnDate,
}

/// Which date decides whether a patient is a Qualified Medicare Beneficiary (APCM level, rule 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QmbOn {
    /// A QMB period covers the APCM line's date of service.
    DateOfService,
    /// A QMB period covers any day of the month.
    AnyDay,
}

/// How BHI is billed in a month with an APCM line (rule 33).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApcmBhi {
    /// BHI time is billed as the APCM add-on G0570, never as 99484.
    Addon,
    /// 99484 as without APCM; G0570 is never produced.
    Standalone,
}

/// Which month a same-practitioner TCM blocks APCM in (rule 43a).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcmBlocksApcm {
    /// The month of the TCM's date of service.
    DosMonth,
    /// Every month the 30-day TCM service period touches, counted from the date of service (the
    /// file carries no discharge date, so the period is taken to start on the date of service).
    ServicePeriod,
}

/// How RPM and RTM in the same month are settled when no program is chosen (rule 46).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RpmRtmConflict {
    /// Neither is billed until `program_choice` names one.
    Neither,
    /// RPM stands; RTM is dropped.
    RpmFirst,
}

/// How a pair of programs that may not be billed together is settled when no program is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Settle {
    /// The pair's first program stands; the second's lines are dropped.
    FirstWins,
    /// Neither program's lines are billed until `program_choice` names one.
    Neither,
}

/// Whose external claim a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByWhom {
    /// The program's own billing practitioner.
    SamePractitioner,
    /// Any practitioner (the same or another).
    Anyone,
    /// Only a practitioner other than the program's billing practitioner.
    Other,
}

/// A family of codes billed outside Rounds and the Rounds lines it excludes in the same month
/// (rules 43 and 48).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalRule {
    /// The family's name in exception reasons ("TCM", "CoCM", "e-visit" …).
    pub family: String,
    /// Codes, or inclusive ranges of five-character codes written `90951-90970`.
    pub codes: Vec<String>,
    pub by: ByWhom,
    /// Programs whose lines are removed.
    #[serde(default)]
    pub removes: Vec<Program>,
    /// Programs that keep their lines but get a warning.
    #[serde(default)]
    pub warns: Vec<Program>,
}

impl ExternalRule {
    /// Whether `code` is in the family.
    pub fn matches(&self, code: &str) -> bool {
        self.codes.iter().any(|c| match c.split_once('-') {
            Some((lo, hi)) => {
                code.len() == lo.len() && lo <= code && code <= hi && same_shape(code, lo)
            }
            None => c == code,
        })
    }
}

/// Same kind of character at each position, so `9095A` is not inside `90951-90970`.
fn same_shape(a: &str, b: &str) -> bool {
    a.bytes()
        .zip(b.bytes())
        .all(|(x, y)| x.is_ascii_digit() == y.is_ascii_digit())
}

/// Two programs that may not both be billed for a patient in a month (rules 44–46).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRule {
    pub first: Program,
    pub second: Program,
    pub settle: Settle,
    /// With `neither`: the programs that get the conflict exception (both when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exceptions_on: Vec<Program>,
}

/// The concurrency matrix as data (billing-rules "Concurrency matrix"), in evaluation order:
/// external services first, then the pairs in their listed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Concurrency {
    pub external: Vec<ExternalRule>,
    pub pairs: Vec<PairRule>,
}

impl Default for Concurrency {
    fn default() -> Concurrency {
        use Program::*;
        let ext =
            |family: &str, codes: &[&str], by: ByWhom, removes: &[Program], warns: &[Program]| {
                ExternalRule {
                    family: family.to_string(),
                    codes: codes.iter().map(|c| c.to_string()).collect(),
                    by,
                    removes: removes.to_vec(),
                    warns: warns.to_vec(),
                }
            };
        let same = ByWhom::SamePractitioner;
        let anyone = ByWhom::Anyone;
        let pair = |first, second, settle, on: &[Program]| PairRule {
            first,
            second,
            settle,
            exceptions_on: on.to_vec(),
        };
        Concurrency {
            external: vec![
                // Rule 43a: the services APCM bundles, by the same practitioner.
                ext(
                    "CCM",
                    &["99437", "99439", "99487", "99489", "99490", "99491"],
                    same,
                    &[Apcm],
                    &[],
                ),
                ext("PCM", &["99424-99427"], same, &[Apcm], &[]),
                ext("TCM", &["99495", "99496"], same, &[Apcm], &[Ccm, Pcm]),
                ext(
                    "interprofessional consultation",
                    &["99446-99449", "99451", "99452"],
                    same,
                    &[Apcm],
                    &[],
                ),
                ext(
                    "remote evaluation (virtual check-in)",
                    &["G2250"],
                    same,
                    &[Apcm],
                    &[],
                ),
                ext("virtual check-in", &["G2251", "G2252"], same, &[Apcm], &[]),
                ext(
                    "e-visit",
                    &["98970-98972", "99421-99423"],
                    same,
                    &[Apcm],
                    &[],
                ),
                // Rules 43b and 47: CoCM by the same practitioner.
                ext(
                    "CoCM",
                    &["99492-99494", "G2214", "G0568", "G0569"],
                    same,
                    &[Bhi],
                    &[],
                ),
                // Rule 43c: one APCM practitioner per month.
                ext("APCM", &["G0556-G0558"], anyone, &[Apcm], &[]),
                // Rule 43d: home-health and hospice supervision, ESRD monthly services.
                ext("home-health supervision", &["G0181"], anyone, &[Ccm], &[]),
                ext("hospice supervision", &["G0182"], anyone, &[Ccm], &[]),
                ext(
                    "ESRD monthly services",
                    &["90951-90970"],
                    anyone,
                    &[Ccm],
                    &[],
                ),
                // Rule 43e: RPM and RTM exclude each other whoever bills them.
                ext(
                    "RPM",
                    &[
                        "99453", "99454", "99445", "99457", "99458", "99470", "99091",
                    ],
                    anyone,
                    &[Rtm],
                    &[],
                ),
                ext(
                    "RTM",
                    &["98975-98978", "98979-98981", "98984-98986"],
                    anyone,
                    &[Rpm],
                    &[],
                ),
            ],
            pairs: vec![
                pair(Apcm, Ccm, Settle::FirstWins, &[]),
                pair(Apcm, Pcm, Settle::FirstWins, &[]),
                pair(Ccm, Pcm, Settle::Neither, &[Pcm]),
                pair(Rpm, Rtm, Settle::Neither, &[]),
            ],
        }
    }
}

/// Every number and choice the engine bills by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleSet {
    /// The name written on every billing run and encounter version.
    pub name: String,
    /// Days after month end before the month is closed (server).
    pub grace_days: u32,

    /// CCM needs at least this many chronic conditions.
    pub ccm_min_chronic_conditions: usize,
    /// 99490 threshold (minutes).
    pub ccm_standard_threshold: u32,
    /// +99439 block (minutes beyond the threshold per unit).
    pub ccm_standard_addon_block: u32,
    /// +99439 unit cap.
    pub ccm_standard_addon_cap: Option<u32>,
    /// 99487 threshold.
    pub ccm_complex_threshold: u32,
    /// +99489 block.
    pub ccm_complex_addon_block: u32,
    /// +99489 unit cap (MUE unconfirmed: none by default).
    pub ccm_complex_addon_cap: Option<u32>,
    /// 99491 threshold (the billing practitioner's own minutes).
    pub ccm_practitioner_threshold: u32,
    /// +99437 block.
    pub ccm_practitioner_addon_block: u32,
    /// +99437 unit cap (none found: none by default).
    pub ccm_practitioner_addon_cap: Option<u32>,
    /// When a CCM (and PCM) consent revocation takes effect.
    pub ccm_revocation: Revocation,

    /// 99426 / 99424 threshold.
    pub pcm_threshold: u32,
    /// +99427 / +99425 block.
    pub pcm_addon_block: u32,
    /// +99427 unit cap (clinical staff).
    pub pcm_staff_addon_cap: Option<u32>,
    /// +99425 unit cap (practitioner).
    pub pcm_practitioner_addon_cap: Option<u32>,

    /// Length of an RPM device period (days).
    pub rpm_period_days: u32,
    /// Fewest reading days for 99445.
    pub rpm_min_days_99445: u32,
    /// Fewest reading days for 99454.
    pub rpm_min_days_99454: u32,
    /// 99470 threshold (management minutes).
    pub rpm_mgmt_99470_threshold: u32,
    /// 99457 threshold.
    pub rpm_mgmt_99457_threshold: u32,
    /// +99458 block.
    pub rpm_mgmt_addon_block: u32,
    /// +99458 unit cap.
    pub rpm_mgmt_addon_cap: Option<u32>,
    /// Management codes need at least one interactive RPM communication in the month.
    pub rpm_mgmt_requires_interactive: bool,
    /// When an RPM consent revocation takes effect.
    pub rpm_revocation: Revocation,
    /// Reading days inside Part A / inpatient stays do not count (an uncertain reading of the regulations: a setting).
    pub rpm_exclude_stay_days: bool,

    /// APCM needs at least one qualifying APCM interaction in the month (rule 27).
    pub apcm_requires_activity: bool,
    /// When an APCM consent revocation takes effect.
    pub apcm_revocation: Revocation,
    /// BHI in an APCM month: the add-on G0570, or 99484 as without APCM (rule 33).
    pub apcm_bhi: ApcmBhi,
    /// APCM stands and CCM/PCM are dropped (rule 44); `false`: neither until one is chosen.
    pub apcm_wins_over_ccm_pcm: bool,
    /// APCM time inside Part A / inpatient stays is not activity (rule 27).
    pub apcm_exclude_stay_activity: bool,
    /// Which date decides QMB status for the APCM level (rule 22).
    pub qmb_on: QmbOn,
    /// 99484 threshold (minutes).
    pub bhi_threshold: u32,
    /// BHI time inside Part A / inpatient stays counts (rule 36).
    pub bhi_count_stay_time: bool,
    /// When a BHI consent revocation takes effect.
    pub bhi_revocation: Revocation,
    /// Length of an RTM device period (days).
    pub rtm_period_days: u32,
    /// Fewest reading days for the short device codes 98984–98986.
    pub rtm_min_days_short: u32,
    /// Fewest reading days for the long device codes 98976–98978.
    pub rtm_min_days_long: u32,
    /// 98979 threshold (management minutes).
    pub rtm_mgmt_short_threshold: u32,
    /// 98980 threshold.
    pub rtm_mgmt_threshold: u32,
    /// +98981 block.
    pub rtm_mgmt_addon_block: u32,
    /// +98981 unit cap.
    pub rtm_mgmt_addon_cap: Option<u32>,
    /// Management codes need at least one interactive RTM communication in the month.
    pub rtm_mgmt_requires_interactive: bool,
    /// When an RTM consent revocation takes effect.
    pub rtm_revocation: Revocation,
    /// RTM reading days inside Part A / inpatient stays do not count.
    pub rtm_exclude_stay_days: bool,
    /// Which month a same-practitioner TCM blocks APCM in (rule 43a).
    pub tcm_blocks_apcm: TcmBlocksApcm,
    /// RPM × RTM in one month without a choice (rule 46); overrides that pair's `settle`.
    pub rpm_rtm_conflict: RpmRtmConflict,

    /// Estimated payments per code, for the company's view (never for billing itself).
    pub fees: FeeSchedule,

    /// The concurrency matrix: which services may not be billed together.
    pub concurrency: Concurrency,
}

/// Estimated Medicare payment per code, in cents: national non-facility amounts, and per
/// payment locality (a practice's `locality`) amounts that replace them code by code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeeSchedule {
    pub national: std::collections::BTreeMap<String, u32>,
    pub localities: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u32>>,
}

impl FeeSchedule {
    /// The estimated amount of one unit of `code` (cents) in a locality (national without one).
    pub fn amount(&self, code: &str, locality: Option<&str>) -> Option<u32> {
        locality
            .and_then(|l| self.localities.get(l))
            .and_then(|m| m.get(code))
            .or_else(|| self.national.get(code))
            .copied()
    }
}

impl Default for FeeSchedule {
    /// Approximate CY2026 national non-facility amounts (`docs/billing-rules.md`, "Estimated
    /// payments": unconfirmed; load the CMS fee schedule before relying on them). Codes without
    /// a known amount are absent and shown as unknown.
    fn default() -> FeeSchedule {
        let national = [
            ("99490", 6613),
            ("99439", 4750),
            ("99491", 8600),
            ("99487", 14000),
            ("99489", 7200),
            ("99427", 4500),
            ("99453", 2171),
            ("99454", 4743),
            ("99445", 4743),
            ("99457", 5177),
            ("99458", 4142),
            ("99470", 2600),
        ]
        .into_iter()
        .map(|(c, a)| (c.to_string(), a))
        .collect();
        FeeSchedule {
            national,
            localities: Default::default(),
        }
    }
}

/// The name of the built-in rule set.
pub const MEDICARE_FFS_2026: &str = "medicare-ffs-2026";

impl Default for RuleSet {
    fn default() -> RuleSet {
        RuleSet {
            name: MEDICARE_FFS_2026.to_string(),
            grace_days: 7,
            ccm_min_chronic_conditions: 2,
            ccm_standard_threshold: 20,
            ccm_standard_addon_block: 20,
            ccm_standard_addon_cap: Some(2),
            ccm_complex_threshold: 60,
            ccm_complex_addon_block: 30,
            ccm_complex_addon_cap: None,
            ccm_practitioner_threshold: 30,
            ccm_practitioner_addon_block: 30,
            ccm_practitioner_addon_cap: None,
            ccm_revocation: Revocation::EndOfMonth,
            pcm_threshold: 30,
            pcm_addon_block: 30,
            pcm_staff_addon_cap: Some(2),
            pcm_practitioner_addon_cap: None,
            rpm_period_days: 30,
            rpm_min_days_99445: 2,
            rpm_min_days_99454: 16,
            rpm_mgmt_99470_threshold: 10,
            rpm_mgmt_99457_threshold: 20,
            rpm_mgmt_addon_block: 20,
            rpm_mgmt_addon_cap: Some(2),
            rpm_mgmt_requires_interactive: true,
            rpm_revocation: Revocation::OnDate,
            rpm_exclude_stay_days: true,
            apcm_requires_activity: true,
            apcm_revocation: Revocation::EndOfMonth,
            apcm_bhi: ApcmBhi::Addon,
            apcm_wins_over_ccm_pcm: true,
            apcm_exclude_stay_activity: true,
            qmb_on: QmbOn::DateOfService,
            bhi_threshold: 20,
            bhi_count_stay_time: true,
            bhi_revocation: Revocation::EndOfMonth,
            rtm_period_days: 30,
            rtm_min_days_short: 2,
            rtm_min_days_long: 16,
            rtm_mgmt_short_threshold: 10,
            rtm_mgmt_threshold: 20,
            rtm_mgmt_addon_block: 20,
            rtm_mgmt_addon_cap: Some(2),
            rtm_mgmt_requires_interactive: true,
            rtm_revocation: Revocation::OnDate,
            rtm_exclude_stay_days: true,
            tcm_blocks_apcm: TcmBlocksApcm::DosMonth,
            rpm_rtm_conflict: RpmRtmConflict::Neither,
            fees: FeeSchedule::default(),
            concurrency: Concurrency::default(),
        }
    }
}

/// A rule-set file that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("rule set: {0}")]
pub struct RuleSetError(String);

impl RuleSet {
    /// Parse a TOML rule set; fields not given keep the `medicare-ffs-2026` defaults.
    pub fn from_toml(text: &str) -> Result<RuleSet, RuleSetError> {
        let rules: RuleSet = toml::from_str(text).map_err(|e| RuleSetError(e.to_string()))?;
        rules.check()?;
        Ok(rules)
    }

    fn check(&self) -> Result<(), RuleSetError> {
        let blocks = [
            ("ccm_standard_addon_block", self.ccm_standard_addon_block),
            ("ccm_complex_addon_block", self.ccm_complex_addon_block),
            (
                "ccm_practitioner_addon_block",
                self.ccm_practitioner_addon_block,
            ),
            ("pcm_addon_block", self.pcm_addon_block),
            ("rpm_mgmt_addon_block", self.rpm_mgmt_addon_block),
            ("rpm_period_days", self.rpm_period_days),
            ("rtm_mgmt_addon_block", self.rtm_mgmt_addon_block),
            ("rtm_period_days", self.rtm_period_days),
            ("rtm_min_days_short", self.rtm_min_days_short),
        ];
        for (name, v) in blocks {
            if v == 0 {
                return Err(RuleSetError(format!("{name} must be at least 1")));
            }
        }
        if self.rpm_min_days_99454 <= self.rpm_min_days_99445 {
            return Err(RuleSetError(
                "rpm_min_days_99454 must be above rpm_min_days_99445".into(),
            ));
        }
        if self.rpm_mgmt_99457_threshold <= self.rpm_mgmt_99470_threshold {
            return Err(RuleSetError(
                "rpm_mgmt_99457_threshold must be above rpm_mgmt_99470_threshold".into(),
            ));
        }
        if self.rtm_min_days_long <= self.rtm_min_days_short {
            return Err(RuleSetError(
                "rtm_min_days_long must be above rtm_min_days_short".into(),
            ));
        }
        if self.rtm_mgmt_threshold <= self.rtm_mgmt_short_threshold {
            return Err(RuleSetError(
                "rtm_mgmt_threshold must be above rtm_mgmt_short_threshold".into(),
            ));
        }
        for (i, r) in self.concurrency.external.iter().enumerate() {
            if r.codes.is_empty() {
                return Err(RuleSetError(format!(
                    "concurrency.external[{i}] ({}): codes is empty",
                    r.family
                )));
            }
            for c in &r.codes {
                let ok = match c.split_once('-') {
                    Some((lo, hi)) => {
                        crate::validate::is_hcpcs(lo) && crate::validate::is_hcpcs(hi) && lo <= hi
                    }
                    None => crate::validate::is_hcpcs(c),
                };
                if !ok {
                    return Err(RuleSetError(format!(
                        "concurrency.external[{i}] ({}): {c:?} is neither a CPT/HCPCS code nor a range such as 90951-90970",
                        r.family
                    )));
                }
            }
        }
        for (i, p) in self.concurrency.pairs.iter().enumerate() {
            if p.first == p.second {
                return Err(RuleSetError(format!(
                    "concurrency.pairs[{i}]: a program cannot conflict with itself"
                )));
            }
        }
        Ok(())
    }

    /// The pairs with the named settings applied: `apcm_wins_over_ccm_pcm` settles APCM × CCM
    /// and APCM × PCM, `rpm_rtm_conflict` settles RPM × RTM.
    pub fn pairs(&self) -> Vec<PairRule> {
        let is = |p: &PairRule, a: Program, b: Program| {
            (p.first == a && p.second == b) || (p.first == b && p.second == a)
        };
        self.concurrency
            .pairs
            .iter()
            .map(|p| {
                let mut p = p.clone();
                if is(&p, Program::Apcm, Program::Ccm) || is(&p, Program::Apcm, Program::Pcm) {
                    if self.apcm_wins_over_ccm_pcm {
                        if p.first != Program::Apcm {
                            std::mem::swap(&mut p.first, &mut p.second);
                        }
                        p.settle = Settle::FirstWins;
                    } else {
                        p.settle = Settle::Neither;
                    }
                }
                if is(&p, Program::Rpm, Program::Rtm) {
                    match self.rpm_rtm_conflict {
                        RpmRtmConflict::Neither => p.settle = Settle::Neither,
                        RpmRtmConflict::RpmFirst => {
                            if p.first != Program::Rpm {
                                std::mem::swap(&mut p.first, &mut p.second);
                            }
                            p.settle = Settle::FirstWins;
                        }
                    }
                }
                p
            })
            .collect()
    }

    /// The rule set as TOML (every field), for documentation and editing.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// Add-on units: full blocks beyond the base threshold, capped.
pub fn addon_units(minutes: u32, threshold: u32, block: u32, cap: Option<u32>) -> u32 {
    if minutes < threshold || block == 0 {
        return 0;
    }
    let units = (minutes - threshold) / block;
    cap.map_or(units, |c| units.min(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_and_rejects_typos() {
        let r = RuleSet::from_toml("name = \"payer-x\"\nccm_standard_addon_cap = 1\n").unwrap();
        assert_eq!(r.name, "payer-x");
        assert_eq!(r.ccm_standard_addon_cap, Some(1));
        assert_eq!(r.ccm_standard_threshold, 20);
        assert!(RuleSet::from_toml("ccm_treshold = 5").is_err());
        assert!(RuleSet::from_toml("pcm_addon_block = 0").is_err());
        let round = RuleSet::from_toml(&RuleSet::default().to_toml()).unwrap();
        assert_eq!(round, RuleSet::default());
    }

    #[test]
    fn addon_unit_arithmetic() {
        assert_eq!(addon_units(39, 20, 20, Some(2)), 0);
        assert_eq!(addon_units(40, 20, 20, Some(2)), 1);
        assert_eq!(addon_units(200, 20, 20, Some(2)), 2);
        assert_eq!(addon_units(150, 60, 30, None), 3);
    }
}
