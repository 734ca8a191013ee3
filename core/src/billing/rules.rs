//! `RuleSet`: the billing thresholds, caps and the UNCONFIRMED choices, as data.
//!
//! The built-in default is `medicare-ffs-2026` (`docs/billing-rules.md`). A TOML file
//! may override any field; unknown fields are an error so that a typo never silently changes
//! billing.

use serde::{Deserialize, Serialize};

/// When a revoked consent stops counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revocation {
    /// Effective at the end of the revocation's calendar month (CMS rule for CCM).
    EndOfMonth,
    /// Effective on the revocation date.
    OnDate,
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

    /// Estimated payments per code, for the company's view (never for billing itself).
    pub fees: FeeSchedule,
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
            fees: FeeSchedule::default(),
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
        Ok(())
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
