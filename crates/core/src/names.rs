//! The receiver's one set of path-sanitizing functions, plus escaping of untrusted names
//! for display in a terminal.
//!
//! Owns: turning a sender's wire path into safe components, collision numbering, display escaping.
//! Must not: touch the file system; callers join the components under the download dir.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use unicode_normalization::UnicodeNormalization;

use crate::{Error, Result};

/// Most components a wire path may have.
pub const MAX_DEPTH: usize = 32;
/// Longest raw wire path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 16384;
/// Longest raw path component accepted, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 4096;
/// Longest sanitized name, in UTF-8 bytes and in UTF-16 code units.
pub const MAX_NAME_LEN: usize = 255;
/// Longest extension (with its dot) that truncation keeps.
const MAX_EXT_BYTES: usize = 32;
const COMPOUND_EXTS: [&str; 4] = [".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst"];
const RESERVED: [&str; 6] = ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"];

/// Validates a `/`-separated wire path and returns its sanitized components.
///
/// Refuses (with [`Error::BadPath`]) absolute, drive-letter and UNC paths, empty, `.` and `..`
/// components, NUL bytes, more than [`MAX_DEPTH`] components and over-long paths.
pub fn sanitize_path(raw: &str) -> Result<Vec<String>> {
    let refuse = |reason: &'static str| {
        // Cap what goes into the message: the raw path may be up to the frame size.
        let path = shorten_middle(raw, 512);
        Err(Error::BadPath { path, reason })
    };
    if raw.len() > MAX_PATH_BYTES || raw.split('/').any(|c| c.len() > MAX_COMPONENT_BYTES) {
        return refuse("too long");
    }
    if raw.contains('\0') {
        return refuse("NUL byte");
    }
    let path: String = raw.nfc().collect();
    if path.starts_with('/') {
        return refuse("absolute path");
    }
    let mut chars = path.chars();
    if matches!((chars.next(), chars.next()), (Some(c), Some(':')) if c.is_ascii_alphabetic()) {
        return refuse("drive letter");
    }
    if path.split('/').any(|c| c.starts_with("\\\\")) {
        return refuse("UNC path");
    }
    if path.starts_with('\\') {
        return refuse("absolute path");
    }
    let components: Vec<&str> = path.split('/').collect();
    if components.len() > MAX_DEPTH {
        return refuse("too deep");
    }
    for c in &components {
        match *c {
            "" => return refuse("empty component"),
            "." => return refuse("`.` component"),
            ".." => return refuse("`..` component"),
            _ => {}
        }
    }
    Ok(components.into_iter().map(sanitize_component).collect())
}

/// Makes one name safe to create on any common file system. Idempotent; never fails.
pub fn sanitize_component(raw: &str) -> String {
    let mapped: String = raw
        .nfc()
        .map(|c| if is_forbidden(c) { '_' } else { c })
        .collect();
    let mut name = strip_trailing(&truncate_keep_ext(strip_trailing(&mapped))).to_owned();
    if is_reserved(&name) {
        // The `_` survives truncation, so the result can never be reserved again.
        name = strip_trailing(&truncate_keep_ext(&format!("_{name}"))).to_owned();
    }
    if name.is_empty() {
        name.push('_');
    }
    name
}

/// `name` with a collision number: `report.pdf`, 1 → `report (1).pdf`; stays within 255.
pub fn numbered(name: &str, n: u32) -> String {
    let (stem, ext) = split_ext(name);
    let suffix = format!(" ({n}){ext}");
    let room = |used: usize| MAX_NAME_LEN.saturating_sub(used);
    let stem = fit_prefix(
        stem,
        room(suffix.len()),
        room(suffix.encode_utf16().count()),
    );
    format!("{stem}{suffix}")
}

/// Hands out names that are unique case-insensitively (Unicode lowercase of the NFC form).
#[derive(Debug, Default)]
pub struct NameDeduper {
    taken: HashSet<String>,
    /// Next number to try per original name key, so repeated names stay linear.
    next: HashMap<String, u32>,
}

impl NameDeduper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `name` as taken without returning it (e.g. a file already on disk).
    pub fn reserve(&mut self, name: &str) {
        self.taken.insert(fold(name));
    }

    /// `name` itself if still free, else the first free `numbered(name, n)`.
    pub fn unique(&mut self, name: &str) -> String {
        let key = fold(name);
        if !self.taken.contains(&key) {
            self.taken.insert(key);
            return name.to_owned();
        }
        let mut n = self.next.get(&key).copied().unwrap_or(1);
        loop {
            let candidate = numbered(name, n);
            n = n.checked_add(1).unwrap_or(1);
            if self.taken.insert(fold(&candidate)) {
                self.next.insert(key, n);
                return candidate;
            }
        }
    }
}

