//! `container.user` resolved the way the Engine resolves it (runc's `GetExecUser`) against
//! the image's `/etc/passwd` and `/etc/group`, refusing anything that runs as uid 0 or with
//! gid 0 (primary or supplementary).
//!
//! - `name` or `uid`: the first `/etc/passwd` entry with that name (or, for a number, that
//!   uid) gives the uid and the primary gid; a name that is not there is refused; a number
//!   that is not there runs with gid 0, so it is refused unless a group is given.
//! - Without an explicit group, every `/etc/group` entry listing the user's name adds a
//!   supplementary group.
//! - `:group` (a name or a gid): the first `/etc/group` entry with that name (or gid) gives
//!   the gid; a name that is not there is refused.

use std::collections::BTreeSet;

use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
use cutover_model::ProviderError;
use futures_util::StreamExt;

use crate::engine_error::{is_not_found, provider_error};
use crate::DockerProvider;

/// What the user runs as, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) supplementary: BTreeSet<u32>,
}

/// One entry of a colon-separated database, with its 1-based line.
struct Entry<'a> {
    line: usize,
    fields: Vec<&'a str>,
}

fn entries(text: &str, min_fields: usize) -> Vec<Entry<'_>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| Entry {
            line: i + 1,
            fields: l.split(':').collect(),
        })
        .filter(|e| e.fields.len() >= min_fields)
        .collect()
}

/// `file:line: entry`, with the password field masked (a hash is never shown).
fn cite(file: &str, entry: &Entry<'_>) -> String {
    let mut fields = entry.fields.clone();
    if fields.len() > 1 && !matches!(fields[1], "" | "x" | "*" | "!") {
        fields[1] = "*";
    }
    format!("{file}:{}: {}", entry.line, fields.join(":"))
}

fn number(field: &str) -> Option<u32> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.parse().ok()
}

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

/// Resolve `user` (`user[:group]`) against the image's files (`None`: the file is absent).
/// The error says why the user is refused, naming the line that maps it to root.
pub(crate) fn resolve(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<Resolved, String> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u.trim(), Some(g.trim())),
        None => (user.trim(), None),
    };
    if user_part.is_empty() {
        return Err("no user is named, so it would run as root".to_string());
    }
    let passwd_entries = passwd.map(|t| entries(t, 4)).unwrap_or_default();
    let user_number = number(user_part);
    let found = passwd_entries.iter().find(|e| {
        e.fields[0] == user_part || user_number.is_some_and(|n| number(e.fields[2]) == Some(n))
    });
    let (uid, mut gid, matched_name) = match (found, user_number) {
        (Some(entry), _) => {
            let uid = number(entry.fields[2])
                .ok_or_else(|| format!("{} has no valid uid", cite(PASSWD, entry)))?;
            let gid = number(entry.fields[3])
                .ok_or_else(|| format!("{} has no valid gid", cite(PASSWD, entry)))?;
            if uid == 0 {
                return Err(format!("{} maps it to uid 0 (root)", cite(PASSWD, entry)));
            }
            if gid == 0 && group_part.is_none() {
                return Err(format!(
                    "{} gives it gid 0 (root's group)",
                    cite(PASSWD, entry)
                ));
            }
            (uid, gid, Some(entry.fields[0]))
        }
        (None, Some(0)) => return Err("uid 0 is root".to_string()),
        (None, Some(uid)) => (uid, 0, None),
        (None, None) if user_part == "root" => return Err("root is root".to_string()),
        (None, None) => {
            return Err(match passwd {
                Some(_) => format!("user {user_part:?} does not exist in the image's {PASSWD}"),
                None => format!(
                    "the image has no {PASSWD}, so the user name {user_part:?} cannot be resolved; use a numeric uid:gid"
                ),
            })
        }
    };

    let group_entries = group.map(|t| entries(t, 3)).unwrap_or_default();
    let mut supplementary = BTreeSet::new();
    match group_part {
        Some("") => return Err("the group after ':' is empty".to_string()),
        Some(wanted) => {
            let wanted_number = number(wanted);
            let found = group_entries.iter().find(|e| {
                e.fields[0] == wanted
                    || wanted_number.is_some_and(|n| number(e.fields[2]) == Some(n))
            });
            gid = match (found, wanted_number) {
                (Some(entry), _) => {
                    let gid = number(entry.fields[2])
                        .ok_or_else(|| format!("{} has no valid gid", cite(GROUP, entry)))?;
                    if gid == 0 {
                        return Err(format!(
                            "{} maps group {wanted:?} to gid 0 (root's group)",
                            cite(GROUP, entry)
                        ));
                    }
                    gid
                }
                (None, Some(0)) => return Err("gid 0 is root's group".to_string()),
                (None, Some(gid)) => gid,
                (None, None) if wanted == "root" => {
                    return Err("group root is root's group".to_string())
                }
                (None, None) => {
                    return Err(format!(
                        "group {wanted:?} does not exist in the image's {GROUP}"
                    ))
                }
            };
        }
        None => {
            if gid == 0 {
                return Err(format!(
                    "uid {uid} has no entry in the image's {PASSWD}, so it would run with gid 0 (root's group); name a group, e.g. {uid}:{uid}"
                ));
            }
            if let Some(name) = matched_name {
                for entry in &group_entries {
                    let members = entry.fields[3..].join(":");
                    if members.split(',').any(|m| m.trim() == name) {
                        let gid = number(entry.fields[2])
                            .ok_or_else(|| format!("{} has no valid gid", cite(GROUP, entry)))?;
                        if gid == 0 {
                            return Err(format!(
                                "{} makes {name:?} a member of gid 0 (root's group)",
                                cite(GROUP, entry)
                            ));
                        }
                        supplementary.insert(gid);
                    }
                }
            }
        }
    }
    Ok(Resolved {
        uid,
        gid,
        supplementary,
    })
}

