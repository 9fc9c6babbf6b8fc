"""Chat templates as models ship them (test data: the text only, nothing downloaded)."""

#: SmolLM2-135M-Instruct's, as its GGUF's ``tokenizer.chat_template`` holds it
#: (SmolLM2-135M-Instruct.Q4_1.gguf, sha256 b179c952...; read with gguf.GGUFReader): the
#: newlines inside its string literals are real newlines.
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Written for these tests: every feature HF's renderer has that SmolLM2's template does not
#: use (whitespace control with trim/lstrip blocks, loop controls, tojson of non-ASCII text,
#: the generation block, bos/eos variables, raise_exception).
FEATURES = """{{ bos_token }}
{%- if messages[0]['role'] == 'assistant' %}
    {{- raise_exception('Conversations must not start with the assistant') }}
{%- endif %}
{% for message in messages %}
    {% if message['role'] == 'system' %}
[SYS] {{ message['content'] | tojson }}
        {% continue %}
    {% endif %}
    {% if message['role'] == 'assistant' %}
[BOT] {% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}
    {% else %}
[{{ message['role'] | upper }}{% if message.name is defined %}:{{ message.name }}{% endif -%}
] {{ message['content'] }}
    {% endif %}
    {% if loop.index > 6 %}{% break %}{% endif %}
{% endfor %}
{% if add_generation_prompt %}[BOT] {% endif %}"""

#: The variables HF passes beside the messages: tools and documents (None here), and the
#: special tokens the tokenizer has (a missing one is undefined, not empty).
VARIABLES = (
    "{% if tools is not none %}[tools]{% endif %}{% if documents is not none %}[docs]{% endif %}"
    "{% if pad_token is defined %}[pad {{ pad_token }}]{% endif %}[unk {{ unk_token }}]"
    "{% for m in messages %}{{ m.role }}={{ m.content }};{% endfor %}"
)
