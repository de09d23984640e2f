//! HTTPS to a control plane on another machine (`cutover --url`, `CUTOVER_URL`): reqwest
//! over rustls (ring), no OpenSSL. `https://` always; `http://` only to a loopback address,
//! since the bearer token would otherwise cross the network in the clear (the control plane
//! has the same rule for its listener). Trust: the system's roots, or only the CA
//! certificates given (`--ca-cert`), for a control plane whose certificate is self-signed or
//! from a private CA.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use thiserror::Error;

/// How long to wait for a TCP connection and TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole request (not an event stream) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a read may wait for bytes: event streams send a keep-alive every 15 s, so a
/// silent connection is a dead one.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A control plane URL or trust root that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("the control plane URL {url:?} is not a URL: {detail}; give e.g. https://cutover.example.com")]
    Invalid { url: String, detail: String },
    #[error("the control plane URL {url} uses {scheme}://; give an https:// URL")]
    Scheme { url: String, scheme: String },
    #[error("the control plane URL {url} is plain http:// to a host that is not loopback: the token would cross the network in the clear; use https://")]
    PlainToNetwork { url: String },
    #[error("the control plane URL must not carry a user name or password; give the token with --token-file or CUTOVER_TOKEN")]
    Credentials,
    #[error("the control plane URL {url} has a query or fragment; give only scheme, host, port and an optional path prefix")]
    Extra { url: String },
    #[error("the CA certificate {file} holds no usable PEM certificate: {detail}")]
    CaCert { file: String, detail: String },
    #[error("cannot set up the HTTPS client: {detail}")]
    Client { detail: String },
}

/// A request to the control plane that got no answer: connection refused, TLS handshake
/// refused, timeout, or the connection broke. Names the URL.
#[derive(Debug, Error)]
#[error("{url}: {detail}")]
pub struct RemoteError {
    pub url: String,
    pub detail: String,
}

impl RemoteError {
    /// From reqwest's error, with its cause chain made readable and a hint where one helps.
    pub fn from_reqwest(url: &str, error: &reqwest::Error) -> RemoteError {
        RemoteError {
            url: url.to_string(),
            detail: describe(error),
        }
    }
}

/// The innermost cause of a transport error (reqwest's own layers only say "error
/// sending request"), with a hint for an untrusted certificate.
fn describe(error: &reqwest::Error) -> String {
    let mut innermost = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        innermost = cause.to_string();
        source = cause.source();
    }
    let what = if error.is_timeout() {
        format!("timed out ({innermost})")
    } else if error.is_connect() {
        format!("cannot connect: {innermost}")
    } else {
        innermost
    };
    if what.contains("CaUsedAsEndEntity") {
        return format!(
            "{what}; the control plane serves a CA certificate as its own (as `openssl req -x509` makes by default): give it a certificate with basicConstraints CA:FALSE (`-addext basicConstraints=critical,CA:FALSE`), or one signed by that CA"
        );
    }
    if what.contains("certificate") || what.contains("UnknownIssuer") {
        format!(
            "{what}; the control plane's TLS certificate is not trusted: pass the CA certificate that signed it with --ca-cert or CUTOVER_CA_CERT"
        )
    } else {
        what
    }
}

/// Check a control plane URL: `https://`, or `http://` to a loopback address; no user
/// info, query or fragment. Returns it without a trailing slash (paths are appended).
pub fn check_url(text: &str) -> Result<String, UrlError> {
    let url = reqwest::Url::parse(text.trim()).map_err(|e| UrlError::Invalid {
        url: text.to_string(),
        detail: e.to_string(),
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    let shown = url.as_str().trim_end_matches('/').to_string();
    if url.query().is_some() || url.fragment().is_some() {
        return Err(UrlError::Extra { url: shown });
    }
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                None => false,
            };
            if !loopback {
                return Err(UrlError::PlainToNetwork { url: shown });
            }
        }
        other => {
            return Err(UrlError::Scheme {
                url: shown,
                scheme: other.to_string(),
            })
        }
    }
    if url.host().is_none() {
        return Err(UrlError::Invalid {
            url: text.to_string(),
            detail: "no host".to_string(),
        });
    }
    Ok(shown)
}

