//! `tta health`: asks each service's `grpc.health.v1.Health` whether it is serving. With
//! `--wait`, keeps asking until all are, which is how scripts wait for a stack to come up.

use std::{process::ExitCode, time::Duration};

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tta_runtime::{
    config::ConfigArgs,
    grpc::{connect_lazy, endpoint_url},
    service::{EXIT_CONFIG, EXIT_FAILURE},
};

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// gRPC endpoints to check (e.g. http://127.0.0.1:50052); default: every service in the config.
    endpoints: Vec<String>,
    /// Keep checking until every endpoint is serving or this much time has passed (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    wait: Option<Duration>,
}

pub async fn run(config_args: ConfigArgs, args: HealthArgs) -> ExitCode {
    let endpoints = if args.endpoints.is_empty() {
        let config = match tta_runtime::config::load(&config_args, |_| {}) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("tta health: {err}");
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        vec![
            ("gateway", endpoint_url(config.gateway.listen.grpc)),
            ("broker", endpoint_url(config.broker.listen.grpc)),
            ("tool-registry", endpoint_url(config.tools.listen.grpc)),
            (
                "resource-monitor",
                endpoint_url(config.resource_monitor.listen.grpc),
            ),
        ]
        .into_iter()
        .map(|(name, url)| (name.to_owned(), url))
        .collect::<Vec<_>>()
    } else {
        args.endpoints
            .iter()
            .map(|url| (url.clone(), url.clone()))
            .collect()
    };

    let deadline = tokio::time::Instant::now() + args.wait.unwrap_or_default();
    loop {
        let results = futures::future::join_all(endpoints.iter().map(|(_, url)| check(url))).await;
        let all_serving = results
            .iter()
            .all(|result| matches!(result, Ok(ServingStatus::Serving)));
        if all_serving || tokio::time::Instant::now() >= deadline {
            for ((name, url), result) in endpoints.iter().zip(&results) {
                match result {
                    Ok(status) => println!("{name:<18} {url:<28} {}", status.as_str_name()),
                    Err(reason) => println!("{name:<18} {url:<28} DOWN ({reason})"),
                }
            }
            return if all_serving {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILURE)
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn check(url: &str) -> Result<ServingStatus, String> {
    let channel = connect_lazy(url).map_err(|err| err.to_string())?;
    let mut client = HealthClient::new(channel);
    let request = HealthCheckRequest {
        service: String::new(),
    };
    match tokio::time::timeout(Duration::from_secs(2), client.check(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner().status()),
        Ok(Err(status)) => Err(status.message().to_owned()),
        Err(_) => Err("no answer within 2s".to_owned()),
    }
}
