//! `cutover`: immutable blue/green deployments.
//!
//! Glue only: parses the command line, talks to the control plane (starting it when
//! needed), renders answers. The control plane (`cutover serve`) and the proxy
//! (`cutover proxy`) are entry points of the same binary.

#[cfg(test)]
mod ci_examples;
mod client;
mod daemon;
mod follow;
mod registry_cmds;
mod render;
mod secret_cmds;
mod serve;
mod server_cmds;
mod supply_cmds;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use cutover_model::format_ms;

use cutover_server::api::{
    DeploymentState, EnvStatus, ErrorCode, GcReport, GcRequest, HistoryLine, Pin, PlanRequest,
    PlanResponse, Promote, Resumed, RollbackTo, Started,
};

use client::{connect_or_start, ApiClient, CallError, StateDir};
use follow::exit;

const EXIT_HELP: &str = "\
Exit codes:
  0  success
  1  error (control plane unreachable, I/O, internal; a token without the role needed)
  2  bad input: invalid deploy.toml, unknown environment or release, bad arguments,
     a spec weaker than its environment's guardrails
  3  the deployment failed and was rolled back (traffic stayed on or returned to the previous release)
  4  the deployment is stuck: an undo failed and needs a human (see `cutover status`)
  5  refused: another deployment holds the environment
  6  refused by the supply chain: a scan gate failed or an image failed verification";

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "Immutable blue/green deployments: build, verify, provision green, health-check, cut over, roll back in under a second",
    after_help = EXIT_HELP
)]
struct Cli {
    /// The deployment spec.
    #[arg(
        short = 'f',
        long = "file",
        global = true,
        default_value = "deploy.toml",
        env = "CUTOVER_FILE"
    )]
    file: PathBuf,
    /// Where the store, logs and sockets live (default: .cutover/ next to the spec).
    #[arg(long, global = true, env = "CUTOVER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// A control plane's HTTPS API, e.g. https://cutover.example.com: every command that
    /// talks to the control plane talks to it instead of the local socket, and none starts
    /// one here. Needs a token (--token-file or CUTOVER_TOKEN). http:// only to loopback.
    #[arg(long, global = true, env = "CUTOVER_URL", value_name = "URL")]
    url: Option<String>,
    /// With --url: a file holding the API token, readable by its owner only (mode 0600).
    /// A token is never taken from the command line; CUTOVER_TOKEN also gives one.
    #[arg(
        long,
        global = true,
        env = "CUTOVER_TOKEN_FILE",
        value_name = "FILE",
        requires = "url"
    )]
    token_file: Option<PathBuf>,
    /// With --url: the CA certificate(s) (PEM) that signed the control plane's TLS
    /// certificate; trusted instead of the system's roots (self-signed or private CA).
    #[arg(long, global = true, env = "CUTOVER_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Send the spec's text with this directory on the control plane's machine (inside a
    /// registered project root), which the spec's relative paths resolve against. Without
    /// it, a spec sent to --url may name no file (deploy a prebuilt image).
    #[arg(long, global = true, env = "CUTOVER_BASE_DIR", value_name = "DIR")]
    base_dir: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
    /// Graphviz (plan only).
    Dot,
}

