//! Message and work priority. Delivery is strict HIGH → NORMAL → LOW; shedding under overload
//! goes the other way round.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    /// Highest first: the order in which queues are drained.
    pub const DELIVERY_ORDER: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("priority must be one of high, normal, low; got {0:?}")]
pub struct PriorityError(String);

impl FromStr for Priority {
    type Err = PriorityError;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.to_ascii_lowercase().as_str() {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            _ => Err(PriorityError(raw.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_low_below_normal_below_high() {
        assert!(Priority::Low < Priority::Normal && Priority::Normal < Priority::High);
        assert_eq!(Priority::DELIVERY_ORDER[0], Priority::High);
    }

    #[test]
    fn parses_case_insensitively_and_rejects_others() {
        assert_eq!("HIGH".parse(), Ok(Priority::High));
        assert!("urgent".parse::<Priority>().is_err());
    }
}
