//! A labelled corpus of planted secrets and decoys in one image (files in layers, ENV,
//! labels, history), scanned by cutover's built-in rules and by the real gitleaks binary
//! (its own default rules) over the same content. Secrets are generated at run time with
//! random bodies of each provider's shape, so the repository holds no secret-looking literal
//! beyond documented example keys. Prints a per-kind table and asserts cutover's targets:
//! recall and precision >= 95 %, and recall >= gitleaks's.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::Rng;
use cutover_supply::synth::{SynthEntry, SynthImage};
use cutover_supply::{scan, AdvisoryDb, Limits, RuleSet, SecretLocation};

const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
const DIGITS: &str = "0123456789";
const HEX: &str = "0123456789abcdef";

fn alnum() -> String {
    format!("{UPPER}{LOWER}{DIGITS}")
}
fn b64() -> String {
    format!("{UPPER}{LOWER}{DIGITS}+/")
}
fn b64url() -> String {
    format!("{UPPER}{LOWER}{DIGITS}_-")
}

#[derive(Debug, Clone)]
enum Place {
    File(String),
    Env,
    Label(String),
    History,
}

#[derive(Debug, Clone)]
struct Item {
    kind: String,
    secret: bool,
    place: Place,
    /// File content, the `KEY=value` of an Env entry, a label's value, or a history line.
    text: String,
}

/// A PEM block with a random base64 body.
fn pem(rng: &mut Rng, label: &str, lines: usize) -> String {
    let mut body = String::new();
    for _ in 0..lines {
        body.push_str(&rng.string(&b64(), 64));
        body.push('\n');
    }
    format!("-----BEGIN {label}-----\n{body}-----END {label}-----\n")
}

