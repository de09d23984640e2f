//! Mapping of bollard errors onto cutover's error classes.
//!
//! Connection failures, timeouts and 5xx answers are transient (the executor retries them);
//! 4xx answers, bad input and failed builds are permanent (the deployment unwinds).

use bollard::errors::Error as BollardError;
use cutover_model::{ErrorClass, ProviderError};

/// The Engine's own words for an error, without bollard's framing.
pub(crate) fn describe(err: &BollardError) -> String {
    match err {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => {
            let message = message.trim();
            if message.is_empty() {
                format!("the engine answered http {status_code}")
            } else {
                format!("{message} (http {status_code})")
            }
        }
        BollardError::DockerStreamError { error } => error.trim().to_string(),
        BollardError::RequestTimeoutError => "the request timed out".to_string(),
        BollardError::SocketNotFoundError(path) => format!("no socket at {path}"),
        other => lowercase_first(&other.to_string()),
    }
}

/// Whether retrying the same call may succeed.
pub(crate) fn class(err: &BollardError) -> ErrorClass {
    match err {
        BollardError::DockerResponseServerError { status_code, .. } => {
            if *status_code >= 500 {
                ErrorClass::Transient
            } else {
                ErrorClass::Permanent
            }
        }
        BollardError::RequestTimeoutError
        | BollardError::HyperResponseError { .. }
        | BollardError::HyperLegacyError { .. }
        | BollardError::IOError { .. }
        | BollardError::SocketNotFoundError(_) => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// HTTP status of an Engine answer, if the error is one.
pub(crate) fn status(err: &BollardError) -> Option<u16> {
    match err {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// `true` when the Engine said the object does not exist.
pub(crate) fn is_not_found(err: &BollardError) -> bool {
    status(err) == Some(404)
}

/// A provider error for a failed Engine call: "`what` failed: <engine words>; <advice>".
pub(crate) fn provider_error(what: &str, err: &BollardError) -> ProviderError {
    let class = class(err);
    let advice = match class {
        ErrorClass::Transient => "check that dockerd is running and healthy, then retry",
        ErrorClass::Permanent => "fix the request (spec, image or name) and try again",
    };
    let message = format!("{what} failed: {}; {advice}", describe(err));
    ProviderError { class, message }
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(status_code: u16, message: &str) -> BollardError {
        BollardError::DockerResponseServerError {
            status_code,
            message: message.to_string(),
        }
    }

    #[test]
    fn five_hundreds_and_timeouts_are_transient() {
        assert_eq!(class(&server(500, "boom")), ErrorClass::Transient);
        assert_eq!(class(&server(503, "")), ErrorClass::Transient);
        assert_eq!(
            class(&BollardError::RequestTimeoutError),
            ErrorClass::Transient
        );
        let io = BollardError::IOError {
            err: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(class(&io), ErrorClass::Transient);
    }

    #[test]
    fn four_hundreds_and_build_failures_are_permanent() {
        assert_eq!(class(&server(400, "bad")), ErrorClass::Permanent);
        assert_eq!(class(&server(404, "no such image")), ErrorClass::Permanent);
        assert_eq!(class(&server(409, "conflict")), ErrorClass::Permanent);
        let stream = BollardError::DockerStreamError {
            error: "unknown instruction: FOO".to_string(),
        };
        assert_eq!(class(&stream), ErrorClass::Permanent);
    }

    #[test]
    fn messages_carry_the_engine_text_and_advice() {
        let err = provider_error(
            "creating container x",
            &server(409, "Conflict. name in use"),
        );
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(err
            .message
            .starts_with("creating container x failed: Conflict. name in use (http 409);"));
        assert!(!err.message.ends_with('.'));
        assert!(is_not_found(&server(404, "no such container")));
        assert!(!is_not_found(&server(409, "conflict")));
    }
}