#[derive(Subcommand)]
enum Command {
    /// Show the plan (DAG) a deploy would run, without changing anything.
    Plan {
        #[arg(short, long)]
        env: Option<String>,
        /// Plan a rollback instead (to --to, or the previous release).
        #[arg(long)]
        rollback: bool,
        #[arg(long, requires = "rollback")]
        to: Option<String>,
        /// Plan the deploy of this prebuilt image (HOST[:PORT]/REPO@sha256:<hex>) instead of
        /// the spec's build.
        #[arg(long, conflicts_with = "rollback")]
        image: Option<String>,
    },
    /// Build, provision green, health-check, shift traffic, retire blue.
    Deploy {
        #[arg(short, long)]
        env: Option<String>,
        /// Return once the deployment started instead of following it.
        #[arg(long)]
        detach: bool,
        /// Deploy this prebuilt image (HOST[:PORT]/REPO@sha256:<hex>, as `cutover push`
        /// prints it) instead of the spec's build: pulled, verified against the
        /// environment's trusted keys, scanned here.
        #[arg(long)]
        image: Option<String>,
        /// Rotate secrets only: a new release of the current image with the latest secret
        /// versions, no build (same as `cutover rotate`).
        #[arg(long, conflicts_with = "image")]
        secrets_only: bool,
    },
    /// A new release of the current image with the latest secret versions: provision
    /// green, health-check, shift, retire blue; nothing is built.
    Rotate {
        /// The environment (may be left out when the spec has one).
        env: Option<String>,
        #[arg(long)]
        detach: bool,
    },
    /// The secret store: set, list, rotate, revoke, rm, rewrap (values never printed).
    Secret {
        #[command(subcommand)]
        command: secret_cmds::SecretCommand,
    },
    /// Build, scan, sign and verify for an environment without deploying; write the build
    /// record and the attestation bundle to --out and print the image id.
    Build {
        #[arg(short, long)]
        env: Option<String>,
        /// Directory for build.json and attestations.json.
        #[arg(long, default_value = "cutover-build")]
        out: PathBuf,
    },
    /// Push the image of `cutover build --out DIR` and its attestations to an OCI registry
    /// (HOST[:PORT]/REPO[:TAG]); print it by digest. Credentials: CUTOVER_REGISTRY_USERNAME
    /// and CUTOVER_REGISTRY_PASSWORD, or the 0600 file CUTOVER_REGISTRY_AUTH
    /// (default ~/.config/cutover/registry-auth.json, Docker's `auths` format).
    Push {
        target: String,
        /// The directory `cutover build --out` wrote.
        #[arg(long = "build", default_value = "cutover-build")]
        build_dir: PathBuf,
    },
    /// Current release, traffic, instances and the latest deployment per environment.
    Status {
        #[arg(short, long)]
        env: Option<String>,
        /// Show one deployment in detail.
        #[arg(long)]
        deployment: Option<String>,
    },
    /// Deployments and releases, newest first.
    History {
        #[arg(short, long)]
        env: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Return traffic to the previous release (or --to RELEASE). Never rebuilds.
    Rollback {
        #[arg(short, long)]
        env: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        detach: bool,
        /// When the target pins a revoked secret version, start a new release of its image
        /// with the latest versions instead of refusing.
        #[arg(long)]
        use_latest_secrets: bool,
    },
    /// Deploy exactly the image of a release of another environment (e.g. staging-7) to
    /// --to: same image id, a fresh scan verdict for the target, no build.
    Promote {
        /// The release whose image is promoted, e.g. staging-7.
        release: String,
        /// The environment to promote to.
        #[arg(long)]
        to: String,
        /// The release's environment (default: the release id without `-<number>`).
        #[arg(long)]
        from: Option<String>,
        /// Only show the plan the promotion would run.
        #[arg(long)]
        plan: bool,
        #[arg(long)]
        detach: bool,
    },
    /// Keep a release's image and attestations through `cutover gc` (--list: the pins).
    Pin {
        /// The release, e.g. production-4.
        #[arg(required_unless_present = "list")]
        release: Option<String>,
        /// Its environment (default: the release id without `-<number>`).
        #[arg(short, long)]
        env: Option<String>,
        #[arg(long, conflicts_with = "release")]
        list: bool,
    },
    /// Let `cutover gc` remove a release's image again once nothing else keeps it.
    Unpin {
        release: String,
        #[arg(short, long)]
        env: Option<String>,
    },
    /// Remove local images (and their attestations) no rollback needs: all but the current,
    /// warm, last `keep_releases` and pinned ones, and those of unfinished deployments.
    Gc {
        /// Report only; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Finish or unwind deployments interrupted by a crash, and follow them.
    Resume,
    /// Run the control plane in the foreground (the CLI starts it in the background itself).
    ///
    /// Cargo builds run in a bubblewrap sandbox; CUTOVER_UNSANDBOXED_BUILDS=1 in its
    /// environment runs them without one (development machines without bubblewrap only).
    Serve {
        /// Stop the running control plane and the proxy (traffic stops).
        #[arg(long)]
        stop: bool,
        /// With --stop: leave the proxy running so traffic keeps flowing.
        #[arg(long, requires = "stop")]
        keep_proxy: bool,
        /// Also serve the HTTP API for CI (`/api/v1`), `/metrics` and the web UI on host:port.
        #[arg(long, env = "CUTOVER_HTTP")]
        http: Option<String>,
        /// Allow --http on an address other machines can reach without TLS (tokens and
        /// passwords would cross the network in the clear). Loopback needs no such flag.
        #[arg(long)]
        insecure_http: bool,
        #[command(flatten)]
        door: serve::DoorArgs,
        /// POST deployment events (failed, rolled back, stuck, waiting for approval) to this
        /// http:// URL; repeatable.
        #[arg(long, env = "CUTOVER_WEBHOOKS", value_delimiter = ',')]
        webhook: Vec<String>,
        /// Append a signed checkpoint of the audit chain to this file on every audited
        /// action (opened append-only, 0600; keep it on another disk or machine, or
        /// `chattr +a`); repeatable. Actions whose checkpoint cannot be written fail.
        /// Remembered for later starts without the flag (`.cutover/audit-sinks.json`).
        #[arg(long = "audit-sink", env = "CUTOVER_AUDIT_SINK", value_delimiter = ',')]
        audit_sink: Vec<std::path::PathBuf>,
        /// The secrets master key file (base64 or hex of 32 bytes, mode 0600). Without it,
        /// CUTOVER_SECRETS_KEY (the key itself, for CI), else a key file made on first use
        /// in $XDG_CONFIG_HOME/cutover/secrets/. A key that does not match the store stops
        /// the start.
        #[arg(long, env = "CUTOVER_SECRETS_KEY_FILE", value_name = "FILE")]
        secrets_key: Option<PathBuf>,
    },
    /// Run the data-plane proxy in the foreground (started by the control plane).
    #[command(hide = true)]
    Proxy,
    #[command(flatten)]
    Supply(supply_cmds::SupplyCommand),
    #[command(flatten)]
    Server(server_cmds::ServerCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.output == Output::Json;
    let daemon = matches!(
        cli.command,
        Command::Serve { stop: false, .. } | Command::Proxy
    );
    if daemon {
        // Everything a daemon creates (store, logs, pid files, sockets, keys) is its
        // owner's alone.
        // SAFETY: umask only sets the process's file mode mask.
        unsafe {
            libc::umask(0o077);
        }
    }
    init_tracing(daemon);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = exit_code_of(&e);
            eprintln!("error: {}", render::error_chain(&e));
            if json {
                println!("{}", error_json(&e, code));
            }
            ExitCode::from(code)
        }
    }
}

/// An error as one JSON document on stdout (`--output json`), for scripts: the API's
/// error code when the control plane refused, the message, the exit code.
fn error_json(e: &anyhow::Error, exit_code: u8) -> serde_json::Value {
    let body = e
        .chain()
        .find_map(|cause| match cause.downcast_ref::<CallError>() {
            Some(CallError::Api(body)) => Some(body.clone()),
            _ => None,
        });
    let code = match (&body, e.chain().any(|c| c.is::<cutover_spec::SpecError>())) {
        (Some(body), _) => body.code.as_str().to_string(),
        (None, true) => "bad_request".to_string(),
        (None, false) if e.chain().any(|c| c.is::<CallError>()) => "unreachable".to_string(),
        (None, false) => "error".to_string(),
    };
    let mut error = serde_json::json!({
        "code": code,
        "message": render::error_chain(e),
        "exit_code": exit_code,
    });
    if let (Some(body), Some(object)) = (&body, error.as_object_mut()) {
        if let Some(id) = &body.error_id {
            object.insert("error_id".into(), serde_json::json!(id));
        }
        if !body.violations.is_empty() {
            object.insert("violations".into(), serde_json::json!(body.violations));
        }
    }
    serde_json::json!({ "error": error })
}

fn init_tracing(daemon: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUTOVER_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if daemon { "info" } else { "warn" })
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if daemon {
        builder.json().init();
    } else {
        builder.without_time().with_target(false).init();
    }
}

