//! Just enough ELF reading to tell whether a binary runs in a `FROM scratch` image: a
//! binary with a `PT_INTERP` program header needs a dynamic loader the image lacks.

use object::elf::{FileHeader32, FileHeader64, PT_INTERP};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Endianness, FileKind};

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
    match FileKind::parse(bytes) {
        Ok(FileKind::Elf32) => check::<FileHeader32<Endianness>>(bytes),
        Ok(FileKind::Elf64) => check::<FileHeader64<Endianness>>(bytes),
        Ok(other) => Err(NotStatic::NotElf(format!("a {other:?} file, not elf"))),
        Err(_) => Err(NotStatic::NotElf("no elf header".to_string())),
    }
}

fn check<Elf: FileHeader<Endian = Endianness>>(bytes: &[u8]) -> Result<(), NotStatic> {
    let not_elf = |error: object::read::Error| NotStatic::NotElf(error.to_string().to_lowercase());
    let header = Elf::parse(bytes).map_err(not_elf)?;
    let endian = header.endian().map_err(not_elf)?;
    let program_headers = header.program_headers(endian, bytes).map_err(not_elf)?;
    match program_headers
        .iter()
        .find(|segment| segment.p_type(endian) == PT_INTERP)
    {
        None => Ok(()),
        Some(segment) => {
            let interpreter = segment
                .data(endian, bytes)
                .map(|raw| {
                    String::from_utf8_lossy(raw)
                        .trim_end_matches('\0')
                        .to_string()
                })
                .unwrap_or_else(|()| "an unreadable interpreter".to_string());
            Err(NotStatic::Dynamic { interpreter })
        }
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
        bytes[6] = 1; // EV_CURRENT
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

    /// A minimal big-endian ELF32 file with one `PT_INTERP` program header.
    fn elf32_big_endian_dynamic(interp: &[u8]) -> Vec<u8> {
        let (phoff, phentsize) = (52usize, 32usize);
        let data_at = phoff + phentsize;
        let mut bytes = vec![0u8; data_at];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 1;
        bytes[5] = 2;
        bytes[6] = 1;
        bytes[0x1c..0x20].copy_from_slice(&(phoff as u32).to_be_bytes());
        bytes[0x2a..0x2c].copy_from_slice(&(phentsize as u16).to_be_bytes());
        bytes[0x2c..0x2e].copy_from_slice(&1u16.to_be_bytes());
        bytes[phoff..phoff + 4].copy_from_slice(&3u32.to_be_bytes());
        bytes[phoff + 4..phoff + 8].copy_from_slice(&(data_at as u32).to_be_bytes());
        bytes[phoff + 16..phoff + 20].copy_from_slice(&(interp.len() as u32).to_be_bytes());
        bytes.extend_from_slice(interp);
        bytes
    }

    #[test]
    fn a_big_endian_32_bit_binary_is_read_too() {
        assert_eq!(
            check_static(&elf32_big_endian_dynamic(b"/lib/ld.so.1\0")),
            Err(NotStatic::Dynamic {
                interpreter: "/lib/ld.so.1".to_string()
            })
        );
    }

    #[test]
    fn an_interpreter_outside_the_file_is_still_dynamic() {
        let mut bytes = elf32_big_endian_dynamic(b"/lib/ld.so.1\0");
        bytes.truncate(bytes.len() - 4);
        assert_eq!(
            check_static(&bytes),
            Err(NotStatic::Dynamic {
                interpreter: "an unreadable interpreter".to_string()
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
