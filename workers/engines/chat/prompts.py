"""Messages -> prompt text: the model's chat template or the configured template of a model without one."""
from __future__ import annotations


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
