//! Hyperdrive's path normalisation (`unix-path-resolve('/', name)`): absolute, `/` and `\` both
//! separate, empty and `.` components vanish, `..` pops and may not climb above the root, no
//! trailing slash.

use crate::{Error, Result};

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
}