/// Escapes controls, bidi and zero-width characters as `\u{..}` for terminal display.
pub fn display_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_invisible_or_control(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// Shortens `s` to at most `max_chars` chars with a `…` in the middle, keeping the extension.
pub fn shorten_middle(s: &str, max_chars: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= max_chars {
        return s.to_owned();
    }
    let Some(budget) = max_chars.checked_sub(1) else {
        return String::new();
    };
    let ext_chars = split_ext(s).1.chars().count();
    let mut tail = budget - budget / 2;
    if ext_chars > tail && ext_chars < budget {
        tail = ext_chars;
    }
    let head = budget - tail;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// C0 controls, DEL, C1 controls, bidi controls and zero-width characters.
fn is_invisible_or_control(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{61c}')
        || matches!(c, '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}')
}

fn is_forbidden(c: char) -> bool {
    matches!(c, '\\' | '<' | '>' | ':' | '"' | '|' | '?' | '*' | '/') || is_invisible_or_control(c)
}

fn strip_trailing(s: &str) -> &str {
    s.trim_end_matches(['.', ' '])
}

/// Windows device names, also with any extension: the stem before the first dot counts.
fn is_reserved(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(stem)) {
        return true;
    }
    let (Some(kind), Some(digit)) = (stem.get(..3), stem.get(3..)) else {
        return false;
    };
    let digit_ok = matches!(digit.as_bytes(), [b'0'..=b'9']) || matches!(digit, "¹" | "²" | "³");
    (kind.eq_ignore_ascii_case("COM") || kind.eq_ignore_ascii_case("LPT")) && digit_ok
}

fn fold(name: &str) -> String {
    name.nfc().collect::<String>().to_lowercase()
}

fn fits(s: &str) -> bool {
    s.len() <= MAX_NAME_LEN && s.encode_utf16().count() <= MAX_NAME_LEN
}

/// Longest prefix of `s` at a char boundary within both limits.
fn fit_prefix(s: &str, max_bytes: usize, max_units: usize) -> &str {
    let (mut bytes, mut units) = (0, 0);
    for (i, c) in s.char_indices() {
        bytes += c.len_utf8();
        units += c.len_utf16();
        if bytes > max_bytes || units > max_units {
            return &s[..i];
        }
    }
    s
}

/// Splits off the last `.ext` (not a leading dot, at most 32 bytes).
fn split_last_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 && name.len() - i <= MAX_EXT_BYTES => name.split_at(i),
        _ => (name, ""),
    }
}

/// Like [`split_last_ext`], but `.tar.gz` and friends count as one extension.
fn split_ext(name: &str) -> (&str, &str) {
    for ext in COMPOUND_EXTS {
        let at = name.len().saturating_sub(ext.len());
        if at > 0 && name.get(at..).is_some_and(|t| t.eq_ignore_ascii_case(ext)) {
            return name.split_at(at);
        }
    }
    split_last_ext(name)
}

