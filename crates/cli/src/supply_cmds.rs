//! Supply-chain commands that work stand-alone, so CI can use them outside a deploy:
//! `scan`, `verify`, `sbom`, `keys generate`, `advisories import`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use cutover_docker::DockerProvider;
use cutover_model::{GateSpec, ImageBuilder, ImageInfo};
use cutover_server::api::{HistoryLine, ImagePathStep};

use crate::client::{client, StateDir};
use cutover_chain::{self as chain, LocalSupplyChain, SupplyPaths};

/// Exit code when a gate fails or verification refuses an image.
pub const EXIT_REFUSED: u8 = 6;

#[derive(Subcommand)]
pub enum SupplyCommand {
    /// Scan an image (tag, id, or `docker save` tarball): SBOM, vulnerabilities, secrets, gate.
    Scan {
        /// Image tag or id in the local Docker Engine, or a path to an image tarball.
        image: String,
        /// Fail on vulnerabilities of this severity or worse (none, low, medium, high, critical).
        #[arg(long, default_value = "critical")]
        fail_on: String,
        /// Do not fail on secrets found in the image.
        #[arg(long)]
        allow_secrets: bool,
        /// Reviewed exceptions file (every entry needs `expires`).
        #[arg(long)]
        exceptions: Option<PathBuf>,
        /// gitleaks rule file replacing the built-in secret rules (`[extend] useDefault = true`
        /// adds to them). Rules that cannot be used are left out with a warning.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Fail when any rule of `--rules` cannot be used, instead of leaving it out.
        #[arg(long, requires = "rules")]
        strict_rules: bool,
        /// Also write a SARIF 2.1.0 report here (for code-scanning dashboards).
        #[arg(long)]
        sarif: Option<PathBuf>,
        /// Also write the CycloneDX SBOM here.
        #[arg(long)]
        sbom: Option<PathBuf>,
        /// Pass without a current advisory database (none imported, or imported more than
        /// 7 days ago), saying so.
        #[arg(long)]
        allow_missing_advisories: bool,
        /// Fail on informational advisories (unmaintained, unsound, notice) too.
        #[arg(long)]
        fail_on_unmaintained: bool,
    },
    /// Verify an image's or release's attestations before running it (fails closed).
    Verify {
        /// Image id/tag, or a release id (looked up in the history).
        target: String,
        /// Environment whose trust applies (for messages and release lookup).
        #[arg(short, long, default_value = "production")]
        env: String,
        /// Trusted public keys (PEM); default: the local key of this state directory.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
    },
    /// Print the CycloneDX SBOM of a release or image.
    Sbom {
        /// Release id or image id/tag.
        target: String,
        #[arg(short, long)]
        env: Option<String>,
    },
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The local OSV advisory database that scans match against.
    Advisories {
        #[command(subcommand)]
        command: AdvisoriesCommand,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a key pair: `<dir>/<name>.key` (encrypted with CUTOVER_KEY_PASSPHRASE, 0600) and `<name>.pub`.
    Generate {
        #[arg(long, default_value = "release")]
        name: String,
        #[arg(long, default_value = "keys")]
        dir: PathBuf,
        /// ecdsa-p256 (what cosign uses) or ed25519.
        #[arg(long, default_value = "ecdsa-p256")]
        algorithm: String,
    },
}

#[derive(Subcommand)]
pub enum AdvisoriesCommand {
    /// Import OSV JSON advisories from a directory or a zip (replaces the current database).
    Import { source: PathBuf },
}

pub async fn run(command: SupplyCommand, state: &StateDir, json: bool) -> Result<u8> {
    // What these commands keep (scan cache, local key, advisories) is the state
    // directory's: create it private, as the control plane requires.
    crate::client::create_state_dir(&state.0)?;
    let paths = SupplyPaths::new(&state.0);
    match command {
        SupplyCommand::Scan {
            image,
            fail_on,
            allow_secrets,
            exceptions,
            rules,
            strict_rules,
            sarif,
            sbom,
            allow_missing_advisories,
            fail_on_unmaintained,
        } => {
            if let Some(path) = &rules {
                check_rules(path, strict_rules)?;
            }
            let gate = GateSpec {
                fail_on,
                fail_on_secrets: !allow_secrets,
                exceptions,
                secret_rules: rules,
                allow_missing_advisories,
                fail_on_unmaintained,
                ..GateSpec::default()
            };
            scan(
                &paths,
                &state.0,
                &image,
                &gate,
                sarif.as_deref(),
                sbom.as_deref(),
                json,
            )
            .await
        }
        SupplyCommand::Verify { target, env, keys } => {
            let image_id = resolve_image(state, &target, Some(&env)).await?;
            match chain::verify_image(&paths, &image_id, &env, &keys) {
                Ok(key_ids) => {
                    // Where it has been, when a control plane runs for this state.
                    let path: Vec<ImagePathStep> = client(state)
                        .get(&format!("/api/v1/images/{image_id}/path"))
                        .await
                        .unwrap_or_default();
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"image": image_id, "verified": true, "key_ids": key_ids, "path": path})
                        );
                    } else {
                        println!(
                            "verified: image {image_id} is signed by {} and passed its gate",
                            key_ids.join(", ")
                        );
                        print!("{}", custody(&paths, &image_id, &env)?);
                        for step in &path {
                            println!("  live in {}", step.summary);
                        }
                    }
                    Ok(0)
                }
                Err(e) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"image": image_id, "verified": false, "error": e.message})
                        );
                    }
                    eprintln!("error: {}", e.message);
                    Ok(EXIT_REFUSED)
                }
            }
        }
        SupplyCommand::Sbom { target, env } => {
            let image_id = resolve_image(state, &target, env.as_deref()).await?;
            let file = paths.sbom(&image_id);
            let text = std::fs::read_to_string(&file).with_context(|| {
                format!("no sbom for image {image_id}: it was not scanned here (run `cutover scan {image_id}`)")
            })?;
            println!("{text}");
            Ok(0)
        }
        SupplyCommand::Keys {
            command:
                KeysCommand::Generate {
                    name,
                    dir,
                    algorithm,
                },
        } => {
            let passphrase = cutover_signing::passphrase_from_env().context(
                "set CUTOVER_KEY_PASSPHRASE to the passphrase that encrypts the private key",
            )?;
            let algorithm = algorithm.parse::<cutover_signing::Algorithm>()?;
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let (private, public, id) =
                cutover_signing::generate_to_files(&dir, &name, algorithm, &passphrase)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"private_key": private, "public_key": public, "key_id": id})
                );
            } else {
                println!("private key  {} (encrypted, mode 0600)", private.display());
                println!("public key   {}", public.display());
                println!("key id       {id}");
                println!(
                    "use it: [supply] signing_key = \"{}\"; trust it: trusted_keys = [\"{}\"]",
                    private.display(),
                    public.display()
                );
            }
            Ok(0)
        }
        SupplyCommand::Advisories {
            command: AdvisoriesCommand::Import { source },
        } => {
            let (report, db) = chain::import_advisories(&paths, &source, cutover_model::now_ms())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "files": report.files, "imported": report.imported, "withdrawn": report.withdrawn, "warnings": report.warnings,
                        "digest": db.digest, "newest_modified": db.newest_modified,
                    }))?
                );
            } else {
                println!(
                    "imported {} advisories from {} files ({} withdrawn) into {}",
                    report.imported,
                    report.files,
                    report.withdrawn,
                    paths.advisories().display()
                );
                for skipped in &report.warnings {
                    eprintln!("warning: {skipped}");
                }
            }
            Ok(0)
        }
    }
}

