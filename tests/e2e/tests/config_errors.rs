//! A service refuses a bad configuration before it binds anything: exit code 2 and a message
//! that names the key path, whether the mistake is in the file or in the environment.

use std::time::Duration;

use anyhow::ensure;
use tta_testkit::{ServiceProcess, free_port};

async fn run_to_exit(
    binary: &str,
    args: &[String],
    env: &[(&str, String)],
) -> anyhow::Result<(i32, String)> {
    let mut process = ServiceProcess::spawn(binary, args, env)?;
    let status = process.wait_exit(Duration::from_secs(10)).await?;
    Ok((status.code().unwrap_or(-1), process.logs()))
}

fn config_file(text: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    Ok(file)
}

#[tokio::test]
async fn an_unknown_key_in_the_file_exits_2_naming_its_path() -> anyhow::Result<()> {
    let file = config_file("broker:\n  retry:\n    max_retires: 3\n")?;
    let args = vec!["--config".to_owned(), file.path().display().to_string()];
    let (code, logs) = run_to_exit("tta-broker", &args, &[]).await?;
    ensure!(code == 2, "exit code {code}; output:\n{logs}");
    ensure!(
        logs.contains("broker.retry.max_retires"),
        "output does not name the key:\n{logs}"
    );
    Ok(())
}

#[tokio::test]
async fn a_mistyped_value_exits_2_naming_its_path() -> anyhow::Result<()> {
    let file = config_file("monitoring:\n  cpu_warn: high\n")?;
    let args = vec!["--config".to_owned(), file.path().display().to_string()];
    let (code, logs) = run_to_exit("tta-resource-monitor", &args, &[]).await?;
    ensure!(code == 2, "exit code {code}; output:\n{logs}");
    ensure!(
        logs.contains("monitoring.cpu_warn"),
        "output does not name the key:\n{logs}"
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_environment_override_exits_2_naming_the_variable() -> anyhow::Result<()> {
    let (code, logs) = run_to_exit(
        "tta-gateway",
        &[],
        &[("TTA_GATEWAY__MAX_INPUT_CHARS", "plenty".to_owned())],
    )
    .await?;
    ensure!(code == 2, "exit code {code}; output:\n{logs}");
    ensure!(
        logs.contains("gateway.max_input_chars"),
        "output does not name the key:\n{logs}"
    );
    ensure!(
        logs.contains("TTA_GATEWAY__MAX_INPUT_CHARS"),
        "output does not name the variable:\n{logs}"
    );
    Ok(())
}

#[tokio::test]
async fn an_inconsistent_config_exits_2_naming_every_bad_key() -> anyhow::Result<()> {
    let file =
        config_file("monitoring:\n  mem_warn: 99\n  mem_crit: 90\nredis:\n  url: http://nope\n")?;
    let args = vec!["--config".to_owned(), file.path().display().to_string()];
    let (code, logs) = run_to_exit("tta-nga", &args, &[]).await?;
    ensure!(code == 2, "exit code {code}; output:\n{logs}");
    ensure!(
        logs.contains("monitoring.mem_warn") && logs.contains("redis.url"),
        "output:\n{logs}"
    );
    Ok(())
}

#[tokio::test]
async fn dump_config_prints_the_effective_configuration_with_secrets_masked() -> anyhow::Result<()>
{
    let port = free_port()?;
    let args = vec![
        "--dump-config".to_owned(),
        "--grpc-addr".to_owned(),
        format!("127.0.0.1:{port}"),
    ];
    let env = [(
        "TTA_REDIS_URL",
        "redis://:hunter2@127.0.0.1:6390".to_owned(),
    )];
    let (code, output) = run_to_exit("tta-broker", &args, &env).await?;
    ensure!(code == 0, "exit code {code}; output:\n{output}");
    let dumped: serde_json::Value = serde_yaml_from(&output)?;
    ensure!(
        dumped["broker"]["listen"]["grpc"] == format!("127.0.0.1:{port}"),
        "{output}"
    );
    ensure!(!output.contains("hunter2"), "secret leaked:\n{output}");
    ensure!(output.contains("redis://:***@127.0.0.1:6390"), "{output}");
    Ok(())
}

/// Reads YAML through the project's own config loader types: the dump must parse back as a
/// valid configuration.
fn serde_yaml_from(text: &str) -> anyhow::Result<serde_json::Value> {
    let config: tta_types::Config = serde_yaml::from_str(text)?;
    Ok(serde_json::to_value(config)?)
}

#[tokio::test]
async fn a_bad_workflows_file_exits_2_naming_the_key_and_the_field() -> anyhow::Result<()> {
    let workflows = config_file(
        "workflows:\n  - name: broken\n    steps:\n      - id: nga\n        agent_type: nga\n        depends_on: [ipa2]\n",
    )?;
    let file = config_file(&format!(
        "gateway:\n  workflows_file: {}\n",
        workflows.path().display()
    ))?;
    let grpc = format!("127.0.0.1:{}", free_port()?);
    let admin = format!("127.0.0.1:{}", free_port()?);
    let args = vec![
        "--config".to_owned(),
        file.path().display().to_string(),
        "--grpc-addr".to_owned(),
        grpc,
        "--admin-addr".to_owned(),
        admin,
    ];
    let (code, logs) = run_to_exit("tta-gateway", &args, &[]).await?;
    ensure!(code == 2, "exit code {code}; output:\n{logs}");
    ensure!(
        logs.contains("gateway.workflows_file")
            && logs
                .contains("workflows[0]: definition.steps[0].depends_on[0]: unknown step \"ipa2\""),
        "output does not name the key and field:\n{logs}"
    );
    Ok(())
}

#[tokio::test]
async fn an_llm_backend_without_an_endpoint_exits_2_naming_the_keys() -> anyhow::Result<()> {
    let (code, logs) = run_to_exit(
        "tta-nga",
        &[],
        &[("TTA_AGENTS__NGA__BACKEND", "llm".to_owned())],
    )
    .await?;
    ensure!(code == 2, "exit code {code}; output:\n{logs}");
    ensure!(
        logs.contains("agents.llm.endpoint") && logs.contains("agents.llm.model"),
        "output does not name the keys:\n{logs}"
    );
    Ok(())
}

#[tokio::test]
async fn dump_config_masks_the_llm_api_key() -> anyhow::Result<()> {
    let (code, logs) = run_to_exit(
        "tta-ipa",
        &["--dump-config".to_owned()],
        &[
            ("TTA_AGENTS__IPA__BACKEND", "llm".to_owned()),
            (
                "TTA_AGENTS__LLM__ENDPOINT",
                "http://127.0.0.1:11434/v1".to_owned(),
            ),
            ("TTA_AGENTS__LLM__MODEL", "llama3.1:8b".to_owned()),
            ("TTA_AGENTS__LLM__API_KEY", "sk-dump-9c2e".to_owned()),
        ],
    )
    .await?;
    ensure!(code == 0, "exit code {code}; output:\n{logs}");
    ensure!(
        logs.contains("backend: llm") && logs.contains("api_key: '***'"),
        "the llm settings are not shown masked:\n{logs}"
    );
    ensure!(
        !logs.contains("sk-dump-9c2e"),
        "the key was printed:\n{logs}"
    );
    Ok(())
}
