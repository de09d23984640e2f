//! `cutover secret set|list|rotate|revoke|rm|rewrap`: the secret store through `/api/v1`.
//! Values come from stdin or `--from-file`, never from the command line (where every
//! process could read them); nothing ever prints a value.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::Subcommand;
use zeroize::Zeroizing;

use cutover_model::{format_duration_ms, format_ms, now_ms};
use cutover_secrets::MasterKey;
use cutover_server::api::{
    RevokeSecret, RewrapReport, RewrapSecrets, SecretChanged, SecretLine, SetSecret,
};

use crate::client::StateDir;

#[derive(Subcommand)]
pub enum SecretCommand {
    /// Store a value as a new version of <env>/<name> (from stdin, or --from-file).
    Set {
        /// `<env>/<name>`, e.g. production/db-password.
        target: String,
        /// Read the value from this file instead of stdin.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Warn (status, webhook) when the latest version gets older than this, e.g. 90d;
        /// `none` clears it.
        #[arg(long)]
        max_age: Option<String>,
    },
    /// Names, versions, ages, who set them and which releases use them; never values.
    List {
        /// Only this environment.
        env: Option<String>,
    },
    /// Store a new version of an existing secret (from stdin, or --from-file). Running
    /// releases keep theirs until `cutover rotate <env>`.
    Rotate {
        target: String,
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        #[arg(long)]
        max_age: Option<String>,
    },
    /// Make a version unusable: deploys skip it, rollbacks that pin it are refused.
    Revoke {
        target: String,
        #[arg(long)]
        version: u64,
    },
    /// Remove a secret and every version.
    Rm { target: String },
    /// Move every data key to a new master key (values are not re-encrypted). With
    /// --new-key, that key file; otherwise a new key is made and written to the key file
    /// the control plane uses by default, the old one kept as `<file>.old`.
    Rewrap {
        /// The new master key (base64 or hex of 32 bytes, 0600).
        #[arg(long, value_name = "FILE")]
        new_key: Option<PathBuf>,
    },
}

fn split(target: &str) -> Result<(&str, &str)> {
    match target.split_once('/') {
        Some((env, name)) if !env.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((env, name))
        }
        _ => bail!("{target:?} is not <env>/<name>, e.g. production/db-password"),
    }
}

/// The value from `file`, else stdin (refused when stdin is a terminal: type it into a
/// pipe or a file, so it is not echoed).
fn read_value(file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>> {
    let mut bytes = Zeroizing::new(Vec::new());
    match file {
        Some(path) => {
            let mut f = std::fs::File::open(path)
                .with_context(|| format!("cannot open --from-file {}", path.display()))?;
            f.read_to_end(&mut bytes)
                .with_context(|| format!("cannot read --from-file {}", path.display()))?;
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!("give the value on stdin (e.g. `printf %s \"$VALUE\" | cutover secret set …`) or with --from-file; it is never taken from the command line");
            }
            stdin
                .lock()
                .read_to_end(&mut bytes)
                .context("cannot read the value from stdin")?;
        }
    }
    // A trailing newline from `echo` or an editor is not part of the value.
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        bail!("the value is empty; give it on stdin or with --from-file");
    }
    Ok(bytes)
}

fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub async fn run(command: SecretCommand, ctx: &crate::Context_, json: bool) -> Result<u8> {
    // Read what is read locally before anything starts.
    let value = match &command {
        SecretCommand::Set { from_file, .. } | SecretCommand::Rotate { from_file, .. } => {
            Some(read_value(from_file.as_deref())?)
        }
        _ => None,
    };
    // The local control plane (started when needed), or the one --url names.
    let client = crate::connect(ctx).await?;
    let show = |changed: &SecretChanged, what: &str| -> Result<u8> {
        if json {
            println!("{}", serde_json::to_string_pretty(changed)?);
        } else {
            println!(
                "{what} {}/{} version {}",
                changed.env, changed.name, changed.version
            );
        }
        Ok(0)
    };
    match command {
        SecretCommand::Set {
            target, max_age, ..
        } => {
            let changed = store(&client, &target, max_age, value, false).await?;
            show(&changed, "stored")
        }
        SecretCommand::Rotate {
            target, max_age, ..
        } => {
            let changed = store(&client, &target, max_age, value, true).await?;
            show(&changed, "stored")
        }
        SecretCommand::List { env } => {
            let path = match &env {
                Some(env) => format!("/api/v1/secrets?env={}", encode(env)),
                None => "/api/v1/secrets".to_string(),
            };
            let lines: Vec<SecretLine> = client.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&lines)?);
            } else {
                print!("{}", render(&lines));
            }
            Ok(0)
        }
        SecretCommand::Revoke { target, version } => {
            let (env, name) = split(&target)?;
            let changed: SecretChanged = client
                .post(
                    &format!("/api/v1/secrets/{}/{}/revoke", encode(env), encode(name)),
                    &RevokeSecret { version },
                )
                .await?;
            show(&changed, "revoked")
        }
        SecretCommand::Rm { target } => {
            let (env, name) = split(&target)?;
            let changed: SecretChanged = client
                .delete(&format!("/api/v1/secrets/{}/{}", encode(env), encode(name)))
                .await?;
            show(&changed, "removed")
        }
        SecretCommand::Rewrap { new_key } => {
            if ctx.remote.is_some() && new_key.is_none() {
                bail!("with --url (CUTOVER_URL), give the new master key with --new-key FILE: the default key file belongs to a control plane on this machine");
            }
            rewrap(&client, &ctx.state, new_key, json).await
        }
    }
}

