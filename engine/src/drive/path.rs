//! Hyperdrive's path normalisation (`unix-path-resolve('/', name)`): absolute, `/` and `\` both
//! separate, empty and `.` components vanish, `..` pops and may not climb above the root, no
//! trailing slash.
//!
//! Paths read back from a drive (keys under `files\0` and `dirs\0`, link targets that are
//! followed) are someone else's bytes: [`check_stored`] is the one place they are trusted.

use crate::{Error, Result};

/// The longest name of one path component a stored path may have (`NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// The longest stored path (`PATH_MAX`).
pub const MAX_PATH: usize = 4096;

/// Why a path read from a drive is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not valid UTF-8.
    NotUtf8,
    /// Not absolute (`/` first).
    Relative,
    /// An empty component (`//`, a trailing `/`).
    EmptyName,
    /// A `.` or `..` component.
    DotName,
    /// A NUL or a backslash (which Hyperdrive reads as a separator) in the path.
    BadByte,
    /// A component over [`MAX_NAME`] bytes.
    NameTooLong,
    /// Over [`MAX_PATH`] bytes.
    PathTooLong,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Invalid::NotUtf8 => "the path is not UTF-8",
            Invalid::Relative => "the path is not absolute",
            Invalid::EmptyName => "the path has an empty name",
            Invalid::DotName => "the path has a . or .. name",
            Invalid::BadByte => "the path holds a NUL or a backslash",
            Invalid::NameTooLong => "a name is over 255 bytes",
            Invalid::PathTooLong => "the path is over 4096 bytes",
        })
    }
}

/// Checks a path as stored in a drive (`/a/b`, the root excluded): absolute, every component a
/// plain name — not empty, `.` or `..`, no NUL or backslash (which Hyperdrive reads as a
/// separator), at most [`MAX_NAME`] bytes — at most [`MAX_PATH`] bytes, UTF-8. Everything a drive
/// names is checked here before it is listed, mounted, exported or followed.
pub fn check_stored(bytes: &[u8]) -> std::result::Result<&str, Invalid> {
    let s = std::str::from_utf8(bytes).map_err(|_| Invalid::NotUtf8)?;
    if s.len() > MAX_PATH {
        return Err(Invalid::PathTooLong);
    }
    let rest = s.strip_prefix('/').ok_or(Invalid::Relative)?;
    for name in rest.split('/') {
        check_name(name)?;
    }
    Ok(s)
}

/// Checks one component of a stored path (see [`check_stored`]).
pub fn check_name(name: &str) -> std::result::Result<(), Invalid> {
    match name {
        "" => Err(Invalid::EmptyName),
        "." | ".." => Err(Invalid::DotName),
        n if n.len() > MAX_NAME => Err(Invalid::NameTooLong),
        n if n.bytes().any(|b| b == 0 || b == b'\\') => Err(Invalid::BadByte),
        _ => Ok(()),
    }
}

/// The normalised form of `name`, as Hyperdrive stores it (`"/"` for the root).
pub fn normalize(name: &str) -> Result<String> {
    let mut names: Vec<&str> = name.split(['/', '\\']).collect();
    // unix-path-resolve treats "x:/…" (a drive letter) and "scheme://host/…" as absolute.
    if names.len() > 1 && names[0].ends_with(':') {
        names = if names[0].len() == 2 || names[0] == "file:" {
            names.split_off(1)
        } else {
            names.split_off(3.min(names.len()))
        };
    }
    let mut out = String::from("/");
    for n in names {
        match n {
            "" | "." => {}
            ".." => {
                if out.len() == 1 {
                    return Err(Error::InvalidRequest(format!("path {name:?} climbs above the drive's root")));
                }
                let cut = out.rfind('/').unwrap_or(0);
                out.truncate(cut.max(1));
            }
            n => {
                if out.len() > 1 {
                    out.push('/');
                }
                out.push_str(n);
            }
        }
    }
    Ok(out)
}

/// The normalised path of a file: like [`normalize`], but the root is not a file.
pub fn file(name: &str) -> Result<String> {
    let p = normalize(name)?;
    if p == "/" {
        return Err(Error::InvalidRequest(format!("{name:?} names the drive's root, not a file")));
    }
    Ok(p)
}

/// The normalised path of a folder for prefix ranges: the root is the empty string.
pub fn folder(name: &str) -> Result<String> {
    let p = normalize(name)?;
    Ok(if p == "/" { String::new() } else { p })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_hyperdrive() {
        for (input, want) in [
            ("dir/../dir/a.txt", "/dir/a.txt"),
            ("a\\b", "/a/b"),
            ("/a/./b/", "/a/b"),
            ("", "/"),
            ("//x//y", "/x/y"),
            ("/a/b/..", "/a"),
            ("/a/..", "/"),
            ("c:/x", "/x"),
            ("/ünï côdé/名前", "/ünï côdé/名前"),
        ] {
            assert_eq!(normalize(input).expect(input), want, "{input}");
        }
        assert!(normalize("/..").is_err());
        assert!(normalize("a/../..").is_err());
        assert!(file("/").is_err());
        assert_eq!(folder("/").expect("root"), "");
        assert_eq!(folder("/a/").expect("a"), "/a");
    }

    #[test]
    fn stored_paths_with_climbing_or_odd_names_are_refused() {
        for ok in ["/a", "/a/b.txt", "/ünï/名前", "/.hidden/..x", &format!("/{}", "n".repeat(255))] {
            assert_eq!(check_stored(ok.as_bytes()), Ok(ok), "{ok}");
        }
        for (bad, why) in [
            (&b"/../../x"[..], Invalid::DotName),
            (b"/a/./b", Invalid::DotName),
            (b"/a/..", Invalid::DotName),
            (b"/", Invalid::EmptyName),
            (b"/a//b", Invalid::EmptyName),
            (b"/a/", Invalid::EmptyName),
            (b"a/b", Invalid::Relative),
            (b"", Invalid::Relative),
            (b"/a\0b", Invalid::BadByte),
            (b"/a\\..\\x", Invalid::BadByte),
            (b"/\xff", Invalid::NotUtf8),
        ] {
            assert_eq!(check_stored(bad), Err(why), "{bad:?}");
        }
        assert_eq!(check_stored(format!("/{}", "n".repeat(256)).as_bytes()), Err(Invalid::NameTooLong));
        assert_eq!(
            check_stored(format!("/{}", "a/".repeat(2100)).trim_end_matches('/').as_bytes()),
            Err(Invalid::PathTooLong)
        );
    }
}
