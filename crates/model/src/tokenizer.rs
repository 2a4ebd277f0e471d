//! Prompt tokenization: a `tokenizer.json` (Hugging Face `tokenizers` format) read once, then
//! prompts encoded to fixed-length ids and masks as transformers does for Wan
//! (`padding="max_length", truncation=True`, the end-of-sequence token kept on truncation).
//!
//! Works for umT5's Unigram tokenizer and for the word-level tokenizer shipped with vidfarm's
//! small model; either way it reports the prompt words that fell on the unknown token, so the
//! CLI can tell the user which words the model cannot see.

use std::path::Path;

use tokenizers::{PostProcessor, TruncationDirection};

use crate::checkpoint::io_error;
use crate::error::ModelError;

/// Unknown-token spellings tried in order (T5 / SentencePiece, then BERT-style word-level).
const UNKNOWN_TOKENS: [&str; 2] = ["<unk>", "[UNK]"];
/// Padding-token spellings tried when the file configures no padding.
const PAD_TOKENS: [&str; 2] = ["<pad>", "[PAD]"];

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
    unknown_id: Option<u32>,
    /// Tokens the post-processor adds to one sequence (`</s>` for T5).
    added_tokens: usize,
}

/// One prompt, padded or truncated to `max_len`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// 1 for tokens, 0 for padding.
    pub mask: Vec<u32>,
    /// Prompt words (as written) that contain the unknown token, in order, without repeats.
    pub unknown_words: Vec<String>,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(io_error(path, std::io::Error::from(std::io::ErrorKind::NotFound)));
        }
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let configured_pad = inner.get_padding().map(|p| p.pad_id);
        let pad_id = configured_pad
            .or_else(|| PAD_TOKENS.iter().find_map(|t| inner.token_to_id(t)))
            .ok_or_else(|| ModelError::Tokenizer(format!("{}: no padding token (<pad> or [PAD])", path.display())))?;
        let unknown_id = UNKNOWN_TOKENS.iter().find_map(|t| inner.token_to_id(t));
        let added_tokens = inner.get_post_processor().map_or(0, |p| p.added_tokens(false));
        // Truncation and padding are applied per call, to the caller's length.
        inner.with_truncation(None).map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        inner.with_padding(None);
        Ok(Self { inner, pad_id, unknown_id, added_tokens })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids and mask of exactly `max_len` entries: the prompt's tokens plus the special
    /// tokens the tokenizer appends (kept when the prompt is truncated), then padding.
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Encoded, ModelError> {
        if max_len == 0 {
            return Err(ModelError::InvalidInput("max_len must be positive".to_string()));
        }
        let mut encoding = self.inner.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let unknown_words = self.unknown_words(text, &encoding);
        encoding.truncate(max_len.saturating_sub(self.added_tokens), 0, TruncationDirection::Right);
        let encoding = self.inner.post_process(encoding, None, true).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        ids.truncate(max_len);
        let mut mask = vec![1; ids.len()];
        ids.resize(max_len, self.pad_id);
        mask.resize(max_len, 0);
        Ok(Encoded { ids, mask, unknown_words })
    }

    /// The words of `text` holding an unknown token, found through the encoding's word ids (or
    /// the token's own span when the pre-tokenizer gives none).
    fn unknown_words(&self, text: &str, encoding: &tokenizers::Encoding) -> Vec<String> {
        let Some(unknown_id) = self.unknown_id else {
            return Vec::new();
        };
        let mut words: Vec<String> = Vec::new();
        for (i, &id) in encoding.get_ids().iter().enumerate() {
            if id != unknown_id {
                continue;
            }
            let word_span = encoding.get_word_ids().get(i).copied().flatten().and_then(|w| encoding.word_to_chars(w, 0));
            let span = word_span.or_else(|| encoding.get_offsets().get(i).copied());
            let word = span.and_then(|(start, end)| text.get(start..end)).map(str::trim).unwrap_or_default();
            if !word.is_empty() && !words.iter().any(|w| w == word) {
                words.push(word.to_string());
            }
        }
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::fixture;

    #[derive(serde::Deserialize)]
    struct Expected {
        text: String,
        max_len: usize,
        ids: Vec<u32>,
        mask: Vec<u32>,
    }

    fn check_against_reference(name: &str) {
        let dir = fixture(name);
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).expect("tokenizer");
        let text = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json");
        let cases: Vec<Expected> = serde_json::from_str(&text).expect("expected.json");
        for case in cases {
            let encoded = tokenizer.encode(&case.text, case.max_len).expect("encode");
            assert_eq!((encoded.ids, encoded.mask), (case.ids, case.mask), "{name}: {:?}", case.text);
        }
    }

    #[test]
    fn word_level_matches_the_reference_library() {
        check_against_reference("tokenizer_words");
    }

    #[test]
    fn unigram_matches_the_reference_library() {
        check_against_reference("tokenizer_unigram");
    }

    #[test]
    fn reports_unknown_words_and_pads() {
        let tokenizer = Tokenizer::from_file(&fixture("tokenizer_words").join("tokenizer.json")).expect("tokenizer");
        let encoded = tokenizer.encode("A purple Zebra and a green unicorn, moving up; a zebra!", 20).expect("encode");
        assert_eq!(encoded.unknown_words, ["Zebra", "unicorn", "zebra"]);
        assert_eq!(encoded.ids.len(), 20);
        let tokens = encoded.mask.iter().filter(|&&m| m == 1).count();
        assert_eq!(tokens, 12); // 11 words and </s>
        assert!(encoded.ids[tokens..].iter().all(|&id| id == tokenizer.pad_id()));
        assert!(encoded.mask[tokens..].iter().all(|&m| m == 0));

        let known = tokenizer.encode("two red circles bouncing", 8).expect("encode");
        assert!(known.unknown_words.is_empty());

        let unigram = Tokenizer::from_file(&fixture("tokenizer_unigram").join("tokenizer.json")).expect("tokenizer");
        assert_eq!(unigram.encode("a red zebra", 16).expect("encode").unknown_words, ["zebra"]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let tokenizer = Tokenizer::from_file(&fixture("tokenizer_words").join("tokenizer.json")).expect("tokenizer");
        assert!(matches!(tokenizer.encode("a red circle", 0), Err(ModelError::InvalidInput(_))));
        let missing = Tokenizer::from_file(&fixture("tokenizer_words").join("missing.json"));
        assert!(matches!(missing, Err(ModelError::MissingFile { .. })));
    }
}