async fn store(
    client: &cutover_api::client::ApiClient,
    target: &str,
    max_age: Option<String>,
    value: Option<Zeroizing<Vec<u8>>>,
    rotate: bool,
) -> Result<SecretChanged> {
    let (env, name) = split(target)?;
    let value = value.context("no value was read")?;
    let body = SetSecret {
        value_base64: base64::engine::general_purpose::STANDARD.encode(&*value),
        max_age,
    };
    let path = format!("/api/v1/secrets/{}/{}", encode(env), encode(name));
    Ok(if rotate {
        client.post(&format!("{path}/rotate"), &body).await?
    } else {
        client.put(&path, &body).await?
    })
}

async fn rewrap(
    client: &cutover_api::client::ApiClient,
    state: &StateDir,
    new_key: Option<PathBuf>,
    json: bool,
) -> Result<u8> {
    let (key, install) = match &new_key {
        Some(path) => (MasterKey::from_file(path)?, None),
        None => {
            let default = crate::serve::default_secrets_key(state)?;
            if !default.exists() {
                bail!(
                    "the control plane does not use the default key file {}; give the new key with --new-key FILE and start it with that key",
                    default.display()
                );
            }
            // Written beside the old one first, so a failure leaves both.
            let staged = default.with_extension("key.new");
            let _ = std::fs::remove_file(&staged);
            let key = MasterKey::generate()?;
            key.write_new_file(&staged)?;
            (key, Some((staged, default)))
        }
    };
    let report: RewrapReport = client
        .post(
            "/api/v1/secrets/rewrap",
            &RewrapSecrets {
                new_key_base64: key.to_base64().to_string(),
            },
        )
        .await?;
    if let Some((staged, default)) = install {
        let old = default.with_extension("key.old");
        std::fs::rename(&default, &old).with_context(|| {
            format!(
                "the store now uses the key in {}; move it to {} by hand",
                staged.display(),
                default.display()
            )
        })?;
        std::fs::rename(&staged, &default).with_context(|| {
            format!(
                "the store now uses the key in {}; move it to {} by hand",
                staged.display(),
                default.display()
            )
        })?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "rewrapped {} versions of {} secrets under master key {}",
            report.versions, report.secrets, report.key_id
        );
        if new_key.is_some() {
            println!("start the control plane with the new key from now on (--secrets-key, or CUTOVER_SECRETS_KEY)");
        }
    }
    Ok(0)
}

fn render(lines: &[SecretLine]) -> String {
    if lines.is_empty() {
        return "no secrets\n".to_string();
    }
    let now = now_ms();
    let mut out = String::new();
    for line in lines {
        let latest = line
            .latest
            .map_or("none usable".to_string(), |v| format!("v{v}"));
        let age = format_duration_ms(line.age_ms);
        let mut head = format!("{}/{}  latest {latest}, {age} old", line.env, line.name);
        if let Some(max) = line.max_age_ms {
            head.push_str(&format!(", max age {}", format_duration_ms(max)));
        }
        if line.expired {
            head.push_str(&format!(
                "  EXPIRED: rotate it (`cutover secret rotate {}/{}`)",
                line.env, line.name
            ));
        }
        out.push_str(&head);
        out.push('\n');
        for v in &line.versions {
            let mut row = format!(
                "  v{}  set {} ago by {} ({})",
                v.version,
                format_duration_ms(now.saturating_sub(v.created_at_ms)),
                v.created_by,
                v.origin
            );
            if let Some(at) = v.revoked_at_ms {
                row.push_str(&format!(
                    ", revoked {} by {}",
                    format_ms(at),
                    v.revoked_by.as_deref().unwrap_or("?")
                ));
            }
            if !v.used_by.is_empty() {
                row.push_str(&format!(", used by {}", v.used_by.join(", ")));
            }
            out.push_str(&row);
            out.push('\n');
        }
    }
    out
}
