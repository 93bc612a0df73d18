//! What the node driving a request needs to know about a model: its shape, tokenizer and chat
//! template. Reading it loads no weights.

use std::path::{Path, PathBuf};

use crate::{
    chat_template::{ChatMessage, ChatTemplate},
    error::Result,
    models,
    source::Source,
    spec::Spec,
    tokenizer::TextTokenizer,
};

pub struct ModelInfo {
    /// The name requests use: the GGUF file's stem or the safetensors directory's name.
    pub id: String,
    pub path: PathBuf,
    pub spec: Spec,
    pub weight_bytes: u64,
    /// Bytes of each layer (experts included), for the ring's memory weighting; empty when not
    /// all weight files are here.
    pub layer_bytes: Vec<u64>,
    pub tokenizer: TextTokenizer,
    pub chat: ChatTemplate,
}

/// The default id of a model at `path`.
pub fn model_id(path: &Path) -> String {
    let name = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    name.map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_else(|| "model".into())
}

impl ModelInfo {
    pub fn load(path: &Path) -> Result<Self> {
        let src = Source::open(path)?;
        Self::from_source(&src)
    }

    pub fn from_source(src: &Source) -> Result<Self> {
        let spec = models::spec(src)?;
        let tokenizer = TextTokenizer::from_source(src)?;
        let template = if src.is_gguf() {
            src.meta_str_opt("tokenizer.chat_template")
        } else {
            read_hf_chat_template(src.path())
        };
        let text = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
        let bos = text(tokenizer.bos());
        let eos = text(tokenizer.eog_ids().first().copied());
        let chat = ChatTemplate::new(template, &spec.arch, bos, eos)?;
        Ok(Self {
            id: model_id(src.path()),
            path: src.path().to_path_buf(),
            weight_bytes: src.weight_bytes(),
            layer_bytes: src.layer_bytes(spec.hp.n_layers),
            spec,
            tokenizer,
            chat,
        })
    }

    pub fn n_layers(&self) -> u32 {
        self.spec.hp.n_layers as u32
    }

    pub fn context_length(&self) -> usize {
        self.spec.hp.context_length
    }

    /// Token ids of a plain prompt (BOS added when the model wants it).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, true)
    }

    /// Token ids of a conversation rendered through the chat template, ready for the
    /// assistant's reply.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.encode_chat_with_tools(messages, &[])
    }

    /// [`Self::encode_chat`] with tool definitions (OpenAI's `tools` entries).
    pub fn encode_chat_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
    ) -> Result<Vec<u32>> {
        let text = self.chat.render_with_tools(messages, tools, true)?;
        // Templates that write the BOS token themselves must not get a second one.
        let bos = self.chat.bos_token();
        let add_bos = bos.is_empty() || !text.starts_with(bos);
        self.tokenizer.encode(&text, add_bos)
    }
}

/// `chat_template` from tokenizer_config.json (or chat_template.jinja) of a Hugging Face model.
fn read_hf_chat_template(dir: &Path) -> Option<String> {
    if let Ok(t) = std::fs::read_to_string(dir.join("chat_template.jinja")) {
        return Some(t);
    }
    let cfg = std::fs::read(dir.join("tokenizer_config.json")).ok()?;
    let cfg: serde_json::Value = serde_json::from_slice(&cfg).ok()?;
    cfg["chat_template"].as_str().map(str::to_string)
}
