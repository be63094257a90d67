//! Whole player turns through real processes: Redis, broker, gateway and the three built-in
//! workers. A session plays coherently, world changes persist from turn to turn, a repeated
//! `turn_id` is answered once, and bad requests are refused naming the field.

use anyhow::{Context, ensure};
use tonic::{Code, transport::Channel};
use tta_e2e::{Stack, session_version};
use tta_proto::v1::{self as pb, orchestrator_client::OrchestratorClient};
use tta_testkit::RedisServer;

async fn client(stack: &Stack) -> anyhow::Result<OrchestratorClient<Channel>> {
    Ok(OrchestratorClient::connect(stack.gateway_url()).await?)
}

fn request(session: &str, turn: &str, text: &str) -> pb::ProcessUserInputRequest {
    pb::ProcessUserInputRequest {
        session_id: session.to_owned(),
        user_id: "player-1".to_owned(),
        text: text.to_owned(),
        turn_id: turn.to_owned(),
        ..Default::default()
    }
}

struct Session {
    client: OrchestratorClient<Channel>,
    id: String,
    turns: u32,
    transcript: Vec<String>,
}

impl Session {
    async fn say(&mut self, text: &str) -> anyhow::Result<pb::ProcessUserInputResponse> {
        self.turns += 1;
        let turn = format!("t{}", self.turns);
        let response = self
            .client
            .process_user_input(request(&self.id, &turn, text))
            .await
            .with_context(|| format!("turn {turn} ({text})"))?
            .into_inner();
        self.transcript.push(format!("> {text}\n{}", response.text));
        ensure!(!response.text.trim().is_empty(), "empty reply to {text:?}");
        ensure!(
            !response.degraded,
            "degraded reply to {text:?}: {:?}\n{}",
            response.degraded_reasons,
            self.transcript.join("\n")
        );
        Ok(response)
    }
}