/// How many symbolic links `read_file` follows.
const MAX_LINKS: usize = 8;

impl DockerProvider {
    /// The contents of `path` in a created container's filesystem (image layers merged,
    /// whiteouts applied), following symbolic links; `None` when it does not exist.
    pub(crate) async fn read_container_file(
        &self,
        container: &str,
        path: &str,
    ) -> Result<Option<String>, ProviderError> {
        let mut path = path.to_string();
        for _ in 0..MAX_LINKS {
            let options = DownloadFromContainerOptionsBuilder::default()
                .path(&path)
                .build();
            let mut stream = self
                .docker
                .download_from_container(container, Some(options));
            let mut archive = Vec::new();
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => archive.extend_from_slice(&bytes),
                    Err(e) if is_not_found(&e) => return Ok(None),
                    Err(e) => {
                        return Err(provider_error(
                            &format!("reading {path} of container {container}"),
                            &e,
                        ))
                    }
                }
            }
            let unreadable = |what: String| {
                ProviderError::permanent(format!(
                    "reading {path} of container {container} failed: {what}; check the image's {path}"
                ))
            };
            let mut tar = tar::Archive::new(&archive[..]);
            let mut entries = tar.entries().map_err(|e| unreadable(e.to_string()))?;
            let Some(entry) = entries.next() else {
                return Ok(None);
            };
            let mut entry = entry.map_err(|e| unreadable(e.to_string()))?;
            let kind = entry.header().entry_type();
            if kind.is_symlink() {
                let target = entry
                    .link_name()
                    .map_err(|e| unreadable(e.to_string()))?
                    .ok_or_else(|| unreadable("a link without a target".to_string()))?
                    .to_string_lossy()
                    .to_string();
                path = if target.starts_with('/') {
                    target
                } else {
                    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    format!("{dir}/{target}")
                };
                continue;
            }
            if !kind.is_file() {
                return Err(unreadable("it is not a regular file".to_string()));
            }
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text)
                .map_err(|e| unreadable(format!("it is not utf-8 text ({e})")))?;
            return Ok(Some(text));
        }
        Err(ProviderError::permanent(format!(
            "reading {path} of container {container} failed: more than {MAX_LINKS} symbolic links; check the image"
        )))
    }

    /// Refuse (permanently) a created container whose user resolves to root in its image.
    pub(crate) async fn check_image_user(
        &self,
        container: &str,
        user: &str,
    ) -> Result<Resolved, ProviderError> {
        let passwd = self.read_container_file(container, PASSWD).await?;
        let group = self.read_container_file(container, GROUP).await?;
        resolve(user, passwd.as_deref(), group.as_deref()).map_err(|why| {
            ProviderError::permanent(format!(
                "container.user {user:?} of instance {container} is refused: {why}; set container.user to an unprivileged uid:gid such as 65534:65534"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str = "root:x:0:0:root:/root:/bin/sh\n\
        nobody:x:65534:65534:nobody:/:/sbin/nologin\n\
        toor:$6$salt$hash:0:0:backdoor:/root:/bin/sh\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        wheel:x:1001:0::/:/bin/sh\n\
        ops:x:1002:1002::/:/bin/sh\n";
    const GROUP_TEXT: &str = "root:x:0:ops\n\
        nogroup:x:65534:\n\
        app:x:1000:\n\
        admins:x:0:\n\
        extra:x:2000:app\n";

    fn check(user: &str) -> Result<Resolved, String> {
        resolve(user, Some(PASSWD_TEXT), Some(GROUP_TEXT))
    }

    #[test]
    fn a_name_mapping_to_uid_0_is_refused_with_its_line() {
        let err = check("toor").expect_err("toor is uid 0");
        assert_eq!(
            err,
            "/etc/passwd:3: toor:*:0:0:backdoor:/root:/bin/sh maps it to uid 0 (root)"
        );
        assert!(!err.contains("$6$"), "the password hash is never shown");
        assert!(check("root").is_err());
        assert!(
            check("toor:app").is_err(),
            "a group does not change the uid"
        );
    }

    #[test]
    fn gid_0_is_refused_however_it_is_reached() {
        let err = check("wheel").expect_err("primary gid 0");
        assert!(err.starts_with("/etc/passwd:5: wheel:x:1001:0:"), "{err}");
        let err = check("app:admins").expect_err("group named admins is gid 0");
        assert_eq!(
            err,
            "/etc/group:4: admins:x:0: maps group \"admins\" to gid 0 (root's group)"
        );
        assert!(check("app:0").is_err());
        assert!(check("app:root").is_err());
        let err = check("ops").expect_err("member of root's group");
        assert!(err.starts_with("/etc/group:1: root:x:0:ops makes"), "{err}");
        // An explicit group replaces the supplementary ones, as in the Engine.
        assert_eq!(check("ops:1002").map(|r| r.gid), Ok(1002));
        assert_eq!(check("wheel:app").map(|r| (r.uid, r.gid)), Ok((1001, 1000)));
    }

    #[test]
    fn numbers_without_entries_need_a_group() {
        assert!(check("0").is_err());
        assert!(check("0:65534").is_err());
        assert!(check("4242").is_err(), "would run with gid 0");
        assert_eq!(check("4242:4242").map(|r| (r.uid, r.gid)), Ok((4242, 4242)));
        assert_eq!(
            resolve("65534:65534", None, None).map(|r| (r.uid, r.gid)),
            Ok((65534, 65534))
        );
        // A number found in /etc/passwd takes that entry's gid.
        assert_eq!(check("1000").map(|r| (r.uid, r.gid)), Ok((1000, 1000)));
        assert!(check("1001").is_err(), "uid 1001 is wheel, gid 0");
    }

    #[test]
    fn names_resolve_with_supplementary_groups() {
        let resolved = check("app").expect("app is unprivileged");
        assert_eq!((resolved.uid, resolved.gid), (1000, 1000));
        assert_eq!(resolved.supplementary, BTreeSet::from([2000]));
        assert_eq!(check("nobody:nogroup").map(|r| r.gid), Ok(65534));
    }

    #[test]
    fn unknown_names_and_empty_users_are_refused() {
        let err = check("ghost").expect_err("no such user");
        assert_eq!(
            err,
            "user \"ghost\" does not exist in the image's /etc/passwd"
        );
        let err = resolve("app", None, None).expect_err("no passwd");
        assert!(err.contains("has no /etc/passwd"), "{err}");
        assert!(check("app:ghosts").is_err());
        assert!(check("").is_err());
        assert!(check(":1000").is_err());
        assert!(check("app:").is_err());
    }
}
