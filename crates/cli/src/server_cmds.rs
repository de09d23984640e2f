//! `cutover token`, `cutover user`, `cutover approve`, `cutover audit`, `cutover guardrails`
//! and `cutover projects`: administration
//! of the control plane through `/api/v1` on its Unix socket, where the socket's peer (the
//! local account) acts with admin rights, or as the owner of `CUTOVER_TOKEN` when set.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Subcommand, ValueEnum};

use cutover_model::format_ms;
use cutover_server::api::{
    ApprovalAccepted, ApprovalRequest, ApprovalView, Decision, DeploymentDetail, GuardrailsShow,
    GuardrailsVersion, NewUser, ProjectPath, ProjectRoot, SetGuardrails, UserLine,
};
use cutover_server::audit::{AuditEntry, VerifyReport};
use cutover_server::auth::{self, CreatedToken, NewToken, Role, TokenRecord};

use crate::client::{connect_or_start, ApiClient, StateDir};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Viewer,
    Deployer,
    Approver,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Deployer => Role::Deployer,
            RoleArg::Approver => Role::Approver,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[derive(Subcommand)]
pub enum ServerCommand {
    /// API tokens for CI: create (shown once), list, revoke.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// People who log in to the web UI (argon2id password hashes).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Approve (or --reject) a deployment waiting at an approval gate, as the local user.
    Approve {
        /// The deployment id, e.g. production-3.
        deployment: String,
        #[arg(long)]
        reject: bool,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// The hash-chained audit log: verify it, or export it as JSON lines.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// What every plan of an environment must meet, whatever its spec says (admins set them).
    Guardrails {
        #[command(subcommand)]
        command: GuardrailsCommand,
    },
    /// Project roots: the directories specs may be read from (admins manage them).
    Projects {
        #[command(subcommand)]
        command: ProjectsCommand,
    },
}

#[derive(Subcommand)]
pub enum GuardrailsCommand {
    /// Set an environment's guardrails from a TOML file (a new version).
    Set {
        env: String,
        /// The guardrails file (TOML).
        #[arg(value_name = "FILE")]
        guardrails_file: std::path::PathBuf,
    },
    /// The guardrails in force (with version, who, when), and a proposal waiting, if any.
    Show {
        env: String,
        /// A past version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Accept the guardrails proposed from the first spec sent for the environment.
    Accept { env: String },
}

#[derive(Subcommand)]
pub enum ProjectsCommand {
    /// Register a project's directory (symbolic links are resolved).
    Add { dir: std::path::PathBuf },
    /// Registered project roots.
    List,
    /// Unregister a project root.
    Rm { dir: std::path::PathBuf },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (the only time it is shown).
    Create {
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Limit it to one environment (default: all).
        #[arg(long)]
        env: Option<String>,
        /// Lifetime, e.g. 30d, 12h (default: never expires).
        #[arg(long)]
        expires: Option<String>,
        /// A name to recognize it by, e.g. ci.
        #[arg(long)]
        name: Option<String>,
        /// The person it belongs to (default: you). Separation of duties counts people:
        /// two tokens of one owner are one approver.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Tokens with their role, scope, expiry and last use (never the secrets).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user (or reset one); the password is read from CUTOVER_PASSWORD or stdin.
    Add {
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long)]
        env: Option<String>,
    },
    /// Users and their roles.
    List,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk the chain; exit 1 and name the first broken link if an entry was edited or deleted.
    Verify {
        /// Also check the chain against this sink of signed checkpoints (`cutover serve
        /// --audit-sink`): finds deleted and rewritten entries the chain alone cannot.
        #[arg(long)]
        against: Option<PathBuf>,
        /// The audit checkpoint public key (default: the state directory's
        /// `keys/audit.pub`, as `cutover audit key` prints it).
        #[arg(long, requires = "against")]
        key: Option<PathBuf>,
    },
    /// Print the public key that signs audit checkpoints (PEM), so a sink can be checked
    /// without the store. Made on first use.
    Key,
    /// Write entries as JSON lines (for a SIEM).
    Export {
        /// Only entries from this long ago (e.g. 24h, 7d) on.
        #[arg(long)]
        since: Option<String>,
    },
}

/// Run an administration command against `remote` (`--url`) when given, else the local
/// control plane (started when needed).
pub async fn run(
    command: ServerCommand,
    state: &StateDir,
    remote: Option<ApiClient>,
    json: bool,
) -> Result<u8> {
    if let ServerCommand::Audit {
        command: AuditCommand::Key,
    } = command
    {
        return audit_key(state, json);
    }
    let client = match remote {
        Some(client) => client,
        None => connect_or_start(state).await?.0,
    };
    match command {
        ServerCommand::Token { command } => match command {
            TokenCommand::Create {
                role,
                env,
                expires,
                name,
                owner,
            } => {
                let expires_in_ms = match expires {
                    Some(text) => Some(
                        auth::parse_lifetime(&text)
                            .map_err(anyhow::Error::msg)
                            .context("--expires")?
                            .as_millis() as u64,
                    ),
                    None => None,
                };
                let created: CreatedToken = client
                    .post(
                        "/api/v1/tokens",
                        &NewToken {
                            role: role.into(),
                            env,
                            name,
                            owner,
                            expires_in_ms,
                        },
                    )
                    .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&created)?);
                } else {
                    eprintln!(
                        "token {} ({} for {}) created; it is shown only now:",
                        created.record.id,
                        created.record.role,
                        created.record.env.as_deref().unwrap_or("all environments")
                    );
                    println!("{}", created.token);
                }
                Ok(0)
            }
            TokenCommand::List => {
                let tokens: Vec<TokenRecord> = client.get("/api/v1/tokens").await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&tokens)?);
                    return Ok(0);
                }
                println!(
                    "{:<12}  {:<12}  {:<8}  {:<12}  {:<20}  {:<20}  {:<20}  STATE",
                    "ID", "NAME", "ROLE", "ENV", "CREATED", "EXPIRES", "LAST USED"
                );
                let now = cutover_model::now_ms();
                for t in tokens {
                    let state = if t.revoked_at_ms.is_some() {
                        "revoked"
                    } else if t.expires_at_ms.is_some_and(|e| e <= now) {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<12}  {:<12}  {:<8}  {:<12}  {:<20}  {:<20}  {:<20}  {state}",
                        t.id,
                        t.name.as_deref().unwrap_or("-"),
                        t.role,
                        t.env.as_deref().unwrap_or("*"),
                        format_ms(t.created_at_ms),
                        t.expires_at_ms.map_or("never".to_string(), format_ms),
                        t.last_used_ms.map_or("never".to_string(), format_ms),
                    );
                }
                Ok(0)
            }
            TokenCommand::Revoke { id } => {
                let record: TokenRecord = client
                    .post(
                        &format!("/api/v1/tokens/{}/revoke", crate::encode(&id)),
                        &(),
                    )
                    .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&record)?);
                } else {
                    println!("token {} revoked", record.id);
                }
                Ok(0)
            }
        },
        ServerCommand::User { command } => match command {
            UserCommand::Add { name, role, env } => {
                let password = read_password()?;
                let user: UserLine = client
                    .post(
                        "/api/v1/users",
                        &NewUser {
                            name,
                            role: role.into(),
                            env,
                            password,
                        },
                    )
                    .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&user)?);
                } else {
                    println!("user {} saved", user.name);
                }
                Ok(0)
            }
            UserCommand::List => {
                let users: Vec<UserLine> = client.get("/api/v1/users").await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&users)?);
                    return Ok(0);
                }
                for u in users {
                    let grants: Vec<String> = u
                        .grants
                        .iter()
                        .map(|g| format!("{}@{}", g.role, g.env.as_deref().unwrap_or("*")))
                        .collect();
                    println!("{:<20}  {}", u.name, grants.join(", "));
                }
                Ok(0)
            }
        },
        ServerCommand::Approve {
            deployment,
            reject,
            comment,
        } => {
            let detail: DeploymentDetail = client
                .get(&format!(
                    "/api/v1/deployments/{}",
                    crate::encode(&deployment)
                ))
                .await?;
            let Some(gate) = detail.approval.filter(|g| g.waiting) else {
                bail!(
                    "deployment {deployment} is not waiting for approval (it is {}); see `cutover status --deployment {deployment}`",
                    detail.status
                );
            };
            let Some(image_id) = gate.image_id.clone() else {
                bail!("deployment {deployment} has no built image to approve yet; try again in a moment");
            };
            let decision = if reject {
                Decision::Reject
            } else {
                Decision::Approve
            };
            // What is approved: the control plane's view of the change; the approval names
            // its digest, so a deployment that changes after this is refused.
            let view: ApprovalView = client
                .get(&format!(
                    "/api/v1/deployments/{}/approval-view",
                    crate::encode(&deployment)
                ))
                .await?;
            if !json {
                eprint!("{}", crate::render::approval_view(&view));
                eprintln!(
                    "{} {deployment} ({} to {}): plan {} image {} ({}) view {}",
                    decision.as_str(),
                    detail.release_id,
                    detail.env,
                    gate.plan_digest,
                    image_id,
                    gate.image_tag.as_deref().unwrap_or("-"),
                    view.view_digest
                );
            }
            let _: ApprovalAccepted = client
                .post(
                    &format!(
                        "/api/v1/deployments/{}/approvals",
                        crate::encode(&deployment)
                    ),
                    &ApprovalRequest {
                        decision,
                        plan_digest: gate.plan_digest.clone(),
                        image_id,
                        view_digest: Some(view.view_digest.clone()),
                        comment,
                    },
                )
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"deployment": deployment, "decision": decision, "view": view})
                );
            } else {
                println!(
                    "{} {deployment}",
                    if reject { "rejected" } else { "approved" }
                );
            }
            Ok(0)
        }
        ServerCommand::Guardrails { command } => guardrails(&client, command, json).await,
        ServerCommand::Projects { command } => projects(&client, command, json).await,
        ServerCommand::Audit { command } => match command {
            AuditCommand::Verify {
                against: Some(sink),
                key,
            } => {
                let entries: Vec<AuditEntry> = client.get("/api/v1/audit").await?;
                verify_against(state, &entries, &sink, key, json)
            }
            AuditCommand::Key => audit_key(state, json),
            AuditCommand::Verify { against: None, .. } => {
                let report: VerifyReport = client.get("/api/v1/audit/verify").await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                }
                match report.broken {
                    None if !report.anchor.is_empty() => {
                        eprintln!(
                            "audit log's links check ({} entries), but the control plane's audit sink disagrees with it (found at start):",
                            report.entries
                        );
                        for problem in &report.anchor {
                            eprintln!("  - {problem}");
                        }
                        eprintln!(
                            "run `cutover audit verify --against <sink>` for every checkpoint"
                        );
                        Ok(1)
                    }
                    None => {
                        if !json {
                            println!(
                                "audit log intact: {} entries, every link checks",
                                report.entries
                            );
                        }
                        Ok(0)
                    }
                    Some(broken) => {
                        eprintln!(
                            "audit log BROKEN at entry {}: {} ({} entries before it check)",
                            broken.seq, broken.reason, report.entries
                        );
                        Ok(1)
                    }
                }
            }
            AuditCommand::Export { since } => {
                let path = match since {
                    Some(text) => {
                        let ago = auth::parse_lifetime(&text)
                            .map_err(anyhow::Error::msg)
                            .context("--since")?;
                        let since_ms =
                            cutover_model::now_ms().saturating_sub(ago.as_millis() as u64);
                        format!("/api/v1/audit?since_ms={since_ms}")
                    }
                    None => "/api/v1/audit".to_string(),
                };
                let entries: Vec<AuditEntry> = client.get(&path).await?;
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                for entry in entries {
                    writeln!(out, "{}", serde_json::to_string(&entry)?)?;
                }
                Ok(0)
            }
        },
    }
}

