//! Proto ⇄ domain conversions. Wire messages are parsed here, once, at the service edge; a
//! failure is a [`FieldViolation`] naming the field, which becomes `INVALID_ARGUMENT`.

use tta_proto::v1 as pb;

use crate::{
    error::FieldViolation,
    ids::{AgentId, AgentType},
    priority::Priority,
};

/// A required sub-message: `None` is reported as missing under `field`.
pub fn required<T>(field: &str, value: Option<T>) -> Result<T, FieldViolation> {
    value.ok_or_else(|| FieldViolation::new(field, "is required"))
}

/// Parses a wire priority. Unset means NORMAL (proto3 cannot tell unset from zero); a number
/// outside the enum is refused rather than guessed.
pub fn priority_from_proto(field: &str, raw: i32) -> Result<Priority, FieldViolation> {
    match pb::Priority::try_from(raw) {
        Ok(pb::Priority::Unspecified | pb::Priority::Normal) => Ok(Priority::Normal),
        Ok(pb::Priority::High) => Ok(Priority::High),
        Ok(pb::Priority::Low) => Ok(Priority::Low),
        Err(_) => Err(FieldViolation::new(
            field,
            format!(
                "unknown priority {raw}; expected PRIORITY_HIGH, PRIORITY_NORMAL or PRIORITY_LOW"
            ),
        )),
    }
}

impl From<Priority> for pb::Priority {
    fn from(priority: Priority) -> Self {
        match priority {
            Priority::High => pb::Priority::High,
            Priority::Normal => pb::Priority::Normal,
            Priority::Low => pb::Priority::Low,
        }
    }
}

/// Parses a wire agent id; violations are reported under `field` (e.g. `agent.instance`).
pub fn agent_id_from_proto(field: &str, raw: &pb::AgentId) -> Result<AgentId, FieldViolation> {
    let agent_type: AgentType =
        raw.agent_type
            .parse()
            .map_err(|err: crate::ids::AgentTypeError| {
                FieldViolation::new("agent_type", err.to_string()).within(field)
            })?;
    AgentId::new(agent_type, raw.instance.clone())
        .map_err(|err| FieldViolation::new("instance", err.to_string()).within(field))
}

impl From<&AgentId> for pb::AgentId {
    fn from(id: &AgentId) -> Self {
        pb::AgentId {
            agent_type: id.agent_type.to_string(),
            instance: id.instance.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_round_trip_and_unset_means_normal() {
        for priority in Priority::DELIVERY_ORDER {
            let wire = pb::Priority::from(priority) as i32;
            assert_eq!(priority_from_proto("priority", wire), Ok(priority));
        }
        assert_eq!(priority_from_proto("priority", 0), Ok(Priority::Normal));
    }

    #[test]
    fn an_unknown_priority_is_refused_naming_the_field() {
        let err = priority_from_proto("message.priority", 42).unwrap_err();
        assert_eq!(err.field, "message.priority");
        let status: tonic::Status = err.into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn agent_ids_round_trip_and_bad_parts_name_their_path() {
        let id = AgentId::new(AgentType::Nga, "n-1").unwrap();
        let wire = pb::AgentId::from(&id);
        assert_eq!(agent_id_from_proto("agent", &wire), Ok(id));

        let bad_type = pb::AgentId {
            agent_type: "Not A Type".into(),
            instance: "x".into(),
        };
        assert_eq!(
            agent_id_from_proto("agent", &bad_type).unwrap_err().field,
            "agent.agent_type"
        );

        let bad_instance = pb::AgentId {
            agent_type: "ipa".into(),
            instance: String::new(),
        };
        assert_eq!(
            agent_id_from_proto("agent", &bad_instance)
                .unwrap_err()
                .field,
            "agent.instance"
        );
    }

    #[test]
    fn required_fields_report_missing() {
        assert_eq!(
            required::<u8>("session", None).unwrap_err().to_string(),
            "session: is required"
        );
        assert_eq!(required("session", Some(1)), Ok(1));
    }
}