/// Map an error to an exit code: bad input (and guardrail violations) 2, busy 5, everything
/// else 1.
fn exit_code_of(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<cutover_spec::SpecError>().is_some() {
            return exit::BAD_INPUT;
        }
        if let Some(CallError::Api(body)) = cause.downcast_ref::<CallError>() {
            return match body.code {
                ErrorCode::BadRequest | ErrorCode::NotFound | ErrorCode::GuardrailViolation => {
                    exit::BAD_INPUT
                }
                ErrorCode::Conflict => exit::BUSY,
                _ => exit::ERROR,
            };
        }
    }
    exit::ERROR
}

pub(crate) struct Context_ {
    spec: PathBuf,
    pub(crate) state: StateDir,
    output: Output,
    /// The remote control plane's client (`--url`), when one is named.
    pub(crate) remote: Option<ApiClient>,
    /// `--base-dir`: send the spec's text with this directory instead of its path.
    base_dir: Option<String>,
}

impl Context_ {
    /// Where deployments are followed from.
    fn door(&self) -> follow::Door<'_> {
        match &self.remote {
            Some(client) => follow::Door::Remote(client),
            None => follow::Door::Local(&self.state),
        }
    }
}

/// What a command does with `--url`: talk to that control plane, run here regardless
/// (it works on this machine's files, Docker engine or keys), or refuse.
#[derive(Debug, PartialEq, Eq)]
enum Reach {
    ControlPlane,
    Local,
    Refused(&'static str),
}

fn reach(command: &Command) -> Reach {
    match command {
        Command::Serve { .. } => Reach::Refused(
            "`cutover serve` runs the control plane on this machine and does not talk to --url (CUTOVER_URL); unset it to run or stop a local control plane",
        ),
        // `build` runs on this machine's own control plane (CI's, with CI's key) and writes
        // its result here; `push` talks to the registry from here.
        Command::Proxy | Command::Supply(_) | Command::Build { .. } | Command::Push { .. } => {
            Reach::Local
        }
        Command::Server(server_cmds::ServerCommand::Audit {
            command: server_cmds::AuditCommand::Key,
        }) => Reach::Refused(
            "`cutover audit key` prints the key of the control plane on this machine; run it where the control plane runs, without --url (CUTOVER_URL)",
        ),
        _ => Reach::ControlPlane,
    }
}

async fn run(cli: Cli) -> Result<u8> {
    let spec = client::absolute(&cli.file);
    let state = StateDir(match &cli.state_dir {
        Some(dir) => client::absolute(dir),
        None => spec.parent().unwrap_or(Path::new(".")).join(".cutover"),
    });
    let url = cli.url.as_deref().filter(|u| !u.trim().is_empty());
    let remote = match (url, reach(&cli.command)) {
        (None, _) | (Some(_), Reach::Local) => None,
        (Some(_), Reach::Refused(why)) => anyhow::bail!("{why}"),
        (Some(url), Reach::ControlPlane) => Some(client::remote_client(client::RemoteArgs {
            url,
            token_file: cli.token_file.as_deref(),
            ca_cert: cli.ca_cert.as_deref(),
            env_token: std::env::var("CUTOVER_TOKEN").ok(),
        })?),
    };
    let ctx = Context_ {
        spec,
        state,
        output: cli.output,
        remote,
        base_dir: cli.base_dir.filter(|d| !d.is_empty()),
    };
    match cli.command {
        Command::Plan {
            env,
            rollback,
            to,
            image,
        } => {
            let rollback = rollback.then_some(RollbackTo { to });
            let req = PlanRequest {
                image,
                // The control plane's environment is not the caller's: env:// values go along.
                secret_env: if rollback.is_none() {
                    caller_secret_env(&ctx)
                } else {
                    Default::default()
                },
                ..request(&ctx, env, rollback)?
            };
            plan_request(&ctx, &req).await
        }
        Command::Deploy {
            env,
            detach,
            image,
            secrets_only: false,
        } => start_image(&ctx, env, None, detach, image).await,
        Command::Deploy {
            env,
            detach,
            secrets_only: true,
            ..
        }
        | Command::Rotate { env, detach } => {
            let req = PlanRequest {
                secrets_only: true,
                ..request(&ctx, env, None)?
            };
            start_request(&ctx, &req, detach).await
        }
        Command::Secret { command } => {
            secret_cmds::run(command, &ctx, ctx.output == Output::Json).await
        }
        Command::Build { env, out } => registry_cmds::build(&ctx, env, &out).await,
        Command::Push { target, build_dir } => registry_cmds::push(&ctx, &target, &build_dir).await,
        Command::Rollback {
            env,
            to,
            detach,
            use_latest_secrets,
        } => {
            let req = PlanRequest {
                use_latest_secrets,
                ..request(&ctx, env, Some(RollbackTo { to }))?
            };
            start_request(&ctx, &req, detach).await
        }
        Command::Promote {
            release,
            to,
            from,
            plan: only_plan,
            detach,
        } => {
            let promote = Promote {
                release,
                from_env: from,
            };
            let req = PlanRequest {
                promote: Some(promote),
                ..request(&ctx, Some(to), None)?
            };
            if only_plan {
                plan_request(&ctx, &req).await
            } else {
                start_request(&ctx, &req, detach).await
            }
        }
        Command::Pin { release, env, list } => match (list, release) {
            (false, Some(release)) => pin(&ctx, &release, env, true).await,
            _ => pins(&ctx).await,
        },
        Command::Unpin { release, env } => pin(&ctx, &release, env, false).await,
        Command::Gc { dry_run } => gc(&ctx, dry_run).await,
        Command::Status { env, deployment } => status(&ctx, env, deployment).await,
        Command::History { env, limit } => history(&ctx, env, limit).await,
        Command::Resume => resume(&ctx).await,
        Command::Serve {
            stop: false,
            http,
            insecure_http,
            door,
            webhook,
            audit_sink,
            secrets_key,
            ..
        } => {
            serve::run(
                ctx.state,
                serve::ServeOptions {
                    http,
                    insecure_http,
                    door,
                    webhooks: webhook,
                    audit_sinks: audit_sink,
                    secrets_key,
                },
            )
            .await?;
            Ok(0)
        }
        Command::Serve {
            stop: true,
            keep_proxy,
            ..
        } => stop(&ctx, keep_proxy).await,
        Command::Server(command) => {
            server_cmds::run(
                command,
                &ctx.state,
                ctx.remote.clone(),
                ctx.output == Output::Json,
            )
            .await
        }
        Command::Supply(command) => {
            supply_cmds::run(command, &ctx.state, ctx.output == Output::Json).await
        }
        Command::Proxy => {
            cutover_proxy::run(cutover_proxy::ProxyConfig {
                state_dir: ctx.state.0.clone(),
            })
            .await?;
            Ok(0)
        }
    }
}

/// Validate the spec here first, so bad input fails fast and starts nothing. A spec sent as
/// text is checked by the control plane, against its own files.
pub(crate) fn check_spec(ctx: &Context_) -> Result<()> {
    if ctx.remote.is_none() && ctx.base_dir.is_none() {
        cutover_spec::load(&ctx.spec)?;
    }
    Ok(())
}

/// Connect, and say so when starting the control plane resumed interrupted work. With
/// `--url`, the remote control plane's client: nothing is started or looked for here.
pub(crate) async fn connect(ctx: &Context_) -> Result<ApiClient> {
    if let Some(client) = &ctx.remote {
        return Ok(client.clone());
    }
    let (client, started) = connect_or_start(&ctx.state).await?;
    if started {
        let resumed: Resumed = client.post("/api/v1/resume", &()).await?;
        for id in &resumed.deployments {
            eprintln!(
                "note: resuming interrupted deployment {id} (follow it with `cutover resume`)"
            );
        }
    }
    Ok(client)
}

/// The plan or deploy request: the spec's path on the socket (the control plane reads it
/// there); its text to a remote control plane or with `--base-dir`.
fn request(
    ctx: &Context_,
    env: Option<String>,
    rollback: Option<RollbackTo>,
) -> Result<PlanRequest> {
    if ctx.remote.is_none() && ctx.base_dir.is_none() {
        return Ok(PlanRequest {
            spec_path: Some(ctx.spec.to_string_lossy().into_owned()),
            env,
            rollback,
            ..PlanRequest::default()
        });
    }
    let text = std::fs::read_to_string(&ctx.spec).map_err(|e| cutover_spec::SpecError {
        path: ctx.spec.clone(),
        line: 1,
        column: 1,
        field: String::new(),
        message: format!("cannot read the spec file: {e}; check the path passed to cutover (-f)"),
        others: Vec::new(),
    })?;
    Ok(PlanRequest {
        spec: Some(text),
        base_dir: ctx.base_dir.clone(),
        env,
        rollback,
        ..PlanRequest::default()
    })
}

async fn plan_request(ctx: &Context_, req: &PlanRequest) -> Result<u8> {
    check_spec(ctx)?;
    let client = connect(ctx).await?;
    let planned: PlanResponse = client.post("/api/v1/plans", req).await?;
    match ctx.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&planned.plan)?),
        Output::Dot => print!("{}", cutover_planner::render_dot(&planned.plan)),
        Output::Text => print!("{}", planned.text),
    }
    Ok(0)
}

