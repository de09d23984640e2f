use super::*;
use std::os::unix::fs::PermissionsExt;

const CANARY: &[u8] = b"canary-7f3a9c1e-secret-value";

fn value() -> SecretValue {
    secret_value(CANARY.to_vec())
}

#[test]
fn a_sealed_value_opens_with_its_key_and_aad() {
    let master = MasterKey::generate().unwrap();
    let aad = Aad::new("production", "db-password", 1);
    let sealed = seal(&master, &aad, &value()).unwrap();
    assert!(!sealed.ciphertext.windows(CANARY.len()).any(|w| w == CANARY));
    let opened = open(&master, &aad, &sealed).unwrap();
    assert_eq!(opened.expose_secret(), CANARY);
}

#[test]
fn each_version_gets_its_own_data_key_and_nonce() {
    let master = MasterKey::generate().unwrap();
    let a = seal(&master, &Aad::new("e", "n", 1), &value()).unwrap();
    let b = seal(&master, &Aad::new("e", "n", 1), &value()).unwrap();
    assert_ne!(a.data_key.ciphertext, b.data_key.ciphertext);
    assert_ne!(a.nonce, b.nonce);
    assert_ne!(a.ciphertext, b.ciphertext);
}

#[test]
fn a_ciphertext_moved_to_another_env_name_or_version_does_not_open() {
    let master = MasterKey::generate().unwrap();
    let sealed = seal(&master, &Aad::new("production", "db", 2), &value()).unwrap();
    for other in [
        Aad::new("staging", "db", 2),
        Aad::new("production", "db2", 2),
        Aad::new("production", "db", 1),
    ] {
        let err = open(&master, &other, &sealed).unwrap_err();
        assert!(matches!(err, SecretsError::Decrypt(ref n) if n == &other.label()));
    }
}

#[test]
fn tampered_ciphertext_or_wrapped_key_fails_naming_the_secret() {
    let master = MasterKey::generate().unwrap();
    let aad = Aad::new("production", "db-password", 3);
    let sealed = seal(&master, &aad, &value()).unwrap();
    let mut flipped = sealed.clone();
    flipped.ciphertext[0] ^= 1;
    let mut wrapped = sealed.clone();
    wrapped.data_key.ciphertext[5] ^= 0x80;
    let mut short_nonce = sealed.clone();
    short_nonce.nonce.truncate(3);
    for bad in [flipped, wrapped, short_nonce] {
        let err = open(&master, &aad, &bad).unwrap_err().to_string();
        assert!(err.contains("production/db-password version 3"), "{err}");
        assert!(!err.contains("canary"), "{err}");
    }
}

#[test]
fn another_master_key_opens_nothing_and_fails_the_key_check() {
    let master = MasterKey::generate().unwrap();
    let other = MasterKey::generate().unwrap();
    let aad = Aad::new("e", "n", 1);
    let sealed = seal(&master, &aad, &value()).unwrap();
    assert!(matches!(
        open(&other, &aad, &sealed),
        Err(SecretsError::Decrypt(_))
    ));
    let check = KeyCheck::new(&master).unwrap();
    check.verify(&master).unwrap();
    assert!(matches!(
        check.verify(&other),
        Err(SecretsError::WrongMasterKey)
    ));
}

#[test]
fn rewrap_moves_the_data_key_and_keeps_the_value_ciphertext() {
    let old = MasterKey::generate().unwrap();
    let new = MasterKey::generate().unwrap();
    let aad = Aad::new("e", "n", 4);
    let sealed = seal(&old, &aad, &value()).unwrap();
    let moved = rewrap(&old, &new, &aad, &sealed).unwrap();
    assert_eq!(moved.ciphertext, sealed.ciphertext);
    assert_eq!(moved.nonce, sealed.nonce);
    assert_eq!(moved.data_key.key_id, new.key_id());
    assert_eq!(open(&new, &aad, &moved).unwrap().expose_secret(), CANARY);
    assert!(open(&old, &aad, &moved).is_err());
    // A rewrap with the wrong old key fails and changes nothing.
    assert!(rewrap(&new, &old, &aad, &sealed).is_err());
}

#[test]
fn values_and_keys_never_print() {
    let shown = format!("{:?}", value());
    assert!(!shown.contains("canary"), "{shown}");
    assert!(shown.contains("REDACTED"), "{shown}");
    let master = MasterKey::parse(&"11".repeat(32), "test").unwrap();
    let shown = format!("{master:?}");
    assert!(!shown.contains("1111"), "{shown}");
}

#[test]
fn master_keys_parse_from_base64_or_hex_only_at_32_bytes() {
    let hex_key = "ab".repeat(32);
    let b64_key = base64::engine::general_purpose::STANDARD.encode([0xabu8; 32]);
    let a = MasterKey::parse(&hex_key, "t").unwrap();
    let b = MasterKey::parse(&format!(" {b64_key}\n"), "t").unwrap();
    assert_eq!(a.key_id(), b.key_id());
    for bad in ["", "abc", &"ab".repeat(31), "not base64 !!!"] {
        let err = MasterKey::parse(bad, "CUTOVER_SECRETS_KEY").unwrap_err();
        assert!(err.to_string().contains("CUTOVER_SECRETS_KEY"), "{err}");
    }
}

#[test]
fn a_key_file_open_to_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys").join("secrets.key");
    let made = MasterKey::load_or_create(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        MasterKey::load_or_create(&path).unwrap().key_id(),
        made.key_id()
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = MasterKey::from_file(&path).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    assert!(
        made.write_new_file(&path).is_err(),
        "never replaces a key file"
    );
}

#[test]
fn names_must_be_file_names() {
    for good in ["db-password", "API_KEY", "a.b", "x1"] {
        check_name(good).unwrap();
    }
    for bad in [
        "",
        ".",
        "..",
        "../etc/passwd",
        "a/b",
        "-rf",
        ".hidden",
        "with space",
        "é",
        &"a".repeat(129),
    ] {
        assert!(check_name(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn empty_and_huge_values_are_refused() {
    let master = MasterKey::generate().unwrap();
    let aad = Aad::new("e", "n", 1);
    assert!(matches!(
        seal(&master, &aad, &secret_value(Vec::new())),
        Err(SecretsError::Empty)
    ));
    assert!(matches!(
        seal(&master, &aad, &secret_value(vec![1; MAX_VALUE_LEN + 1])),
        Err(SecretsError::TooLarge { .. })
    ));
}