fn truncate_keep_ext(name: &str) -> String {
    if fits(name) {
        return name.to_owned();
    }
    let (stem, ext) = split_last_ext(name);
    let units = ext.encode_utf16().count();
    let stem = fit_prefix(stem, MAX_NAME_LEN - ext.len(), MAX_NAME_LEN - units);
    format!("{stem}{ext}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use unicode_normalization::is_nfc;

    fn reason(raw: &str) -> &'static str {
        match sanitize_path(raw) {
            Err(Error::BadPath { reason, .. }) => reason,
            other => panic!("{raw:?} not refused: {other:?}"),
        }
    }

    fn units(s: &str) -> usize {
        s.encode_utf16().count()
    }

    /// Deterministic nasty names: ASCII, controls, bidi, dots, spaces, multibyte, reserved.
    fn generated() -> Vec<String> {
        const PIECES: &str = "a~Z~é~e\u{301}~\u{301}~\u{1}~\u{1b}[1A~\u{7f}~\u{85}~\0~\u{202e}~\
            \u{2066}~\u{200f}~\u{200b}~\u{feff}~.~. ~ ~..~/~\\~:~?*~CON~nul~Com1~lpt9~CONIN$~😀~中~ẞ~\
            .txt~.tar.gz~x";
        let pieces: Vec<&str> = PIECES.split('~').collect();
        let mut state: u64 = 0x5eed_f00d;
        let mut next = move |m: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % m as u64) as usize
        };
        (0..2000)
            .map(|i| {
                let len = next(8) + usize::from(i % 10 == 0) * (100 + next(200));
                (0..len).map(|_| pieces[next(pieces.len())]).collect()
            })
            .collect()
    }

    fn nasty() -> Vec<String> {
        let fixed = "~.~..~...~ ~. .~CON~con.~CON .txt~nul.txt~com1.tar.gz~LPT¹~CONOUT$.log~_CON~\
            a<b>c~\u{202E}gpj.exe~name. . ~\u{1}~e\u{301}~.bashrc";
        let mut v: Vec<String> = fixed.split('~').map(String::from).collect();
        v.push(format!("CON{}x.txt", " ".repeat(400)));
        v.push(format!("{}.txt", "😀".repeat(70)));
        v.push(format!("{}.{}", "a".repeat(300), "b".repeat(40)));
        v.push(format!("{}. . .", "é".repeat(200)));
        v.extend(generated());
        v
    }

    #[test]
    fn sanitizes_documented_examples() {
        for (raw, want) in [
            ("CON", "_CON"),
            ("nul.txt", "_nul.txt"),
            ("com1.tar.gz", "_com1.tar.gz"),
            ("conin$", "_conin$"),
            ("CON .txt", "_CON .txt"),
            ("a<b>c", "a_b_c"),
            ("what?.txt", "what_.txt"),
            ("\u{1}", "_"),
            ("\u{202E}gpj.exe", "_gpj.exe"),
            ("name. . ", "name"),
            ("a\\b/c|d\"e*f:g", "a_b_c_d_e_f_g"),
            ("zero\u{200b}width\u{feff}", "zero_width_"),
            (".", "_"),
            ("..", "_"),
            (". . .", "_"),
            ("", "_"),
            (".bashrc", ".bashrc"),
            ("COM10", "COM10"),
            ("CONSOLE.txt", "CONSOLE.txt"),
        ] {
            assert_eq!(sanitize_component(raw), want, "input {raw:?}");
        }
    }

    #[test]
    fn normalizes_to_nfc() {
        assert_eq!(sanitize_component("e\u{301}"), "é");
        assert_eq!(
            sanitize_path("cafe\u{301}/x").ok(),
            Some(vec!["café".into(), "x".into()])
        );
    }

    #[test]
    fn truncates_keeping_extension() {
        let out = sanitize_component(&format!("{}.txt", "😀".repeat(70)));
        assert!(out.len() <= 255 && units(&out) <= 255 && out.ends_with(".txt"));
        assert_eq!(out, format!("{}.txt", "😀".repeat(62)));
        let out = sanitize_component(&format!("{}.pdf", "a".repeat(300)));
        assert_eq!(out, format!("{}.pdf", "a".repeat(251)));
        let long_ext = sanitize_component(&format!("a.{}", "b".repeat(300)));
        assert_eq!(long_ext.len(), 255);
    }

    #[test]
    fn respects_utf16_limit_with_astral_chars() {
        for raw in [
            format!("{}.md", "𝄞".repeat(200)),
            "𝄞a".repeat(100),
            "中".repeat(300),
        ] {
            let out = sanitize_component(&raw);
            assert!(out.len() <= 255 && units(&out) <= 255, "{raw:?}");
        }
    }

    #[test]
    fn sanitize_is_idempotent() {
        let inputs = nasty();
        assert!(inputs.iter().filter(|raw| raw.len() > 255).count() > 100);
        for raw in inputs {
            let once = sanitize_component(&raw);
            assert_eq!(sanitize_component(&once), once, "input {raw:?}");
            assert!(
                !once.contains(['/', '\\', '\0']) && !is_reserved(&once),
                "{once:?}"
            );
            assert!(!once.is_empty() && once != "." && once != ".." && fits(&once));
            assert!(!once.ends_with(['.', ' ']) && is_nfc(&once), "{once:?}");
            assert!(!once.chars().any(is_invisible_or_control), "{once:?}");
        }
    }

    #[test]
    fn accepts_and_sanitizes_relative_paths() {
        let got = sanitize_path("photos/CON/b?.txt").ok();
        assert_eq!(
            got,
            Some(vec!["photos".into(), "_CON".into(), "b_.txt".into()])
        );
        assert!(sanitize_path(&vec!["d"; MAX_DEPTH].join("/")).is_ok());
        assert!(sanitize_path(&"a".repeat(MAX_COMPONENT_BYTES)).is_ok());
    }

    #[test]
    fn refuses_absolute_drive_and_unc_paths() {
        assert_eq!(reason("/etc/passwd"), "absolute path");
        assert_eq!(reason("\\Windows"), "absolute path");
        assert_eq!(reason("C:/x"), "drive letter");
        assert_eq!(reason("z:evil"), "drive letter");
        assert_eq!(reason("\\\\server\\share"), "UNC path");
        assert_eq!(reason("a/\\\\?\\C:\\x"), "UNC path");
    }

    #[test]
    fn refuses_parent_components() {
        assert_eq!(reason(".."), "`..` component");
        assert_eq!(reason("a/../../b"), "`..` component");
        assert_eq!(reason("a/.."), "`..` component");
    }

    #[test]
    fn refuses_dot_and_empty_components() {
        assert_eq!(reason("./a"), "`.` component");
        assert_eq!(reason("a//b"), "empty component");
        assert_eq!(reason("a/"), "empty component");
        assert_eq!(reason(""), "empty component");
    }

    #[test]
    fn refuses_nul_depth_and_length() {
        assert_eq!(reason("a\0b"), "NUL byte");
        assert_eq!(reason(&vec!["d"; MAX_DEPTH + 1].join("/")), "too deep");
        assert_eq!(reason(&"a".repeat(MAX_COMPONENT_BYTES + 1)), "too long");
        assert_eq!(reason(&vec!["a".repeat(1000); 17].join("/")), "too long");
    }

    #[test]
    fn numbers_before_the_extension() {
        assert_eq!(numbered("report.pdf", 1), "report (1).pdf");
        assert_eq!(numbered("photos", 2), "photos (2)");
        assert_eq!(numbered("archive.tar.gz", 1), "archive (1).tar.gz");
        assert_eq!(numbered("b.TAR.ZST", 3), "b (3).TAR.ZST");
        assert_eq!(numbered(".bashrc", 1), ".bashrc (1)");
        assert_eq!(numbered(".tar.gz", 1), ".tar (1).gz");
        let long = numbered(&format!("{}.txt", "é".repeat(200)), 12);
        assert!(long.len() <= 255 && long.ends_with("é (12).txt"));
        assert_eq!(sanitize_component(&long), long);
    }

    #[test]
    fn dedupes_case_insensitively() {
        let mut d = NameDeduper::new();
        assert_eq!(d.unique("x.txt"), "x.txt");
        assert_eq!(d.unique("X.TXT"), "X (1).TXT");
        assert_eq!(d.unique("x.txt"), "x (2).txt");
        assert_eq!(d.unique("caf\u{e9}"), "café");
        assert_eq!(d.unique("CAFE\u{301}"), "CAFE\u{301} (1)");
    }

    #[test]
    fn dedupe_never_repeats_generated_or_reserved_names() {
        let mut d = NameDeduper::new();
        d.reserve("A.txt");
        assert_eq!(d.unique("a (1).txt"), "a (1).txt");
        assert_eq!(d.unique("a.txt"), "a (2).txt");
        assert_eq!(d.unique("a (2).TXT"), "a (2) (1).TXT");
        let mut seen = HashSet::new();
        for _ in 0..50 {
            assert!(seen.insert(fold(&d.unique(&"q".repeat(255)))));
        }
    }

    #[test]
    fn escapes_terminal_controls() {
        assert_eq!(display_escape("\u{1b}[1A\r"), "\\u{1b}[1A\\u{d}");
        assert_eq!(display_escape("\u{202e}gpj.exe"), "\\u{202e}gpj.exe");
        assert_eq!(
            display_escape("a\0\u{7f}\u{85}\u{200b}\u{feff}"),
            "a\\u{0}\\u{7f}\\u{85}\\u{200b}\\u{feff}"
        );
        assert_eq!(display_escape("plain é 😀 <>?"), "plain é 😀 <>?");
    }

    #[test]
    fn shortens_in_the_middle_keeping_extension() {
        let out = shorten_middle("a_very_long_file_name_indeed.tar.gz", 20);
        assert_eq!(out, "a_very_lo…eed.tar.gz");
        assert_eq!(shorten_middle("short.txt", 20), "short.txt");
        let ext = shorten_middle(&format!("{}.verylongextension", "x".repeat(30)), 22);
        assert_eq!(ext, "xxx….verylongextension");
        assert_eq!(shorten_middle(&"😀".repeat(30), 5), "😀😀…😀😀");
        assert_eq!(shorten_middle("abcdef", 1), "…");
        assert_eq!(shorten_middle("abcdef", 0), "");
    }
}
