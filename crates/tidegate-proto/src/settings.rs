//! Rules on connection settings that both ends check: the control plane when a connection is
//! saved (so bad input is refused at once, with a 400), the gateway when it opens one (so a
//! control plane of another version cannot make it write elsewhere).

/// Why a storage prefix (the `prefix` setting of an object-storage target) is refused, or
/// `None` if it is a clean relative path.
///
/// Refused: backslashes, empty segments (`a//b`), `.` and `..` segments and control
/// characters, so that a prefix can never point outside its bucket or directory, nor mean one
/// thing to one store and another to the next. The empty prefix is the root of the target.
///
/// ```
/// use tidegate_proto::storage_prefix_problem;
///
/// assert_eq!(storage_prefix_problem("landing/shop"), None);
/// assert!(storage_prefix_problem("landing/../other-tenant").is_some());
/// ```
pub fn storage_prefix_problem(prefix: &str) -> Option<&'static str> {
    if prefix.contains('\\') {
        return Some("the prefix contains a backslash");
    }
    if prefix.is_empty() {
        return None;
    }
    prefix.split('/').find_map(|segment| match segment {
        "" => Some("the prefix has an empty segment (`//`) or starts or ends with `/`"),
        "." | ".." => Some("the prefix has a `.` or `..` segment"),
        _ if segment.chars().any(char::is_control) => {
            Some("the prefix contains a control character")
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::storage_prefix_problem;

    #[test]
    fn prefixes_that_could_escape_are_refused() {
        for bad in [
            "a/../b", "..", "./a", "a//b", "a\\b", "a/\u{7}b", "/a", "a/", "a/.",
        ] {
            assert!(storage_prefix_problem(bad).is_some(), "{bad:?}");
        }
        for good in ["", "a", "a/b", "año/数据", "a..b", ".hidden", "a b"] {
            assert_eq!(storage_prefix_problem(good), None, "{good:?}");
        }
    }
}