async fn start_image(
    ctx: &Context_,
    env: Option<String>,
    rollback: Option<RollbackTo>,
    detach: bool,
    image: Option<String>,
) -> Result<u8> {
    if let Some(image) = &image {
        // Bad input fails here, before anything starts.
        if let Err(e) = cutover_model::ImageRef::parse(image) {
            eprintln!("error: --image: {e}");
            return Ok(exit::BAD_INPUT);
        }
    }
    let req = PlanRequest {
        image,
        // The control plane's environment is not the caller's: env:// values go along.
        secret_env: if rollback.is_none() {
            caller_secret_env(ctx)
        } else {
            Default::default()
        },
        ..request(ctx, env, rollback)?
    };
    start_request(ctx, &req, detach).await
}

async fn start_request(ctx: &Context_, req: &PlanRequest, detach: bool) -> Result<u8> {
    check_spec(ctx)?;
    let client = connect(ctx).await?;
    let started: Started = client.post("/api/v1/deployments", req).await?;
    for warning in &started.warnings {
        eprintln!("{warning}");
    }
    if detach {
        match ctx.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&started)?),
            _ => println!("{}", started.deployment_id),
        }
        return Ok(0);
    }
    follow::follow(
        ctx.door(),
        &started.deployment_id,
        ctx.output == Output::Json,
    )
    .await
}

