"""Tiny stand-ins of the model families the papers use: a randomly initialised model of the family's
architecture with a tokenizer trained here that reproduces the family's conventions exactly.

| family | tokenizer | BOS (added by) | EOS | pad | embeddings | chat template |
|---|---|---|---|---|---|---|
| gpt2 | byte-level BPE, <|endoftext|> last | <|endoftext|> (never added) | same | none | tied | none |
| pythia | byte-level BPE, <|endoftext|> 0, <|padding|> 1 | <|endoftext|> (never added) | same | none | untied, padded rows | none |
| llama2 | SentencePiece BPE ("▁", byte fallback), <unk> <s> </s> | <s> (tokenizer) | </s> | none | untied | instruct: [INST], writes <s> |
| mistral | as llama2, MistralForCausalLM | <s> (tokenizer) | </s> | none | untied | instruct: [INST], writes <s> |
| llama3 | byte-level BPE, specials last | <|begin_of_text|> (post-processor) | base <|end_of_text|>; instruct <|eot_id|> + generation_config both | none | untied | instruct: header ids, writes BOS |
| qwen2.5 | byte-level BPE, specials last | none at all | base <|endoftext|>; instruct <|im_end|> | <|endoftext|> | tied | instruct: ChatML + default system |
| gemma3 | SentencePiece BPE (no dummy prefix, byte fallback), <pad> <eos> <bos> <unk> | <bos> (tokenizer) | <eos>; instruct also <end_of_turn> | <pad> | tied | instruct: turns, writes <bos> |
| smollm2 | byte-level BPE, <|endoftext|> <|im_start|> <|im_end|> first | <|im_start|> declared, never added | <|im_end|> | <|im_end|> | tied | ChatML + default system (base and instruct) |

``build_family(name, out, instruct=...)`` writes a Hugging Face folder (config, safetensors, tokenizer,
generation_config) that lmdelta loads through its real loading code (a ``local`` source).
``FAMILIES`` maps a name to its conventions (what the tests assert); ``family_of_hf_id`` maps a hub id
of a paper's config to the family that stands in for it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

SPM = "\u2581"  # SentencePiece's word mark


@dataclass(frozen=True)
class Family:
    name: str
    arch: str  # gpt2 | gpt_neox | llama | mistral | qwen2 | gemma3 | llama-tied
    kind: str  # bytelevel | spm | spm-gemma
    specials_first: tuple[str, ...]
    specials_last: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None
    adds_bos: bool  # the tokenizer's own post-processor prepends BOS
    tied: bool
    instruct_eos: str | None = None  # the instruct tokenizer's EOS when it differs
    instruct_extra_eos: tuple[str, ...] = ()  # more EOS ids in the instruct generation_config
    chat_template: str | None = None  # the instruct model's template
    base_chat_template: bool = False  # the base tokenizer ships the template too (SmolLM2)
    padded_rows: int = 0  # embedding rows beyond the tokenizer (Pythia)
    extra: dict = field(default_factory=dict)


LLAMA2_CHAT = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = '<<SYS>>\\n' + "
    "messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{% else %}{% set loop_messages = messages %}{% set system_message = '' %}"
    "{% endif %}{% for message in loop_messages %}{% if loop.index0 == 0 %}{% set content = system_message + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
MISTRAL_INSTRUCT = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
LLAMA3_INSTRUCT = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + "
    "content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
QWEN_INSTRUCT = (
    "{%- for message in messages %}{%- if loop.first and messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are Qwen, "
    "created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{{- '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
GEMMA3_IT = (
    "{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
# SmolLM2-135M-Instruct's template, as its GGUF carries it (tests/test_families.py checks the copy)
SMOLLM2_CHAT = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful "
    "AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

FAMILIES = {
    f.name: f
    for f in [
        Family(
            "gpt2",
            "gpt2",
            "bytelevel",
            (),
            ("<|endoftext|>",),
            bos="<|endoftext|>",
            eos="<|endoftext|>",
            pad=None,
            unk="<|endoftext|>",
            adds_bos=False,
            tied=True,
        ),
        Family(
            "pythia",
            "gpt_neox",
            "bytelevel",
            ("<|endoftext|>", "<|padding|>"),
            (),
            bos="<|endoftext|>",
            eos="<|endoftext|>",
            pad=None,
            unk="<|endoftext|>",
            adds_bos=False,
            tied=False,
            padded_rows=37,
        ),
        Family(
            "llama2",
            "llama",
            "spm",
            ("<unk>", "<s>", "</s>"),
            (),
            bos="<s>",
            eos="</s>",
            pad=None,
            unk="<unk>",
            adds_bos=True,
            tied=False,
            chat_template=LLAMA2_CHAT,
        ),
        Family(
            "mistral",
            "mistral",
            "spm",
            ("<unk>", "<s>", "</s>"),
            (),
            bos="<s>",
            eos="</s>",
            pad=None,
            unk="<unk>",
            adds_bos=True,
            tied=False,
            chat_template=MISTRAL_INSTRUCT,
        ),
        Family(
            "llama3",
            "llama",
            "bytelevel",
            (),
            ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
            bos="<|begin_of_text|>",
            eos="<|end_of_text|>",
            pad=None,
            unk=None,
            adds_bos=True,
            tied=False,
            instruct_eos="<|eot_id|>",
            instruct_extra_eos=("<|end_of_text|>",),
            chat_template=LLAMA3_INSTRUCT,
        ),
        Family(
            "qwen2.5",
            "qwen2",
            "bytelevel",
            (),
            ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
            bos=None,
            eos="<|endoftext|>",
            pad="<|endoftext|>",
            unk=None,
            adds_bos=False,
            tied=True,
            instruct_eos="<|im_end|>",
            instruct_extra_eos=("<|endoftext|>",),
            chat_template=QWEN_INSTRUCT,
        ),
        Family(
            "gemma3",
            "gemma3",
            "spm-gemma",
            ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
            (),
            bos="<bos>",
            eos="<eos>",
            pad="<pad>",
            unk="<unk>",
            adds_bos=True,
            tied=True,
            instruct_extra_eos=("<end_of_turn>",),
            chat_template=GEMMA3_IT,
        ),
        Family(
            "smollm2",
            "llama-tied",
            "bytelevel",
            ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
            (),
            bos="<|im_start|>",
            eos="<|im_end|>",
            pad="<|im_end|>",
            unk="<|endoftext|>",
            adds_bos=False,
            tied=True,
            chat_template=SMOLLM2_CHAT,
            base_chat_template=True,
        ),
    ]
}

# Hub ids of the papers' configs -> the family that stands in for them (tests/test_paper_configs.py)
HF_ID_FAMILIES = [
    (r"(^|/)pythia-", "pythia"),
    (r"^openai-community/gpt2|^gpt2", "gpt2"),
    (r"^meta-llama/Llama-2-", "llama2"),
    (r"^mistralai/", "mistral"),
    (r"^meta-llama/(Meta-)?Llama-3", "llama3"),
    (r"^Qwen/", "qwen2.5"),
    (r"^google/gemma-3", "gemma3"),
    (r"^HuggingFaceTB/SmolLM", "smollm2"),
]


def family_of_hf_id(hf_id: str) -> tuple[str, bool]:
    """(family, instruct) standing in for a hub id; instruct when the id names a chat/instruct/tuned model."""
    for pattern, fam in HF_ID_FAMILIES:
        if re.search(pattern, hf_id):
            return fam, bool(re.search(r"(?i)chat|instruct|-it\b|sft|dpo", hf_id))
    raise KeyError(f"no stand-in family for {hf_id!r}: add a pattern to tests/families.py HF_ID_FAMILIES")


def _corpus() -> list[str]:
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)[:60]]
    return texts + [
        "The quick brown fox jumps over the lazy dog. Volcanoes erupt; cocoa is warm.",
        "Human: Tell me a story.\n\nAssistant: Once upon a time there was a dragon.",
    ]


@cache
def _trained_bytelevel(vocab: int = 420):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]


@cache
def _trained_spm(vocab: int = 420):
    """Pieces and merges of a SentencePiece-style BPE ("▁" word marks), trained on the same text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPM, prepend_scheme="always")
    alphabet = sorted({c for t in _corpus() for c in t.replace(" ", SPM) if ord(c) < 128 or c == SPM} - {"\n", "\t"})
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, initial_alphabet=alphabet, limit_alphabet=len(alphabet), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]


