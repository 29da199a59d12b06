//! Share codes: `<nameplate>-<word>-<word>-<word>`.
//!
//! The nameplate is a short random number naming the rendezvous; it is never derived
//! from the words. The three words come from the 2048-word BIP-39 English list, so the
//! password carries 33 bits. Parsing is forgiving about case, spaces and `skiff://` links.

use std::fmt;

use rand::Rng;

use crate::ProtoError;

/// Number of secret words in a code.
pub const WORDS: usize = 3;
/// URL scheme of share links.
pub const LINK_SCHEME: &str = "skiff://";

/// The word list: 2048 words, unique in their first four letters.
pub fn wordlist() -> &'static [&'static str; 2048] {
    bip39::Language::English.word_list()
}

/// A parsed share code.
#[derive(Clone, PartialEq, Eq)]
pub struct ShareCode {
    nameplate: String,
    words: [&'static str; WORDS],
}

impl fmt::Debug for ShareCode {
    // The words are the secret: never print them by accident.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShareCode({}-***)", self.nameplate)
    }
}

impl ShareCode {
    /// A fresh code for `nameplate` with random words.
    pub fn generate(nameplate: &str, rng: &mut impl Rng) -> Result<Self, ProtoError> {
        check_nameplate(nameplate)?;
        let list = wordlist();
        let words = [0; WORDS].map(|_| list[rng.gen_range(0..list.len())]);
        Ok(Self {
            nameplate: nameplate.to_owned(),
            words,
        })
    }

    /// A random nameplate for codes that need no server (direct connections).
    pub fn random_nameplate(rng: &mut impl Rng) -> String {
        rng.gen_range(1..1000u32).to_string()
    }

    /// Parses `42-river-olive-kitten`, `42 River Olive Kitten`, `skiff://42-river-olive-kitten`,
    /// or a chat message that contains one of these.
    pub fn parse(input: &str) -> Result<Self, ProtoError> {
        let text = input.trim();
        let text = match text.find(LINK_SCHEME) {
            Some(at) => &text[at + LINK_SCHEME.len()..],
            None => text,
        };
        let tokens: Vec<String> = text
            .split(|c: char| c == '-' || c.is_whitespace() || c == '/')
            .filter(|t| !t.is_empty())
            .map(|t| t.to_lowercase())
            .collect();
        let Some(start) = tokens
            .iter()
            .position(|t| t.chars().all(|c| c.is_ascii_digit()))
        else {
            return Err(bad(
                "a code starts with a number, like 42-river-olive-kitten",
            ));
        };
        let nameplate = tokens[start].clone();
        check_nameplate(&nameplate)?;
        let rest = &tokens[start + 1..];
        if rest.len() < WORDS {
            return Err(bad(
                "a code is a number and three words, like 42-river-olive-kitten",
            ));
        }
        let list = wordlist();
        let mut words = [""; WORDS];
        for (slot, token) in words.iter_mut().zip(rest) {
            let token = token.trim_matches(|c: char| !c.is_alphanumeric());
            let index = bip39::Language::English
                .find_word(token)
                .ok_or_else(|| bad(format!("\"{token}\" is not one of the code words")))?;
            *slot = list[usize::from(index)];
        }
        Ok(Self { nameplate, words })
    }

    pub fn nameplate(&self) -> &str {
        &self.nameplate
    }

    /// The secret part fed into SPAKE2 (never sent anywhere).
    pub fn password(&self) -> String {
        self.words.join("-")
    }

    /// A `skiff://` link holding the code.
    pub fn link(&self) -> String {
        format!("{LINK_SCHEME}{self}")
    }
}

impl fmt::Display for ShareCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.nameplate, self.words.join("-"))
    }
}

fn check_nameplate(nameplate: &str) -> Result<(), ProtoError> {
    let ok = !nameplate.is_empty()
        && nameplate.len() <= 9
        && nameplate.bytes().all(|b| b.is_ascii_digit())
        && !nameplate.starts_with('0');
    if ok {
        Ok(())
    } else {
        Err(bad("the number at the start of a code has 1 to 9 digits"))
    }
}

fn bad(reason: impl Into<String>) -> ProtoError {
    ProtoError::BadCode {
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_code_round_trips() {
        let mut rng = rand::thread_rng();
        let code = ShareCode::generate("42", &mut rng).unwrap();
        let parsed = ShareCode::parse(&code.to_string()).unwrap();
        assert_eq!(parsed, code);
        assert_eq!(ShareCode::parse(&code.link()).unwrap(), code);
    }

    #[test]
    fn parse_is_forgiving_about_form() {
        let want = ShareCode::parse("42-river-olive-kitten").unwrap();
        for form in [
            "42 river olive kitten",
            "  42-River-Olive-Kitten\n",
            "skiff://42-river-olive-kitten",
            "here is the code: 42-river-olive-kitten, thanks",
        ] {
            assert_eq!(ShareCode::parse(form).unwrap(), want, "{form}");
        }
        assert_eq!(want.password(), "river-olive-kitten");
        assert_eq!(want.nameplate(), "42");
    }

    #[test]
    fn parse_rejects_malformed_codes() {
        for form in [
            "",
            "river-olive-kayak",
            "42-river-olive",
            "42-river-olive-notaword",
            "0-river-olive-kayak",
            "1234567890-river-olive-kayak",
        ] {
            assert!(
                matches!(ShareCode::parse(form), Err(ProtoError::BadCode { .. })),
                "{form}"
            );
        }
    }

    #[test]
    fn debug_hides_the_words() {
        let code = ShareCode::parse("42-river-olive-kitten").unwrap();
        assert!(!format!("{code:?}").contains("river"));
    }

    #[test]
    fn nameplates_are_independent_of_the_secret() {
        // The nameplate is chosen before and apart from the words: same words, any nameplate.
        let mut rng = rand::thread_rng();
        let a = ShareCode::generate("7", &mut rng).unwrap();
        let b = ShareCode::parse(&format!("913-{}", a.password())).unwrap();
        assert_eq!(a.password(), b.password());
        assert_ne!(a.nameplate(), b.nameplate());
        let nameplates: std::collections::HashSet<_> = (0..200)
            .map(|_| ShareCode::random_nameplate(&mut rng))
            .collect();
        assert!(nameplates.len() > 100);
    }
}