/// The values of the spec's `env://` secret references in this process's environment
/// (missing ones are left out; the control plane names them).
fn caller_secret_env(ctx: &Context_) -> std::collections::BTreeMap<String, String> {
    let Ok(spec) = cutover_spec::load(&ctx.spec) else {
        return Default::default();
    };
    spec.container
        .secrets
        .values()
        .filter_map(|m| m.source.strip_prefix("env://"))
        .filter_map(|var| std::env::var(var).ok().map(|v| (var.to_string(), v)))
        .collect()
}

/// The environment of `release`: `env`, else the release id without `-<number>`.
fn release_env(release: &str, env: Option<String>) -> Result<String> {
    Promote {
        release: release.to_string(),
        from_env: env,
    }
    .source_env()
    .ok_or_else(|| {
        anyhow::Error::new(CallError::Api(cutover_server::api::ErrorBody {
            code: ErrorCode::BadRequest,
            message: format!("release id {release:?} does not name its environment (like `production-4`); give it with --env"),
            error_id: None,
            violations: Vec::new(),
        }))
    })
}

async fn pin(ctx: &Context_, release: &str, env: Option<String>, pin: bool) -> Result<u8> {
    let env = release_env(release, env)?;
    let client = connect(ctx).await?;
    let path = format!(
        "/api/v1/environments/{}/releases/{}/pin",
        encode(&env),
        encode(release)
    );
    let answer: Pin = if pin {
        client.post(&path, &()).await?
    } else {
        client.delete(&path).await?
    };
    match ctx.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&answer)?),
        _ if pin => println!(
            "pinned {env}/{release} (image {}, by {} at {}): `cutover gc` keeps it",
            answer.image_id,
            answer.by,
            format_ms(answer.at_ms)
        ),
        _ => println!("unpinned {env}/{release} (image {})", answer.image_id),
    }
    Ok(0)
}