def build_tokenizer(fam: Family, out: Path, *, instruct: bool):
    """A fast tokenizer with the family's conventions, saved in Hugging Face format; returns it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if fam.kind == "bytelevel":
        pieces, merges = _trained_bytelevel()
        ordered = [p for p, _ in sorted(pieces.items(), key=lambda kv: kv[1])]
        vocab = {t: i for i, t in enumerate([*fam.specials_first, *ordered, *fam.specials_last])}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:
        pieces, merges = _trained_spm()
        ordered = [p for p, _ in sorted(pieces.items(), key=lambda kv: kv[1])]
        byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
        vocab = {t: i for i, t in enumerate([*fam.specials_first, *byte_tokens, *ordered])}
        tok = Tokenizer(
            models.BPE(vocab=vocab, merges=list(merges), unk_token=fam.unk, byte_fallback=True, fuse_unk=True)
        )
        if fam.kind == "spm":  # Llama-2 / Mistral: a dummy prefix "▁" before the text, spaces become "▁"
            tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPM), normalizers.Replace(" ", SPM)])
            tok.decoder = decoders.Sequence(
                [decoders.Replace(SPM, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
            )
        else:  # Gemma: no dummy prefix
            tok.normalizer = normalizers.Replace(" ", SPM)
            tok.decoder = decoders.Sequence([decoders.Replace(SPM, " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = [*fam.specials_first, *fam.specials_last]
    tok.add_special_tokens(specials)
    if fam.adds_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos} $A", pair=f"{fam.bos} $A {fam.bos} $B", special_tokens=[(fam.bos, vocab[fam.bos])]
        )
    eos = fam.instruct_eos if instruct and fam.instruct_eos else fam.eos
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=fam.bos,
        eos_token=eos,
        unk_token=fam.unk,
        pad_token=fam.pad,
        additional_special_tokens=[s for s in specials if s not in {fam.bos, eos, fam.unk, fam.pad}],
    )
    if fam.chat_template and (instruct or fam.base_chat_template):
        fast.chat_template = fam.chat_template
    fast.save_pretrained(out)
    return fast


def build_family(name: str, out: Path, *, instruct: bool = False, seed: int = 0, **dims) -> Path:
    """Write a tiny randomly initialised model of family ``name`` (see the module docstring) to ``out``."""
    import torch
    from transformers import GenerationConfig

    fam = FAMILIES[name]
    out = Path(out)
    tok = build_tokenizer(fam, out, instruct=instruct)
    ids = {t: tok.convert_tokens_to_ids(t) for t in (fam.bos, tok.eos_token, fam.pad) if t}
    rows = len(tok) + fam.padded_rows
    small = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=1024
    )
    small.update(dims)
    special = dict(bos_token_id=ids.get(fam.bos), eos_token_id=tok.eos_token_id, pad_token_id=ids.get(fam.pad))
    torch.manual_seed(seed)
    if fam.arch == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=rows,
                n_positions=small["max_position_embeddings"],
                n_embd=small["hidden_size"],
                n_layer=small["num_hidden_layers"],
                n_head=small["num_attention_heads"],
                **special,
            )
        )
    elif fam.arch == "gpt_neox":
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        model = GPTNeoXForCausalLM(
            GPTNeoXConfig(vocab_size=rows, rotary_pct=0.25, tie_word_embeddings=False, **small, **special)
        )
    elif fam.arch in ("llama", "llama-tied"):
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(
            LlamaConfig(vocab_size=rows, num_key_value_heads=2, tie_word_embeddings=fam.tied, **small, **special)
        )
    elif fam.arch == "mistral":
        from transformers import MistralConfig, MistralForCausalLM

        model = MistralForCausalLM(
            MistralConfig(
                vocab_size=rows,
                num_key_value_heads=2,
                sliding_window=None,
                tie_word_embeddings=False,
                **small,
                **special,
            )
        )
    elif fam.arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        model = Qwen2ForCausalLM(
            Qwen2Config(vocab_size=rows, num_key_value_heads=2, tie_word_embeddings=True, **small, **special)
        )
    elif fam.arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        model = Gemma3ForCausalLM(
            Gemma3TextConfig(
                vocab_size=rows,
                num_key_value_heads=1,
                head_dim=16,
                sliding_window=512,
                tie_word_embeddings=True,
                **small,
                **special,
            )
        )
    else:
        raise ValueError(fam.arch)
    eos = [tok.eos_token_id] + [tok.convert_tokens_to_ids(t) for t in fam.instruct_extra_eos if instruct]
    model.generation_config = GenerationConfig(
        bos_token_id=special["bos_token_id"],
        eos_token_id=eos if len(eos) > 1 else eos[0],
        pad_token_id=special["pad_token_id"],
    )
    model.save_pretrained(out)
    return out
