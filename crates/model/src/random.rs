//! The one generator of secret random tokens (API tokens, session ids, CSRF tokens, key
//! passphrases): bytes from the operating system's generator, hex-encoded.

use thiserror::Error;

/// The operating system's random number generator gave no bytes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("the operating system's random number generator failed: {0}; check that getrandom(2) or /dev/urandom is available")]
pub struct RandomError(String);

/// `bytes` random bytes from the operating system, as `2 * bytes` lowercase hex digits.
/// Use 32 bytes (256 bits) for anything that proves possession.
pub fn random_token_hex(bytes: usize) -> Result<String, RandomError> {
    let mut buf = vec![0u8; bytes];
    fill(&mut buf)?;
    Ok(hex::encode(buf))
}

/// `N` random bytes from the operating system, raw (salts, nonces).
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut buf = [0u8; N];
    fill(&mut buf)?;
    Ok(buf)
}

fn fill(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buf).map_err(|e| RandomError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_asked_length_in_hex_and_differ() {
        let a = random_token_hex(32).unwrap();
        let b = random_token_hex(32).unwrap();
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b, "two 256-bit tokens collided");
        assert_eq!(random_token_hex(6).unwrap().len(), 12);
        assert_eq!(random_token_hex(0).unwrap(), "");
        assert_ne!(random_bytes::<16>().unwrap(), random_bytes::<16>().unwrap());
    }
}