async fn pins(ctx: &Context_) -> Result<u8> {
    let client = connect(ctx).await?;
    let pins: Vec<Pin> = client.get("/api/v1/pins").await?;
    match ctx.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&pins)?),
        _ if pins.is_empty() => println!("no release is pinned"),
        _ => {
            for p in &pins {
                println!(
                    "{}/{}  image {}  by {} at {}",
                    p.env,
                    p.release,
                    p.image_id,
                    p.by,
                    format_ms(p.at_ms)
                );
            }
        }
    }
    Ok(0)
}

async fn gc(ctx: &Context_, dry_run: bool) -> Result<u8> {
    let client = connect(ctx).await?;
    let report: GcReport = client.post("/api/v1/gc", &GcRequest { dry_run }).await?;
    match ctx.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        _ => print!("{}", render::gc(&report)),
    }
    Ok(if report.failed.is_empty() {
        0
    } else {
        exit::ERROR
    })
}

async fn resume(ctx: &Context_) -> Result<u8> {
    let client = connect(ctx).await?;
    let resumed: Resumed = client.post("/api/v1/resume", &()).await?;
    if resumed.deployments.is_empty() {
        if ctx.output == Output::Json {
            println!("[]");
        } else {
            println!("nothing to resume: no deployment was interrupted");
        }
        return Ok(0);
    }
    let mut worst = 0;
    for id in &resumed.deployments {
        worst = worst.max(follow::follow(ctx.door(), id, ctx.output == Output::Json).await?);
    }
    Ok(worst)
}

