"""Tokenizers for the synthetic ERNIE-Image originals, built offline with the ``tokenizers`` library.

A byte-level BPE trained on a small fixed corpus: every string (Chinese, emoji, control characters)
encodes, and the same code gives the same vocabulary every time.
"""

from __future__ import annotations

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "<pad>"]
PE_SYSTEM_PROMPT = (
    "You are the ERNIE-Image prompt enhancer. Rewrite the prompt of the user into one rich, concrete image "
    "description for the requested width and height. Answer with the description only."
)
# The user message (JSON with prompt, width, height) is wrapped in [INST]...[/INST]; the answer follows.
PE_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '" + PE_SYSTEM_PROMPT + "' %}{% endif %}"
    "{{ system }}\n"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST]{{ message['content'] }}\nOutput:[/INST]"
    "{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
_CORPUS = [
    "a photo of an orange cat sitting on a wooden table, soft natural light, realistic style",
    "a white sheet of paper that says Hello Ernie-Image NF4, studio lighting, high detail",
    "一只橙色的小猫坐在木桌上,前面放着一张写有 Hello Ernie-Image NF4 的白纸,柔和自然光,写实风格。",
    "a watercolor landscape with mountains, a river and a small red boat at sunset",
    "portrait of an old fisherman, dramatic lighting, 35mm film, shallow depth of field",
    '{"prompt": "a city street at night in the rain", "width": 1024, "height": 1024}',
    "山水画,远山,小桥流水,水墨风格,高清",
    "a cozy cafe interior with plants, warm colors, isometric illustration 🌿☕",
]


def build_tokenizer(vocab_size: int, model_max_length: int, chat_template: str | None = None):
    """A transformers tokenizer (``TokenizersBackend``) with bos ``<s>``, eos ``</s>``, pad ``<pad>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import TokenizersBackend

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    tokenizer = TokenizersBackend(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