/// A client of one control plane over HTTP(S).
#[derive(Debug, Clone)]
pub struct RemoteHttp {
    client: reqwest::Client,
    base: String,
}

impl RemoteHttp {
    /// `url` is checked by [`check_url`]. `ca_pem` (from `ca_file`, named in errors), when
    /// given, holds the only certificates trusted for the control plane's; otherwise the
    /// system's roots are.
    pub fn new(url: &str, ca: Option<(&str, &[u8])>) -> Result<RemoteHttp, UrlError> {
        let base = check_url(url)?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(base.starts_with("https://"))
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            // A redirect could carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cutover/", env!("CARGO_PKG_VERSION")));
        if let Some((file, pem)) = ca {
            let certs =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| UrlError::CaCert {
                    file: file.to_string(),
                    detail: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(UrlError::CaCert {
                    file: file.to_string(),
                    detail: "no `BEGIN CERTIFICATE` block".to_string(),
                });
            }
            builder = builder.tls_built_in_root_certs(false);
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| UrlError::Client {
            detail: describe(&e),
        })?;
        Ok(RemoteHttp { client, base })
    }

    /// The control plane's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Send a request to `path` (absolute, e.g. `/api/v1/health`). A `stream` request has
    /// no overall deadline (an event stream lasts as long as its deployment); others end
    /// after [`REQUEST_TIMEOUT`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<Bytes>,
        stream: bool,
    ) -> Result<reqwest::Response, RemoteError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method, &url);
        if !stream {
            request = request.timeout(REQUEST_TIMEOUT);
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        request
            .send()
            .await
            .map_err(|e| RemoteError::from_reqwest(&self.base, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_is_accepted_anywhere_and_plain_http_only_on_loopback() {
        assert_eq!(
            check_url("https://cutover.example.com/").unwrap(),
            "https://cutover.example.com"
        );
        assert_eq!(
            check_url("https://10.0.0.5:8443/cutover").unwrap(),
            "https://10.0.0.5:8443/cutover"
        );
        for loopback in [
            "http://127.0.0.1:8080",
            "http://127.0.0.9:8080",
            "http://localhost:1",
            "http://[::1]:8080",
        ] {
            assert!(check_url(loopback).is_ok(), "{loopback}");
        }
        for network in [
            "http://cutover.example.com",
            "http://10.0.0.5:8080",
            "http://0.0.0.0:8080",
            "http://[::]:8080",
        ] {
            assert!(
                matches!(check_url(network), Err(UrlError::PlainToNetwork { .. })),
                "{network}"
            );
        }
    }

    #[test]
    fn urls_that_cannot_be_used_are_refused_saying_why() {
        assert!(matches!(
            check_url("cutover.example.com"),
            Err(UrlError::Invalid { .. })
        ));
        assert!(matches!(
            check_url("ftp://cutover.example.com"),
            Err(UrlError::Scheme { .. })
        ));
        // A token (or password) in the URL would end up in logs and process arguments.
        let err = check_url("https://ci:s3cret-canary@cutover.example.com").unwrap_err();
        assert_eq!(err, UrlError::Credentials);
        assert!(!err.to_string().contains("s3cret-canary"), "{err}");
        assert!(matches!(
            check_url("https://cutover.example.com/?token=x"),
            Err(UrlError::Extra { .. })
        ));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_naming_it() {
        let err = RemoteHttp::new(
            "https://127.0.0.1:1",
            Some(("/etc/ca.pem", b"not a certificate")),
        )
        .unwrap_err();
        assert!(matches!(err, UrlError::CaCert { .. }), "{err}");
        assert!(err.to_string().contains("/etc/ca.pem"), "{err}");
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable_and_names_the_url() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}");
        let remote = RemoteHttp::new(&url, None).unwrap();
        let err = remote
            .send(Method::GET, "/api/v1/health", &[], None, false)
            .await
            .unwrap_err();
        assert_eq!(err.url, url);
        assert!(err.detail.contains("cannot connect"), "{err}");
        assert!(err.to_string().starts_with(&url), "{err}");
    }
}