async fn status(ctx: &Context_, env: Option<String>, deployment: Option<String>) -> Result<u8> {
    let client = connect(ctx).await?;
    if let Some(id) = deployment {
        let detail: cutover_server::api::DeploymentDetail = client
            .get(&format!("/api/v1/deployments/{}", encode(&id)))
            .await?;
        // While it waits at its gate, what approving it approves.
        let view = if detail.waiting_for_approval() {
            Some(approval_view(&client, &id).await?)
        } else {
            None
        };
        match ctx.output {
            Output::Json => {
                let mut value = serde_json::to_value(&detail)?;
                if let (Some(view), Some(object)) = (&view, value.as_object_mut()) {
                    object.insert("approval_view".to_string(), serde_json::to_value(view)?);
                }
                println!("{}", serde_json::to_string_pretty(&value)?)
            }
            _ => {
                print!("{}", render::deployment(&detail));
                if let Some(view) = &view {
                    print!("{}", render::approval_view(view));
                }
            }
        }
        return Ok(0);
    }
    // The environment asked for, else those of the spec, else every one the control plane
    // knows.
    let names: Option<Vec<String>> = match env {
        Some(env) => Some(vec![env]),
        None => cutover_spec::load(&ctx.spec)
            .ok()
            .map(|spec| spec.environments.keys().cloned().collect()),
    };
    let path = match names {
        Some(names) => format!("/api/v1/environments?names={}", encode(&names.join(","))),
        None => "/api/v1/environments".to_string(),
    };
    let envs: Vec<EnvStatus> = client.get(&path).await?;
    match ctx.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&envs)?),
        _ => {
            print!("{}", render::status(&envs));
            for waiting in envs
                .iter()
                .filter_map(|e| e.latest.as_ref())
                .filter(|d| d.waiting_for_approval())
            {
                print!(
                    "{}",
                    render::approval_view(&approval_view(&client, &waiting.id).await?)
                );
            }
        }
    }
    Ok(
        if envs.iter().any(|e| {
            e.latest
                .as_ref()
                .is_some_and(|d| d.status == DeploymentState::Stuck)
        }) {
            exit::STUCK
        } else {
            exit::OK
        },
    )
}

