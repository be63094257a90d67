//! `tta.v1.Safety` over gRPC: classification for other services and operators, rule reloads, and
//! the human-oversight queue of escalations. Requests are validated here (INVALID_ARGUMENT names
//! the field); the judging itself is the [`SafetyGuard`] the turns use.

use std::time::SystemTime;

use tonic::{Request, Response, Status};
use tta_proto::v1::{self as pb, safety_server::Safety};
use tta_safety::{
    Source,
    convert::source_from_proto,
    escalation::ListFilter,
    metrics as safety_metrics,
    reload::ReloadOutcome,
    session::{Occasion as SessionOccasion, assess_in_session},
};
use tta_types::{FieldViolation, ServiceError, SessionId};

use crate::{
    guard::{Occasion, SafetyGuard},
    store::Store,
};

/// The contract's limits.
const MAX_BATCH_ITEMS: usize = 1000;
const MAX_RULES_DOCUMENT_BYTES: usize = 1 << 20;
const MAX_LOCALE_BYTES: usize = 35;

#[derive(Debug, Clone)]
pub struct SafetyService {
    guard: SafetyGuard,
    store: Store,
}

/// A validated classification request.
struct Item {
    text: String,
    source: Source,
    session: Option<SessionId>,
}

impl SafetyService {
    pub fn new(guard: SafetyGuard, store: Store) -> Self {
        Self { guard, store }
    }

    fn validate(&self, request: pb::ClassifyRequest) -> Result<Item, FieldViolation> {
        if request.text.trim().is_empty() {
            return Err(FieldViolation::new("text", "must not be empty"));
        }
        let limit = self.guard.config().max_text_bytes.bytes();
        let length = u64::try_from(request.text.len()).unwrap_or(u64::MAX);
        if length > limit {
            return Err(FieldViolation::new(
                "text",
                format!("is {length} bytes; the limit is {limit}"),
            ));
        }
        let source = source_from_proto("source", request.source)?;
        let session = if request.session_id.is_empty() {
            None
        } else {
            Some(SessionId::parse_field("session_id", &request.session_id)?)
        };
        // The locale only picks crisis resources, which a classification does not return; it is
        // still checked so a caller's mistake is reported rather than silently ignored.
        if request.locale.len() > MAX_LOCALE_BYTES {
            return Err(FieldViolation::new(
                "locale",
                format!("must be a BCP 47 tag of at most {MAX_LOCALE_BYTES} bytes"),
            ));
        }
        Ok(Item {
            text: request.text,
            source,
            session,
        })
    }

    async fn classify_item(&self, item: Item) -> Result<pb::ClassifyResponse, Status> {
        let Some(session_id) = item.session else {
            let engine = self.guard.engine().current();
            let assessment = engine.classify(&item.text, item.source);
            safety_metrics::record_assessment(&assessment, item.source);
            return Ok(pb::ClassifyResponse {
                assessment: Some((&assessment).into()),
                escalation_id: String::new(),
            });
        };
        let session = self
            .store
            .load_session(session_id.as_str())
            .await
            .map_err(|err| err.to_status())?;
        let settings = session
            .as_ref()
            .and_then(|session| session.settings.as_ref());
        let user = session
            .as_ref()
            .map(|session| session.user_id.clone())
            .unwrap_or_default();
        let policy = self.guard.policy(settings);
        let engine = self.guard.engine().current();
        let verdict = assess_in_session(
            &engine,
            self.guard.memory(),
            SessionOccasion::untracked(&session_id),
            &item.text,
            item.source,
            &policy,
            SystemTime::now(),
        )
        .await?;
        safety_metrics::record_assessment(&verdict.assessment, item.source);
        let escalation_id = match verdict.escalate {
            Some(reason) => {
                let occasion = Occasion {
                    session: &session_id,
                    user: &user,
                    turn: None,
                };
                self.guard
                    .escalate(
                        occasion,
                        &verdict.assessment,
                        &item.text,
                        item.source,
                        reason,
                    )
                    .await?
                    .id
            }
            None => String::new(),
        };
        Ok(pb::ClassifyResponse {
            assessment: Some((&verdict.assessment).into()),
            escalation_id,
        })
    }

