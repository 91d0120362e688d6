"""A random tiny causal LM in Hugging Face format, built in a second, for tests that need a real model."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
TEXT = ["Hey! Just water it when the soil is dry.", "Therefore, it is recommended to ensure adequate light.",
        "Too long, keep it short.", "=== HINDSIGHT CONTEXT === The following is a future user message."] * 20


def build_random_model(folder: Path, *, vocab_size: int = 300, hidden: int = 32, layers: int = 2, seed: int = 0,
                       tie_embeddings: bool = True) -> Path:
    """Writes a random Llama model and a byte-level BPE tokenizer with a ChatML template to ``folder``."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(TEXT, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<|pad|>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=tie_embeddings,
                         pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id,
                         bos_token_id=fast.bos_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger-than-default weights so the random model's distributions are not flat
        for p in model.parameters():
            p.mul_(4.0)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