/// The control plane's approval view of deployment `id`.
async fn approval_view(client: &ApiClient, id: &str) -> Result<cutover_server::api::ApprovalView> {
    Ok(client
        .get(&format!("/api/v1/deployments/{}/approval-view", encode(id)))
        .await?)
}

async fn history(ctx: &Context_, env: Option<String>, limit: usize) -> Result<u8> {
    let client = connect(ctx).await?;
    let mut path = format!("/api/v1/deployments?limit={limit}");
    if let Some(env) = &env {
        path.push_str(&format!("&env={}", encode(env)));
    }
    let lines: Vec<HistoryLine> = client.get(&path).await?;
    match ctx.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&lines)?),
        _ => print!("{}", render::history(&lines)),
    }
    Ok(0)
}

async fn stop(ctx: &Context_, keep_proxy: bool) -> Result<u8> {
    let client = client::client(&ctx.state);
    let stopped_cp = match client
        .post::<_, cutover_server::api::Health>("/api/v1/shutdown", &())
        .await
    {
        Ok(health) => {
            daemon::wait_exit(health.pid, Duration::from_secs(10)).await;
            true
        }
        Err(_) => daemon::terminate(&ctx.state.serve_pid(), Duration::from_secs(5)).await,
    };
    let stopped_proxy = !keep_proxy
        && daemon::terminate(
            &ctx.state.proxy_dir().join("proxy.pid"),
            Duration::from_secs(15),
        )
        .await;
    if ctx.output == Output::Json {
        println!(
            "{}",
            serde_json::json!({"control_plane_stopped": stopped_cp, "proxy_stopped": stopped_proxy})
        );
    } else {
        println!(
            "control plane: {}; proxy: {}",
            if stopped_cp {
                "stopped"
            } else {
                "was not running"
            },
            if keep_proxy {
                "left running"
            } else if stopped_proxy {
                "stopped"
            } else {
                "was not running"
            }
        );
    }
    Ok(0)
}

/// Percent-encode a query or path value.
fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach_of(args: &[&str]) -> Reach {
        let mut words = vec!["cutover"];
        words.extend(args);
        reach(&Cli::try_parse_from(words).unwrap().command)
    }

    #[test]
    fn with_a_url_control_plane_commands_go_remote_and_local_ones_stay_here() {
        for remote in [
            &["deploy", "--env", "staging"][..],
            &["rollback"],
            &["plan"],
            &["status"],
            &["history"],
            &["resume"],
            &["approve", "production-3"],
            &["token", "list"],
            &["user", "list"],
            &["guardrails", "show", "production"],
            &["projects", "list"],
            &["audit", "verify"],
            &["audit", "export"],
            &["promote", "staging-3", "--to", "production"],
            &["pin", "production-3"],
            &["gc", "--dry-run"],
        ] {
            assert_eq!(reach_of(remote), Reach::ControlPlane, "{remote:?}");
        }
        for local in [
            &["scan", "img:1"][..],
            &["verify", "production-1", "--env", "production"],
            &["sbom", "production-1"],
            &["keys", "generate", "--name", "ci"],
            &["advisories", "import", "osv.zip"],
            &["build", "--env", "staging"],
            &["push", "127.0.0.1:5000/hello"],
        ] {
            assert_eq!(reach_of(local), Reach::Local, "{local:?}");
        }
        for refused in [&["serve"][..], &["serve", "--stop"], &["audit", "key"]] {
            assert!(
                matches!(reach_of(refused), Reach::Refused(_)),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn an_error_in_json_keeps_the_api_code_and_the_exit_code() {
        let refused = anyhow::Error::new(CallError::Api(cutover_server::api::ErrorBody {
            code: ErrorCode::Forbidden,
            message: "ci lacks the deployer role for environment staging".into(),
            error_id: None,
            violations: Vec::new(),
        }));
        let code = exit_code_of(&refused);
        assert_eq!(code, exit::ERROR);
        let json = error_json(&refused, code);
        assert_eq!(json["error"]["code"], "forbidden");
        assert_eq!(json["error"]["exit_code"], 1);
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deployer role"));
    }
}
