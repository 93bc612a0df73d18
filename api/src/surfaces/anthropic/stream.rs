//! Anthropic's stream: named events. A text block opens with the first text; each tool call is
//! a `tool_use` block whose input arrives as one `input_json_delta`.

use axum::response::sse::Event as SseEvent;
use serde_json::{json, Value};

use crate::core::chat::{FinishReason, ToolCall};
use crate::core::framing::Frames;
use crate::core::generate::Usage;
use crate::error::ApiError;
use crate::surfaces::anthropic::{render, stop_reason};

pub struct MessageFrames {
    id: String,
    model: String,
    prompt_tokens: usize,
    /// Index of the open text block, if one is open.
    text_block: Option<usize>,
    blocks: usize,
}

fn event(name: &str, data: Value) -> SseEvent {
    SseEvent::default().event(name).data(data.to_string())
}

impl MessageFrames {
    pub fn new(id: String, model: String, prompt_tokens: usize) -> Self {
        MessageFrames {
            id,
            model,
            prompt_tokens,
            text_block: None,
            blocks: 0,
        }
    }

    fn close_text(&mut self, out: &mut Vec<SseEvent>) {
        if let Some(index) = self.text_block.take() {
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }
}

impl Frames for MessageFrames {
    type Frame = SseEvent;

    fn start(&mut self) -> Vec<SseEvent> {
        vec![
            event(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": self.prompt_tokens, "output_tokens": 0},
                }}),
            ),
            event("ping", json!({"type": "ping"})),
        ]
    }

    fn text(&mut self, text: &str) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let index = match self.text_block {
            Some(i) => i,
            None => {
                let i = self.blocks;
                self.blocks += 1;
                self.text_block = Some(i);
                out.push(event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": i,
                           "content_block": {"type": "text", "text": ""}}),
                ));
                i
            }
        };
        out.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index,
                   "delta": {"type": "text_delta", "text": text}}),
        ));
        out
    }

    fn done(&mut self, reason: FinishReason, usage: Usage, calls: &[ToolCall]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        self.close_text(&mut out);
        for call in calls {
            let index = self.blocks;
            self.blocks += 1;
            out.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": index,
                       "content_block": {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}}),
            ));
            out.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                       "delta": {"type": "input_json_delta", "partial_json": call.arguments_value().to_string()}}),
            ));
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
        out.push(event(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason(reason), "stop_sequence": null},
                   "usage": {"output_tokens": usage.completion_tokens}}),
        ));
        out.push(event("message_stop", json!({"type": "message_stop"})));
        out
    }

    fn failed(&mut self, error: &ApiError) -> Vec<SseEvent> {
        vec![event("error", render(error))]
    }
}
