//! Isolation of a failing agent type (R6.1): when its steps keep timing out or cannot be
//! dispatched, waiting out every step's timeout would make each turn slow for nothing. Each
//! agent type gets a circuit breaker (`tta_runtime::breaker`): after
//! `gateway.circuit_breaker.failure_threshold` such failures in a row its steps go straight to
//! their fallbacks for `open_for`, then one step probes whether it recovered. A step the agent
//! answered — even with a permanent failure — shows the agent is alive.
//!
//! The state is per gateway replica: each replica learns on its own traffic.

use std::{collections::HashMap, sync::Mutex};

use tta_runtime::breaker::{BreakerName, CircuitBreaker, Permit};
use tta_types::config::CircuitBreakerConfig;

#[derive(Debug)]
pub struct Breakers {
    config: CircuitBreakerConfig,
    gauge: &'static str,
    by_agent: Mutex<HashMap<String, CircuitBreaker>>,
}

impl Breakers {
    /// One breaker per agent type (gauge `tta_gateway_agent_circuit_state`).
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self::reporting_to(config, "tta_gateway_agent_circuit_state")
    }

    /// One breaker per workflow for its chains, opened by a single silence: the
    /// chain's silence may be any of its agents', so the gateway dispatches that line step by
    /// step for `open_for`, where each agent's own timeouts, breaker and fallbacks tell.
    pub fn for_chains(config: CircuitBreakerConfig) -> Self {
        Self::reporting_to(
            CircuitBreakerConfig {
                failure_threshold: 1,
                ..config
            },
            "tta_gateway_chain_circuit_state",
        )
    }

    fn reporting_to(config: CircuitBreakerConfig, gauge: &'static str) -> Self {
        Self {
            config,
            gauge,
            by_agent: Mutex::new(HashMap::new()),
        }
    }

    fn breaker(&self, agent_type: &str) -> CircuitBreaker {
        let mut by_agent = self
            .by_agent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        by_agent
            .entry(agent_type.to_owned())
            .or_insert_with(|| {
                CircuitBreaker::new(
                    BreakerName {
                        gauge: self.gauge,
                        agent: agent_type.to_owned(),
                    },
                    self.config.failure_threshold,
                    self.config.open_for,
                )
            })
            .clone()
    }

    /// Permission to dispatch a step of `agent_type`, or `None` while it is isolated. Report
    /// the outcome on the permit: `succeeded` when the agent answered, `failed` when it did not.
    pub fn admit(&self, agent_type: &str) -> Option<Permit> {
        self.breaker(agent_type).try_acquire()
    }

    /// Whether steps of `agent_type` are dispatched without restriction. A step is handed on to
    /// an agent type by the agent before it only then: an isolated or probing type is reached
    /// through the gateway, which judges its answers.
    pub fn is_closed(&self, agent_type: &str) -> bool {
        self.breaker(agent_type).state() == tta_runtime::breaker::CircuitState::Closed
    }

    /// Reports on `agent_type` when no permit of its own was held for it (its step ran in a
    /// chain): `alive` when it answered, not when its task could not be dispatched.
    pub fn report(&self, agent_type: &str, alive: bool) {
        match self.admit(agent_type) {
            Some(permit) if alive => permit.succeeded(),
            Some(permit) => permit.failed(),
            None => {}
        }
    }
}
