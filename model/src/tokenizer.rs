//! Text to token ids and back, with the `tokenizers` crate.

use tern_loader::{MetaValue, ModelSource};
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::{Error, Result};

/// Llama 3's pattern (GGUF pre-tokenizer "llama-bpe").
const LLAMA3: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pattern (GGUF pre-tokenizer "qwen2").
const QWEN2: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A model's tokenizer and its special token ids.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Ids that end generation (the end-of-sequence token and end-of-turn tokens such as `<|im_end|>`).
    pub stop_ids: Vec<u32>,
    /// Whether a BOS token starts every prompt.
    pub add_bos: bool,
}

fn tk_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

fn split(pattern: &str) -> Result<PreTokenizerWrapper> {
    let s = Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false).map_err(tk_err)?;
    Ok(s.into())
}

impl Tokenizer {
    /// The tokenizer of `src`: `tokenizer.json` for a Hugging Face model, GGUF metadata otherwise.
    pub fn from_source(src: &ModelSource) -> Result<Self> {
        let m = src.metadata();
        let id = |key: &str| m.get(key).and_then(MetaValue::as_u64).map(|v| v as u32);
        let (inner, add_bos) = match src.tokenizer_json() {
            Some(json) => (tokenizers::Tokenizer::from_bytes(json).map_err(tk_err)?, false),
            None => (Self::from_gguf(src)?, m.get("tokenizer.ggml.add_bos_token").is_some_and(|v| *v == MetaValue::Bool(true))),
        };
        let (bos, eos) = (id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id"));
        let mut stop_ids: Vec<u32> = eos.into_iter().collect();
        for name in ["<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>"] {
            if let Some(t) = inner.token_to_id(name)
                && !stop_ids.contains(&t)
            {
                stop_ids.push(t);
            }
        }
        Ok(Tokenizer { inner, bos, eos, stop_ids, add_bos })
    }

    fn from_gguf(src: &ModelSource) -> Result<tokenizers::Tokenizer> {
        let m = src.metadata();
        let model = m.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "{}: tokenizer model {model:?} is not supported yet (tern reads GGUF's \"gpt2\" BPE tokenizers, or tokenizer.json)",
                m.path
            )));
        }
        let tokens = m.strings("tokenizer.ggml.tokens")?;
        let merges = m.strings("tokenizer.ggml.merges")?;
        let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let merges = merges
            .iter()
            .map(|s| {
                s.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::Tokenizer(format!("{}: merge {s:?} is not two tokens", m.path)))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(tk_err)?;
        let mut tk = tokenizers::Tokenizer::new(bpe);
        let pre = m.get("tokenizer.ggml.pre").map(|_| m.str("tokenizer.ggml.pre")).transpose()?.unwrap_or("default");
        // With `regex` on, the byte-level step first splits with GPT-2's pattern, which "gpt2" and (after the
        // digit split) "smollm" and "starcoder" use.
        let byte_level =
            |regex| PreTokenizerWrapper::from(tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, regex));
        let steps: Vec<PreTokenizerWrapper> = match pre {
            "default" | "gpt2" | "gpt-2" => vec![byte_level(true)],
            "smollm" | "starcoder" | "refact" | "codeshell" => {
                vec![Digits::new(true).into(), byte_level(true)]
            }
            "llama-bpe" | "llama3" | "dbrx" | "smaug-bpe" => {
                vec![split(LLAMA3)?, byte_level(false)]
            }
            "qwen2" => vec![split(QWEN2)?, byte_level(false)],
            other => {
                return Err(Error::Tokenizer(format!(
                    "{}: pre-tokenizer {other:?} is not supported yet (tern knows gpt2, smollm, starcoder, llama-bpe, qwen2)",
                    m.path
                )));
            }
        };
        tk.with_pre_tokenizer(Some(Sequence::new(steps)));
        tk.with_decoder(Some(ByteLevel::default()));
        // Control tokens (GGUF token type 3) are matched whole in text, like the chat template's markers.
        if let Ok(types) = m.array("tokenizer.ggml.token_type") {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| t.as_u64() == Some(3))
                .map(|(_, s)| AddedToken::from(s.to_string(), true))
                .collect();
            tk.add_special_tokens(&special);
        }
        Ok(tk)
    }

    /// Token ids of `text`, with BOS first when the model asks for it. Special-token markers in `text` (such as
    /// `<|im_start|>`) become their single ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tk_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tk_err)
    }

    /// The token string of `id` (as the vocabulary spells it).
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of token string `token`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Incremental detokenization: feed ids one at a time, get text only once it is whole UTF-8.
///
/// It decodes a short window of recent ids twice (with and without the newest) and emits the difference, so
/// multi-byte characters split across tokens come out whole, and tokenizers whose decoding of a token depends
/// on its neighbours (leading-space rules) come out right.
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl TextStream {
    /// A stream with no text yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id`; returns the text that became complete.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let after = tokenizer.decode(&self.ids[self.prefix..])?;
        if after.len() > before.len() && !after.ends_with('\u{fffd}') && after.is_char_boundary(before.len()) {
            let text = after[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(text)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back (an incomplete character at the end of generation), lossily.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let after = tokenizer.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(after.get(before.len()..).unwrap_or("").to_string())
    }
}
