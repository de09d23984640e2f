//! Just enough ELF reading to tell whether a binary runs in a `FROM scratch` image: a
//! binary with a `PT_INTERP` program header needs a dynamic loader the image lacks.

const PT_INTERP: u32 = 3;

/// Why a file cannot run in an empty image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotStatic {
    /// Not an ELF file at all (or truncated).
    NotElf(String),
    /// Dynamically linked, needing this loader.
    Dynamic { interpreter: String },
}

/// `Ok` when `bytes` is an ELF file without a program interpreter (statically linked).
pub(crate) fn check_static(bytes: &[u8]) -> Result<(), NotStatic> {
    let reader = Reader::new(bytes)?;
    let (phoff, phentsize, phnum) = if reader.is64 {
        (
            reader.u64(0x20)?,
            u64::from(reader.u16(0x36)?),
            u64::from(reader.u16(0x38)?),
        )
    } else {
        (
            u64::from(reader.u32(0x1c)?),
            u64::from(reader.u16(0x2a)?),
            u64::from(reader.u16(0x2c)?),
        )
    };
    for index in 0..phnum {
        let at = phoff
            .checked_add(index.saturating_mul(phentsize))
            .ok_or_else(|| NotStatic::NotElf("program header offset overflows".to_string()))?;
        let at = usize::try_from(at)
            .map_err(|_| NotStatic::NotElf("program header offset too large".to_string()))?;
        if reader.u32(at)? != PT_INTERP {
            continue;
        }
        let (offset, size) = if reader.is64 {
            (reader.u64(at + 8)?, reader.u64(at + 32)?)
        } else {
            (
                u64::from(reader.u32(at + 4)?),
                u64::from(reader.u32(at + 16)?),
            )
        };
        let interpreter = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(o, s)| bytes.get(o..o.checked_add(s)?))
            .map(|raw| {
                String::from_utf8_lossy(raw)
                    .trim_end_matches('\0')
                    .to_string()
            })
            .unwrap_or_else(|| "an unreadable interpreter".to_string());
        return Err(NotStatic::Dynamic { interpreter });
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    is64: bool,
    little: bool,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, NotStatic> {
        if bytes.len() < 0x34 || &bytes[..4] != b"\x7fELF" {
            return Err(NotStatic::NotElf("no elf header".to_string()));
        }
        let is64 = match bytes[4] {
            1 => false,
            2 => true,
            other => return Err(NotStatic::NotElf(format!("unknown elf class {other}"))),
        };
        let little = match bytes[5] {
            1 => true,
            2 => false,
            other => return Err(NotStatic::NotElf(format!("unknown elf byte order {other}"))),
        };
        Ok(Reader {
            bytes,
            is64,
            little,
        })
    }

    fn take<const N: usize>(&self, at: usize) -> Result<[u8; N], NotStatic> {
        at.checked_add(N)
            .and_then(|end| self.bytes.get(at..end))
            .and_then(|slice| slice.try_into().ok())
            .ok_or_else(|| NotStatic::NotElf(format!("truncated at offset {at}")))
    }

    fn u16(&self, at: usize) -> Result<u16, NotStatic> {
        let raw = self.take::<2>(at)?;
        Ok(if self.little {
            u16::from_le_bytes(raw)
        } else {
            u16::from_be_bytes(raw)
        })
    }

    fn u32(&self, at: usize) -> Result<u32, NotStatic> {
        let raw = self.take::<4>(at)?;
        Ok(if self.little {
            u32::from_le_bytes(raw)
        } else {
            u32::from_be_bytes(raw)
        })
    }

    fn u64(&self, at: usize) -> Result<u64, NotStatic> {
        let raw = self.take::<8>(at)?;
        Ok(if self.little {
            u64::from_le_bytes(raw)
        } else {
            u64::from_be_bytes(raw)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal little-endian ELF64 file with the given program header types.
    fn elf64(program_headers: &[u32], interp: &[u8]) -> Vec<u8> {
        let phoff = 64usize;
        let phentsize = 56usize;
        let data_at = phoff + phentsize * program_headers.len();
        let mut bytes = vec![0u8; data_at];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&(phentsize as u16).to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&(program_headers.len() as u16).to_le_bytes());
        for (i, kind) in program_headers.iter().enumerate() {
            let at = phoff + i * phentsize;
            bytes[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            bytes[at + 8..at + 16].copy_from_slice(&(data_at as u64).to_le_bytes());
            bytes[at + 32..at + 40].copy_from_slice(&(interp.len() as u64).to_le_bytes());
        }
        bytes.extend_from_slice(interp);
        bytes
    }

    #[test]
    fn a_binary_without_interpreter_is_static() {
        assert_eq!(check_static(&elf64(&[1, 1, 2], b"")), Ok(()));
    }

    #[test]
    fn a_binary_with_interpreter_is_dynamic_and_names_it() {
        let bytes = elf64(&[6, 3, 1], b"/lib64/ld-linux-x86-64.so.2\0");
        assert_eq!(
            check_static(&bytes),
            Err(NotStatic::Dynamic {
                interpreter: "/lib64/ld-linux-x86-64.so.2".to_string()
            })
        );
    }

    #[test]
    fn garbage_and_truncated_files_are_not_elf() {
        assert!(matches!(
            check_static(b"#!/bin/sh\n"),
            Err(NotStatic::NotElf(_))
        ));
        let mut truncated = elf64(&[1, 3], b"/lib/ld.so");
        truncated.truncate(80);
        assert!(matches!(
            check_static(&truncated),
            Err(NotStatic::NotElf(_))
        ));
    }

    #[test]
    fn the_running_test_binary_is_classified_without_panicking() {
        let me = std::env::current_exe().expect("test binary path");
        let bytes = std::fs::read(me).expect("read test binary");
        // Test binaries are normally dynamic; either answer is fine as long as it is an ELF.
        assert!(!matches!(check_static(&bytes), Err(NotStatic::NotElf(_))));
    }
}
