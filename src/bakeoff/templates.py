"""Prompt templates: how an (instruction, input, response) record becomes a prompt and a completion.

Built in:
- ``llama2-inst``: the seed paper's template, verbatim:
  ``<s>[INST] Below is an instruction ... \\n\\n{input} [/INST]\\n\\n{response}</s>``, where ``<s>`` is the
  BOS token the tokenizer adds (see below), not text;
- ``alpaca``: the Stanford Alpaca prompt (with and without an input);
- ``text-to-sql``: question and table definitions in, one SQL query out (the seed blog's task, in
  this project's own words);
- ``viggo``: a sentence in, its meaning representation ``act(attribute[value], ...)`` out (idem);
- ``chat``: the arm's tokenizer's own chat template, applied at training and generation time (the
  prepared rows then carry ``messages`` as well as a plain-text ``prompt``).
A spec may also give its own: ``template: {prompt: "...{instruction}...{input}...", completion:
"{response}", bos: "", eos: "</s>"}``.

Placeholders: ``{instruction}``, ``{input}`` and ``{body}`` (the instruction, then the input after a
blank line when there is one). The built-in templates end each completion with ``</s>``, the
end-of-sequence text of the LLaMA 2, Mistral, Mixtral and CodeLlama tokenizers; a user template sets
its own ``eos``.

One BOS, added one way: no built-in template writes a BOS as text. The tokenizer adds its own when it
encodes the text with its special tokens (``add_bos_token``: the Llama 2, Mistral, Mixtral and
CodeLlama tokenizers), and so do TRL when it trains, the generate stage (transformers and vLLM are fed
the same ids) and an OpenAI-compatible completions server. A user template's ``bos`` is for a
tokenizer that adds none of its own; one that does would get two, which the finetune stage refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bakeoff.errors import SpecError

LLAMA2_INST_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
PLACEHOLDERS = ("{instruction}", "{input}", "{body}")


@dataclass(frozen=True)
class Template:
    """A prompt template; ``prompt`` ends where the model's answer starts."""

    name: str
    prompt_format: str
    completion_format: str = "{response}"
    bos: str = ""  # text before the prompt; empty: the tokenizer adds its own BOS
    eos: str = "</s>"
    prompt_format_no_input: str | None = None  # used instead when the record has no input
    chat: bool = False  # rendered by the tokenizer's chat template, not by prompt_format

    def prompt(self, instruction: str, input_text: str = "") -> str:
        """The prompt for one record (for ``chat``: the user's message as plain text)."""
        instruction, input_text = instruction.strip(), (input_text or "").strip()
        body = f"{instruction}\n\n{input_text}" if input_text else instruction
        fmt = self.prompt_format_no_input if (not input_text and self.prompt_format_no_input) else self.prompt_format
        return self.bos + fmt.format(instruction=instruction, input=input_text, body=body)

    def completion(self, response: str) -> str:
        """The text the model is trained to produce after the prompt, end-of-sequence included."""
        return self.completion_format.format(response=response.strip()) + self.eos

    def messages(self, instruction: str, input_text: str = "") -> list[dict[str, str]]:
        """The chat form of the prompt: one user message."""
        return [{"role": "user", "content": self.prompt(instruction, input_text)}]


TEMPLATES: dict[str, Template] = {
    "llama2-inst": Template(
        name="llama2-inst",
        prompt_format="[INST] " + LLAMA2_INST_PREAMBLE + "\n\n{body} [/INST]\n\n",
    ),
    "alpaca": Template(
        name="alpaca",
        prompt_format=(
            "Below is an instruction that describes a task, paired with an input that provides further "
            "context. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        ),
        prompt_format_no_input=(
            "Below is an instruction that describes a task. Write a response that appropriately completes "
            "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        ),
    ),
    "text-to-sql": Template(
        name="text-to-sql",
        prompt_format=(
            "You translate questions about a database into SQL. Using only the tables defined below, "
            "write the single SQL query that answers the question. Reply with the query and nothing else.\n\n"
            "### Tables:\n{input}\n\n### Question:\n{instruction}\n\n### SQL:\n"
        ),
    ),
    "viggo": Template(
        name="viggo",
        prompt_format=(
            "Write the meaning representation of the sentence: one dialogue act (inform, request, "
            "request_attribute, request_explanation, confirm, verify_attribute, give_opinion, recommend or "
            "suggest) followed by the attributes the sentence states, as act(attribute[value], ...).\n\n"
            "### Sentence:\n{input}\n\n### Meaning representation:\n"
        ),
    ),
    "chat": Template(name="chat", prompt_format="{body}", eos="", chat=True),
}


class TemplateError(ValueError):
    """A template of the spec's own is malformed; ``key`` is the template key at fault (``prompt``,
    ``completion``, or empty for the template as a whole)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key, self.message = key, message


def user_template(prompt: str, completion: str = "{response}", bos: str = "", eos: str = "</s>") -> Template:
    """A template from the spec; a TemplateError names the key when a placeholder is missing or unknown."""
    if not any(p in prompt for p in PLACEHOLDERS):
        raise TemplateError("prompt", f"needs at least one of {', '.join(PLACEHOLDERS)}")
    if "{response}" not in completion:
        raise TemplateError("completion", "needs {response}")
    try:
        prompt.format(instruction="", input="", body="")
        completion.format(response="")
    except (KeyError, IndexError, ValueError) as exc:
        raise TemplateError("", f"unknown or malformed placeholder {exc}; use {{instruction}}, {{input}}, "
                                "{body} and {response}, and double other braces ({{ }})") from None
    return Template(name="user", prompt_format=prompt, completion_format=completion, bos=bos, eos=eos)


def get_template(template: str | Any) -> Template:
    """A built-in template by name, or the spec's own (an object with prompt, completion, bos, eos)."""
    if isinstance(template, Template):
        return template
    if isinstance(template, str):
        try:
            return TEMPLATES[template]
        except KeyError:
            raise SpecError(
                f"data.template: unknown template {template!r}; known: {', '.join(TEMPLATES)}"
            ) from None
    try:
        return user_template(template.prompt, template.completion, template.bos, template.eos)
    except TemplateError as exc:
        raise SpecError(f"data.template{'.' + exc.key if exc.key else ''}: {exc.message}") from None


def chat_messages(example: dict, template: Any, system_prompt: str | None = None,
                  shots: Sequence[dict] = ()) -> list[dict[str, str]]:
    """The chat messages that ask a prepared ``example``'s question (a hosted arm's prompt): an optional
    system message, each shot as a user/assistant pair, then the example's templated prompt (without the
    template's BOS text) as the user's message. Training and generation both use it, so the hosted model
    sees what the open arms see."""
    template = get_template(template)

    def user(ex: dict) -> dict[str, str]:
        text = ex["prompt"]
        if template.bos and text.startswith(template.bos):
            text = text[len(template.bos):]
        return {"role": "user", "content": text.strip()}

    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for shot in shots:
        messages += [user(shot), {"role": "assistant", "content": shot["reference"].strip()}]
    return messages + [user(example)]
