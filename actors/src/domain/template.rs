//! Lease templates: what a user may request, with ISB's validation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{config::GlobalConfig, DomainError, Meta};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ThresholdAction {
    Alert,
    FreezeAccount,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Visibility {
    #[default]
    Public,
    Private,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetThreshold {
    pub dollars_spent: f64,
    pub action: ThresholdAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DurationThreshold {
    pub hours_remaining: f64,
    pub action: ThresholdAction,
}

/// The fields a client sends to create or replace a template.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TemplateInput {
    pub name: String,
    pub description: Option<String>,
    #[serde(default)]
    pub requires_approval: bool,
    #[serde(default)]
    pub visibility: Visibility,
    pub cost_report_group: Option<String>,
    pub blueprint_id: Option<String>,
    pub blueprint_name: Option<String>,
    pub max_spend: Option<f64>,
    pub budget_thresholds: Option<Vec<BudgetThreshold>>,
    pub lease_duration_in_hours: Option<f64>,
    pub duration_thresholds: Option<Vec<DurationThreshold>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseTemplate {
    pub uuid: String,
    pub name: String,
    pub description: Option<String>,
    pub requires_approval: bool,
    pub created_by: String,
    pub visibility: Visibility,
    pub cost_report_group: Option<String>,
    pub blueprint_id: Option<String>,
    pub blueprint_name: Option<String>,
    pub max_spend: Option<f64>,
    pub budget_thresholds: Option<Vec<BudgetThreshold>>,
    pub lease_duration_in_hours: Option<f64>,
    pub duration_thresholds: Option<Vec<DurationThreshold>>,
    pub meta: Meta,
    #[serde(default)]
    pub version: u64,
}

fn positive(field: &str, value: Option<f64>) -> Result<(), DomainError> {
    match value {
        Some(number) if !(number.is_finite() && number > 0.0) => {
            Err(DomainError::invalid(field, "must be a number > 0"))
        }
        _ => Ok(()),
    }
}

impl TemplateInput {
    /// ISB's rules plus the global limits: name 1-50 chars, maxSpend and duration > 0 and
    /// within the global maximum (required when the global config says so), thresholds > 0,
    /// cost report group from the configured list.
    pub fn validate(&self, config: &GlobalConfig) -> Result<(), DomainError> {
        let name_length = self.name.trim().chars().count();
        if name_length == 0 || self.name.chars().count() > 50 {
            return Err(DomainError::invalid("name", "must be 1 to 50 characters"));
        }
        if self
            .description
            .as_ref()
            .is_some_and(|text| text.chars().count() > 1000)
        {
            return Err(DomainError::invalid(
                "description",
                "at most 1000 characters",
            ));
        }
        positive("maxSpend", self.max_spend)?;
        positive("leaseDurationInHours", self.lease_duration_in_hours)?;
        let limits = &config.leases;
        match self.max_spend {
            None if limits.require_max_budget => {
                return Err(DomainError::invalid("maxSpend", "is required"))
            }
            Some(spend) if spend > limits.max_budget => {
                return Err(DomainError::invalid(
                    "maxSpend",
                    format!(
                        "must not exceed the maximum budget of {}",
                        limits.max_budget
                    ),
                ))
            }
            _ => {}
        }
        match self.lease_duration_in_hours {
            None if limits.require_max_duration => {
                return Err(DomainError::invalid("leaseDurationInHours", "is required"))
            }
            Some(hours) if hours > limits.max_duration_hours => {
                return Err(DomainError::invalid(
                    "leaseDurationInHours",
                    format!(
                        "must not exceed the maximum duration of {} hours",
                        limits.max_duration_hours
                    ),
                ))
            }
            _ => {}
        }
        validate_thresholds(
            self.budget_thresholds.as_deref(),
            self.duration_thresholds.as_deref(),
        )?;
        validate_cost_report_group(self.cost_report_group.as_deref(), config)
    }

    pub fn into_template(
        self,
        uuid: String,
        created_by: String,
        now: DateTime<Utc>,
    ) -> LeaseTemplate {
        LeaseTemplate {
            uuid,
            name: self.name,
            description: self.description,
            requires_approval: self.requires_approval,
            created_by,
            visibility: self.visibility,
            cost_report_group: self.cost_report_group,
            blueprint_id: self.blueprint_id,
            blueprint_name: self.blueprint_name,
            max_spend: self.max_spend,
            budget_thresholds: self.budget_thresholds,
            lease_duration_in_hours: self.lease_duration_in_hours,
            duration_thresholds: self.duration_thresholds,
            meta: Meta::new(now),
            version: 0,
        }
    }
}

pub fn validate_thresholds(
    budget: Option<&[BudgetThreshold]>,
    duration: Option<&[DurationThreshold]>,
) -> Result<(), DomainError> {
    for (index, threshold) in budget.unwrap_or_default().iter().enumerate() {
        positive(
            &format!("budgetThresholds[{index}].dollarsSpent"),
            Some(threshold.dollars_spent),
        )?;
    }
    for (index, threshold) in duration.unwrap_or_default().iter().enumerate() {
        positive(
            &format!("durationThresholds[{index}].hoursRemaining"),
            Some(threshold.hours_remaining),
        )?;
    }
    Ok(())
}

pub fn validate_cost_report_group(
    group: Option<&str>,
    config: &GlobalConfig,
) -> Result<(), DomainError> {
    let reporting = &config.reporting;
    match group {
        None if reporting.require_cost_report_group => {
            Err(DomainError::invalid("costReportGroup", "is required"))
        }
        Some(name)
            if !reporting.cost_report_groups.is_empty()
                && !reporting
                    .cost_report_groups
                    .iter()
                    .any(|known| known == name) =>
        {
            Err(DomainError::invalid(
                "costReportGroup",
                format!("'{name}' is not one of the configured costReportGroups"),
            ))
        }
        _ => Ok(()),
    }
}

impl LeaseTemplate {
    /// Replace the editable fields (PUT), keeping identity, creator and creation time.
    pub fn replaced(&self, input: TemplateInput, now: DateTime<Utc>) -> LeaseTemplate {
        let mut next = input.into_template(self.uuid.clone(), self.created_by.clone(), now);
        next.meta.created_time = self.meta.created_time;
        next.version = self.version;
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> TemplateInput {
        TemplateInput {
            name: "Standard".into(),
            max_spend: Some(50.0),
            lease_duration_in_hours: Some(24.0),
            ..Default::default()
        }
    }

    #[test]
    fn a_template_within_the_limits_is_valid() {
        input().validate(&GlobalConfig::default()).unwrap();
    }

    #[test]
    fn max_spend_over_the_global_budget_is_refused_naming_the_field() {
        let template = TemplateInput {
            max_spend: Some(51.0),
            ..input()
        };
        let error = template.validate(&GlobalConfig::default()).unwrap_err();
        assert!(matches!(error, DomainError::Invalid { ref field, .. } if field == "maxSpend"));
    }

    #[test]
    fn missing_duration_is_refused_when_required() {
        let template = TemplateInput {
            lease_duration_in_hours: None,
            ..input()
        };
        let error = template.validate(&GlobalConfig::default()).unwrap_err();
        assert!(
            matches!(error, DomainError::Invalid { ref field, .. } if field == "leaseDurationInHours")
        );
    }

    #[test]
    fn empty_or_long_names_are_refused() {
        for name in ["", &"x".repeat(51)] {
            let template = TemplateInput {
                name: name.to_string(),
                ..input()
            };
            assert!(template.validate(&GlobalConfig::default()).is_err());
        }
    }

    #[test]
    fn unknown_cost_report_group_is_refused() {
        let mut config = GlobalConfig::default();
        config.reporting.cost_report_groups = vec!["Digital".into()];
        let template = TemplateInput {
            cost_report_group: Some("Finance".into()),
            ..input()
        };
        assert!(template.validate(&config).is_err());
    }

    #[test]
    fn negative_threshold_is_refused_with_its_index() {
        let template = TemplateInput {
            budget_thresholds: Some(vec![BudgetThreshold {
                dollars_spent: -1.0,
                action: ThresholdAction::Alert,
            }]),
            ..input()
        };
        let error = template.validate(&GlobalConfig::default()).unwrap_err();
        assert!(error.to_string().contains("budgetThresholds[0]"), "{error}");
    }
}
