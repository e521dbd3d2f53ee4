"""Messages -> prompt text: the model's chat template or the configured template of a model without one."""
from __future__ import annotations

# Chat templates add role markers (and, for Qwen2.5-Instruct, a default system line) around messages.
TEMPLATE_TOKENS_PER_MESSAGE = 64


def render_template(messages: list[dict], template: dict) -> str:
    """A conversation as one string for a model without a chat template (configuration/chat.json)."""
    text = "".join(template[m["role"]].replace("{content}", m["content"]) for m in messages)
    return text + template.get("generation_prompt", "")


def prompt_text(params, tokenizer, rendering: dict) -> str:
    """The text the model continues: a raw prompt as given, else the rendered conversation."""
    if params["text"] is not None:
        return params["text"]
    if rendering["rendering"] == "chat_template":
        return tokenizer.apply_chat_template(params["messages"], add_generation_prompt=True, tokenize=False)
    return render_template(params["messages"], rendering["template"])


def prompt_token_bound(params) -> int:
    """An upper bound of a request's prompt tokens before tokenising it: byte-level BPE never makes
    more tokens than UTF-8 bytes, plus room for the template's markers around each message."""
    if params["text"] is not None:
        return len(params["text"].encode())
    return sum(len(m["content"].encode()) + TEMPLATE_TOKENS_PER_MESSAGE for m in params["messages"]) \
        + TEMPLATE_TOKENS_PER_MESSAGE