/// Loads the secret rules up front: each rule left out is a warning on stderr, and with
/// `strict` any of them fails the scan before it starts.
fn check_rules(path: &Path, strict: bool) -> Result<()> {
    let rules = if strict {
        cutover_supply::RuleSet::load_strict(path)?
    } else {
        cutover_supply::RuleSet::load(path)?
    };
    for w in rules.warnings() {
        eprintln!("warning: {w}; the rule is left out (--strict-rules makes this an error)");
    }
    Ok(())
}

async fn scan(
    paths: &SupplyPaths,
    state_dir: &Path,
    image: &str,
    gate: &GateSpec,
    sarif: Option<&Path>,
    sbom: Option<&Path>,
    json: bool,
) -> Result<u8> {
    let (report, db) = if Path::new(image).is_file() {
        chain::scan_tarball(paths, Path::new(image), gate.secret_rules.as_deref())?
    } else {
        let docker = Arc::new(DockerProvider::connect().await?);
        let info = lookup_image(&docker, image).await?;
        let supply = LocalSupplyChain::new(docker, state_dir, None);
        supply.report(&info, gate).await?
    };
    let verdict = chain::judge(&report, gate, db.as_ref(), cutover_model::now_ms())?;
    if let Some(path) = sarif {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&cutover_supply::to_sarif(&report))?,
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = sbom {
        let doc = cutover_supply::sbom(&report.image, &report.packages);
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"report": report, "verdict": {
                "passed": verdict.passed, "reasons": verdict.reasons, "counts": verdict.counts,
                "informational": verdict.informational, "skipped": verdict.skipped,
                "secrets": verdict.secrets, "suppressed": verdict.suppressed,
                "advisory_database_digest": db.as_ref().map(|d| d.digest.clone()),
            }}))?
        );
    } else {
        println!("image {}", report.image.id);
        println!("{}", chain::summary(&report, &verdict));
        for v in &report.findings.vulnerabilities {
            println!("  vuln    {v}");
        }
        for s in &report.findings.secrets {
            println!("  secret  {s} [fingerprint {}]", s.fingerprint);
        }
        for r in &verdict.reasons {
            println!("  gate    {r}");
        }
    }
    Ok(if verdict.passed { 0 } else { EXIT_REFUSED })
}

