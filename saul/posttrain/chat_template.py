"""Mixtral's chat template, and the training variant that lets transformers mark assistant tokens.

`MIXTRAL_CHAT_TEMPLATE` is the template mistralai ships with Mixtral-8x7B-Instruct-v0.1 (its
revised form, which accepts one leading system message): `<s> [INST] q [/INST] a</s> [INST] ...`.
The tiny tokenizer carries it too, so the tiny model is trained in the same format as the
mixtral presets.

Loss on assistant tokens only goes through transformers' `return_assistant_tokens_mask`, which
needs `{% generation %}` markers around assistant output; Mixtral's template has none and trl's
table of patched templates (`get_training_chat_template`) has no Mixtral entry, so the training
variant below is ours: the same text with markers around `' ' + content + eos_token`. Both render
byte-identical strings (tests/unit/test_posttrain_instruct.py checks it), so what the model is
trained on is what it sees at inference.
"""
from __future__ import annotations

from saul.config.errors import ConfigError

_MIXTRAL_HEAD = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
"""
_MIXTRAL_TAIL = """    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""
MIXTRAL_CHAT_TEMPLATE = (_MIXTRAL_HEAD + "        {{- ' ' + message['content'] + eos_token}}\n"
                         + _MIXTRAL_TAIL)
MIXTRAL_TRAINING_CHAT_TEMPLATE = (
    _MIXTRAL_HEAD
    + "        {%- generation %}{{- ' ' + message['content'] + eos_token}}{%- endgeneration %}\n"
    + _MIXTRAL_TAIL)

# Inference template -> its training variant, for the templates we know.
_TRAINING_VARIANTS = {MIXTRAL_CHAT_TEMPLATE: MIXTRAL_TRAINING_CHAT_TEMPLATE}


def training_chat_template(tokenizer) -> str:
    """The template to tokenize training conversations with: one that renders like the
    tokenizer's own and carries `{% generation %}` markers.

    A tokenizer without a template (a bare Mixtral tokenizer.model) gets Mixtral's, set on it so
    that the exported model carries it.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        tokenizer.chat_template = template = MIXTRAL_CHAT_TEMPLATE
    if template in _TRAINING_VARIANTS:
        return _TRAINING_VARIANTS[template]
    if has_generation_markers(template):
        return template
    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError:
        raise ConfigError(
            "the tokenizer's chat template has no {% generation %} markers and neither trl nor this "
            "toolkit knows a training variant of it, so assistant tokens cannot be told apart: add "
            "the markers around assistant output in the tokenizer's chat_template, or remove "
            "chat_template to use Mixtral's") from None
    return patched or template
