//! Global configuration (ISB's AppConfig global-config), with ISB's defaults and validation.

use serde::{Deserialize, Serialize};

use super::DomainError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct GlobalConfig {
    pub maintenance_mode: bool,
    pub terms_of_service: String,
    pub leases: LeaseLimits,
    pub cleanup: CleanupPolicy,
    pub auth: AuthPolicy,
    pub notification: NotificationPolicy,
    pub reporting: ReportingPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LeaseLimits {
    pub require_max_budget: bool,
    pub max_budget: f64,
    pub require_max_duration: bool,
    pub max_duration_hours: f64,
    pub max_leases_per_user: u32,
    /// Retention of terminal and denied leases, in days.
    pub ttl: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CleanupPolicy {
    pub number_of_failed_attempts_to_cancel_cleanup: u32,
    pub wait_before_retry_failed_attempt_seconds: u64,
    pub number_of_successful_attempts_to_finish_cleanup: u32,
    pub wait_before_rerun_successful_attempt_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AuthPolicy {
    pub session_duration_in_minutes: u32,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NotificationPolicy {
    pub email_from: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ReportingPolicy {
    pub cost_report_groups: Vec<String>,
    pub require_cost_report_group: bool,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        Self {
            // ISB ships with maintenance mode on; sandboxd's config/default.toml turns it off so
            // the embedded default is usable at once.
            maintenance_mode: true,
            terms_of_service: "Use this sandbox for evaluation only.".into(),
            leases: LeaseLimits::default(),
            cleanup: CleanupPolicy::default(),
            auth: AuthPolicy::default(),
            notification: NotificationPolicy::default(),
            reporting: ReportingPolicy::default(),
        }
    }
}

impl Default for LeaseLimits {
    fn default() -> Self {
        Self {
            require_max_budget: true,
            max_budget: 50.0,
            require_max_duration: true,
            max_duration_hours: 168.0,
            max_leases_per_user: 3,
            ttl: 30,
        }
    }
}

impl Default for CleanupPolicy {
    fn default() -> Self {
        Self {
            number_of_failed_attempts_to_cancel_cleanup: 3,
            wait_before_retry_failed_attempt_seconds: 5,
            number_of_successful_attempts_to_finish_cleanup: 2,
            wait_before_rerun_successful_attempt_seconds: 30,
        }
    }
}

impl Default for AuthPolicy {
    fn default() -> Self {
        Self {
            session_duration_in_minutes: 60,
        }
    }
}

impl GlobalConfig {
    /// Validate; the error names the key (as written in the config file, camelCase).
    pub fn validate(&self) -> Result<(), DomainError> {
        let leases = &self.leases;
        if !(leases.max_budget.is_finite() && leases.max_budget > 0.0) {
            return Err(DomainError::invalid("leases.maxBudget", "must be > 0"));
        }
        if !(leases.max_duration_hours.is_finite() && leases.max_duration_hours > 0.0) {
            return Err(DomainError::invalid(
                "leases.maxDurationHours",
                "must be > 0",
            ));
        }
        if leases.max_leases_per_user == 0 {
            return Err(DomainError::invalid(
                "leases.maxLeasesPerUser",
                "must be >= 1",
            ));
        }
        if leases.ttl == 0 {
            return Err(DomainError::invalid("leases.ttl", "must be >= 1 day"));
        }
        if self.cleanup.number_of_failed_attempts_to_cancel_cleanup == 0 {
            return Err(DomainError::invalid(
                "cleanup.numberOfFailedAttemptsToCancelCleanup",
                "must be >= 1",
            ));
        }
        if self.cleanup.number_of_successful_attempts_to_finish_cleanup == 0 {
            return Err(DomainError::invalid(
                "cleanup.numberOfSuccessfulAttemptsToFinishCleanup",
                "must be >= 1",
            ));
        }
        if self.auth.session_duration_in_minutes == 0 {
            return Err(DomainError::invalid(
                "auth.sessionDurationInMinutes",
                "must be >= 1",
            ));
        }
        if self.reporting.cost_report_groups.len() > 100 {
            return Err(DomainError::invalid(
                "reporting.costReportGroups",
                "at most 100 groups",
            ));
        }
        if self
            .reporting
            .cost_report_groups
            .iter()
            .any(|group| group.trim().is_empty())
        {
            return Err(DomainError::invalid(
                "reporting.costReportGroups",
                "group names must not be empty",
            ));
        }
        Ok(())
    }

    pub fn lease_ttl(&self) -> chrono::Duration {
        chrono::Duration::days(i64::from(self.leases.ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_isbs() {
        let config = GlobalConfig::default();
        assert_eq!(config.leases.max_leases_per_user, 3);
        assert_eq!(config.leases.max_budget, 50.0);
        assert_eq!(config.leases.max_duration_hours, 168.0);
        assert_eq!(config.leases.ttl, 30);
        assert_eq!(
            config
                .cleanup
                .number_of_successful_attempts_to_finish_cleanup,
            2
        );
        assert_eq!(
            config.cleanup.wait_before_rerun_successful_attempt_seconds,
            30
        );
        assert_eq!(
            config.cleanup.number_of_failed_attempts_to_cancel_cleanup,
            3
        );
        assert_eq!(config.cleanup.wait_before_retry_failed_attempt_seconds, 5);
        assert!(config.maintenance_mode);
        config.validate().unwrap();
    }

    #[test]
    fn validation_names_the_key() {
        let mut config = GlobalConfig::default();
        config.leases.max_leases_per_user = 0;
        let error = config.validate().unwrap_err();
        assert!(
            error.to_string().contains("leases.maxLeasesPerUser"),
            "{error}"
        );
    }
}
