//! Reading files an operator points at, safely: only regular files (after following links),
//! never more than a bound. A FIFO would block a reader forever and a device such as
//! `/dev/zero` would never end; both are refused before they are opened for reading.

use std::fs::{File, Metadata};
use std::io::{Error, ErrorKind, Read as _};
use std::path::Path;

/// Opens `path` for reading if it is a regular file of at most `max` bytes; `None` when it
/// does not exist.
pub fn open_regular(path: &Path, max: u64) -> std::io::Result<Option<(File, Metadata)>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    check(&meta, max)?;
    let file = File::open(path)?;
    // The path may have been swapped between the two looks; the handle is what is read.
    let meta = file.metadata()?;
    check(&meta, max)?;
    Ok(Some((file, meta)))
}

fn check(meta: &Metadata, max: u64) -> std::io::Result<()> {
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > max {
        return Err(Error::new(ErrorKind::InvalidData, format!("larger than {max} bytes")));
    }
    Ok(())
}

/// Reads a whole regular file of at most `max` bytes (a file still growing is cut off at the
/// bound and refused, not read without end).
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let (file, meta) = open_regular(path, max)?.ok_or_else(|| Error::new(ErrorKind::NotFound, "no such file"))?;
    let mut out = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(max.saturating_add(1)).read_to_end(&mut out)?;
    if u64::try_from(out.len()).unwrap_or(u64::MAX) > max {
        return Err(Error::new(ErrorKind::InvalidData, format!("larger than {max} bytes")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_bound_are_read() {
        let dir = std::env::temp_dir().join(format!("portcullis-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("f");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(read_regular(&f, 5).unwrap(), b"12345");
        assert!(read_regular(&f, 4).unwrap_err().to_string().contains("larger than 4 bytes"));
        assert_eq!(read_regular(&dir, 5).unwrap_err().kind(), ErrorKind::InvalidInput);
        assert_eq!(read_regular(&dir.join("missing"), 5).unwrap_err().kind(), ErrorKind::NotFound);
        #[cfg(unix)]
        {
            assert!(read_regular(Path::new("/dev/zero"), 5).unwrap_err().to_string().contains("not a regular file"));
            let link = dir.join("link");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
            assert!(
                read_regular(&link, 5).unwrap_err().to_string().contains("not a regular file"),
                "links are followed"
            );
            let fifo = dir.join("fifo");
            let _ = std::fs::remove_file(&fifo);
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            if made.is_ok_and(|s| s.success()) {
                // Would block forever if it were opened.
                assert!(read_regular(&fifo, 5).unwrap_err().to_string().contains("not a regular file"));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