/// `cutover audit key`: the checkpoint key's public half.
fn audit_key(state: &StateDir, json: bool) -> Result<u8> {
    crate::client::create_state_dir(&state.0)?;
    let key = cutover_server::anchor::load_or_create_key(&state.0.join("keys"))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"key_id": key.key_id(), "pem": key.public().to_pem()})
        );
    } else {
        print!("{}", key.public().to_pem());
        eprintln!("key id {}", key.key_id());
    }
    Ok(0)
}

fn print_version(v: &GuardrailsVersion) {
    println!(
        "guardrails of {} version {} ({}) by {} at {}, {}",
        v.env,
        v.version,
        v.how,
        v.set_by,
        format_ms(v.set_at_ms),
        v.digest
    );
    for (what, required) in cutover_server::guardrails::summary(&v.guardrails) {
        println!("  {what:<13} {required}");
    }
}

async fn guardrails(
    client: &crate::client::ApiClient,
    command: GuardrailsCommand,
    json: bool,
) -> Result<u8> {
    match command {
        GuardrailsCommand::Set {
            env,
            guardrails_file: file,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read the guardrails file {}", file.display()))?;
            // Checked here first, so a bad file fails fast naming its place.
            cutover_server::guardrails::parse(&text, &file)?;
            let saved: GuardrailsVersion = client
                .put(
                    &format!("/api/v1/guardrails/{}", crate::encode(&env)),
                    &SetGuardrails {
                        text,
                        file: Some(file.display().to_string()),
                    },
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&saved)?);
            } else {
                print_version(&saved);
            }
            Ok(0)
        }
        GuardrailsCommand::Show { env, version } => {
            let mut path = format!("/api/v1/guardrails/{}", crate::encode(&env));
            if let Some(n) = version {
                path.push_str(&format!("?version={n}"));
            }
            let shown: GuardrailsShow = client.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
                return Ok(0);
            }
            match &shown.current {
                Some(v) => {
                    print_version(v);
                    if shown.latest_version != Some(v.version) {
                        println!(
                            "  (the newest is version {})",
                            shown.latest_version.unwrap_or_default()
                        );
                    }
                }
                None => println!("environment {env} has no guardrails yet"),
            }
            if let Some(p) = &shown.proposal {
                println!(
                    "\nproposed by {} at {} from spec {}; accept with `cutover guardrails accept {env}`:\n{}",
                    p.proposed_by,
                    format_ms(p.proposed_at_ms),
                    p.spec_digest,
                    p.text
                );
            }
            Ok(0)
        }
        GuardrailsCommand::Accept { env } => {
            let saved: GuardrailsVersion = client
                .post(
                    &format!("/api/v1/guardrails/{}/accept", crate::encode(&env)),
                    &(),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&saved)?);
            } else {
                print_version(&saved);
            }
            Ok(0)
        }
    }
}