fn corpus(rng: &mut Rng) -> Vec<Item> {
    let mut items = Vec::new();
    let mut secret = |kind: &str, place: Place, text: String| {
        items.push(Item {
            kind: kind.to_string(),
            secret: true,
            place,
            text,
        })
    };
    let f = |p: &str| Place::File(p.to_string());
    let (an, hex, b64, b64u) = (alnum(), HEX.to_string(), b64(), b64url());
    let low_an = format!("{LOWER}{DIGITS}");

    secret(
        "aws-access-key-id",
        f("etc/app/aws.ini"),
        format!(
            "[default]\naws_access_key_id = AKIA{}\nregion = eu-west-1\n",
            rng.string("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
        ),
    );
    secret(
        "aws-secret-access-key",
        Place::Env,
        format!("AWS_SECRET_ACCESS_KEY={}", rng.string(&b64, 40)),
    );
    secret(
        "aws-credentials-file",
        f("root/.aws/credentials"),
        format!(
            "[default]\naws_access_key_id = ASIA{}\naws_secret_access_key = {}\n",
            rng.string(UPPER, 16),
            rng.string(&b64, 40)
        ),
    );
    secret(
        "github-pat",
        Place::Env,
        format!("GITHUB_TOKEN=ghp_{}", rng.string(&an, 36)),
    );
    secret(
        "github-fine-grained-pat",
        f("app/.github-token"),
        format!(
            "github_pat_{}_{}\n",
            rng.string(&an, 22),
            rng.string(&an, 59)
        ),
    );
    secret(
        "github-oauth-token",
        Place::Label("com.example.ci-token".into()),
        format!("gho_{}", rng.string(&an, 36)),
    );
    secret(
        "github-app-token",
        Place::History,
        format!(
            "RUN GH_TOKEN=ghs_{} ./fetch-deps.sh # buildkit",
            rng.string(&an, 36)
        ),
    );
    secret(
        "gitlab-pat",
        f("app/ci/gitlab.env"),
        format!("GITLAB_API=glpat-{}\n", rng.string(&b64u, 20)),
    );
    secret(
        "gitlab-runner-token",
        f("etc/gitlab-runner/config.toml"),
        format!(
            "[[runners]]\n  name = \"build\"\n  token = \"glrt-{}\"\n",
            rng.string(&an, 20)
        ),
    );
    secret(
        "slack-bot-token",
        f("app/config/slack.yml"),
        format!(
            "slack:\n  bot: xoxb-{}-{}-{}\n",
            rng.string(DIGITS, 12),
            rng.string(DIGITS, 13),
            rng.string(&an, 24)
        ),
    );
    secret(
        "slack-webhook",
        Place::Env,
        format!(
            "SLACK_HOOK=https://hooks.slack.com/services/T{}/B{}/{}",
            rng.string(UPPER, 8),
            rng.string(UPPER, 10),
            rng.string(&an, 24)
        ),
    );
    secret(
        "stripe-live-secret-key",
        Place::Env,
        format!("STRIPE_KEY=sk_live_{}", rng.string(&an, 99)),
    );
    secret(
        "stripe-restricted-key",
        f("app/billing/settings.py"),
        format!("STRIPE_RESTRICTED = \"rk_live_{}\"\n", rng.string(&an, 24)),
    );
    secret(
        "stripe-webhook-secret",
        f("app/billing/.env"),
        format!("STRIPE_WEBHOOK=whsec_{}\n", rng.string(&an, 32)),
    );
    secret(
        "google-api-key",
        f("srv/www/static/maps.js"),
        format!(
            "const maps = loadMaps({{ key: \"AIza{}\" }});\n",
            rng.string(&b64u, 35)
        ),
    );
    secret("google-oauth-client-secret", f("app/oauth/client_secret.json"), format!("{{\"web\":{{\"client_id\":\"{}.apps.googleusercontent.com\",\"client_secret\":\"GOCSPX-{}\"}}}}\n", rng.string(DIGITS, 12), rng.string(&b64u, 28)));
    let sa_key = pem(rng, "PRIVATE KEY", 8).replace('\n', "\\n");
    secret("gcp-service-account", f("var/secrets/gcp/sa.json"), format!("{{\n  \"type\": \"service_account\",\n  \"project_id\": \"acme-prod\",\n  \"private_key_id\": \"{}\",\n  \"private_key\": \"{sa_key}\",\n  \"client_email\": \"deploy@acme-prod.iam.gserviceaccount.com\"\n}}\n", rng.string(&hex, 40)));
    secret("azure-storage-connection-string", Place::Env, format!("AZURE_STORAGE_CONNECTION_STRING=DefaultEndpointsProtocol=https;AccountName=acmeprod;AccountKey={}==;EndpointSuffix=core.windows.net", rng.string(&b64, 86)));
    secret(
        "azure-ad-client-secret",
        f("app/appsettings.json"),
        format!(
            "{{\"AzureAd\":{{\"ClientId\":\"{}\",\"ClientSecret\":\"{}{}Q~{}\"}}}}\n",
            uuid(rng),
            rng.string(&an, 3),
            rng.string(DIGITS, 1),
            rng.string(&an, 34)
        ),
    );
    secret(
        "jwt",
        f("app/tests/fixtures/session.http"),
        format!(
            "GET /api/me\nAuthorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{}.{}\n",
            rng.string(&b64u, 60),
            rng.string(&b64u, 43)
        ),
    );
    secret(
        "twilio-api-key",
        f("app/notify/twilio.cfg"),
        format!("api_key_sid = SK{}\n", rng.string(&hex, 32)),
    );
    secret(
        "sendgrid-api-key",
        Place::Label("com.example.mail".into()),
        format!("SG.{}.{}", rng.string(&b64u, 22), rng.string(&b64u, 43)),
    );
    secret(
        "npm-access-token",
        Place::Env,
        format!("NPM_TOKEN=npm_{}", rng.string(&an, 36)),
    );
    secret(
        "npmrc-auth-token",
        f("home/node/.npmrc"),
        format!(
            "//registry.npmjs.org/:_authToken={}\n",
            rng.string(&b64u, 40)
        ),
    );
    secret(
        "pypi-upload-token",
        f("root/.pypirc"),
        format!(
            "[pypi]\nusername = __token__\npassword = pypi-AgEIcHlwaS5vcmc{}\n",
            rng.string(&b64u, 70)
        ),
    );
    secret(
        "vault-token",
        Place::Env,
        format!("VAULT_TOKEN=hvs.{}", rng.string(&b64u, 90)),
    );
    secret(
        "terraform-cloud-token",
        f("root/.terraformrc"),
        format!(
            "credentials \"app.terraform.io\" {{\n  token = \"{}.atlasv1.{}\"\n}}\n",
            rng.string(&an, 14),
            rng.string(&an, 67)
        ),
    );
    secret(
        "digitalocean-token",
        Place::History,
        format!("RUN doctl auth init -t dop_v1_{}", rng.string(&hex, 64)),
    );
    secret(
        "openai-api-key",
        Place::Env,
        format!(
            "OPENAI_API_KEY=sk-proj-{}T3BlbkFJ{}",
            rng.string(&b64u, 40),
            rng.string(&b64u, 40)
        ),
    );
    secret(
        "anthropic-api-key",
        f("app/llm/config.toml"),
        format!(
            "[anthropic]\nkey = \"sk-ant-api03-{}AA\"\n",
            rng.string(&b64u, 93)
        ),
    );
    secret(
        "huggingface-token",
        Place::Env,
        format!("HF_TOKEN=hf_{}", rng.string(&format!("{UPPER}{LOWER}"), 34)),
    );
    secret(
        "rsa-private-key",
        f("etc/ssl/private/server.key"),
        pem(rng, "RSA PRIVATE KEY", 12),
    );
    secret(
        "ec-private-key",
        f("app/certs/signing.pem"),
        pem(rng, "EC PRIVATE KEY", 3),
    );
    secret(
        "openssh-private-key",
        f("home/deploy/.ssh/id_ed25519"),
        pem(rng, "OPENSSH PRIVATE KEY", 5),
    );
    secret(
        "pgp-private-key",
        f("app/release/signing.asc"),
        pem(rng, "PGP PRIVATE KEY BLOCK", 10),
    );
    secret(
        "heroku-api-key",
        Place::Env,
        format!("HEROKU_API_KEY={}", uuid(rng)),
    );
    secret(
        "mailgun-api-key",
        f("app/mail/mailgun.ini"),
        format!("[mailgun]\napi = key-{}\n", rng.string(&hex, 32)),
    );
    secret(
        "shopify-access-token",
        f("app/shop/.env.production"),
        format!("SHOPIFY_ACCESS=shpat_{}\n", rng.string(&hex, 32)),
    );
    secret(
        "square-access-token",
        Place::Label("com.example.square".into()),
        format!("EAAA{}", rng.string(&b64u, 60)),
    );
    secret(
        "discord-bot-token",
        f("app/bot/config.json"),
        format!(
            "{{\"discord\": \"MT{}.{}.{}\"}}\n",
            rng.string(&an, 24),
            rng.string(&b64u, 6),
            rng.string(&b64u, 38)
        ),
    );
    secret(
        "telegram-bot-token",
        Place::Env,
        format!(
            "TELEGRAM_BOT={}:AA{}",
            rng.string(DIGITS, 10),
            rng.string(&b64u, 33)
        ),
    );
    secret(
        "datadog-api-key",
        Place::Env,
        format!("DD_API_KEY={}", rng.string(&hex, 32)),
    );
    secret(
        "generic-password",
        Place::Env,
        format!("DB_PASSWORD={}", rng.string(&an, 20)),
    );
    secret(
        "generic-client-secret",
        f("app/config/production.yaml"),
        format!(
            "oauth:\n  client_id: web\n  client_secret: \"{}\"\n",
            rng.string(&an, 32)
        ),
    );
    secret(
        "docker-config-auth",
        f("root/.docker/config.json"),
        format!(
            "{{\"auths\":{{\"registry.example.com\":{{\"auth\":\"{}\"}}}}}}\n",
            rng.string(&b64, 40)
        ),
    );
    secret(
        "netrc-password",
        f("root/.netrc"),
        format!(
            "machine api.github.com login deploy password {}\n",
            rng.string(&an, 24)
        ),
    );
    secret(
        "url-credentials",
        Place::Env,
        format!(
            "DATABASE_URL=postgres://app:{}@db.internal:5432/app",
            rng.string(&an, 18)
        ),
    );
    secret(
        "age-secret-key",
        f("app/keys/age.txt"),
        format!(
            "# created: 2026-01-01\nAGE-SECRET-KEY-1{}\n",
            rng.string("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)
        ),
    );
    secret(
        "databricks-token",
        Place::History,
        format!(
            "RUN DATABRICKS_TOKEN=dapi{} databricks fs ls",
            rng.string(&hex, 32)
        ),
    );
    secret(
        "grafana-service-account-token",
        f("etc/grafana/provisioning.env"),
        format!(
            "GRAFANA_SA=glsa_{}_{}\n",
            rng.string(&an, 32),
            rng.string(&hex, 8)
        ),
    );
    secret(
        "postman-api-key",
        f("app/postman/env.json"),
        format!(
            "{{\"key\":\"apiKey\",\"value\":\"PMAK-{}-{}\"}}\n",
            rng.string(&hex, 24),
            rng.string(&hex, 34)
        ),
    );
    secret(
        "mailchimp-api-key",
        f("app/newsletter.php"),
        format!(
            "<?php $mc = new Mailchimp('{}-us{}');\n",
            rng.string(&hex, 32),
            rng.string(DIGITS, 1)
        ),
    );
    secret(
        "generic-api-key-in-cmd",
        Place::History,
        format!(
            "RUN curl -H \"X-Api-Key: {}\" https://api.internal/setup | sh",
            rng.string(&low_an, 32)
        ),
    );
    secret(
        "aws-secret-in-history",
        Place::History,
        format!(
            "RUN aws configure set aws_secret_access_key {}",
            rng.string(&b64, 40)
        ),
    );
    items
}

fn uuid(rng: &mut Rng) -> String {
    format!(
        "{}-{}-4{}-a{}-{}",
        rng.string(HEX, 8),
        rng.string(HEX, 4),
        rng.string(HEX, 3),
        rng.string(HEX, 3),
        rng.string(HEX, 12)
    )
}

fn decoys(rng: &mut Rng) -> Vec<Item> {
    let mut items = Vec::new();
    let mut decoy = |kind: &str, place: Place, text: String| {
        items.push(Item {
            kind: kind.to_string(),
            secret: false,
            place,
            text,
        })
    };
    let f = |p: &str| Place::File(p.to_string());
    let b64 = b64();
    decoy(
        "aws-example-access-key",
        f("usr/local/lib/app/docs.md"),
        "Set `aws_access_key_id = AKIAIOSFODNN7EXAMPLE` in your profile.\n".into(),
    );
    decoy(
        "aws-example-secret-key",
        f("app/examples/aws.env"),
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n".into(),
    );
    decoy(
        "stripe-test-key",
        Place::Env,
        format!("STRIPE_SECRET_KEY=sk_test_{}", rng.string(&alnum(), 24)),
    );
    decoy(
        "stripe-publishable-key",
        f("srv/www/checkout.js"),
        format!(
            "const stripe = Stripe('pk_live_{}');\n",
            rng.string(&alnum(), 24)
        ),
    );
    decoy(
        "placeholder-angle",
        f("app/README.txt"),
        "export API_KEY=<your-api-key>\n".into(),
    );
    decoy(
        "placeholder-env-ref",
        Place::Env,
        "API_KEY=${API_KEY}".into(),
    );
    decoy(
        "placeholder-template",
        f("app/chart/values.yaml"),
        "db:\n  password: \"{{ .Values.dbPassword }}\"\n".into(),
    );
    decoy(
        "placeholder-percent",
        f("app/win/run.bat"),
        "set token=%TOKEN%\n".into(),
    );
    decoy(
        "placeholder-x",
        f("app/config/sample.yaml"),
        "github:\n  token: ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n".into(),
    );
    decoy(
        "placeholder-changeme",
        f("app/config/defaults.ini"),
        "[db]\npassword = changeme\n".into(),
    );
    decoy(
        "placeholder-stars",
        f("app/logs/redacted.log"),
        "login ok user=admin password=********\n".into(),
    );
    decoy("empty-secret", Place::Env, "AWS_SECRET_ACCESS_KEY=".into());
    decoy(
        "secret-file-path",
        Place::Env,
        "API_TOKEN_FILE=/run/secrets/api_token".into(),
    );
    decoy("k8s-secret-ref", f("app/k8s/deployment.yaml"), "env:\n  - name: DB_PASSWORD\n    valueFrom:\n      secretKeyRef:\n        name: app-db\n        key: password\n".into());
    decoy(
        "uuid-request-id",
        f("var/log/app/requests.log"),
        format!("request_id={} status=200\n", uuid(rng)),
    );
    decoy(
        "uuid-json-id",
        f("app/data/users.json"),
        format!("[{{\"id\":\"{}\",\"name\":\"ada\"}}]\n", uuid(rng)),
    );
    decoy(
        "sha256-digest",
        f("app/manifest.txt"),
        format!(
            "image: registry.example.com/app@sha256:{}\n",
            rng.string(HEX, 64)
        ),
    );
    decoy(
        "sha256-checksums",
        f("app/SHA256SUMS"),
        format!(
            "{}  app-linux-amd64.tar.gz\n{}  app-linux-arm64.tar.gz\n",
            rng.string(HEX, 64),
            rng.string(HEX, 64)
        ),
    );
    decoy(
        "sha1-commit",
        f("app/BUILD_INFO"),
        format!("commit {}\nbranch main\n", rng.string(HEX, 40)),
    );
    decoy(
        "md5-checksum",
        f("app/MD5SUMS"),
        format!("{}  data.bin\n", rng.string(HEX, 32)),
    );
    decoy(
        "npm-integrity",
        f("app/web/npm-cache.json"),
        format!("{{\"integrity\":\"sha512-{}==\"}}\n", rng.string(&b64, 86)),
    );
    decoy(
        "base64-png",
        f("srv/www/index.html"),
        format!(
            "<img src=\"data:image/png;base64,iVBORw0KGgo{}\">\n",
            rng.string(&b64, 400)
        ),
    );
    decoy(
        "base64-font",
        f("srv/www/fonts.css"),
        format!(
            "@font-face {{ src: url(data:font/woff2;base64,d09GMgABAAAA{}); }}\n",
            rng.string(&b64, 600)
        ),
    );
    decoy(
        "public-key-pem",
        f("etc/app/jwt-public.pem"),
        pem(rng, "PUBLIC KEY", 6),
    );
    decoy(
        "certificate-pem",
        f("etc/ssl/certs/ca.pem"),
        pem(rng, "CERTIFICATE", 18),
    );
    decoy(
        "ssh-public-key",
        f("home/deploy/.ssh/authorized_keys"),
        format!(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{} deploy@ci\n",
            rng.string(&b64, 43)
        ),
    );
    decoy(
        "known-hosts",
        f("etc/ssh/ssh_known_hosts"),
        format!(
            "github.com ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQ{}\n",
            rng.string(&b64, 300)
        ),
    );
    decoy(
        "gpg-key-fingerprint",
        Place::Env,
        format!("GPG_KEY={}", rng.string("0123456789ABCDEF", 40)),
    );
    decoy(
        "python-sha256",
        Place::Env,
        format!("PYTHON_SHA256={}", rng.string(HEX, 64)),
    );
    decoy("version-env", Place::Env, "NODE_VERSION=20.11.1".into());
    decoy(
        "oci-revision-label",
        Place::Label("org.opencontainers.image.revision".into()),
        rng.string(HEX, 40),
    );
    decoy(
        "oci-base-digest-label",
        Place::Label("org.opencontainers.image.base.digest".into()),
        format!("sha256:{}", rng.string(HEX, 64)),
    );
    decoy("header-name-constant", f("app/src/client.js"), "const API_KEY_HEADER = \"X-Api-Key\";\nconst tokenUrl = \"https://auth.example.com/oauth/token\";\n".into());
    decoy(
        "twilio-account-sid",
        f("app/notify/account.cfg"),
        format!("account_sid = AC{}\n", rng.string(HEX, 32)),
    );
    decoy(
        "bearer-placeholder",
        f("app/docs/api.http"),
        "GET /v1/items\nAuthorization: Bearer <token>\n".into(),
    );
    decoy(
        "openai-placeholder",
        Place::Env,
        "OPENAI_API_KEY=sk-your-key-here".into(),
    );
    decoy(
        "slack-webhook-placeholder",
        f("app/config/alerts.yaml"),
        "slack_url: https://hooks.slack.com/services/XXX/YYY/ZZZ\n".into(),
    );
    decoy(
        "url-without-password",
        Place::Env,
        "DATABASE_URL=postgres://app@db.internal:5432/app".into(),
    );
    decoy(
        "url-env-password",
        Place::Env,
        "REDIS_URL=redis://default:${REDIS_PASSWORD}@cache:6379".into(),
    );
    decoy(
        "history-apt",
        Place::History,
        "RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl"
            .into(),
    );
    decoy(
        "history-copy-digest",
        Place::History,
        format!("COPY file:{} in /app/", rng.string(HEX, 64)),
    );
    decoy("lockfile-hashes", f("app/poetry.lock.txt"), format!("[[package]]\nname = \"requests\"\nfiles = [{{file = \"requests-2.31.0.tar.gz\", hash = \"sha256:{}\"}}]\n", rng.string(HEX, 64)));
    decoy(
        "css-colors",
        f("srv/www/theme.css"),
        ":root { --accent: #ffcc00; --bg: #0b0d12; --token-color: #a0b1c2; }\n".into(),
    );
    decoy(
        "go-sum",
        f("app/src/go.sum"),
        format!("golang.org/x/crypto v0.21.0 h1:{}=\n", rng.string(&b64, 43)),
    );
    items
}

#[derive(Default)]
struct Outcome {
    by_cutover: BTreeSet<usize>,
    by_gitleaks: BTreeSet<usize>,
    /// Findings at no corpus location (count as false positives).
    stray_cutover: usize,
    stray_gitleaks: usize,
}

struct Score {
    recall: f64,
    precision: f64,
    tp: usize,
    fp: usize,
}

fn score(items: &[Item], found: &BTreeSet<usize>, stray: usize) -> Score {
    let positives = items.iter().filter(|i| i.secret).count();
    let tp = found.iter().filter(|i| items[**i].secret).count();
    let fp = found.len() - tp + stray;
    Score {
        recall: tp as f64 / positives as f64,
        precision: if tp + fp == 0 {
            1.0
        } else {
            tp as f64 / (tp + fp) as f64
        },
        tp,
        fp,
    }
}

/// Builds the corpus image from `seed`, scans it with cutover and (when given) gitleaks,
/// prints the per-kind table when `table`, and returns both scores.
fn run_corpus(
    seed: u64,
    gitleaks: Option<&std::path::Path>,
    table: bool,
) -> (Score, Option<Score>) {
    let mut rng = Rng(seed);
    let mut items = corpus(&mut rng);
    items.extend(decoys(&mut rng));
    let kinds = |secret: bool| items.iter().filter(|i| i.secret == secret).count();
    assert!(kinds(true) >= 40 && kinds(false) >= 40);

    // The image: files spread over three layers, plus Env, Labels and history.
    let mut layers: Vec<Vec<SynthEntry>> = vec![Vec::new(), Vec::new(), Vec::new()];
    let mut img = SynthImage::new();
    img.env.push("PATH=/usr/local/bin:/usr/bin:/bin".into());
    // Where each config field's text lands, for matching findings back to items.
    let mut by_field: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_path: BTreeMap<String, usize> = BTreeMap::new();
    for (n, item) in items.iter().enumerate() {
        match &item.place {
            Place::File(p) => {
                assert!(by_path.insert(p.clone(), n).is_none(), "two items at {p}");
                layers[n % 3].push(SynthImage::file(p, item.text.clone()));
            }
            Place::Env => {
                by_field.insert(format!("Env[{}]", img.env.len()), n);
                img.env.push(item.text.clone());
            }
            Place::Label(k) => {
                by_field.insert(format!("Labels.{k}"), n);
                img.labels.push((k.clone(), item.text.clone()));
            }
            Place::History => {
                by_field.insert(format!("history[{}].created_by", img.history.len()), n);
                img.history.push(item.text.clone());
            }
        }
    }
    for (i, l) in layers.into_iter().enumerate() {
        img = img.layer(l, i % 2 == 0);
    }
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("image.tar");
    img.write(&tarball, false).unwrap();

    let mut out = Outcome::default();
    let report = scan(
        &tarball,
        &AdvisoryDb::default(),
        &RuleSet::default_rules(),
        Limits::default(),
    )
    .unwrap();
    let mut cutover_rules: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for f in &report.findings.secrets {
        let item = match &f.location {
            SecretLocation::File { path, .. } => by_path.get(path),
            SecretLocation::Config { field } => by_field.get(field),
        };
        match item {
            Some(n) => {
                out.by_cutover.insert(*n);
                cutover_rules
                    .entry(*n)
                    .or_default()
                    .insert(f.rule_id.clone());
            }
            None => {
                eprintln!("cutover finding outside the corpus: {f}");
                out.stray_cutover += 1;
            }
        }
    }

    // gitleaks over the same content: the image's files unpacked under rootfs/, and every
    // config field the scan reads written to config/<field> with the same text.
    let gitleaks_ran = match gitleaks {
        Some(bin) => {
            let root = tempfile::tempdir().unwrap();
            let mut by_file: BTreeMap<String, usize> = BTreeMap::new();
            for (n, item) in items.iter().enumerate() {
                let rel = match &item.place {
                    Place::File(p) => format!("rootfs/{p}"),
                    _ => {
                        let field = by_field.iter().find(|(_, i)| **i == n).unwrap().0;
                        format!("config/{}", field.replace(['[', ']'], "_"))
                    }
                };
                let text = match &item.place {
                    Place::Label(k) => format!("{k}={}", item.text),
                    _ => item.text.clone(),
                };
                let full = root.path().join(&rel);
                std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                std::fs::write(&full, text).unwrap();
                by_file.insert(rel, n);
            }
            std::fs::write(
                root.path().join("config/Env_0_"),
                "PATH=/usr/local/bin:/usr/bin:/bin",
            )
            .unwrap();
            for f in common::run_gitleaks(bin, root.path(), None, true) {
                match by_file.get(&f.file) {
                    Some(n) => {
                        out.by_gitleaks.insert(*n);
                    }
                    None => {
                        eprintln!(
                            "gitleaks finding outside the corpus: {} in {}",
                            f.rule, f.file
                        );
                        out.stray_gitleaks += 1;
                    }
                }
            }
            true
        }
        None => false,
    };

    let c = score(&items, &out.by_cutover, out.stray_cutover);
    let g = gitleaks_ran.then(|| score(&items, &out.by_gitleaks, out.stray_gitleaks));
    if !table {
        return (c, g);
    }
    let mark = |b: bool| if b { "found" } else { "-" };
    eprintln!(
        "{:<34} {:<7} {:<8} {:<8} cutover rule",
        "kind", "label", "cutover", "gitleaks"
    );
    for (n, item) in items.iter().enumerate() {
        eprintln!(
            "{:<34} {:<7} {:<8} {:<8} {}",
            item.kind,
            if item.secret { "secret" } else { "decoy" },
            mark(out.by_cutover.contains(&n)),
            if gitleaks_ran {
                mark(out.by_gitleaks.contains(&n))
            } else {
                "n/a"
            },
            cutover_rules
                .get(&n)
                .map(|r| r.iter().cloned().collect::<Vec<_>>().join(","))
                .unwrap_or_default()
        );
    }
    eprintln!("{} secrets, {} decoys", kinds(true), kinds(false));
    (c, g)
}

fn line(who: &str, s: &Score) {
    eprintln!(
        "{who:<9} recall {:.1} % ({} found), precision {:.1} % ({} false positives)",
        s.recall * 100.0,
        s.tp,
        s.precision * 100.0,
        s.fp
    );
}

#[test]
fn labelled_corpus_recall_and_precision() {
    let bin = common::gitleaks();
    // Three corpora with other random bodies: the first prints its table.
    for (i, seed) in [0x5eed_c0de_u64, 0xfeed_0001, 0xfeed_0002]
        .into_iter()
        .enumerate()
    {
        let (c, g) = run_corpus(seed, bin.as_deref(), i == 0);
        eprintln!("corpus seed {seed:#x}:");
        line("cutover:", &c);
        if let Some(g) = &g {
            line("gitleaks:", g);
            assert!(c.recall >= g.recall, "cutover's recall is below gitleaks's");
        }
        assert!(c.recall >= 0.95, "recall {:.3}", c.recall);
        assert!(c.precision >= 0.95, "precision {:.3}", c.precision);
    }
}