async fn lookup_image(docker: &DockerProvider, reference: &str) -> Result<ImageInfo> {
    match docker.inspect_image(reference).await? {
        Some(info) => Ok(info),
        None => {
            bail!("image {reference} not found in the docker engine; build it or pass a tarball")
        }
    }
}

/// An image id from an image id/tag or a release id.
async fn resolve_image(state: &StateDir, target: &str, env: Option<&str>) -> Result<String> {
    if cutover_signing::is_image_digest(target) {
        return Ok(target.to_string());
    }
    // A release id: ask the control plane's history, if one runs for this state directory.
    let client = client(state);
    let mut path = "/api/v1/deployments?limit=500".to_string();
    if let Some(env) = env {
        path.push_str(&format!("&env={env}"));
    }
    if let Ok(lines) = client.get::<Vec<HistoryLine>>(&path).await {
        if let Some(id) = lines
            .iter()
            .find(|l| l.release_id == target)
            .and_then(|l| l.image_id.clone())
        {
            return Ok(id);
        }
    }
    let docker = DockerProvider::connect().await?;
    Ok(lookup_image(&docker, target).await?.id)
}

/// The chain of custody of a verified image: who built it from which source, who signed its
/// provenance and where it came from, and each environment's verdict with its signer.
fn custody(paths: &SupplyPaths, image_id: &str, env: &str) -> Result<String> {
    let evidence = chain::recorded_evidence(paths, image_id, env)?;
    let mut out = String::from("chain of custody:\n");
    match &evidence.provenance {
        Some(p) => {
            out.push_str(&format!(
                "  builder      {}\n",
                p.invoked_by.as_deref().unwrap_or(p.builder_id.as_str())
            ));
            let dirty = match p.git_dirty {
                Some(true) => " (work tree dirty)",
                Some(false) => " (clean)",
                None => "",
            };
            out.push_str(&format!(
                "  source       {}@{}{dirty}\n",
                p.repository
                    .as_deref()
                    .or(p.source_path.as_deref())
                    .unwrap_or("unknown"),
                p.git_commit.as_deref().unwrap_or("unknown commit"),
            ));
            out.push_str(&format!(
                "  provenance   signed by {}{}\n",
                p.key_ids.join(", "),
                match &p.pulled_from {
                    Some(reference) => format!(", pulled from {reference}"),
                    None => ", signed here".to_string(),
                }
            ));
        }
        None => out.push_str("  provenance   none recorded\n"),
    }
    for seal in chain::verdict_seals(paths, image_id) {
        out.push_str(&format!(
            "  verdict for {}: {}, signed by {}\n",
            seal.env,
            if seal.passed { "passed" } else { "failed" },
            seal.key_ids.join(", ")
        ));
    }
    Ok(out)
}