/// The session's world version, as the gateway reports it.
fn world(response: &pb::ProcessUserInputResponse) -> anyhow::Result<&pb::WorldSummary> {
    response
        .world
        .as_ref()
        .context("the turn returned no world summary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_turn_session_plays_coherently_and_its_world_changes_persist() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let stack = Stack::start(&redis.url(), "turns", 1).await?;
    let mut session = Session {
        client: client(&stack).await?,
        id: "s-coherent".to_owned(),
        turns: 0,
        transcript: Vec::new(),
    };

    // Every worker is in the registry, with a fresh heartbeat.
    let (status, body) = tta_testkit::http_get(stack.gateway.admin, "/agents").await?;
    ensure!(status == 200, "/agents answered {status}: {body}");
    let registry: serde_json::Value = serde_json::from_str(&body)?;
    let agents = registry["agents"].as_array().context("no agents list")?;
    for agent_type in ["ipa", "wba", "nga"] {
        let entry = agents
            .iter()
            .find(|agent| agent["agent_type"] == agent_type)
            .with_context(|| format!("{agent_type} missing from /agents: {body}"))?;
        let age = entry["last_heartbeat_age_seconds"]
            .as_f64()
            .context("no heartbeat age")?;
        ensure!(age < 30.0, "{agent_type} heartbeat is {age} s old");
    }

    let first = session.say("look around").await?;
    let start = world(&first)?.location_id.clone();
    ensure!(!start.is_empty(), "no starting location");

    // Walk to new places until one has an item to take (the world is small).
    let mut here = first.clone();
    let mut visited = vec![start.clone()];
    let mut moved = false;
    for _ in 0..8 {
        if moved && !world(&here)?.items_here.is_empty() {
            break;
        }
        let exits: Vec<pb::WorldExit> = world(&here)?
            .exits
            .iter()
            .filter(|exit| exit.open)
            .cloned()
            .collect();
        let exit = exits
            .iter()
            .find(|exit| !visited.contains(&exit.location_id))
            .or_else(|| exits.first())
            .cloned()
            .context("no open exit to walk through")?;
        let previous = world(&here)?.location_id.clone();
        here = session.say(&format!("go {}", exit.direction)).await?;
        ensure!(
            world(&here)?.location_id == exit.location_id,
            "moving {} from {previous} did not arrive at {}",
            exit.direction,
            exit.location_id
        );
        visited.push(exit.location_id.clone());
        moved = true;
    }
    let location = world(&here)?.location_id.clone();

    // The move persists: a later turn starts where the last one ended.
    let looked = session.say("look").await?;
    ensure!(
        world(&looked)?.location_id == location,
        "the location did not persist between turns"
    );

    let item = world(&looked)?
        .items_here
        .first()
        .cloned()
        .context("no item found in the places walked through")?;
    let take_turn = session.turns + 1;
    let item_word = item.id.replace('_', " ");
    let taken = session.say(&format!("take the {item_word}")).await?;
    ensure!(
        world(&taken)?
            .inventory
            .iter()
            .any(|held| held.id == item.id),
        "{} not in the inventory",
        item.name
    );
    ensure!(
        !world(&taken)?
            .items_here
            .iter()
            .any(|lying| lying.id == item.id),
        "{} still lies here",
        item.name
    );

    let inventory = session.say("inventory").await?;
    ensure!(
        world(&inventory)?
            .inventory
            .iter()
            .any(|held| held.id == item.id),
        "inventory forgot {}",
        item.name
    );

    let feelings = session.say("honestly i feel a bit anxious today").await?;
    ensure!(
        feelings.text.len() > 20,
        "a reply to feelings should be more than a line: {}",
        feelings.text
    );

    let mut last = feelings.clone();
    while session.turns < 10 {
        last = session.say("look").await?;
    }
    let version_before_replay = session_version(&mut session.client, &session.id).await?;
    ensure!(
        version_before_replay >= 2,
        "the world version should count the changes, got {version_before_replay}"
    );

    // Retrying the take turn returns the first result and changes nothing.
    let replay = session
        .client
        .process_user_input(request(
            &session.id,
            &format!("t{take_turn}"),
            &format!("take the {item_word}"),
        ))
        .await?
        .into_inner();
    ensure!(
        replay.replayed,
        "a repeated turn_id must be answered from the first result"
    );
    ensure!(
        replay.text == taken.text,
        "the replay differs from the first answer"
    );
    let version_after_replay = session_version(&mut session.client, &session.id).await?;
    ensure!(
        version_after_replay == version_before_replay,
        "a replay must not apply the turn again"
    );

    // The session shows the world as its last turn left it.
    let shown = session
        .client
        .get_session(pb::GetSessionRequest {
            session_id: session.id.clone(),
        })
        .await?
        .into_inner();
    ensure!(
        shown.world.as_ref() == Some(world(&last)?),
        "GetSession's world is not the last turn's: {:?}",
        shown.world
    );

    // Each worker's heartbeat reports the tasks it ran and its capacity.
    let mut figures = String::new();
    for _ in 0..50 {
        let (_, body) = tta_testkit::http_get(stack.gateway.admin, "/agents").await?;
        let registry: serde_json::Value = serde_json::from_str(&body)?;
        let reported = ["ipa", "wba", "nga"].iter().all(|agent_type| {
            registry["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|agent| {
                    agent["agent_type"] == *agent_type
                        && agent["stats"]["tasks_succeeded"].as_u64() >= Some(10)
                        && agent["stats"]["latency_p50_ms"].as_f64() > Some(0.0)
                        && agent["max_in_flight"].as_u64() > Some(0)
                })
        });
        if reported {
            figures.clear();
            break;
        }
        figures = body;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    ensure!(
        figures.is_empty(),
        "the workers' heartbeats never reported their ten tasks: {figures}"
    );
    println!("{}", session.transcript.join("\n\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_turn_requests_are_refused_naming_the_field() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let stack = Stack::start(&redis.url(), "turn-validation", 1).await?;
    let mut client = client(&stack).await?;

    let cases = [
        (request("s1", "", "   "), Code::InvalidArgument, "text"),
        (
            request("s1", "", &"x".repeat(2001)),
            Code::InvalidArgument,
            "text",
        ),
        (
            request("bad session", "", "look"),
            Code::InvalidArgument,
            "session_id",
        ),
        (
            request("s1", "t{1}", "look"),
            Code::InvalidArgument,
            "turn_id",
        ),
        (
            pb::ProcessUserInputRequest {
                user_id: String::new(),
                ..request("s1", "", "look")
            },
            Code::InvalidArgument,
            "user_id",
        ),
    ];
    for (bad, code, field) in cases {
        let status = client
            .process_user_input(bad)
            .await
            .expect_err("a bad request must fail");
        ensure!(
            status.code() == code,
            "{field}: expected {code:?}, got {status:?}"
        );
        ensure!(
            status.message().starts_with(field),
            "{field}: message does not name the field: {}",
            status.message()
        );
    }

    let missing = client
        .get_session(pb::GetSessionRequest {
            session_id: "never-created".into(),
        })
        .await
        .expect_err("an unknown session must be NOT_FOUND");
    ensure!(
        missing.code() == Code::NotFound && missing.message().contains("session_id"),
        "{missing:?}"
    );

    // A session belongs to its user.
    client
        .process_user_input(request("owned", "", "look"))
        .await?;
    let stranger = client
        .process_user_input(pb::ProcessUserInputRequest {
            user_id: "someone-else".into(),
            ..request("owned", "", "look")
        })
        .await
        .expect_err("another user's session must be refused");
    ensure!(stranger.code() == Code::PermissionDenied, "{stranger:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_holding_tasks_does_not_lose_the_turns() -> anyhow::Result<()> {
    use nix::sys::signal::Signal;

    let redis = RedisServer::start()?;
    let mut stack = Stack::start(&redis.url(), "worker-crash", 2).await?;
    // Freeze one NGA instance: the broker keeps handing it tasks that it never answers.
    let frozen = stack.worker_index("tta-nga").context("no nga worker")?;
    stack.workers[frozen].process.signal(Signal::SIGSTOP)?;

    let client = client(&stack).await?;
    let mut turns = tokio::task::JoinSet::new();
    for n in 0..8 {
        let mut client = client.clone();
        turns.spawn(async move {
            let started = std::time::Instant::now();
            let response = client
                .process_user_input(request(&format!("crash-{n}"), "t1", "look around"))
                .await?
                .into_inner();
            Ok::<_, anyhow::Error>((response, started.elapsed()))
        });
    }
    // Let tasks reach the frozen worker, then kill it for good.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    stack.workers[frozen].process.kill();

    let mut slowest = std::time::Duration::ZERO;
    while let Some(joined) = turns.join_next().await {
        let (response, took) = joined??;
        ensure!(
            !response.degraded,
            "a turn degraded after the crash: {:?}",
            response.degraded_reasons
        );
        slowest = slowest.max(took);
    }
    // At least one turn was held by the frozen worker until it died, so the path that gives
    // its work to the other instance really ran: what was handed to it is stored when its
    // stream closes, what it read from Redis comes back when the lease ends.
    ensure!(
        slowest >= std::time::Duration::from_millis(500),
        "no turn was held by the frozen worker (slowest {slowest:?})"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_turn_and_restarted_answers_the_retried_turn_once()
-> anyhow::Result<()> {
    use nix::sys::signal::Signal;

    let redis = RedisServer::start()?;
    let mut stack = Stack::start(&redis.url(), "gateway-crash", 1).await?;
    let mut session = Session {
        client: client(&stack).await?,
        id: "s-gateway-crash".to_owned(),
        turns: 0,
        transcript: Vec::new(),
    };
    let first = session.say("look").await?;
    let exit = world(&first)?
        .exits
        .iter()
        .find(|exit| exit.open)
        .cloned()
        .context("no open exit")?;
    let version_before = session_version(&mut session.client, &session.id).await?;

    // Hold the turn in its last step, kill the gateway, then let the step finish.
    let nga = stack.worker_index("tta-nga").context("no nga")?;
    stack.workers[nga].process.signal(Signal::SIGSTOP)?;
    let mut doomed = session.client.clone();
    let moving = request(&session.id, "t-move", &format!("go {}", exit.direction));
    let in_flight = tokio::spawn({
        let moving = moving.clone();
        async move { doomed.process_user_input(moving).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    stack.gateway.process.kill();
    let _ = in_flight.await;
    stack.workers[nga].process.signal(Signal::SIGCONT)?;
    stack.gateway.restart().await?;

    let mut client = client(&stack).await?;
    let answered = client
        .process_user_input(moving.clone())
        .await?
        .into_inner();
    ensure!(!answered.degraded, "{:?}", answered.degraded_reasons);
    ensure!(
        world(&answered)?.location_id == exit.location_id,
        "the retried move did not arrive"
    );
    let again = client.process_user_input(moving).await?.into_inner();
    ensure!(
        again.replayed && again.text == answered.text,
        "the second retry must replay the one result"
    );

    let version_after = session_version(&mut client, &session.id).await?;
    ensure!(
        version_after == version_before + 1,
        "the move must apply exactly once: {version_before} → {version_after}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sessions_of_ten_turns_each_are_all_answered_in_order() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let stack = Stack::start(&redis.url(), "many-sessions", 1).await?;
    let client = client(&stack).await?;
    let mut sessions = tokio::task::JoinSet::new();
    for n in 0..100 {
        let mut client = client.clone();
        sessions.spawn(async move {
            let id = format!("many-{n}");
            let mut last_version = 0;
            for turn in 1..=10 {
                let text = if turn % 2 == 0 { "look" } else { "go north" };
                let response = client
                    .process_user_input(request(&id, &format!("t{turn}"), text))
                    .await
                    .with_context(|| format!("{id} turn {turn}"))?
                    .into_inner();
                ensure!(!response.text.is_empty(), "{id} turn {turn}: empty reply");
                ensure!(
                    response.turn_id == format!("t{turn}"),
                    "{id}: answers out of order"
                );
                ensure!(
                    response.session_version >= last_version,
                    "{id}: the world version went backwards"
                );
                last_version = response.session_version;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(joined) = sessions.join_next().await {
        joined??;
    }
    Ok(())
}