async fn projects(
    client: &crate::client::ApiClient,
    command: ProjectsCommand,
    json: bool,
) -> Result<u8> {
    let (path, body) = match command {
        ProjectsCommand::List => {
            let roots: Vec<ProjectRoot> = client.get("/api/v1/projects").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&roots)?);
            } else if roots.is_empty() {
                println!("no project roots: `cutover projects add <dir>` registers one");
            } else {
                for r in roots {
                    println!(
                        "{}  added by {} at {}{}",
                        r.path,
                        r.added_by,
                        format_ms(r.added_at_ms),
                        if r.automatic {
                            " (by a local deploy)"
                        } else {
                            ""
                        }
                    );
                }
            }
            return Ok(0);
        }
        ProjectsCommand::Add { dir } => ("/api/v1/projects", dir),
        ProjectsCommand::Rm { dir } => ("/api/v1/projects/remove", dir),
    };
    // A path on the control plane's machine: relative ones mean nothing there.
    if client.is_remote() && !body.is_absolute() {
        bail!(
            "{}: give an absolute path on the control plane's machine ({})",
            body.display(),
            client.target()
        );
    }
    let body = ProjectPath {
        path: crate::client::absolute(&body).display().to_string(),
    };
    let root: ProjectRoot = client.post(path, &body).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&root)?);
    } else if path.ends_with("remove") {
        println!("project root {} removed", root.path);
    } else {
        println!("project root {} registered", root.path);
    }
    Ok(0)
}

