"""Prompt templates: how an instruction record becomes a prompt and a completion.

``llama2-inst`` is the seed paper's template, verbatim:
``<s>[INST] Below is an instruction ... \\n\\n{input} [/INST]\\n\\n{response}</s>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from bakeoff.errors import SpecError

LLAMA2_INST_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


@dataclass(frozen=True)
class Template:
    """A prompt template; ``prompt`` ends where the model's answer starts."""

    name: str
    prompt_format: str
    completion_format: str
    bos: str = "<s>"
    eos: str = "</s>"

    def prompt(self, instruction: str, input_text: str = "") -> str:
        """The prompt for one record; a non-empty ``input`` follows the instruction on its own line."""
        body = instruction.strip()
        if input_text and input_text.strip():
            body = f"{body}\n\n{input_text.strip()}"
        return self.bos + self.prompt_format.format(input=body)

    def completion(self, response: str) -> str:
        """The text the model is trained to produce after the prompt, end-of-sequence included."""
        return self.completion_format.format(response=response.strip()) + self.eos


TEMPLATES: dict[str, Template] = {
    "llama2-inst": Template(
        name="llama2-inst",
        prompt_format="[INST] " + LLAMA2_INST_PREAMBLE + "\n\n{input} [/INST]\n\n",
        completion_format="{response}",
    ),
}


def get_template(name: str) -> Template:
    """Look a template up by name; an unknown name is a spec error listing the known ones."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise SpecError(f"data.template: unknown template {name!r}; known: {', '.join(TEMPLATES)}") from None