    fn reload_response(
        &self,
        outcome: Result<ReloadOutcome, tta_safety::Error>,
    ) -> Result<pb::ReloadRulesResponse, Status> {
        let current = self.guard.engine().current();
        match outcome {
            Ok(outcome) => Ok(pb::ReloadRulesResponse {
                applied: outcome.applied,
                errors: Vec::new(),
                rules_version: current.version().to_owned(),
                rule_count: u32::try_from(current.rule_count()).unwrap_or(u32::MAX),
            }),
            Err(err) if !err.rule_issues().is_empty() => Ok(pb::ReloadRulesResponse {
                applied: false,
                errors: err.rule_issues().iter().map(Into::into).collect(),
                rules_version: current.version().to_owned(),
                rule_count: u32::try_from(current.rule_count()).unwrap_or(u32::MAX),
            }),
            Err(err) => Err(err.into()),
        }
    }
}

#[tonic::async_trait]
impl Safety for SafetyService {
    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let item = self
            .validate(request.into_inner())
            .map_err(|violation| violation.to_status())?;
        Ok(Response::new(self.classify_item(item).await?))
    }

    async fn classify_batch(
        &self,
        request: Request<pb::ClassifyBatchRequest>,
    ) -> Result<Response<pb::ClassifyBatchResponse>, Status> {
        let items = request.into_inner().items;
        if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
            return Err(FieldViolation::new(
                "items",
                format!(
                    "must hold 1 to {MAX_BATCH_ITEMS} entries, got {}",
                    items.len()
                ),
            )
            .to_status());
        }
        // Every item is checked before any is judged, so a bad batch changes no session memory.
        let items = items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                self.validate(item)
                    .map_err(|violation| violation.within(&format!("items[{index}]")).to_status())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            results.push(self.classify_item(item).await?);
        }
        Ok(Response::new(pb::ClassifyBatchResponse { results }))
    }

    async fn reload_rules(
        &self,
        request: Request<pb::ReloadRulesRequest>,
    ) -> Result<Response<pb::ReloadRulesResponse>, Status> {
        let request = request.into_inner();
        if !self.guard.config().allow_reload {
            return Err(Status::permission_denied(
                "rule reloads are disabled by configuration (safety.allow_reload)",
            ));
        }
        if request.rules_document.len() > MAX_RULES_DOCUMENT_BYTES {
            return Err(FieldViolation::new(
                "rules_document",
                format!("must be at most {MAX_RULES_DOCUMENT_BYTES} bytes"),
            )
            .to_status());
        }
        let engine = self.guard.engine();
        let outcome = if !request.rules_document.is_empty() {
            engine.reload_from_str(&request.rules_document, request.validate_only)
        } else if request.validate_only {
            match engine.path() {
                Some(path) => match std::fs::read_to_string(path) {
                    Ok(text) => engine.reload_from_str(&text, true),
                    Err(err) => Err(tta_safety::Error::Read {
                        path: path.to_owned(),
                        reason: err.to_string(),
                    }),
                },
                None => engine.reload_from_str(tta_safety::DEFAULT_RULES, true),
            }
        } else {
            engine.reload()
        };
        Ok(Response::new(self.reload_response(outcome)?))
    }

    async fn list_escalations(
        &self,
        request: Request<pb::ListEscalationsRequest>,
    ) -> Result<Response<pb::ListEscalationsResponse>, Status> {
        let request = request.into_inner();
        if !request.session_id.is_empty() {
            SessionId::parse_field("session_id", &request.session_id)
                .map_err(|violation| violation.to_status())?;
        }
        let page = self
            .guard
            .escalations()
            .list(&ListFilter {
                session_id: request.session_id,
                include_acked: request.include_acked,
                page_size: request.page_size,
                page_token: request.page_token,
            })
            .await?;
        Ok(Response::new(pb::ListEscalationsResponse {
            escalations: page.events.iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn ack_escalation(
        &self,
        request: Request<pb::AckEscalationRequest>,
    ) -> Result<Response<pb::AckEscalationResponse>, Status> {
        let request = request.into_inner();
        if request.id.trim().is_empty() {
            return Err(FieldViolation::new("id", "must not be empty").to_status());
        }
        let event = self
            .guard
            .escalations()
            .ack(&request.id, &request.acked_by, &request.note)
            .await?;
        Ok(Response::new(pb::AckEscalationResponse {
            escalation: Some((&event).into()),
        }))
    }
}