/// `cutover audit verify --against <sink>`: the exported chain against the sink's
/// checkpoints, checked here (the control plane reads no path a client names).
fn verify_against(
    state: &StateDir,
    entries: &[AuditEntry],
    sink: &std::path::Path,
    key: Option<PathBuf>,
    json: bool,
) -> Result<u8> {
    let key_path =
        key.unwrap_or_else(|| cutover_server::anchor::public_key_path(&state.0.join("keys")));
    if !key_path.exists() {
        bail!(
            "no audit key at {}: pass --key with the audit public key (`cutover audit key` prints it where the control plane runs)",
            key_path.display()
        );
    }
    let public = cutover_signing::PublicKey::from_pem_file(&key_path).context("--key")?;
    let text = std::fs::read_to_string(sink)
        .with_context(|| format!("cannot read the audit sink {}", sink.display()))?;
    let report = cutover_server::anchor::verify_against(entries, &text, &public);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    if report.intact() {
        if !json {
            println!(
                "audit log anchored: {} entries, {} checkpoints in {} by key {}, every one matches the chain",
                report.entries,
                report.checkpoints,
                sink.display(),
                public.key_id()
            );
        }
        return Ok(0);
    }
    eprintln!(
        "audit log does NOT match its sink {} ({} entries; confirmed through entry {}):",
        sink.display(),
        report.entries,
        report.anchored_through
    );
    for problem in &report.problems {
        eprintln!("  - {problem}");
    }
    Ok(1)
}

/// The password from `CUTOVER_PASSWORD`, else the first line of stdin.
fn read_password() -> Result<String> {
    if let Ok(password) = std::env::var("CUTOVER_PASSWORD") {
        return Ok(password);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password: ");
        std::io::stderr().flush().ok();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("no password given: set CUTOVER_PASSWORD or pass it on stdin");
    }
    Ok(password)
}
