//! Workflows as an operator manages them: `tta workflows list|show|register` against a real
//! gateway and broker (no workers: registering touches only the gateway and Redis, and a step
//! with no live agent is a warning the command must show). What `show` prints is a workflows
//! file `register` takes back as the next version.

use std::path::Path;

use anyhow::{Context, ensure};
use tta_e2e::{Stack, tta};
use tta_testkit::{RedisServer, binary_path};

/// Only stdout, for output that is read back as a file.
async fn tta_stdout(args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(binary_path("tta")?)
        .args(args)
        .env_remove("TTA_CONFIG")
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "tta {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// `tta workflows --gateway URL` followed by `rest`.
fn with<'a>(gateway: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    ["workflows", "--gateway", gateway]
        .into_iter()
        .chain(rest.iter().copied())
        .collect()
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("temporary path is not UTF-8")
}

/// The `list` line of a workflow, split into its columns.
fn listed(out: &str, name: &str) -> Option<Vec<String>> {
    out.lines()
        .map(|line| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|columns| columns.first().is_some_and(|first| first == name))
}

const QUIET_LOOK: &str = r"
workflows:
  - name: quiet-look
    description: Look around without changing the world.
    route: { interaction_types: [look] }
    steps:
      - { id: ipa, agent_type: ipa, timeout: 500ms }
      - { id: nga, agent_type: nga, depends_on: [ipa] }
";

const CYCLE: &str = r"
workflows:
  - name: round-and-round
    steps:
      - { id: ipa, agent_type: ipa, depends_on: [nga] }
      - { id: nga, agent_type: nga, depends_on: [ipa] }
";

/// A valid workflow followed by one with a typo in a dependency.
const ONE_GOOD_ONE_BAD: &str = r"
workflows:
  - name: first-good
    steps:
      - { id: ipa, agent_type: ipa }
  - name: then-bad
    steps:
      - { id: ipa, agent_type: ipa }
      - { id: nga, agent_type: nga, depends_on: [ipa2] }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_show_and_register_workflows_as_yaml() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let stack = Stack::start_with(&redis.url(), "workflows-cli", &[], 0).await?;
    let gateway = stack.gateway_url();
    let dir = tempfile::tempdir()?;
    let file = |name: &str, text: &str| -> anyhow::Result<String> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path_str(&path)?.to_owned())
    };

    // The built-ins are there from the start; `collaborative` is the default turn.
    let (code, out) = tta(&with(&gateway, &["list"])).await?;
    ensure!(code == 0, "list failed: {out}");
    let collaborative = listed(&out, "collaborative").with_context(|| out.clone())?;
    ensure!(
        collaborative[1..] == ["1", "yes", "turn,command", "3"],
        "{out}"
    );
    let (code, out) = tta(&with(&gateway, &["--json", "list"])).await?;
    ensure!(code == 0, "list --json failed: {out}");
    let all: serde_json::Value = serde_json::from_str(out.trim())?;
    let default = all
        .as_array()
        .context("list --json is not an array")?
        .iter()
        .find(|workflow| workflow["is_default"] == true)
        .with_context(|| out.clone())?;
    ensure!(default["name"] == "collaborative", "{out}");

    // A new workflow becomes version 1; with no workers, every step is warned about.
    let quiet_look = file("quiet-look.yaml", QUIET_LOOK)?;
    let (code, out) = tta(&with(&gateway, &["register", &quiet_look])).await?;
    ensure!(
        code == 0 && out.contains("quiet-look: registered version 1"),
        "{code}: {out}"
    );
    ensure!(
        out.contains(r#"quiet-look: warning: steps[0].agent_type: no live agent of type "ipa""#),
        "{out}"
    );
    let (code, out) = tta(&with(&gateway, &["list"])).await?;
    ensure!(code == 0, "list failed: {out}");
    let row = listed(&out, "quiet-look").with_context(|| out.clone())?;
    ensure!(row[1..] == ["1", "no", "look", "2"], "{out}");

    // `show` prints a workflows file; registered again, it is the next version.
    let shown = tta_stdout(&with(&gateway, &["show", "quiet-look"])).await?;
    ensure!(
        shown.starts_with("# quiet-look version 1, registered ")
            && shown.contains("timeout: 500ms"),
        "{shown}"
    );
    let again = file("shown.yaml", &shown)?;
    let (code, out) = tta(&with(
        &gateway,
        &["register", &again, "--expected-version", "1"],
    ))
    .await?;
    ensure!(
        code == 0 && out.contains("quiet-look: registered version 2"),
        "{code}: {out}"
    );
    let (code, out) = tta(&with(
        &gateway,
        &["register", &again, "--expected-version", "1"],
    ))
    .await?;
    ensure!(
        code == 1 && out.contains("Aborted") && out.contains("at version 2, not 1"),
        "{code}: {out}"
    );
    let first = tta_stdout(&with(&gateway, &["show", "quiet-look", "--version", "1"])).await?;
    ensure!(first.starts_with("# quiet-look version 1,"), "{first}");

    // Refused definitions exit 2 naming the field, and store nothing.
    let cycle = file("cycle.yaml", CYCLE)?;
    let (code, out) = tta(&with(&gateway, &["register", "--validate-only", &cycle])).await?;
    ensure!(
        code == 2 && out.contains("InvalidArgument: definition.steps: cycle"),
        "{code}: {out}"
    );
    let mixed = file("mixed.yaml", ONE_GOOD_ONE_BAD)?;
    let (code, out) = tta(&with(&gateway, &["register", &mixed])).await?;
    ensure!(
        code == 2
            && out.contains(r#"workflows[1] "then-bad""#)
            && out.contains(r#"definition.steps[1].depends_on[0]: unknown step "ipa2""#),
        "{code}: {out}"
    );
    let (code, out) = tta(&with(&gateway, &["list"])).await?;
    ensure!(code == 0, "list failed: {out}");
    ensure!(
        listed(&out, "round-and-round").is_none() && listed(&out, "first-good").is_none(),
        "a refused file stored a workflow: {out}"
    );

    // A file that is not there is bad input too.
    let missing = dir.path().join("missing.yaml");
    let (code, out) = tta(&with(&gateway, &["register", path_str(&missing)?])).await?;
    ensure!(code == 2 && out.contains("cannot read"), "{code}: {out}");
    Ok(())
}
